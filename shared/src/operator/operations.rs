//! Operator actions that change money state. Each check an action relies on is a condition in
//! the same transaction as its write, and the provider is asked before money comes back: a
//! human "I checked with the provider" is never enough.

use crate::domain::{
    provider_evidence, Batch, BatchId, BatchStatus, Transition, Withdrawal, WithdrawalId,
    WithdrawalStatus, OPERATOR_ACTOR, PROVIDER_STATUS_ACTOR,
};
use crate::payouts::provider::{BatchState, ItemStatus, PayoutProvider, StatusOutcome};
use crate::payouts::settlement::{self, Applied, ProviderWord};
use crate::store::{AdminStore, PayoutStore, Refusal, StoreError, TransitionDetails};
use chrono::{DateTime, Utc};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The actor of an operator's own decision (a reject on a 404, a retry): the one actor whose
/// entries are no evidence of the provider's word (`Withdrawal::provider_answered`).
pub const OPERATOR: &str = OPERATOR_ACTOR;

/// How long after a batch's last send attempt a 404 from the provider counts as "never
/// recorded": a provider working through a backlog may still record a request it received
/// before. Operators reject on a 404 only after this.
pub const SEND_QUIET_PERIOD: Duration = Duration::from_secs(15 * 60);

/// Why a reject may go ahead, established before the write (and re-checked by it).
#[derive(Debug, Clone, PartialEq)]
pub enum RejectGround {
    /// Not yet claimed into a batch (PENDING, or held in REVIEW): the write is conditional
    /// on that status.
    Unclaimed,
    /// In a NEEDS_OPERATOR batch the provider never accepted and now says it never recorded
    /// (404), with no send attempt for the quiet period: the write is conditional on all of
    /// that still holding, and marks the batch so it is never re-sent.
    NeverRecorded { quiet_before: DateTime<Utc> },
    /// The provider reports the item failed: applied as that failure, under the webhook's rules.
    FailedAtProvider { reason: String },
}

/// A reject that passed its checks, not yet written.
#[derive(Debug, Clone)]
pub struct RejectPlan {
    pub withdrawal: Withdrawal,
    pub ground: RejectGround,
}

/// Checks whether a withdrawal may be rejected, asking the provider for a submitted one.
/// Refuses with what the provider said when it has (or may have) the payout.
pub async fn plan_reject<S, P>(
    store: &S,
    provider: &P,
    id: WithdrawalId,
    quiet: Duration,
) -> Result<RejectPlan, OperationError>
where
    S: AdminStore + ?Sized,
    P: PayoutProvider + ?Sized,
{
    let w = existing(store, id).await?;
    let ground = match w.status {
        WithdrawalStatus::Review | WithdrawalStatus::Pending => RejectGround::Unclaimed,
        WithdrawalStatus::Submitted => submitted_ground(store, provider, &w, quiet).await?,
        other => {
            return Err(OperationError::Refused(format!(
                "withdrawal is {other}; only REVIEW, PENDING or SUBMITTED ones can be rejected"
            )))
        }
    };
    Ok(RejectPlan {
        withdrawal: w,
        ground,
    })
}

/// The ground for rejecting a SUBMITTED withdrawal: only what the provider answers for its
/// batch now, weighed against everything it said before, can give one.
async fn submitted_ground<S, P>(
    store: &S,
    provider: &P,
    w: &Withdrawal,
    quiet: Duration,
) -> Result<RejectGround, OperationError>
where
    S: PayoutStore + ?Sized,
    P: PayoutProvider + ?Sized,
{
    let batch = match w.batch_id {
        Some(b) => store.batch(b).await?,
        None => None,
    };
    let Some(batch) = batch else {
        return Err(OperationError::Refused(
            "a submitted withdrawal without its batch record: investigate".into(),
        ));
    };
    match provider.batch_status(batch.id).await {
        StatusOutcome::NotFound => not_found_ground(store, &batch, quiet).await,
        StatusOutcome::Found(state) => {
            // Kept before anything is decided on it, whatever is decided: from now on no 404
            // for this batch reads as "never recorded".
            if !batch.provider_has_it() {
                store
                    .record_found(&batch, &state.provider_batch_id, PROVIDER_STATUS_ACTOR)
                    .await?;
            }
            found_ground(w, &batch, &state)
        }
        StatusOutcome::Ambiguous { error } => Err(OperationError::Refused(format!(
            "the provider could not be asked ({error}): nothing changed; try again"
        ))),
    }
}

