use super::DomainError;
use std::fmt;
use std::str::FromStr;
use ulid::Ulid;

/// A text identifier of printable ASCII: `len` bytes at most, none of `forbidden`. One rule for
/// user ids, idempotency keys and credit references, each its own type.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $max:expr, $forbidden:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted, in bytes (they are ASCII).
            pub const MAX_LEN: usize = $max;

            pub fn parse(s: &str) -> Result<Self, DomainError> {
                let forbidden: &[u8] = $forbidden;
                let ok = (1..=Self::MAX_LEN).contains(&s.len())
                    && s.bytes().all(|b| b.is_ascii_graphic() && !forbidden.contains(&b));
                if ok {
                    Ok(Self(s.to_string()))
                } else {
                    Err(DomainError::InvalidId($what.into()))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

text_id!(
    /// The authenticated user: the `sub` claim of a verified token. `#` is refused because it
    /// separates the parts of the table's keys; the length bounds the batch record's size.
    UserId,
    128,
    b"#",
    "user id must be 1-128 printable characters without '#'"
);

text_id!(
    /// A client-chosen `Idempotency-Key`.
    IdempotencyKey,
    255,
    b"",
    "Idempotency-Key must be 1-255 printable ASCII characters"
);

text_id!(
    /// An operator's reference for one credit (the bank transfer's id, a ticket number). A
    /// reference credits at most once, so a repeated or retried `operator credit` cannot add
    /// the same funds twice.
    CreditReference,
    128,
    b"",
    "credit reference must be 1-128 printable ASCII characters"
);

macro_rules! ulid_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        /// A time-sortable id (ULID with a type prefix): newer ids sort after older ones, so
        /// sort keys built from it list in creation order.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            /// The length of every id's text: the prefix and 26 ULID characters.
            pub const TEXT_LEN: usize = $prefix.len() + 26;

            pub fn new() -> Self {
                Self(Ulid::new())
            }
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                s.strip_prefix($prefix)
                    .filter(|rest| rest.len() == 26)
                    .and_then(|rest| Ulid::from_string(rest).ok())
                    // ULID decoding is case-insensitive; keep one spelling per id.
                    .filter(|u| format!("{}{}", $prefix, u) == s)
                    .map(Self)
                    .ok_or_else(|| {
                        DomainError::InvalidId(concat!("not a valid ", $what, " id").into())
                    })
            }
            pub fn timestamp_ms(&self) -> u64 {
                self.0.timestamp_ms()
            }
            /// A stable shard in `0..shards`, from the id's random bits.
            pub fn shard(&self, shards: u32) -> u32 {
                (self.0.random() % u128::from(shards.max(1))) as u32
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

ulid_id!(WithdrawalId, "wd_", "withdrawal");
ulid_id!(BatchId, "bt_", "batch");
ulid_id!(BeneficiaryId, "bn_", "beneficiary");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_ids_round_trip_and_sort_by_time() {
        let a = WithdrawalId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = WithdrawalId::new();
        assert!(a.to_string() < b.to_string());
        assert_eq!(WithdrawalId::parse(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn ids_refuse_foreign_shapes() {
        let a = WithdrawalId::new().to_string();
        assert!(WithdrawalId::parse(&a.to_lowercase()).is_err());
        assert!(WithdrawalId::parse(&a[3..]).is_err());
        assert!(BatchId::parse(&a).is_err());
        assert!(WithdrawalId::parse("wd_").is_err());
        assert!(WithdrawalId::parse("wd_ZZZZZZZZZZZZZZZZZZZZZZZZZZ").is_err());
    }

    #[test]
    fn user_ids_and_keys_have_bounded_printable_forms() {
        assert!(UserId::parse("user-1").is_ok());
        assert!(UserId::parse("a#b").is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse(&"x".repeat(129)).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(CreditReference::parse("wire-2026-11-30#17").is_ok());
        assert!(CreditReference::parse(&"r".repeat(128)).is_ok());
        assert!(CreditReference::parse(&"r".repeat(129)).is_err());
        assert!(CreditReference::parse("").is_err());
        assert!(CreditReference::parse("two words").is_err());
        assert!(CreditReference::parse("caf\u{e9}").is_err());
    }
}
