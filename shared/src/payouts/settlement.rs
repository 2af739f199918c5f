//! Applying the provider's final word on one withdrawal — from a webhook event or from the batch
//! status endpoint — as conditional transitions. Repeats are no-ops; contradictions are reported,
//! never applied.
//!
//! Provider events are deduplicated here and nowhere else: an event is recorded by the same
//! transaction as the change it makes, or on its own when it changes nothing, so every repeat
//! finds its record and is answered [`CallbackOutcome::Duplicate`].

use crate::domain::{
    Amount, BatchId, CallbackOutcome, Currency, Transition, Withdrawal, WithdrawalId,
    WithdrawalStatus,
};
use crate::store::{
    BatchStore, EventRecord, PayoutStore, Store, StoreError, TransitionDetails, Written,
};
use crate::store::{Failure, Refusal};

/// What the provider says became of one item — from a callback or its status endpoint: paid,
/// failed, or returned by the bank. Final words; a pending item is not one.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderWord {
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
pub fn reported_mismatch(
    ours: Amount,
    our_currency: &Currency,
    amount: Option<&str>,
    currency: Option<&str>,
) -> bool {
    currency.is_some_and(|c| c != our_currency.code().as_str())
        || amount.is_some_and(|a| Amount::parse(a, our_currency).ok() != Some(ours))
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
pub async fn apply<S: Store + ?Sized>(
    store: &S,
    w: &Withdrawal,
    outcome: &ProviderWord,
    actor: &str,
    event: Option<EventRef<'_>>,
) -> Result<Applied, StoreError> {
    let mut current = w.clone();
    for _ in 0..4 {
        let transition = match next_step(current.status, outcome) {
            Step::Done => return Ok(Applied::AlreadyDone(current.status)),
            Step::Conflict => return Ok(Applied::Conflict(current.status)),
            Step::Go(t) => t,
        };
        let details = details_for(outcome, transition, actor, event, current.id);
        match store.transition(&current, transition, details).await {
            Ok(updated) => {
                // A return that overtook its "paid" settles first, then returns.
                if matches!(outcome, ProviderWord::Returned { .. })
                    && transition == Transition::Settle
                {
                    current = updated;
                    continue;
                }
                return Ok(Applied::Changed(Box::new(updated)));
            }
            Err(StoreError::Refused(Refusal::StateChanged { .. })) => {
                current = store
                    .withdrawal(&current.user_id, current.id)
                    .await?
                    .ok_or(StoreError::Refused(Refusal::NotFound))?;
            }
            // The event's record exists (another delivery wrote it, with its change or alone):
            // the transaction changed nothing, and the provider is answered `duplicate`.
            Err(StoreError::Refused(Refusal::DuplicateEvent)) => return Ok(Applied::Duplicate),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Failed(Failure::Unavailable(format!(
        "withdrawal {} kept changing",
        w.id
    ))))
}

/// A provider event about one batch member, as the webhook parsed it.
#[derive(Debug, Clone)]
pub struct MemberEvent<'a> {
    pub event: EventRef<'a>,
    pub batch_id: BatchId,
    pub reference: WithdrawalId,
    /// The amount and currency the provider reports, checked against ours.
    pub amount: Option<&'a str>,
    pub currency: Option<&'a str>,
    pub outcome: ProviderWord,
}

/// What an event did, and the currency of its batch once that was found (for metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct EventResult {
    pub outcome: CallbackOutcome,
    pub currency: Option<String>,
}

/// Applies a provider event, in two requests in the common case: one read of the batch's
/// partition (the member's entry carries owner, amount and limit day; the counters say how
/// many members are final), and one transaction written for the state the event expects
/// ([`expected`]), conditioned on it and on the event's record not existing. A refusal hands
/// back the withdrawal as it is, and only then is the change re-evaluated ([`apply`]).
pub async fn apply_event<S: PayoutStore + ?Sized>(
    store: &S,
    e: &MemberEvent<'_>,
    actor: &str,
) -> Result<EventResult, StoreError> {
    match apply_member_event(store, e, actor).await {
        Ok(result) => Ok(result),
        // What failed may be reading what a repeat no longer needs (a batch whose currency was
        // removed, a throttled partition): a repeat is still answered `duplicate`, not 500.
        Err(err) => match store.event_recorded(e.event.id).await {
            Ok(true) => Ok(EventResult {
                outcome: CallbackOutcome::Duplicate,
                currency: None,
            }),
            _ => Err(err),
        },
    }
}

