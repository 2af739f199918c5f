//! Running a transaction: retries of what the SDK does not retry, SDK errors classified, and
//! cancellation reasons read by the name of the item each belongs to.

use super::DynamoStore;
use crate::domain::WithdrawalId;
use crate::store::Failure;
use crate::store::StoreError;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{CancellationReason, TransactWriteItem};
use std::time::Duration;

/// Attempts for a transaction that loses a race (TransactionConflict) or is throttled.
pub(super) const TX_ATTEMPTS: u32 = 8;

impl DynamoStore {
    /// Runs one transaction of named items, retrying what the SDK does not: cancellation because
    /// a concurrent transaction held one of the items (TransactionConflict). The client request
    /// token makes a retry after an ambiguous failure (timeout) idempotent on DynamoDB's side for
    /// ten minutes. A cancellation comes back as [`Refusals`], each reason under its item's name.
    pub(super) async fn transact<G: Copy + PartialEq>(
        &self,
        guarded: Vec<(G, TransactWriteItem)>,
        token: &str,
    ) -> Result<(), TxError<G>> {
        let (guards, items): (Vec<G>, Vec<TransactWriteItem>) = guarded.into_iter().unzip();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .client_request_token(token)
                .send()
                .await;
            let retry_reason = match result {
                Ok(_) => return Ok(()),
                Err(SdkError::ServiceError(se)) => match se.err() {
                    TransactWriteItemsError::TransactionCanceledException(e) => {
                        let reasons = e.cancellation_reasons().to_vec();
                        let code = |r: &CancellationReason| r.code().unwrap_or("None").to_string();
                        if reasons.iter().any(failed) {
                            // DynamoDB answers one reason per item, in the items' order: the
                            // only place that order is relied on.
                            let named = guards.iter().copied().zip(reasons).collect();
                            return Err(TxError::Cancelled(Refusals(named)));
                        }
                        let codes: Vec<String> =
                            reasons.iter().map(code).filter(|c| c != "None").collect();
                        let retryable = codes.iter().all(|c| {
                            matches!(
                                c.as_str(),
                                "TransactionConflict"
                                    | "ThrottlingError"
                                    | "ProvisionedThroughputExceeded"
                                    | "RequestLimitExceeded"
                            )
                        });
                        if !retryable {
                            return Err(TxError::Store(StoreError::Failed(Failure::Backend(
                                format!("transaction cancelled: {codes:?}"),
                            ))));
                        }
                        codes.join(",")
                    }
                    TransactWriteItemsError::TransactionInProgressException(_) => {
                        "TransactionInProgress".to_string()
                    }
                    TransactWriteItemsError::IdempotentParameterMismatchException(_) => {
                        return Err(TxError::Store(StoreError::Failed(Failure::Backend(
                            "client request token reused with other items".into(),
                        ))))
                    }
                    // Throttling and timeouts were already retried by the SDK's retry policy;
                    // retrying them again here would only multiply the wait.
                    _ => return Err(TxError::Store(classify(SdkError::ServiceError(se)))),
                },
                Err(other) => return Err(TxError::Store(classify(other))),
            };
            if attempt >= TX_ATTEMPTS {
                return Err(TxError::Store(StoreError::Failed(Failure::Unavailable(
                    retry_reason,
                ))));
            }
            tracing::debug!(attempt, reason = %retry_reason, "retrying transaction");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

/// The items of a transition's (or a claim's) transaction, so a cancellation is read by the name
/// of the item each reason belongs to, never by its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxGuard {
    /// The withdrawal's conditional status change (`#st = :from`).
    Withdrawal(WithdrawalId),
    Balance,
    DayCounter,
    /// A batch's counter shard (a settlement) or its base counter (a claim creating the batch).
    BatchCounter,
    /// The provider event's record (`attribute_not_exists`): a repeat delivery.
    Event,
    /// The batch record a claim writes (its lease or its creation).
    Batch,
}

/// Whether this item's condition is what cancelled the transaction.
fn failed(reason: &CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

pub(super) enum TxError<G> {
    /// An item's condition failed.
    Cancelled(Refusals<G>),
    Store(StoreError),
}

/// Why a transaction was cancelled: each reason beside the name of the item it belongs to.
#[derive(Debug)]
pub(super) struct Refusals<G>(Vec<(G, CancellationReason)>);

impl<G: Copy + PartialEq> Refusals<G> {
    /// The reason of the item named `guard` when that item's condition is what failed (with
    /// `ALL_OLD`, it carries the item as it was).
    pub(super) fn refused(&self, guard: G) -> Option<&CancellationReason> {
        self.0
            .iter()
            .find(|(g, r)| *g == guard && failed(r))
            .map(|(_, r)| r)
    }

    /// Every item whose condition failed.
    pub(super) fn refused_guards(&self) -> Vec<G> {
        self.0
            .iter()
            .filter(|(_, r)| failed(r))
            .map(|(g, _)| *g)
            .collect()
    }

    /// The reasons' codes, for messages.
    pub(super) fn codes(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(_, r)| r.code().unwrap_or("None"))
            .collect()
    }
}

/// Maps SDK failures to what callers can act on: transient ones become `Unavailable`.
pub(super) fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    err: SdkError<E, R>,
) -> StoreError {
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Failed(Failure::Unavailable(
                format!("{err:?}").chars().take(200).collect(),
            ))
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            match code.as_str() {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
                | "InternalServerError"
                | "ServiceUnavailable" => StoreError::Failed(Failure::Unavailable(code)),
                _ => StoreError::Failed(Failure::Backend(format!(
                    "{code}: {}",
                    se.err().message().unwrap_or_default()
                ))),
            }
        }
        _ => StoreError::Failed(Failure::Backend(
            format!("{err:?}").chars().take(200).collect(),
        )),
    }
}

pub(super) fn backoff(attempt: u32) -> Duration {
    // Full jitter: spreads retries of transactions that collided on the same balance.
    let cap_ms = (10u64 << attempt.min(6)).min(500);
    let jitter = (ulid::Ulid::new().random() as u64) % cap_ms.max(1);
    Duration::from_millis(5 + jitter)
}