/// The provider answers 404 for the batch: a ground only when it never showed it holds the
/// batch, nothing was sent for the quiet period, and the batch waits for an operator.
async fn not_found_ground<S: PayoutStore + ?Sized>(
    store: &S,
    batch: &Batch,
    quiet: Duration,
) -> Result<RejectGround, OperationError> {
    let quiet_before = Utc::now() - chrono::Duration::from_std(quiet).unwrap_or_default();
    if batch.provider_has_it() {
        return Err(OperationError::Refused(format!(
            "the provider showed it holds batch {} ({}) and now answers 404: that contradicts \
             its own word, so nothing is returned; ask the provider to report the items (a \
             `failed` item can then be rejected)",
            batch.id,
            batch.provider_batch_id.as_deref().unwrap_or("?")
        )));
    }
    if let Some(sent) = batch.last_attempt_at.filter(|t| *t >= quiet_before) {
        return Err(OperationError::Refused(format!(
            "batch {} was sent at {}: a queued request may still be recorded; reject after {} \
             minutes without a send",
            batch.id,
            sent.to_rfc3339(),
            quiet.as_secs() / 60
        )));
    }
    if batch.status != BatchStatus::NeedsOperator {
        return Err(OperationError::Refused(format!(
            "batch {} is {}: the batcher still owns it (only NEEDS_OPERATOR batches may lose \
             members)",
            batch.id, batch.status
        )));
    }
    // Any earlier word of the provider (a member it answered for) proves it recorded the
    // batch: its 404 is then no evidence that this one was never paid.
    let members = store.members(batch).await?;
    if let Some(why) = provider_evidence(batch, &members) {
        return Err(OperationError::Refused(format!(
            "{why}, yet it answers 404 for batch {}: it recorded it, so nothing is returned; \
             ask the provider to report the items",
            batch.id
        )));
    }
    Ok(RejectGround::NeverRecorded { quiet_before })
}

/// The provider holds the batch: a ground only when it reports this item failed, for our
/// amount and currency.
fn found_ground(
    w: &Withdrawal,
    batch: &Batch,
    state: &BatchState,
) -> Result<RejectGround, OperationError> {
    let item = state.items.iter().find(|i| i.reference == w.id.to_string());
    match item {
        Some(item)
            if item.status == ItemStatus::Failed
                && !settlement::reported_mismatch(
                    w.amount,
                    &w.currency,
                    Some(&item.amount),
                    Some(&state.currency),
                ) =>
        {
            Ok(RejectGround::FailedAtProvider {
                reason: item.reason.clone().unwrap_or_else(|| "failed".into()),
            })
        }
        Some(item) => Err(OperationError::Refused(format!(
            "the provider has batch {} and reports this item {:?} ({} {}): not rejected",
            batch.id, item.status, item.amount, state.currency
        ))),
        None => Err(OperationError::Refused(format!(
            "the provider has batch {} but does not list this item: not rejected; ask the \
             provider",
            batch.id
        ))),
    }
}

