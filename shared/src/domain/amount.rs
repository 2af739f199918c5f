use super::{Currency, DomainError};
use rust_decimal::Decimal;
use std::fmt;

/// A positive quantity of one currency with no more decimal places than that currency allows.
/// Stored rescaled to the currency's scale, so equal amounts have equal representations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Amount {
    /// Parses decimal text exactly (never through a float). Accepts `125.5`, `125.50`, and JSON's
    /// exponent form `1.255e2`; refuses signs, zero, blanks and excess precision.
    pub fn parse(text: &str, currency: &Currency) -> Result<Self, DomainError> {
        let invalid = |why: &str| DomainError::InvalidAmount(why.to_string());
        if text.is_empty() || text.len() > 40 {
            return Err(invalid("amount must be a decimal number"));
        }
        let well_formed = text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
            && text.as_bytes()[0].is_ascii_digit();
        if !well_formed {
            return Err(invalid(
                "amount must be a positive decimal number like \"125.50\"",
            ));
        }
        let value = if text.contains(['e', 'E']) {
            Decimal::from_scientific(text)
        } else {
            Decimal::from_str_exact(text)
        }
        .map_err(|_| invalid("amount must be a positive decimal number like \"125.50\""))?;
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
        assert_eq!(
            Amount::parse("1.2550e2", &usd()).unwrap().to_string(),
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
        ] {
            assert!(Amount::parse(bad, &usd()).is_err(), "{bad:?} accepted");
        }
    }
}
