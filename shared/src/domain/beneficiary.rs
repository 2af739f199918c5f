//! Registered destinations. A withdrawal is paid only to a beneficiary its owner registered
//! before, once that beneficiary's cooling-off has passed: a stolen session token can then name
//! only accounts the user added earlier, and an account added by a thief waits long enough for
//! the user to hear of it (`beneficiary.added`) and remove it.
//!
//! A beneficiary never changes once added: removing one only marks it removed, and a new account
//! is a new beneficiary. So what a withdrawal names at request time is what it is paid to.

use super::{BankAccount, BeneficiaryId, DomainError, UserId};
use chrono::{DateTime, Utc};

/// The longest holder name: SEPA's 70 characters for a creditor's name.
pub const HOLDER_NAME_MAX: usize = 70;
/// The longest label (the user's own name for it, e.g. "Savings").
pub const LABEL_MAX: usize = 35;

/// What the user gives for a beneficiary, parsed: the account, the account holder's name as the
/// bank knows it, an optional label. Names are trimmed, 1 to their maximum characters, without
/// control characters (they end up in the provider's file and in every view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeneficiaryDetails {
    pub bank_account: BankAccount,
    pub holder_name: String,
    pub label: Option<String>,
}

impl BeneficiaryDetails {
    pub fn parse(
        bank_account: &str,
        holder_name: &str,
        label: Option<&str>,
    ) -> Result<Self, DomainError> {
        Ok(Self {
            bank_account: BankAccount::parse(bank_account)?,
            holder_name: text("holder_name", holder_name, HOLDER_NAME_MAX)?,
            label: label.map(|l| text("label", l, LABEL_MAX)).transpose()?,
        })
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<String, DomainError> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 || chars > max {
        return Err(DomainError::InvalidBeneficiary(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::InvalidBeneficiary(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_string())
}

/// A user's registered destination, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Beneficiary {
    pub id: BeneficiaryId,
    pub user_id: UserId,
    pub details: BeneficiaryDetails,
    pub created_at: DateTime<Utc>,
    /// The first instant a withdrawal may name it: its creation plus the cooling-off then
    /// configured (a later change of the setting does not move it).
    pub usable_from: DateTime<Utc>,
    /// Set once, by its removal: no new withdrawal may name it; those already requested are
    /// still paid to it (their owner chose it when asking).
    pub removed_at: Option<DateTime<Utc>>,
}

impl Beneficiary {
    /// Added now (to the millisecond, as stored), usable after `cooling_off`.
    pub fn new(
        user_id: UserId,
        details: BeneficiaryDetails,
        now: DateTime<Utc>,
        cooling_off: chrono::Duration,
    ) -> Self {
        let now = chrono::SubsecRound::trunc_subsecs(now, 3);
        Self {
            id: BeneficiaryId::new(),
            user_id,
            details,
            created_at: now,
            usable_from: now + cooling_off,
            removed_at: None,
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed_at.is_some()
    }
}

/// Where a withdrawal's money goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A registered beneficiary. The request records only its id (its checks are conditions
    /// of the request's one write, with no read); the batcher copies the account onto the
    /// withdrawal in the same write that claims it, so every send and re-send reads the account
    /// from the withdrawal alone.
    Beneficiary {
        id: BeneficiaryId,
        account: Option<BankAccount>,
    },
    /// An account named in the request itself: withdrawals recorded before beneficiaries.
    /// They complete as recorded; no new request can make one.
    Account(BankAccount),
}

impl Destination {
    pub fn beneficiary(id: BeneficiaryId) -> Self {
        Self::Beneficiary { id, account: None }
    }

    /// The account it is paid to, once known.
    pub fn account(&self) -> Option<&BankAccount> {
        match self {
            Self::Beneficiary { account, .. } => account.as_ref(),
            Self::Account(account) => Some(account),
        }
    }

    pub fn beneficiary_id(&self) -> Option<BeneficiaryId> {
        match self {
            Self::Beneficiary { id, .. } => Some(*id),
            Self::Account(_) => None,
        }
    }

    /// A beneficiary whose account the batcher still has to look up before claiming.
    pub fn unresolved(&self) -> Option<BeneficiaryId> {
        match self {
            Self::Beneficiary { id, account: None } => Some(*id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_trimmed_and_bounded() {
        let d =
            BeneficiaryDetails::parse("DE89 3704 0044 0532 0130 00", "  Ann Lee ", None).unwrap();
        assert_eq!(d.holder_name, "Ann Lee");
        assert_eq!(d.bank_account.expose(), "DE89370400440532013000");
        for (name, label) in [
            ("", None),
            ("   ", None),
            (&"x".repeat(71)[..], None),
            ("Ann\u{7}", None),
            ("Ann", Some("")),
            ("Ann", Some(&"y".repeat(36)[..])),
        ] {
            assert!(
                matches!(
                    BeneficiaryDetails::parse("DE89370400440532013000", name, label),
                    Err(DomainError::InvalidBeneficiary(_))
                ),
                "{name:?} {label:?}"
            );
        }
        assert!(matches!(
            BeneficiaryDetails::parse("DE89370400440532013001", "Ann", None),
            Err(DomainError::InvalidBankAccount(_))
        ));
        // Characters, not bytes: 70 accented letters fit.
        assert!(BeneficiaryDetails::parse("DE89370400440532013000", &"é".repeat(70), None).is_ok());
    }

    #[test]
    fn usable_from_is_creation_plus_cooling_off() {
        let now = Utc::now();
        let d = BeneficiaryDetails::parse("DE89370400440532013000", "Ann", None).unwrap();
        let b = Beneficiary::new(
            UserId::parse("u").unwrap(),
            d,
            now,
            chrono::Duration::hours(24),
        );
        assert_eq!(b.usable_from - b.created_at, chrono::Duration::hours(24));
        assert!(!b.is_removed());
    }
}