/// Writes a planned reject. Each ground's write carries its own condition, so whatever moved
/// since the plan (a `retry-batch`, a callback, another operator) makes it fail, not interleave.
pub async fn commit_reject<S: PayoutStore + ?Sized>(
    store: &S,
    plan: &RejectPlan,
    reason: &str,
) -> Result<Withdrawal, OperationError> {
    let w = &plan.withdrawal;
    let mut details = TransitionDetails::by(OPERATOR);
    details.failure_reason = Some(reason.to_string());
    let refused = |e: StoreError| match e {
        StoreError::Refused(Refusal::BatchChanged(why)) => OperationError::Refused(format!(
            "batch changed while rejecting ({why}): nothing changed; look again"
        )),
        StoreError::Refused(Refusal::StateChanged { .. }) => OperationError::Refused(
            "the withdrawal changed while rejecting: nothing changed; look again".into(),
        ),
        e => OperationError::Store(e),
    };
    match &plan.ground {
        RejectGround::Unclaimed => store
            .transition(w, Transition::Reject, details)
            .await
            .map_err(refused),
        RejectGround::NeverRecorded { quiet_before } => store
            .reject_flagged_member(w, details, *quiet_before)
            .await
            .map_err(refused),
        RejectGround::FailedAtProvider { reason: theirs } => {
            let outcome = ProviderWord::Failed {
                reason: format!("{reason} (provider: {theirs})"),
            };
            // The provider's word, applied on an operator's request: its actor says so, so it
            // counts as the provider's answer for this member (evidence for its siblings).
            match settlement::apply(store, w, &outcome, PROVIDER_STATUS_ACTOR, None).await? {
                Applied::Changed(updated) => Ok(*updated),
                other => Err(OperationError::Refused(format!("not applied: {other:?}"))),
            }
        }
    }
}

/// Rejects a withdrawal and returns its funds: while held in REVIEW or PENDING, or when the provider says its
/// batch was never recorded (and the batch waits for an operator) or the item failed.
pub async fn reject_withdrawal<S, P>(
    store: &S,
    provider: &P,
    id: WithdrawalId,
    reason: &str,
    quiet: Duration,
) -> Result<Withdrawal, OperationError>
where
    S: AdminStore + ?Sized,
    P: PayoutProvider + ?Sized,
{
    let plan = plan_reject(store, provider, id, quiet).await?;
    commit_reject(store, &plan, reason).await
}

/// The withdrawal an operator names, or a refusal saying it does not exist.
async fn existing<S: AdminStore + ?Sized>(
    store: &S,
    id: WithdrawalId,
) -> Result<Withdrawal, OperationError> {
    store
        .find_withdrawal(id)
        .await?
        .ok_or_else(|| OperationError::Refused(format!("withdrawal {id} not found")))
}

/// Releases a withdrawal held for review to the batcher: REVIEW → PENDING, conditional on
/// REVIEW in the same write (a cancel or another operator's decision first makes it fail),
/// with `by` in its audit trail. Its funds stay locked; the next batcher run claims it.
pub async fn approve_withdrawal<S: AdminStore + ?Sized>(
    store: &S,
    id: WithdrawalId,
    by: &str,
) -> Result<Withdrawal, OperationError> {
    let w = existing(store, id).await?;
    if w.status != WithdrawalStatus::Review {
        return Err(OperationError::Refused(format!(
            "withdrawal is {}; only REVIEW ones are approved",
            w.status
        )));
    }
    match store
        .transition(&w, Transition::Approve, TransitionDetails::by(by))
        .await
    {
        Ok(approved) => Ok(approved),
        Err(StoreError::Refused(Refusal::StateChanged { current })) => {
            Err(OperationError::Refused(format!(
                "the withdrawal changed while approving (now {}): nothing changed; look again",
                current.map_or("unknown".to_string(), |s| s.to_string())
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Puts a flagged batch back in the batcher's hands: one the provider never accepted goes back
/// to OPEN (the next run asks the provider and re-sends only on its 404); one it accepted goes
/// back to ACCEPTED, to be looked up again and never sent. Refused once an operator rejected one of its
/// members — in the same conditional write, so a concurrent reject cannot slip between.
pub async fn retry_batch<S: PayoutStore + ?Sized>(
    store: &S,
    id: BatchId,
) -> Result<(), OperationError> {
    let batch = store
        .batch(id)
        .await?
        .ok_or_else(|| OperationError::Refused(format!("batch {id} not found")))?;
    if batch.status != BatchStatus::NeedsOperator {
        return Err(OperationError::Refused(format!(
            "batch is {}; only NEEDS_OPERATOR batches are retried",
            batch.status
        )));
    }
    match store.reset_attempts(&batch, OPERATOR).await {
        Ok(()) => Ok(()),
        Err(StoreError::Refused(Refusal::BatchChanged(_))) => Err(OperationError::Refused(
            "the batch changed meanwhile: a member was rejected by an operator (it must never \
             be re-sent), the provider's answer moved it on, or it was found at the provider; \
             look again"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}
