use super::Currency;
use rust_decimal::Decimal;

/// One user's funds in one currency.
///
/// `available + locked + paid_out + fees == credited` always holds: money only enters through a
/// credit, and every other movement shifts it between the four buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Balance {
    pub currency: Currency,
    pub available: Decimal,
    /// Open withdrawals' amounts and fees.
    pub locked: Decimal,
    /// What the provider paid out: the amounts of settled withdrawals.
    pub paid_out: Decimal,
    /// What the user paid in fees: the house's revenue, summed over users (no one item the
    /// house writes on every settlement).
    pub fees: Decimal,
    pub credited: Decimal,
    /// Withdrawals currently holding locked funds (PENDING or SUBMITTED).
    pub open_count: u32,
}

/// How money moves between a balance's buckets, for an amount and its fee. The store applies
/// these as conditional update expressions; [`Balance::apply`] is the same arithmetic for
/// checking and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceEffect {
    /// Funds enter: available and credited grow by the amount (a credit has no fee).
    Credit,
    /// A withdrawal is requested: amount + fee, available → locked (needs available ≥ both).
    Lock,
    /// It ends without payout: amount + fee, locked → available.
    Unlock,
    /// It is paid: the amount, locked → paid out; the fee, locked → fees.
    PayOut,
    /// The bank returned a payout: the amount, paid out → available; the fee given back (all
    /// or nothing, by the currency's policy), fees → available.
    Return,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the balance does not hold enough for this movement")]
pub struct Overdraw;

impl Balance {
    pub fn empty(currency: Currency) -> Self {
        Self {
            currency,
            available: Decimal::ZERO,
            locked: Decimal::ZERO,
            paid_out: Decimal::ZERO,
            fees: Decimal::ZERO,
            credited: Decimal::ZERO,
            open_count: 0,
        }
    }

    pub fn is_conserved(&self) -> bool {
        self.available + self.locked + self.paid_out + self.fees == self.credited
            && self.available >= Decimal::ZERO
            && self.locked >= Decimal::ZERO
            && self.paid_out >= Decimal::ZERO
            && self.fees >= Decimal::ZERO
    }

    /// `effect` for `amount` and `fee`: the fee locked with the amount for `Lock`/`Unlock`,
    /// charged for `PayOut`, given back for `Return` (zero when the house keeps it).
    pub fn apply(
        &self,
        effect: BalanceEffect,
        amount: Decimal,
        fee: Decimal,
    ) -> Result<Balance, Overdraw> {
        let mut b = self.clone();
        let take = |from: &mut Decimal, value: Decimal| {
            if *from < value {
                Err(Overdraw)
            } else {
                *from -= value;
                Ok(())
            }
        };
        let total = amount + fee;
        match effect {
            BalanceEffect::Credit => {
                b.available += amount;
                b.credited += amount;
            }
            BalanceEffect::Lock => {
                take(&mut b.available, total)?;
                b.locked += total;
                b.open_count += 1;
            }
            BalanceEffect::Unlock => {
                take(&mut b.locked, total)?;
                b.available += total;
                b.open_count = b.open_count.saturating_sub(1);
            }
            BalanceEffect::PayOut => {
                take(&mut b.locked, total)?;
                b.paid_out += amount;
                b.fees += fee;
                b.open_count = b.open_count.saturating_sub(1);
            }
            BalanceEffect::Return => {
                take(&mut b.paid_out, amount)?;
                take(&mut b.fees, fee)?;
                b.available += total;
            }
            BalanceEffect::None => {}
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currencies, WithdrawalStatus};

    #[test]
    fn every_lifecycle_conserves_money_and_never_goes_negative() {
        let usd = Currencies::default().get("USD").unwrap().clone();
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let b = Balance::empty(usd)
            .apply(BalanceEffect::Credit, d("100.00"), Decimal::ZERO)
            .unwrap();
        assert_eq!(
            b.apply(BalanceEffect::Lock, d("100.01"), Decimal::ZERO),
            Err(Overdraw)
        );
        // The fee is locked with the amount: 99.00 + 1.01 is more than 100.00.
        assert_eq!(
            b.apply(BalanceEffect::Lock, d("99.00"), d("1.01")),
            Err(Overdraw)
        );
        for path in [
            vec![crate::domain::Transition::Cancel],
            vec![
                crate::domain::Transition::Submit,
                crate::domain::Transition::Reject,
            ],
            vec![
                crate::domain::Transition::Submit,
                crate::domain::Transition::Settle,
            ],
            vec![
                crate::domain::Transition::Submit,
                crate::domain::Transition::Settle,
                crate::domain::Transition::Return,
            ],
        ] {
            for (fee, fee_back) in [("0.00", "0.00"), ("1.50", "1.50"), ("1.50", "0.00")] {
                let mut bal = b.apply(BalanceEffect::Lock, d("60.00"), d(fee)).unwrap();
                let mut st = WithdrawalStatus::Pending;
                assert!(bal.is_conserved());
                for t in &path {
                    st = st.apply(*t).unwrap();
                    let fee = if *t == crate::domain::Transition::Return {
                        fee_back
                    } else {
                        fee
                    };
                    bal = bal.apply(t.balance_effect(), d("60.00"), d(fee)).unwrap();
                    assert!(bal.is_conserved(), "{path:?} {fee}");
                }
                assert_eq!(bal.open_count, u32::from(st.is_open()));
                assert_eq!(bal.locked, Decimal::ZERO);
            }
        }
    }
}
