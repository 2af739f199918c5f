//! Operator actions that change money state: each is a guarded, audited transition.

use crate::domain::{BatchId, BatchStatus, Transition, Withdrawal, WithdrawalId, WithdrawalStatus};
use crate::store::{BatchStore, DynamoStore, Store, StoreError, TransitionDetails};

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub const OPERATOR: &str = "operator";

fn rejected_by_operator(w: &Withdrawal) -> bool {
    w.audit
        .iter()
        .any(|e| e.to == WithdrawalStatus::Rejected && e.by.starts_with(OPERATOR))
}

/// Rejects a withdrawal and returns its funds: only while PENDING, or while its batch is flagged
/// for an operator (who has confirmed with the provider that it was not paid).
pub async fn reject_withdrawal(
    store: &DynamoStore,
    id: WithdrawalId,
    reason: &str,
) -> Result<Withdrawal, OperationError> {
    let w = store
        .find_withdrawal(id)
        .await?
        .ok_or_else(|| OperationError::Refused(format!("withdrawal {id} not found")))?;
    match w.status {
        WithdrawalStatus::Pending => {}
        WithdrawalStatus::Submitted => {
            let batch = match w.batch_id {
                Some(b) => store.batch(b).await?,
                None => None,
            };
            if batch.map(|b| b.status) != Some(BatchStatus::NeedsOperator) {
                return Err(OperationError::Refused(
                    "a submitted withdrawal can only be rejected when its batch needs an operator"
                        .into(),
                ));
            }
        }
        other => {
            return Err(OperationError::Refused(format!(
                "withdrawal is {other}; only PENDING or flagged ones can be rejected"
            )))
        }
    }
    let mut details = TransitionDetails::by(OPERATOR);
    details.failure_reason = Some(reason.to_string());
    Ok(store.transition(&w, Transition::Reject, details).await?)
}

/// Puts a flagged batch back in the batcher's hands (the next run re-sends it with the same
/// idempotency key). Refused once an operator rejected one of its members: re-sending the same
/// request would then pay a withdrawal whose funds were returned.
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
    if let Some(w) = store
        .members(&batch)
        .await?
        .iter()
        .find(|w| rejected_by_operator(w))
    {
        return Err(OperationError::Refused(format!(
            "member {} was rejected by an operator; this batch must not be re-sent",
            w.id
        )));
    }
    store.reset_attempts(id).await?;
    Ok(())
}
