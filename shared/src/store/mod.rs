//! Persistence port. The domain talks to [`Store`]; [`DynamoStore`] is the DynamoDB adapter.

mod dynamo;
mod schema;

pub use dynamo::{timestamp, DynamoStore, ScanReport};
pub use schema::TableSchema;

use crate::domain::{
    Amount, Balance, Currency, IdempotencyKey, Transition, UserId, Withdrawal, WithdrawalId,
    WithdrawalStatus,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("available balance is lower than the amount")]
    InsufficientFunds,
    #[error("too many open withdrawals in this currency")]
    TooManyOpen,
    #[error("the idempotency key is already used")]
    IdempotencyKeyTaken,
    #[error("withdrawal not found")]
    NotFound,
    /// The withdrawal was not in a state the transition starts from (someone else moved it first).
    #[error("withdrawal is {current:?}, not in a state this change applies to")]
    StateChanged { current: Option<WithdrawalStatus> },
    /// Throttled, conflicting or timed out after our retries: safe to try again later.
    #[error("the store is busy: {0}")]
    Unavailable(String),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Backend(String),
}

/// What a replayed request with the same `Idempotency-Key` gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub user_id: UserId,
    pub key: IdempotencyKey,
    /// Hash of the normalised request; a different body under the same key is refused.
    pub fingerprint: String,
    pub withdrawal_id: WithdrawalId,
    pub status_code: u16,
    pub response_body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<WithdrawalStatus>,
    pub limit: u32,
    /// Continue after this withdrawal (exclusive), newest first.
    pub after: Option<WithdrawalId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Withdrawal>,
    pub next: Option<WithdrawalId>,
}

/// Optional details a transition records on the withdrawal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransitionDetails {
    pub failure_reason: Option<String>,
    pub provider_reference: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Funds enter only here: available and credited grow together.
    async fn credit(
        &self,
        user: &UserId,
        currency: &Currency,
        amount: Amount,
    ) -> Result<Balance, StoreError>;

    /// One atomic write: lock the funds, record the pending withdrawal and, when given, the
    /// idempotency record. Nothing is written when any condition fails.
    async fn request_withdrawal(
        &self,
        withdrawal: &Withdrawal,
        idempotency: Option<&IdempotencyRecord>,
        max_open: u32,
    ) -> Result<(), StoreError>;

    async fn idempotency_record(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    async fn withdrawal(
        &self,
        user: &UserId,
        id: WithdrawalId,
    ) -> Result<Option<Withdrawal>, StoreError>;

    async fn list_withdrawals(&self, user: &UserId, query: &ListQuery) -> Result<Page, StoreError>;

    /// Moves a withdrawal along one edge of the state machine and applies the balance effect,
    /// atomically and conditional on its current status. Returns the updated withdrawal.
    async fn transition(
        &self,
        withdrawal: &Withdrawal,
        transition: Transition,
        details: TransitionDetails,
    ) -> Result<Withdrawal, StoreError>;

    async fn balances(&self, user: &UserId) -> Result<Vec<Balance>, StoreError>;
}
