use super::Currency;
use rust_decimal::Decimal;

/// One user's funds in one currency.
///
/// `available + locked + paid_out == credited` always holds: money only enters through a credit,
/// and every other movement shifts it between the three buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Balance {
    pub currency: Currency,
    pub available: Decimal,
    pub locked: Decimal,
    pub paid_out: Decimal,
    pub credited: Decimal,
    /// Withdrawals currently holding locked funds (PENDING or SUBMITTED).
    pub open_count: u32,
}

/// How money moves between a balance's buckets. The store applies these as conditional
/// update expressions; [`Balance::apply`] is the same arithmetic for checking and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceEffect {
    /// Funds enter: available and credited grow.
    Credit,
    /// A withdrawal is requested: available → locked (needs available ≥ amount).
    Lock,
    /// It ends without payout: locked → available.
    Unlock,
    /// It is paid: locked → paid out.
    PayOut,
    /// The bank returned a payout: paid out → available.
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
            credited: Decimal::ZERO,
            open_count: 0,
        }
    }

    pub fn is_conserved(&self) -> bool {
        self.available + self.locked + self.paid_out == self.credited
            && self.available >= Decimal::ZERO
            && self.locked >= Decimal::ZERO
            && self.paid_out >= Decimal::ZERO
    }

    pub fn apply(&self, effect: BalanceEffect, amount: Decimal) -> Result<Balance, Overdraw> {
        let mut b = self.clone();
        let take = |from: &mut Decimal| {
            if *from < amount {
                Err(Overdraw)
            } else {
                *from -= amount;
                Ok(())
            }
        };
        match effect {
            BalanceEffect::Credit => {
                b.available += amount;
                b.credited += amount;
            }
            BalanceEffect::Lock => {
                take(&mut b.available)?;
                b.locked += amount;
                b.open_count += 1;
            }
            BalanceEffect::Unlock => {
                take(&mut b.locked)?;
                b.available += amount;
                b.open_count = b.open_count.saturating_sub(1);
            }
            BalanceEffect::PayOut => {
                take(&mut b.locked)?;
                b.paid_out += amount;
                b.open_count = b.open_count.saturating_sub(1);
            }
            BalanceEffect::Return => {
                take(&mut b.paid_out)?;
                b.available += amount;
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
            .apply(BalanceEffect::Credit, d("100.00"))
            .unwrap();
        assert_eq!(b.apply(BalanceEffect::Lock, d("100.01")), Err(Overdraw));
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
            let mut bal = b.apply(BalanceEffect::Lock, d("60.00")).unwrap();
            let mut st = WithdrawalStatus::Pending;
            assert!(bal.is_conserved());
            for t in &path {
                st = st.apply(*t).unwrap();
                bal = bal.apply(t.balance_effect(), d("60.00")).unwrap();
                assert!(bal.is_conserved(), "{path:?}");
            }
            assert_eq!(bal.open_count, u32::from(st.is_open()));
            assert_eq!(bal.locked, Decimal::ZERO);
        }
    }
}