async fn apply_member_event<S: PayoutStore + ?Sized>(
    store: &S,
    e: &MemberEvent<'_>,
    actor: &str,
) -> Result<EventResult, StoreError> {
    let Some((batch, final_before)) = store.batch_with_final_count(e.batch_id).await? else {
        return record_unchanged(store, e, CallbackOutcome::UnknownWithdrawal, None).await;
    };
    let currency = Some(batch.currency.code().to_string());
    let Some(member) = batch.members.get(&e.reference) else {
        return record_unchanged(store, e, CallbackOutcome::UnknownWithdrawal, currency).await;
    };
    let (status, transition) = expected(&e.outcome);
    let applied = match batch.subject(e.reference, status) {
        Some(subject) => {
            if reported_mismatch(subject.amount, &subject.currency, e.amount, e.currency) {
                return record_unchanged(store, e, CallbackOutcome::Conflict, currency).await;
            }
            let details = details_for(&e.outcome, transition, actor, Some(e.event), e.reference);
            match store
                .write_transition(&subject, transition, details)
                .await?
            {
                Written::Changed => {
                    // Only the member that may be the last one final looks at closing the
                    // batch (members settling at once can all miss it: the batcher's next run
                    // closes what they left).
                    let counted = matches!(transition, Transition::Settle | Transition::Reject);
                    if counted && final_before + 1 >= batch.member_count() {
                        close_if_final(store, batch.id).await;
                    }
                    return Ok(EventResult {
                        outcome: CallbackOutcome::Applied,
                        currency,
                    });
                }
                Written::DuplicateEvent => Applied::Duplicate,
                Written::NotFound => {
                    return record_unchanged(store, e, CallbackOutcome::UnknownWithdrawal, currency)
                        .await
                }
                Written::NotAsExpected(w) => {
                    if reported_mismatch(w.amount, &w.currency, e.amount, e.currency) {
                        return record_unchanged(store, e, CallbackOutcome::Conflict, currency)
                            .await;
                    }
                    apply(store, &w, &e.outcome, actor, Some(e.event)).await?
                }
            }
        }
        None => {
            // An entry from before members carried their terms: the withdrawal is read.
            let Some(w) = store.withdrawal(&member.user_id, e.reference).await? else {
                return record_unchanged(store, e, CallbackOutcome::UnknownWithdrawal, currency)
                    .await;
            };
            if reported_mismatch(w.amount, &w.currency, e.amount, e.currency) {
                return record_unchanged(store, e, CallbackOutcome::Conflict, currency).await;
            }
            apply(store, &w, &e.outcome, actor, Some(e.event)).await?
        }
    };
    answer_applied(store, e, batch.id, applied, currency).await
}

/// The answer for an event applied through [`apply`] (the member's entry could not carry it):
/// a change may have made the batch final; anything else is recorded with the event.
async fn answer_applied<S: PayoutStore + ?Sized>(
    store: &S,
    e: &MemberEvent<'_>,
    batch_id: BatchId,
    applied: Applied,
    currency: Option<String>,
) -> Result<EventResult, StoreError> {
    let outcome = match applied {
        Applied::Changed(_) => {
            close_if_final(store, batch_id).await;
            return Ok(EventResult {
                outcome: CallbackOutcome::Applied,
                currency,
            });
        }
        Applied::Duplicate => {
            return Ok(EventResult {
                outcome: CallbackOutcome::Duplicate,
                currency,
            })
        }
        Applied::AlreadyDone(_) => CallbackOutcome::NoChange,
        Applied::Conflict(current) => {
            tracing::error!(withdrawal_id = %e.reference, %current, event_type = e.event.event_type, "conflicting provider event");
            CallbackOutcome::Conflict
        }
    };
    record_unchanged(store, e, outcome, currency).await
}

/// Closes the batch when every member is final. A shortcut only (the batcher's next run closes
/// what is left), so a failure is logged, never answered: the event's change is committed.
async fn close_if_final<S: BatchStore + ?Sized>(store: &S, id: BatchId) {
    if let Err(e) = store.complete_if_final(id).await {
        tracing::warn!(batch_id = %id, error = %e, "batch not closed; the next batcher run closes it");
    }
}

/// Records an event that changed nothing, so its repeats are recognised too.
async fn record_unchanged<S: Store + ?Sized>(
    store: &S,
    e: &MemberEvent<'_>,
    outcome: CallbackOutcome,
    currency: Option<String>,
) -> Result<EventResult, StoreError> {
    let record = EventRecord {
        event_id: e.event.id.to_string(),
        event_type: e.event.event_type.to_string(),
        reference: e.reference.to_string(),
        outcome,
    };
    let outcome = match store.record_event(&record).await {
        Ok(()) => outcome,
        Err(StoreError::Refused(Refusal::DuplicateEvent)) => CallbackOutcome::Duplicate,
        Err(err) => return Err(err),
    };
    Ok(EventResult { outcome, currency })
}

/// The transition details for one step towards `outcome`. A return that overtook its "paid"
/// settles first; only the step that completes the outcome records the event.
fn details_for(
    outcome: &ProviderWord,
    transition: Transition,
    actor: &str,
    event: Option<EventRef<'_>>,
    id: WithdrawalId,
) -> TransitionDetails {
    let completes =
        !(matches!(outcome, ProviderWord::Returned { .. }) && transition == Transition::Settle);
    let mut details = TransitionDetails::by(actor);
    details.event_id = event.map(|e| e.id.to_string());
    if completes {
        details.record_event = event.map(|e| EventRecord {
            event_id: e.id.to_string(),
            event_type: e.event_type.to_string(),
            reference: id.to_string(),
            outcome: CallbackOutcome::Applied,
        });
    }
    match (outcome, transition) {
        (ProviderWord::Paid { provider_reference }, _) => {
            details.provider_reference = provider_reference.clone();
        }
        (ProviderWord::Returned { .. }, Transition::Settle) => {}
        (ProviderWord::Failed { reason } | ProviderWord::Returned { reason }, _) => {
            details.failure_reason = Some(reason.clone());
        }
    }
    details
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Go(Transition),
    Done,
    Conflict,
}

