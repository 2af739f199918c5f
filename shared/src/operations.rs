//! Operator actions that change money state. Each check an action relies on is a condition in
//! the same transaction as its write, and the provider is asked before money comes back: a
//! human "I checked with the provider" is never enough.

use crate::domain::{BatchId, BatchStatus, Transition, Withdrawal, WithdrawalId, WithdrawalStatus};
use crate::provider::{ItemStatus, PayoutProvider, StatusOutcome};
use crate::settlement::{self, Applied, Outcome};
use crate::store::{BatchStore, DynamoStore, Store, StoreError, TransitionDetails};

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub const OPERATOR: &str = "operator";

/// Why a reject may go ahead, established before the write (and re-checked by it).
#[derive(Debug, Clone, PartialEq)]
pub enum RejectGround {
    /// Not yet claimed into a batch: the write is conditional on PENDING.
    Pending,
    /// In a NEEDS_OPERATOR batch the provider says it never recorded (404): the write is
    /// conditional on the batch still being NEEDS_OPERATOR, and marks it so it is never re-sent.
    NeverRecorded,
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
pub async fn plan_reject<P: PayoutProvider + ?Sized>(
    store: &DynamoStore,
    provider: &P,
    id: WithdrawalId,
) -> Result<RejectPlan, OperationError> {
    let w = store
        .find_withdrawal(id)
        .await?
        .ok_or_else(|| OperationError::Refused(format!("withdrawal {id} not found")))?;
    let ground = match w.status {
        WithdrawalStatus::Pending => RejectGround::Pending,
        WithdrawalStatus::Submitted => {
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
                StatusOutcome::NotFound if batch.status == BatchStatus::NeedsOperator => {
                    RejectGround::NeverRecorded
                }
                StatusOutcome::NotFound => {
                    return Err(OperationError::Refused(format!(
                        "batch {} is {}: the batcher still owns it (only NEEDS_OPERATOR batches \
                         may lose members)",
                        batch.id, batch.status
                    )))
                }
                StatusOutcome::Found(state) => {
                    let item = state.items.iter().find(|i| i.reference == w.id.to_string());
                    match item {
                        Some(item)
                            if item.status == ItemStatus::Failed
                                && !settlement::reported_mismatch(
                                    &w,
                                    Some(&item.amount),
                                    Some(&state.currency),
                                ) =>
                        {
                            RejectGround::FailedAtProvider {
                                reason: item.reason.clone().unwrap_or_else(|| "failed".into()),
                            }
                        }
                        Some(item) => {
                            return Err(OperationError::Refused(format!(
                                "the provider has batch {} and reports this item {:?} ({} {}): \
                                 not rejected",
                                batch.id, item.status, item.amount, state.currency
                            )))
                        }
                        None => {
                            return Err(OperationError::Refused(format!(
                                "the provider has batch {} but does not list this item: \
                                 not rejected; ask the provider",
                                batch.id
                            )))
                        }
                    }
                }
                StatusOutcome::Ambiguous { error } => {
                    return Err(OperationError::Refused(format!(
                        "the provider could not be asked ({error}): nothing changed; try again"
                    )))
                }
            }
        }
        other => {
            return Err(OperationError::Refused(format!(
                "withdrawal is {other}; only PENDING or SUBMITTED ones can be rejected"
            )))
        }
    };
    Ok(RejectPlan {
        withdrawal: w,
        ground,
    })
}

/// Writes a planned reject. Each ground's write carries its own condition, so whatever moved
/// since the plan (a `retry-batch`, a callback, another operator) makes it fail, not interleave.
pub async fn commit_reject(
    store: &DynamoStore,
    plan: &RejectPlan,
    reason: &str,
) -> Result<Withdrawal, OperationError> {
    let w = &plan.withdrawal;
    let mut details = TransitionDetails::by(OPERATOR);
    details.failure_reason = Some(reason.to_string());
    let refused = |e: StoreError| match e {
        StoreError::BatchChanged(why) => OperationError::Refused(format!(
            "batch changed while rejecting ({why}): nothing changed; look again"
        )),
        StoreError::StateChanged { .. } => OperationError::Refused(
            "the withdrawal changed while rejecting: nothing changed; look again".into(),
        ),
        e => OperationError::Store(e),
    };
    match &plan.ground {
        RejectGround::Pending => store
            .transition(w, Transition::Reject, details)
            .await
            .map_err(refused),
        RejectGround::NeverRecorded => store
            .reject_flagged_member(w, details)
            .await
            .map_err(refused),
        RejectGround::FailedAtProvider { reason: theirs } => {
            let outcome = Outcome::Failed {
                reason: format!("{reason} (provider: {theirs})"),
            };
            match settlement::apply(store, w, &outcome, OPERATOR, None).await? {
                Applied::Changed(updated) => Ok(*updated),
                other => Err(OperationError::Refused(format!("not applied: {other:?}"))),
            }
        }
    }
}

/// Rejects a withdrawal and returns its funds: while PENDING, or when the provider says its
/// batch was never recorded (and the batch waits for an operator) or the item failed.
pub async fn reject_withdrawal<P: PayoutProvider + ?Sized>(
    store: &DynamoStore,
    provider: &P,
    id: WithdrawalId,
    reason: &str,
) -> Result<Withdrawal, OperationError> {
    let plan = plan_reject(store, provider, id).await?;
    commit_reject(store, &plan, reason).await
}

/// Puts a flagged batch back in the batcher's hands: the next run asks the provider and
/// re-sends only if it never recorded the batch. Refused once an operator rejected one of its
/// members — in the same conditional write, so a concurrent reject cannot slip between.
pub async fn retry_batch(store: &DynamoStore, id: BatchId) -> Result<(), OperationError> {
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
    match store.reset_attempts(id, OPERATOR).await {
        Ok(()) => Ok(()),
        Err(StoreError::BatchChanged(_)) => Err(OperationError::Refused(
            "a member was rejected by an operator (or the batch moved on): this batch must not \
             be re-sent"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}
