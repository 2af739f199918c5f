use super::{
    Amount, BalanceEffect, BatchId, Currency, Destination, FeeOnReturn, UserId, WithdrawalId,
};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::fmt;

/// Life of a withdrawal (a "burn"). Funds are locked while it is `Review`, `Pending` or
/// `Submitted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WithdrawalStatus {
    /// Above its currency's review threshold: held for an operator's approval, never claimed.
    Review,
    Pending,
    Submitted,
    Settled,
    Rejected,
    Cancelled,
    Returned,
}

impl WithdrawalStatus {
    pub const ALL: [WithdrawalStatus; 7] = [
        Self::Review,
        Self::Pending,
        Self::Submitted,
        Self::Settled,
        Self::Rejected,
        Self::Cancelled,
        Self::Returned,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Review => "REVIEW",
            Self::Pending => "PENDING",
            Self::Submitted => "SUBMITTED",
            Self::Settled => "SETTLED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
            Self::Returned => "RETURNED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Open withdrawals hold locked funds and count against the per-currency cap.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Review | Self::Pending | Self::Submitted)
    }

    pub fn apply(self, t: Transition) -> Result<Self, InvalidTransition> {
        if t.allowed_from().contains(&self) {
            Ok(t.to())
        } else {
            Err(InvalidTransition {
                from: self,
                transition: t,
            })
        }
    }

    pub fn submit(self) -> Result<Self, InvalidTransition> {
        self.apply(Transition::Submit)
    }
    pub fn settle(self) -> Result<Self, InvalidTransition> {
        self.apply(Transition::Settle)
    }
    pub fn reject(self) -> Result<Self, InvalidTransition> {
        self.apply(Transition::Reject)
    }
    pub fn cancel(self) -> Result<Self, InvalidTransition> {
        self.apply(Transition::Cancel)
    }
    pub fn mark_returned(self) -> Result<Self, InvalidTransition> {
        self.apply(Transition::Return)
    }
    pub fn approve(self) -> Result<Self, InvalidTransition> {
        self.apply(Transition::Approve)
    }
}

impl fmt::Display for WithdrawalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every allowed move of the state machine. Anything not listed here is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Claimed into a provider batch.
    Submit,
    /// The provider paid it.
    Settle,
    /// A definite failure (provider said no, or an operator rejected it before payout).
    Reject,
    /// The user withdrew the request before it was claimed.
    Cancel,
    /// The bank sent a settled payout back.
    Return,
    /// An operator released a withdrawal held for review to the batcher.
    Approve,
}

impl Transition {
    pub fn allowed_from(&self) -> &'static [WithdrawalStatus] {
        use WithdrawalStatus::*;
        match self {
            Self::Submit => &[Pending],
            Self::Settle => &[Submitted],
            Self::Reject => &[Review, Pending, Submitted],
            Self::Cancel => &[Review, Pending],
            Self::Return => &[Settled],
            Self::Approve => &[Review],
        }
    }

    pub fn to(&self) -> WithdrawalStatus {
        use WithdrawalStatus::*;
        match self {
            Self::Submit => Submitted,
            Self::Settle => Settled,
            Self::Reject => Rejected,
            Self::Cancel => Cancelled,
            Self::Return => Returned,
            Self::Approve => Pending,
        }
    }

    /// What the transition does to the owner's balance.
    pub fn balance_effect(&self) -> BalanceEffect {
        match self {
            // Funds stay locked: approval only makes the withdrawal claimable.
            Self::Submit | Self::Approve => BalanceEffect::None,
            Self::Settle => BalanceEffect::PayOut,
            Self::Reject | Self::Cancel => BalanceEffect::Unlock,
            Self::Return => BalanceEffect::Return,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition:?} a withdrawal that is {from}")]
pub struct InvalidTransition {
    pub from: WithdrawalStatus,
    pub transition: Transition,
}

/// A withdrawal as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Withdrawal {
    pub id: WithdrawalId,
    pub user_id: UserId,
    pub currency: Currency,
    /// What the provider pays (and the daily limit counts).
    pub amount: Amount,
    /// Charged on top of the amount, fixed when requested (zero when free, and for withdrawals
    /// recorded before fees): locked with the amount, the house's once paid.
    pub fee: Decimal,
    /// What a bank return does with the fee: the currency's policy when it was requested, fixed
    /// with the fee (a later change of the setting, or another process's, never alters it).
    pub fee_on_return: FeeOnReturn,
    /// The part of the fee a bank return gave back: `None` until returned.
    pub fee_returned: Option<Decimal>,
    pub destination: Destination,
    pub status: WithdrawalStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub batch_id: Option<BatchId>,
    pub provider_reference: Option<String>,
    pub failure_reason: Option<String>,
    /// Every state change, oldest first, written in the same conditional write as the change.
    pub audit: Vec<AuditEntry>,
    /// The UTC day whose daily-limit counter holds this amount: its creation day, when its
    /// currency had a daily limit then. A cancel or rejection gives the amount back to that
    /// day; `None` (no limit when created) gives nothing back, whatever the limit is now.
    pub limit_day: Option<NaiveDate>,
}