/// The state an outcome most often finds its withdrawal in, and the step from there: a payment
/// or failure finds it submitted, a return finds it settled. A settlement is written for this
/// expectation without reading the withdrawal first.
fn expected(outcome: &ProviderWord) -> (WithdrawalStatus, Transition) {
    match outcome {
        ProviderWord::Paid { .. } => (WithdrawalStatus::Submitted, Transition::Settle),
        ProviderWord::Failed { .. } => (WithdrawalStatus::Submitted, Transition::Reject),
        ProviderWord::Returned { .. } => (WithdrawalStatus::Settled, Transition::Return),
    }
}

fn next_step(status: WithdrawalStatus, outcome: &ProviderWord) -> Step {
    use WithdrawalStatus::*;
    match (outcome, status) {
        (ProviderWord::Paid { .. }, Submitted) => Step::Go(Transition::Settle),
        (ProviderWord::Paid { .. }, Settled | Returned) => Step::Done,
        (ProviderWord::Failed { .. }, Submitted) => Step::Go(Transition::Reject),
        (ProviderWord::Failed { .. }, Rejected) => Step::Done,
        (ProviderWord::Returned { .. }, Submitted) => Step::Go(Transition::Settle),
        (ProviderWord::Returned { .. }, Settled) => Step::Go(Transition::Return),
        (ProviderWord::Returned { .. }, Returned) => Step::Done,
        _ => Step::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WithdrawalStatus::*;

    fn paid() -> ProviderWord {
        ProviderWord::Paid {
            provider_reference: None,
        }
    }
    fn failed() -> ProviderWord {
        ProviderWord::Failed { reason: "x".into() }
    }
    fn returned() -> ProviderWord {
        ProviderWord::Returned { reason: "x".into() }
    }

    #[test]
    fn next_step_for_every_outcome_and_status() {
        use Step::*;
        let table = [
            // A provider's word for a withdrawal it was never sent is a conflict.
            (paid(), Review, Conflict),
            (paid(), Pending, Conflict),
            (paid(), Submitted, Go(Transition::Settle)),
            (paid(), Settled, Done),
            (paid(), Rejected, Conflict),
            (paid(), Cancelled, Conflict),
            // Paid, then the bank sent it back: the "paid" is already reflected.
            (paid(), Returned, Done),
            (failed(), Review, Conflict),
            (failed(), Pending, Conflict),
            (failed(), Submitted, Go(Transition::Reject)),
            (failed(), Settled, Conflict),
            (failed(), Rejected, Done),
            (failed(), Cancelled, Conflict),
            (failed(), Returned, Conflict),
            (returned(), Review, Conflict),
            (returned(), Pending, Conflict),
            // A return that overtook its "paid": settle first, then return.
            (returned(), Submitted, Go(Transition::Settle)),
            (returned(), Settled, Go(Transition::Return)),
            (returned(), Rejected, Conflict),
            (returned(), Cancelled, Conflict),
            (returned(), Returned, Done),
        ];
        assert_eq!(table.len(), 3 * WithdrawalStatus::ALL.len());
        for (outcome, status, want) in table {
            assert_eq!(next_step(status, &outcome), want, "{outcome:?} on {status}");
        }
    }

    #[test]
    fn the_expected_state_is_one_next_step_goes_from() {
        for outcome in [paid(), failed(), returned()] {
            let (status, transition) = expected(&outcome);
            assert_eq!(next_step(status, &outcome), Step::Go(transition));
        }
    }

    #[test]
    fn only_the_step_that_completes_an_outcome_records_its_event() {
        let event = EventRef {
            id: "evt_1",
            event_type: "payout.returned",
        };
        let id = WithdrawalId::new();
        let first = details_for(&returned(), Transition::Settle, "webhook", Some(event), id);
        assert_eq!(first.record_event, None);
        assert_eq!(first.failure_reason, None);
        let last = details_for(&returned(), Transition::Return, "webhook", Some(event), id);
        let record = last.record_event.expect("recorded");
        assert_eq!(record.outcome, CallbackOutcome::Applied);
        assert_eq!(record.reference, id.to_string());
        assert_eq!(last.failure_reason.as_deref(), Some("x"));
        let paid = details_for(
            &ProviderWord::Paid {
                provider_reference: Some("p1".into()),
            },
            Transition::Settle,
            "webhook",
            Some(event),
            id,
        );
        assert_eq!(paid.provider_reference.as_deref(), Some("p1"));
        assert!(paid.record_event.is_some());
    }
}
