//! Applying the provider's final word on one withdrawal — from a webhook event or from the batch
//! status endpoint — as conditional transitions. Repeats are no-ops; contradictions are reported,
//! never applied.

use crate::domain::{Amount, Transition, Withdrawal, WithdrawalStatus};
use crate::store::{EventRecord, Store, StoreError, TransitionDetails};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Paid {
        provider_reference: Option<String>,
    },
    Failed {
        reason: String,
    },
    /// The bank sent a paid-out amount back.
    Returned {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The withdrawal moved; the new state.
    Changed(Box<Withdrawal>),
    /// It already was where the outcome puts it: nothing to do.
    AlreadyDone(WithdrawalStatus),
    /// The outcome contradicts what we know (paid after failed, failed after paid, …).
    Conflict(WithdrawalStatus),
    /// The event was already recorded as processed.
    Duplicate,
}

/// Whether what the provider reports for a withdrawal (from a webhook or the status endpoint)
/// contradicts ours: another currency, or an amount that is not exactly ours as a plain decimal
/// in the currency's scale (one that only rounds to ours is a conflict, not a match). Nothing is
/// applied on a mismatch — it is a conflict for an operator.
pub fn reported_mismatch(w: &Withdrawal, amount: Option<&str>, currency: Option<&str>) -> bool {
    currency.is_some_and(|c| c != w.currency.code().as_str())
        || amount.is_some_and(|a| Amount::parse(a, &w.currency).ok() != Some(w.amount))
}

/// The provider event an outcome came from.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
}

/// Applies `outcome` to `w`. A concurrent change is re-read and re-evaluated, so two deliveries
/// of the same event racing each other end with one change and one `AlreadyDone`/`Duplicate`.
/// With an `event`, the change that completes the outcome also records the event, atomically.
pub async fn apply(
    store: &dyn Store,
    w: &Withdrawal,
    outcome: &Outcome,
    actor: &str,
    event: Option<EventRef<'_>>,
) -> Result<Applied, StoreError> {
    let mut current = w.clone();
    for _ in 0..4 {
        let step = next_step(current.status, outcome);
        let transition = match step {
            Step::Done => return Ok(Applied::AlreadyDone(current.status)),
            Step::Conflict => return Ok(Applied::Conflict(current.status)),
            Step::Go(t) => t,
        };
        // A return that overtook its "paid" settles first; only the last step completes it.
        let completes =
            !(matches!(outcome, Outcome::Returned { .. }) && transition == Transition::Settle);
        let mut details = TransitionDetails::by(actor);
        details.event_id = event.map(|e| e.id.to_string());
        if completes {
            details.record_event = event.map(|e| EventRecord {
                event_id: e.id.to_string(),
                event_type: e.event_type.to_string(),
                reference: current.id.to_string(),
                outcome: "applied".into(),
            });
        }
        match (outcome, transition) {
            (Outcome::Paid { provider_reference }, _) => {
                details.provider_reference = provider_reference.clone();
            }
            (Outcome::Returned { .. }, Transition::Settle) => {}
            (Outcome::Failed { reason } | Outcome::Returned { reason }, _) => {
                details.failure_reason = Some(reason.clone());
            }
        }
        match store.transition(&current, transition, details).await {
            Ok(updated) => {
                // A return that overtook its "paid" settles first, then returns.
                if matches!(outcome, Outcome::Returned { .. }) && transition == Transition::Settle {
                    current = updated;
                    continue;
                }
                return Ok(Applied::Changed(Box::new(updated)));
            }
            Err(StoreError::StateChanged { .. }) => {
                current = store
                    .withdrawal(&current.user_id, current.id)
                    .await?
                    .ok_or(StoreError::NotFound)?;
            }
            // Another delivery of this event recorded it after our caller's duplicate check
            // (the transaction changed nothing): the provider is answered `duplicate`, not 500.
            Err(StoreError::DuplicateEvent) => return Ok(Applied::Duplicate),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "withdrawal {} kept changing",
        w.id
    )))
}

enum Step {
    Go(Transition),
    Done,
    Conflict,
}

fn next_step(status: WithdrawalStatus, outcome: &Outcome) -> Step {
    use WithdrawalStatus::*;
    match (outcome, status) {
        (Outcome::Paid { .. }, Submitted) => Step::Go(Transition::Settle),
        (Outcome::Paid { .. }, Settled | Returned) => Step::Done,
        (Outcome::Failed { .. }, Submitted) => Step::Go(Transition::Reject),
        (Outcome::Failed { .. }, Rejected) => Step::Done,
        (Outcome::Returned { .. }, Submitted) => Step::Go(Transition::Settle),
        (Outcome::Returned { .. }, Settled) => Step::Go(Transition::Return),
        (Outcome::Returned { .. }, Returned) => Step::Done,
        _ => Step::Conflict,
    }
}
