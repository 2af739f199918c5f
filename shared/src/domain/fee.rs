//! Withdrawal fees. A currency may charge a fee on each withdrawal: a fixed part plus a rate of
//! the amount, kept between a minimum and a maximum. The fee is computed once, when the
//! withdrawal is requested, and stored on it: a later change of the schedule never alters a
//! withdrawal already made, and a replay answers the first request's fee.
//!
//! The one rounding rule: `fixed + amount × rate`, exact, rounded to the currency's scale half
//! away from zero (0.005 USD → 0.01), then raised to the minimum or lowered to the maximum.

use rust_decimal::{Decimal, RoundingStrategy};
use std::str::FromStr;

/// What a bank return does with the fee of the payout it sends back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeeOnReturn {
    /// The fee goes back to the user with the amount (the payout never reached them).
    Refund,
    /// The house keeps the fee (the payout was made; the bank sent it back).
    Keep,
}

/// One currency's fee: `fixed + amount × rate`, within `[min, max]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeeSchedule {
    pub fixed: Decimal,
    pub rate: Decimal,
    pub min: Decimal,
    /// `None`: no maximum.
    pub max: Option<Decimal>,
    pub on_return: FeeOnReturn,
}

/// The most decimals a rate may have (0.0001 = one basis point; finer ones are typos).
const RATE_DECIMALS: u32 = 6;

impl FeeSchedule {
    /// The fee on `amount` in a currency of `scale` decimals, by the one rounding rule above.
    pub fn fee_for(&self, amount: Decimal, scale: u32) -> Decimal {
        let raw = self.fixed + amount * self.rate;
        let mut fee = raw
            .round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero)
            .max(self.min);
        if let Some(max) = self.max {
            fee = fee.min(max);
        }
        fee.rescale(scale);
        fee
    }

    /// `fixed:rate:min:max[:refund|keep]` of a currency of `scale` decimals (the part of a
    /// `WITHDRAWAL_FEES` entry after its code). `max` 0 means none; the return policy is
    /// `refund` when left out.
    pub fn parse(spec: &str, scale: u32) -> Result<Self, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (fixed, rate, min, max, on_return) = match parts[..] {
            [fixed, rate, min, max] => (fixed, rate, min, max, "refund"),
            [fixed, rate, min, max, on_return] => (fixed, rate, min, max, on_return),
            _ => return Err("is not CODE:fixed:rate:min:max[:refund|keep]".into()),
        };
        let money = |name: &str, text: &str| -> Result<Decimal, String> {
            let v = Decimal::from_str_exact(text).map_err(|e| format!("{name}: {e}"))?;
            if v < Decimal::ZERO {
                return Err(format!("{name} must not be negative"));
            }
            if v.normalize().scale() > scale {
                return Err(format!(
                    "{name} has more decimals than the currency's scale"
                ));
            }
            Ok(v)
        };
        let fixed = money("fixed", fixed)?;
        let min = money("min", min)?;
        let max = money("max", max)?;
        let rate = Decimal::from_str(rate).map_err(|e| format!("rate: {e}"))?;
        if rate < Decimal::ZERO || rate >= Decimal::ONE {
            return Err("rate must be at least 0 and below 1 (0.001 = 0.1 %)".into());
        }
        if rate.normalize().scale() > RATE_DECIMALS {
            return Err(format!("rate has more than {RATE_DECIMALS} decimals"));
        }
        let max = (max > Decimal::ZERO).then_some(max);
        if max.is_some_and(|max| max < min) {
            return Err("max must be 0 (none) or at least min".into());
        }
        let on_return = match on_return {
            "refund" => FeeOnReturn::Refund,
            "keep" => FeeOnReturn::Keep,
            other => return Err(format!("return policy {other:?} is not refund or keep")),
        };
        Ok(Self {
            fixed,
            rate,
            min,
            max,
            on_return,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn the_fee_is_fixed_plus_rate_rounded_half_away_from_zero_then_bounded() {
        let f = FeeSchedule::parse("0.25:0.001:1.00:25.00", 2).unwrap();
        // 0.25 + 0.75 = 1.00: exactly the minimum.
        assert_eq!(f.fee_for(d("750.00"), 2), d("1.00"));
        // Below the minimum: raised to it.
        assert_eq!(f.fee_for(d("10.00"), 2), d("1.00"));
        // 0.25 + 1.2345 = 1.4845 → 1.48; 0.25 + 1.235 = 1.485 → 1.49 (half away from zero).
        assert_eq!(f.fee_for(d("1234.50"), 2), d("1.48"));
        assert_eq!(f.fee_for(d("1235.00"), 2), d("1.49"));
        // Above the maximum: lowered to it.
        assert_eq!(f.fee_for(d("50000.00"), 2), d("25.00"));
        assert_eq!(f.fee_for(d("1235.00"), 2).to_string(), "1.49");
        assert_eq!(f.on_return, FeeOnReturn::Refund);

        let jpy = FeeSchedule::parse("0:0.0015:0:0:keep", 0).unwrap();
        // 0.0015 × 1000 = 1.5 → 2 yen; no maximum.
        assert_eq!(jpy.fee_for(d("1000"), 0), d("2"));
        assert_eq!(jpy.fee_for(d("5000000"), 0), d("7500"));
        assert_eq!(jpy.on_return, FeeOnReturn::Keep);
        let flat = FeeSchedule::parse("1.50:0:0:0", 2).unwrap();
        assert_eq!(flat.fee_for(d("1.00"), 2).to_string(), "1.50");
    }

    #[test]
    fn a_schedule_that_makes_no_sense_is_refused() {
        for bad in [
            "1",
            "1:0:0",
            "-1:0:0:0",
            "0.001:0:0:0",
            "0:1:0:0",
            "0:-0.1:0:0",
            "0:0.0000001:0:0",
            "0:0.01:5:2",
            "0:0.01:0:0:sometimes",
            "x:0:0:0",
            "1:0:0:0:keep:x",
        ] {
            assert!(FeeSchedule::parse(bad, 2).is_err(), "{bad}");
        }
    }
}
