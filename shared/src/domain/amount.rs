use super::{Currency, DomainError};
use rust_decimal::Decimal;
use std::fmt;

/// A positive quantity of one currency with no more decimal places than that currency allows.
/// Stored rescaled to the currency's scale, so equal amounts have equal representations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Amount {
    /// Parses decimal text exactly (never through a float). Only the plain form
    /// `^[0-9]+(\.[0-9]+)?$` is an amount (`125.5`, `125.50`): no sign, exponent, blank, or
    /// other spelling, so one amount has one spelling and one idempotency fingerprint. Refuses
    /// zero and excess precision.
    pub fn parse(text: &str, currency: &Currency) -> Result<Self, DomainError> {
        let invalid = || {
            DomainError::InvalidAmount(
                "amount must be a plain positive decimal like \"125.50\"".to_string(),
            )
        };
        if text.is_empty() || text.len() > 40 || !is_plain_decimal(text) {
            return Err(invalid());
        }
        let value = Decimal::from_str_exact(text).map_err(|_| invalid())?;
        Self::new(value, currency)
    }

    /// Builds an amount from a decimal already in hand (e.g. read back from the store).
    pub fn new(value: Decimal, currency: &Currency) -> Result<Self, DomainError> {
        if value <= Decimal::ZERO {
            return Err(DomainError::InvalidAmount(
                "amount must be greater than zero".into(),
            ));
        }
        if value.normalize().scale() > currency.scale() {
            return Err(DomainError::InvalidAmount(format!(
                "{} allows at most {} decimal places",
                currency.code(),
                currency.scale()
            )));
        }
        let mut v = value;
        v.rescale(currency.scale());
        Ok(Self(v))
    }

    pub fn value(&self) -> Decimal {
        self.0
    }
}

/// `^[0-9]+(\.[0-9]+)?$`
fn is_plain_decimal(text: &str) -> bool {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currencies;

    fn usd() -> Currency {
        Currencies::default().get("USD").unwrap().clone()
    }
    fn jpy() -> Currency {
        Currencies::default().get("JPY").unwrap().clone()
    }

    #[test]
    fn parses_exactly_and_rescales_to_the_currency() {
        assert_eq!(
            Amount::parse("125.5", &usd()).unwrap().to_string(),
            "125.50"
        );
        assert_eq!(
            Amount::parse("125.50", &usd()).unwrap().to_string(),
            "125.50"
        );
        assert_eq!(
            Amount::parse("125.500", &usd()).unwrap().to_string(),
            "125.50"
        );
        assert_eq!(Amount::parse("1000", &jpy()).unwrap().to_string(), "1000");
        // 0.1 + 0.2 style inputs stay exact.
        assert_eq!(
            Amount::parse("0.30", &usd()).unwrap().value(),
            Decimal::new(30, 2)
        );
    }

    #[test]
    fn refuses_excess_precision_per_currency() {
        assert!(Amount::parse("125.505", &usd()).is_err());
        assert!(Amount::parse("1000.5", &jpy()).is_err());
        assert!(Amount::parse("1e-3", &usd()).is_err());
    }

    #[test]
    fn refuses_non_positive_and_malformed() {
        for bad in [
            "0",
            "0.00",
            "-1",
            "+1",
            "",
            " 1",
            "1 ",
            "1,00",
            "abc",
            "NaN",
            "inf",
            ".5",
            "1..2",
            "0x10",
            "99999999999999999999999999999999",
            // Other spellings of a number are not amounts: one amount, one spelling.
            "1e2",
            "1.2550e2",
            "1E2",
            "9.99999999999999999999999999999e0",
            "1.",
            "1.5.0",
        ] {
            assert!(Amount::parse(bad, &usd()).is_err(), "{bad:?} accepted");
        }
    }
}