/// What writing a state change needs to know of a withdrawal: its key, the money it moves and
/// the state it is expected in. A batch member's entry carries all of it, so a settlement is
/// written without reading the withdrawal first; the write's condition checks the expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    pub id: WithdrawalId,
    pub user_id: UserId,
    pub currency: Currency,
    pub amount: Amount,
    pub fee: Decimal,
    pub fee_on_return: FeeOnReturn,
    pub status: WithdrawalStatus,
    pub batch_id: Option<BatchId>,
    pub limit_day: Option<NaiveDate>,
}

impl From<&Withdrawal> for Subject {
    fn from(w: &Withdrawal) -> Self {
        Self {
            id: w.id,
            user_id: w.user_id.clone(),
            currency: w.currency.clone(),
            amount: w.amount,
            fee: w.fee,
            fee_on_return: w.fee_on_return,
            status: w.status,
            batch_id: w.batch_id,
            limit_day: w.limit_day,
        }
    }
}

impl Subject {
    /// The fee `transition` moves with the amount: locked, given back, or charged with it, and
    /// on a bank return what the withdrawal's policy gives back (all of it, or none).
    pub fn fee_moved(&self, transition: Transition) -> Decimal {
        match (transition, self.fee_on_return) {
            (Transition::Return, FeeOnReturn::Keep) => Decimal::ZERO,
            _ => self.fee,
        }
    }
}

/// One line of a withdrawal's history.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub at: String,
    /// `None` for the creation.
    pub from: Option<WithdrawalStatus>,
    pub to: WithdrawalStatus,
    /// `user`, `batcher:<run>`, `webhook`, `operator`, `provider-status`…
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl serde::Serialize for WithdrawalStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Withdrawal {
    /// A fresh request, funds about to be locked: `Review` when its amount is above the
    /// currency's review threshold, else `Pending`.
    pub fn new(
        user_id: UserId,
        currency: Currency,
        amount: Amount,
        destination: Destination,
        now: DateTime<Utc>,
    ) -> Self {
        let status = if currency.needs_review(amount.value()) {
            WithdrawalStatus::Review
        } else {
            WithdrawalStatus::Pending
        };
        Self {
            id: WithdrawalId::new(),
            user_id,
            limit_day: currency.daily_limit().map(|_| now.date_naive()),
            fee: currency.fee_for(amount.value()),
            fee_on_return: currency.fee_on_return(),
            fee_returned: None,
            currency,
            amount,
            destination,
            status,
            created_at: now,
            updated_at: now,
            batch_id: None,
            provider_reference: None,
            failure_reason: None,
            audit: vec![AuditEntry {
                at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                from: None,
                to: status,
                by: "user".into(),
                event_id: None,
                reason: None,
            }],
        }
    }

    /// What the request locked: the amount and its fee.
    pub fn total(&self) -> Decimal {
        self.amount.value() + self.fee
    }

    /// Whether the provider's word (a callback, a status answer, whoever asked for it) ever
    /// moved this withdrawal out of SUBMITTED: every actor but an operator acting on a 404
    /// (`super::batch::OPERATOR_ACTOR`) speaks for the provider.
    pub fn provider_answered(&self) -> bool {
        self.audit.iter().any(|e| {
            e.from == Some(WithdrawalStatus::Submitted) && e.by != super::batch::OPERATOR_ACTOR
        })
    }
}

#[cfg(test)]
mod tests {
    use super::WithdrawalStatus::*;
    use super::*;

    #[test]
    fn allowed_transitions_follow_the_lifecycle() {
        assert_eq!(Pending.submit(), Ok(Submitted));
        assert_eq!(Submitted.settle(), Ok(Settled));
        assert_eq!(Submitted.reject(), Ok(Rejected));
        assert_eq!(Pending.reject(), Ok(Rejected));
        assert_eq!(Pending.cancel(), Ok(Cancelled));
        assert_eq!(Settled.mark_returned(), Ok(Returned));
        assert_eq!(Review.approve(), Ok(Pending));
        assert_eq!(Review.reject(), Ok(Rejected));
        assert_eq!(Review.cancel(), Ok(Cancelled));
    }

    #[test]
    fn every_other_transition_is_an_error() {
        let all = [
            Transition::Submit,
            Transition::Settle,
            Transition::Reject,
            Transition::Cancel,
            Transition::Return,
            Transition::Approve,
        ];
        let mut allowed = 0;
        for from in WithdrawalStatus::ALL {
            for t in all {
                match from.apply(t) {
                    Ok(to) => {
                        allowed += 1;
                        assert_eq!(to, t.to());
                    }
                    Err(e) => assert_eq!(e.from, from),
                }
            }
        }
        assert_eq!(allowed, 9, "exactly the nine lifecycle edges are allowed");
        // Final states never move except a settled payout coming back.
        for t in all {
            assert!(Rejected.apply(t).is_err());
            assert!(Cancelled.apply(t).is_err());
            assert!(Returned.apply(t).is_err());
        }
        assert!(
            Settled.reject().is_err(),
            "a paid withdrawal is never rejected"
        );
        assert!(
            Submitted.cancel().is_err(),
            "a claimed withdrawal cannot be cancelled"
        );
        assert!(
            Review.submit().is_err(),
            "a held withdrawal is never claimed before approval"
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in WithdrawalStatus::ALL {
            assert_eq!(WithdrawalStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(WithdrawalStatus::parse("pending"), None);
    }
}
