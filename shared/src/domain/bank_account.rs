use super::DomainError;
use std::fmt;

/// A payout destination. Two formats are accepted:
/// - an IBAN (spaces allowed, any case), checked for its country's length and the ISO 7064
///   mod-97 checksum;
/// - a US account as `ABA:<9-digit routing number>:<4 to 17 digit account number>`, with the
///   routing number's ABA checksum.
///
/// The full number is only reachable through [`BankAccount::expose`], which the store and the
/// provider client use; `Debug` and `Display` print the masked form so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct BankAccount(String);

impl BankAccount {
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let invalid = |why: &str| DomainError::InvalidBankAccount(why.to_string());
        if input.len() > 64 {
            return Err(invalid("bank account is too long"));
        }
        if let Some(rest) = input.strip_prefix("ABA:") {
            let (routing, account) = rest
                .split_once(':')
                .ok_or_else(|| invalid("expected ABA:<routing>:<account>"))?;
            if routing.len() != 9 || !routing.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("ABA routing number must be 9 digits"));
            }
            if !aba_checksum_ok(routing) {
                return Err(invalid("ABA routing number checksum does not match"));
            }
            if !(4..=17).contains(&account.len()) || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("account number must be 4 to 17 digits"));
            }
            return Ok(Self(format!("ABA:{routing}:{account}")));
        }
        let iban: String = input
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if !iban.bytes().all(|b| b.is_ascii_alphanumeric()) || iban.len() < 15 {
            return Err(invalid(
                "bank account must be an IBAN or ABA:<routing>:<account>",
            ));
        }
        let b = iban.as_bytes();
        if !b[0].is_ascii_alphabetic() || !b[1].is_ascii_alphabetic() {
            return Err(invalid("IBAN must start with a country code"));
        }
        if !b[2].is_ascii_digit() || !b[3].is_ascii_digit() {
            return Err(invalid("IBAN check digits must be numeric"));
        }
        match iban_length(&iban[..2]) {
            Some(len) if len == iban.len() => {}
            Some(_) => return Err(invalid("IBAN has the wrong length for its country")),
            None => return Err(invalid("IBAN country is not supported")),
        }
        if !iban_checksum_ok(&iban) {
            return Err(invalid("IBAN checksum does not match"));
        }
        Ok(Self(iban))
    }

    /// The full account number, for the store and the payment provider only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Shows enough to recognise the account, never enough to use it: `DE89…3000`.
    pub fn masked(&self) -> String {
        let s = &self.0;
        if let Some(rest) = s.strip_prefix("ABA:") {
            let account = rest.rsplit(':').next().unwrap_or("");
            return format!("ABA…{}", &account[account.len().saturating_sub(4)..]);
        }
        format!("{}…{}", &s[..4], &s[s.len() - 4..])
    }
}

impl fmt::Debug for BankAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BankAccount({})", self.masked())
    }
}

impl fmt::Display for BankAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

fn iban_checksum_ok(iban: &str) -> bool {
    // Move the first four characters to the end, letters become 10..35, the number mod 97 is 1.
    let rearranged = iban[4..].bytes().chain(iban[..4].bytes());
    let mut rem: u32 = 0;
    for b in rearranged {
        let v = if b.is_ascii_digit() {
            (b - b'0') as u32
        } else {
            (b - b'A') as u32 + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn aba_checksum_ok(routing: &str) -> bool {
    let d: Vec<u32> = routing.bytes().map(|b| (b - b'0') as u32).collect();
    let sum = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8]);
    sum.is_multiple_of(10)
}

/// IBAN lengths from the SWIFT IBAN registry for the countries we pay out to.
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "AD" => 24,
        "AE" => 23,
        "AT" => 20,
        "BE" => 16,
        "BG" => 22,
        "CH" => 21,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "EE" => 20,
        "ES" => 24,
        "FI" => 18,
        "FR" => 27,
        "GB" => 22,
        "GR" => 27,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IS" => 26,
        "IT" => 27,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MT" => 31,
        "NL" => 18,
        "NO" => 15,
        "PL" => 28,
        "PT" => 25,
        "RO" => 24,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ibans_in_any_spacing_and_case() {
        for ok in [
            "DE89370400440532013000",
            "de89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
        ] {
            assert!(BankAccount::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            BankAccount::parse("de89 3704 0044 0532 0130 00")
                .unwrap()
                .expose(),
            "DE89370400440532013000"
        );
    }

    #[test]
    fn refuses_bad_checksums_lengths_and_shapes() {
        for bad in [
            "DE89370400440532013001",
            "DE8937040044053201300",
            "XX89370400440532013000",
            "DE89-3704-0044-0532-0130-00",
            "",
            "12345",
            "ABA:123456789:12345678",
            "ABA:02100002:12345678",
            "ABA:021000021:123",
            "ABA:021000021",
        ] {
            assert!(BankAccount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aba_accounts_validate_the_routing_checksum() {
        let a = BankAccount::parse("ABA:021000021:123456789").unwrap();
        assert_eq!(a.masked(), "ABA…6789");
    }

    #[test]
    fn debug_and_display_never_show_the_full_number() {
        let a = BankAccount::parse("DE89370400440532013000").unwrap();
        assert_eq!(a.masked(), "DE89…3000");
        assert!(!format!("{a:?}").contains("370400440532"));
        assert!(!format!("{a}").contains("370400440532"));
    }
}
