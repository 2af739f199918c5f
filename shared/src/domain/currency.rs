use super::fee::{FeeOnReturn, FeeSchedule};
use super::DomainError;
use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;

/// An ISO-4217-shaped code: exactly three ASCII upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurrencyCode([u8; 3]);

impl CurrencyCode {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(DomainError::InvalidCurrency(truncate(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

/// A configured currency: only values handed out by [`Currencies`] exist, so holding a `Currency`
/// proves the pipeline supports it, and it carries its own precision and withdrawal limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Currency {
    code: CurrencyCode,
    scale: u32,
    min_withdrawal: Decimal,
    max_withdrawal: Decimal,
    /// Most a user may request per UTC day in this currency; `None`: no daily limit.
    daily_limit: Option<Decimal>,
    /// Withdrawals above this are held for an operator's review; `None`: none are.
    review_above: Option<Decimal>,
    /// Its withdrawal fee (`WITHDRAWAL_FEES`); `None`: withdrawals are free.
    fee: Option<FeeSchedule>,
}

impl Currency {
    pub fn code(&self) -> CurrencyCode {
        self.code
    }
    /// Number of decimal places amounts in this currency may have (USD 2, JPY 0).
    pub fn scale(&self) -> u32 {
        self.scale
    }
    pub fn min_withdrawal(&self) -> Decimal {
        self.min_withdrawal
    }
    pub fn max_withdrawal(&self) -> Decimal {
        self.max_withdrawal
    }
    /// The most one user may request per UTC day (cancelled and rejected requests give theirs
    /// back); `None` when the currency has no daily limit.
    pub fn daily_limit(&self) -> Option<Decimal> {
        self.daily_limit
    }

    /// The amount above which a withdrawal waits in REVIEW for an operator (`REVIEW_THRESHOLDS`);
    /// `None` when nothing is reviewed.
    pub fn review_above(&self) -> Option<Decimal> {
        self.review_above
    }
    /// Whether a withdrawal of `amount` is held for review: strictly above the threshold, so a
    /// threshold of 10000 lets 10000.00 through.
    pub fn needs_review(&self, amount: Decimal) -> bool {
        self.review_above.is_some_and(|t| amount > t)
    }

    /// The fee a withdrawal of `amount` is charged now, at this currency's scale (zero when it
    /// has no fee): the withdrawal keeps it for good ([`super::fee`] has the rounding rule).
    pub fn fee_for(&self, amount: Decimal) -> Decimal {
        let mut fee = self
            .fee
            .as_ref()
            .map_or(Decimal::ZERO, |f| f.fee_for(amount, self.scale));
        fee.rescale(self.scale);
        fee
    }

    /// What a bank return does with the returned payout's fee (refunded when no fee is set).
    pub fn fee_on_return(&self) -> FeeOnReturn {
        self.fee
            .as_ref()
            .map_or(FeeOnReturn::Refund, |f| f.on_return)
    }

    /// Formats a quantity of this currency with exactly its scale ("125.50", "1000").
    pub fn format(&self, value: Decimal) -> String {
        let mut v = value;
        v.rescale(self.scale);
        v.to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.code.fmt(f)
    }
}

/// The set of currencies this deployment pays out in.
#[derive(Clone, Debug)]
pub struct Currencies {
    list: Vec<Currency>,
}

impl Default for Currencies {
    fn default() -> Self {
        Self::parse_config(Self::DEFAULT_CONFIG).expect("default currency config is valid")
    }
}

impl Currencies {
    /// `CODE:scale:min:max[:daily_limit]` entries, comma separated. This is also the format of
    /// `CURRENCIES`. A missing or `0` daily limit means none, so entries written before the
    /// limit existed keep their meaning.
    pub const DEFAULT_CONFIG: &'static str = "USD:2:1:50000,EUR:2:1:50000,JPY:0:100:5000000";

    pub fn parse_config(config: &str) -> Result<Self, String> {
        let mut list: Vec<Currency> = Vec::new();
        for entry in config.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let parts: Vec<&str> = entry.split(':').collect();
            let (code, scale, min, max, daily) = match parts[..] {
                [code, scale, min, max] => (code, scale, min, max, "0"),
                [code, scale, min, max, daily] => (code, scale, min, max, daily),
                _ => {
                    return Err(format!(
                        "currency entry {entry:?} is not CODE:scale:min:max[:daily_limit]"
                    ))
                }
            };
            let code = CurrencyCode::parse(code).map_err(|e| e.to_string())?;
            let scale: u32 = scale
                .parse()
                .ok()
                .filter(|s| *s <= 8)
                .ok_or_else(|| format!("{code}: scale must be 0..=8"))?;
            let min = Decimal::from_str(min).map_err(|e| format!("{code}: min: {e}"))?;
            let max = Decimal::from_str(max).map_err(|e| format!("{code}: max: {e}"))?;
            let daily =
                Decimal::from_str(daily).map_err(|e| format!("{code}: daily_limit: {e}"))?;
            if min <= Decimal::ZERO || max < min {
                return Err(format!("{code}: need 0 < min <= max"));
            }
            // A limit below the minimum would refuse every withdrawal: surely a typo.
            if daily < Decimal::ZERO || (daily > Decimal::ZERO && daily < min) {
                return Err(format!(
                    "{code}: daily_limit must be 0 (none) or at least min"
                ));
            }
            if [min, max, daily]
                .iter()
                .any(|v| v.normalize().scale() > scale)
            {
                return Err(format!("{code}: limits have more decimals than the scale"));
            }
            if list.iter().any(|c| c.code == code) {
                return Err(format!("{code} configured twice"));
            }
            list.push(Currency {
                code,
                scale,
                min_withdrawal: min,
                max_withdrawal: max,
                daily_limit: (daily > Decimal::ZERO).then_some(daily),
                review_above: None,
                fee: None,
            });
        }
        if list.is_empty() {
            return Err("no currency configured".into());
        }
        Ok(Self { list })
    }

    /// Sets review thresholds from `CODE:amount` entries, comma separated (the format of
    /// `REVIEW_THRESHOLDS`); a currency left out has none. Refused: an unconfigured currency,
    /// one named twice, an amount that is not positive or has more decimals than its currency.
    pub fn with_review_thresholds(self, config: &str) -> Result<Self, String> {
        self.with_each(
            config,
            "review threshold",
            "CODE:amount",
            |currency, amount| {
                let code = currency.code;
                let amount = Decimal::from_str(amount)
                    .map_err(|e| format!("{code}: review threshold: {e}"))?;
                if amount <= Decimal::ZERO {
                    return Err(format!("{code}: review threshold must be above 0"));
                }
                if amount.normalize().scale() > currency.scale {
                    return Err(format!(
                        "{code}: review threshold has more decimals than the scale"
                    ));
                }
                currency.review_above = Some(amount);
                Ok(())
            },
        )
    }

    /// Sets withdrawal fees from `CODE:fixed:rate:min:max[:refund|keep]` entries, comma
    /// separated (the format of `WITHDRAWAL_FEES`); a currency left out charges none. Refused:
    /// an unconfigured currency, one named twice, a schedule [`FeeSchedule::parse`] refuses.
    pub fn with_fees(self, config: &str) -> Result<Self, String> {
        self.with_each(
            config,
            "fee",
            "CODE:fixed:rate:min:max",
            |currency, spec| {
                let schedule = FeeSchedule::parse(spec, currency.scale)
                    .map_err(|e| format!("{}: fee {e}", currency.code))?;
                currency.fee = Some(schedule);
                Ok(())
            },
        )
    }

    /// One per-currency setting on top of `CURRENCIES`: `CODE:<spec>` entries, comma separated,
    /// each `set` on its configured currency, none named twice.
    fn with_each(
        mut self,
        config: &str,
        what: &str,
        shape: &str,
        mut set: impl FnMut(&mut Currency, &str) -> Result<(), String>,
    ) -> Result<Self, String> {
        let mut seen: Vec<CurrencyCode> = Vec::new();
        for entry in config.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((code, spec)) = entry.split_once(':') else {
                return Err(format!("{what} {entry:?} is not {shape}"));
            };
            let code = CurrencyCode::parse(code).map_err(|e| e.to_string())?;
            let currency = self
                .list
                .iter_mut()
                .find(|c| c.code == code)
                .ok_or_else(|| format!("{code}: {what} for a currency not configured"))?;
            set(currency, spec)?;
            if seen.contains(&code) {
                return Err(format!("{code}: {what} set twice"));
            }
            seen.push(code);
        }
        Ok(self)
    }

    /// Accepts only a configured code, in its exact upper-case spelling.
    pub fn get(&self, code: &str) -> Result<&Currency, DomainError> {
        let parsed = CurrencyCode::parse(code)?;
        self.list
            .iter()
            .find(|c| c.code == parsed)
            .ok_or_else(|| DomainError::InvalidCurrency(code.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Currency> {
        self.list.iter()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_has_usd_eur_jpy_with_their_scales() {
        let c = Currencies::default();
        assert_eq!(c.get("USD").unwrap().scale(), 2);
        assert_eq!(c.get("EUR").unwrap().scale(), 2);
        assert_eq!(c.get("JPY").unwrap().scale(), 0);
        assert_eq!(c.iter().count(), 3);
    }

    #[test]
    fn unknown_or_badly_spelled_codes_are_refused() {
        let c = Currencies::default();
        for bad in ["GBP", "usd", "US", "USDT", "", "U$D"] {
            assert!(
                matches!(c.get(bad), Err(DomainError::InvalidCurrency(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_errors_are_reported() {
        assert!(Currencies::parse_config("").is_err());
        assert!(Currencies::parse_config("USD:2:1").is_err());
        assert!(Currencies::parse_config("USD:2:0:10").is_err());
        assert!(Currencies::parse_config("USD:2:1:10,USD:2:1:10").is_err());
        assert!(Currencies::parse_config("JPY:0:0.5:10").is_err());
        let c = Currencies::parse_config("GBP:2:0.01:100").unwrap();
        assert_eq!(c.get("GBP").unwrap().format(Decimal::new(5, 1)), "0.50");
    }

    #[test]
    fn review_thresholds_hold_amounts_strictly_above_them() {
        let c = Currencies::default()
            .with_review_thresholds("USD:10000, JPY:1000000")
            .unwrap();
        let usd = c.get("USD").unwrap();
        assert!(!usd.needs_review(Decimal::new(1000000, 2)));
        assert!(usd.needs_review(Decimal::new(1000001, 2)));
        assert_eq!(c.get("EUR").unwrap().review_above(), None);
        assert!(!c.get("EUR").unwrap().needs_review(Decimal::new(50000, 0)));
        assert!(Currencies::default()
            .iter()
            .all(|c| c.review_above().is_none()));
        for bad in [
            "USD",
            "GBP:100",
            "USD:0",
            "USD:-5",
            "USD:10.001",
            "JPY:100.5",
            "USD:x",
            "USD:10,USD:20",
        ] {
            assert!(
                Currencies::default().with_review_thresholds(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn fees_are_set_per_currency_and_a_currency_left_out_is_free() {
        let c = Currencies::default()
            .with_fees("EUR:0.50:0.001:1:20:keep, JPY:100:0:0:0")
            .unwrap();
        let eur = c.get("EUR").unwrap();
        assert_eq!(eur.fee_for(Decimal::new(100, 0)).to_string(), "1.00");
        assert_eq!(eur.fee_for(Decimal::new(5000, 0)).to_string(), "5.50");
        assert_eq!(eur.fee_on_return(), FeeOnReturn::Keep);
        assert_eq!(
            c.get("JPY")
                .unwrap()
                .fee_for(Decimal::new(5000, 0))
                .to_string(),
            "100"
        );
        let usd = c.get("USD").unwrap();
        assert_eq!(usd.fee_for(Decimal::new(5000, 0)).to_string(), "0.00");
        assert_eq!(usd.fee_on_return(), FeeOnReturn::Refund);
        for bad in [
            "EUR",
            "GBP:1:0:0:0",
            "EUR:1:0:0:0,EUR:2:0:0:0",
            "JPY:0.5:0:0:0",
            "EUR:1:2:0:0",
        ] {
            assert!(Currencies::default().with_fees(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_daily_limit_is_optional_and_zero_means_none() {
        let c = Currencies::parse_config("USD:2:1:50000:1000.50,EUR:2:1:50000:0,JPY:0:100:5000000")
            .unwrap();
        assert_eq!(
            c.get("USD").unwrap().daily_limit(),
            Some(Decimal::new(100050, 2))
        );
        assert_eq!(c.get("EUR").unwrap().daily_limit(), None);
        assert_eq!(c.get("JPY").unwrap().daily_limit(), None);
        assert!(Currencies::default()
            .iter()
            .all(|c| c.daily_limit().is_none()));
        for bad in [
            "USD:2:1:100:-1",
            "USD:2:1:100:0.5",
            "USD:2:1:100:10.001",
            "JPY:0:100:1000:150.5",
            "USD:2:1:100:x",
            "USD:2:1:100:10:1",
        ] {
            assert!(Currencies::parse_config(bad).is_err(), "{bad}");
        }
    }
}
