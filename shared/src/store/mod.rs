//! Persistence port. The domain talks to [`Store`]; [`DynamoStore`] is the DynamoDB adapter.

mod dynamo;
mod schema;

pub use dynamo::{decode_stored_item, stored_status, DynamoStore, ScanReport, StoredItem};
pub use schema::{
    TableSchema, BENEFICIARY_TYPE, CONTROL_TYPE, CREDIT_TYPE, MAX_BATCH_MEMBERS, TYPE_ATTRIBUTE,
    WITHDRAWAL_TYPE,
};

use crate::domain::{
    Amount, Balance, BankAccount, Batch, BatchId, BatchStatus, Beneficiary, BeneficiaryId,
    CallbackOutcome, Control, ControlChange, ControlSubject, CreditReference, Currency,
    CurrencyCode, IdempotencyKey, Subject, Transition, UserId, Withdrawal, WithdrawalId,
    WithdrawalStatus,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// What can go wrong with a store call, split by what the caller should do next: a
/// [`Refusal`] is the store's business answer (the same request gets it again: report it, do
/// not retry it); a [`Failure`] is the store not answering, and [`Failure::retryable`] says
/// whether trying again later can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Failed(#[from] Failure),
}

impl StoreError {
    /// Whether the same call may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Failed(failure) if failure.retryable())
    }
}

/// The store's answer "no": a condition of the write did not hold. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("available balance is lower than the amount")]
    InsufficientFunds,
    /// The user already has the currency's maximum of open (PENDING or SUBMITTED) withdrawals:
    /// the API's stable code `too_many_pending` names it.
    #[error("too many open withdrawals in this currency")]
    TooManyPending,
    /// The request would take the day's total over the currency's daily limit. The message
    /// says the limit and what is left of it today.
    #[error("{0}")]
    DailyLimitExceeded(String),
    /// With the first request's record when DynamoDB handed it back with the cancellation
    /// (`ALL_OLD`): a replay then costs one round trip.
    #[error("the idempotency key is already used")]
    IdempotencyKeyTaken(Option<Box<IdempotencyRecord>>),
    /// The credit reference was already used for another user, currency or amount.
    #[error("credit reference already used: {0}")]
    ReferenceReused(String),
    #[error("withdrawal not found")]
    NotFound,
    /// The provider event was already recorded: this delivery is a repeat.
    #[error("event already processed")]
    DuplicateEvent,
    /// Another run took over the batch this run was working on.
    #[error("the batch lease was lost")]
    LeaseLost,
    /// The batch was no longer in the state an operator action was conditioned on (another
    /// operator or run moved it first).
    #[error("the batch changed: {0}")]
    BatchChanged(String),
    /// The withdrawal was not in a state the transition starts from (someone else moved it first).
    #[error("withdrawal is {current:?}, not in a state this change applies to")]
    StateChanged { current: Option<WithdrawalStatus> },
    /// An operator blocked this user's withdrawals (`operator block-user`).
    #[error("withdrawals are blocked for this user")]
    UserBlocked,
    /// An operator paused this currency's withdrawals (`operator pause`).
    #[error("withdrawals of this currency are paused")]
    CurrencyPaused,
    /// The switch is already as asked (paused, resumed, blocked, unblocked): nothing written.
    #[error("{0} is already so")]
    ControlUnchanged(String),
    /// The caller has no beneficiary of that id (another user's is the same: it lives under
    /// its owner's key, where the caller's check cannot find it).
    #[error("no such beneficiary")]
    UnknownBeneficiary,
    #[error("the beneficiary was removed")]
    BeneficiaryRemoved,
    /// Added too recently: usable from the instant given (RFC 3339).
    #[error("the beneficiary can be used from {usable_from}")]
    BeneficiaryCoolingOff { usable_from: String },
    /// The user already has the configured maximum of beneficiaries.
    #[error("at most {0} beneficiaries")]
    TooManyBeneficiaries(u32),
}

/// The store did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Throttled, conflicting or timed out after our retries: safe to try again later.
    #[error("the store is busy: {0}")]
    Unavailable(String),
    /// An item does not decode into the domain: retrying reads the same item.
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// Any other error from the backend (a permission, a malformed request): a defect or a
    /// misconfiguration, not fixed by retrying.
    #[error("store error: {0}")]
    Backend(String),
}

impl Failure {
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// What a replayed request with the same `Idempotency-Key` gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub user_id: UserId,
    pub key: IdempotencyKey,
    /// Hash of the normalised request; a different body under the same key is refused.
    pub fingerprint: String,
    /// What the first request made.
    pub resource: Resource,
    pub status_code: u16,
    pub response_body: String,
    pub created_at: DateTime<Utc>,
}

/// What a request under an idempotency key created. One key space per user for both: a key
/// reused on the other route is another request (its fingerprint differs), refused as reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Withdrawal(WithdrawalId),
    Beneficiary(BeneficiaryId),
}

/// One credit, as recorded under its reference. The record is the credit's audit entry: who
/// credited what to whom, when, under which reference.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditRecord {
    pub reference: CreditReference,
    pub user_id: UserId,
    pub currency: Currency,
    pub amount: Amount,
    /// Who credited: `operator`, or the caller's ARN for the credit API.
    pub actor: String,
    /// The caller's words for it (the credit API's optional `description`).
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl CreditRecord {
    /// A credit made now (to the millisecond, as it is stored, so the record returned by a
    /// replay equals the one recorded).
    pub fn new(
        reference: CreditReference,
        user_id: UserId,
        currency: Currency,
        amount: Amount,
        actor: impl Into<String>,
    ) -> Self {
        Self {
            reference,
            user_id,
            currency,
            amount,
            actor: actor.into(),
            description: None,
            created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 3),
        }
    }

    pub fn with_description(mut self, description: Option<String>) -> Self {
        self.description = description;
        self
    }

    /// Whether `other` is the same credit: same user, currency, amount (`100` = `100.00`) and
    /// description. Who sent it and when do not matter: a retry by anyone is the same credit.
    pub fn same_credit(&self, other: &CreditRecord) -> bool {
        self.user_id == other.user_id
            && self.currency == other.currency
            && self.amount.value() == other.amount.value()
            && self.description == other.description
    }
}

/// What a credit did. A replay returns the record of the credit that was applied.
#[derive(Debug, Clone, PartialEq)]
pub enum CreditOutcome {
    Recorded(CreditRecord),
    /// The reference was already recorded for the same credit: nothing changed.
    Replayed(CreditRecord),
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

/// What a transition records on the withdrawal, and who caused it (for the audit trail).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransitionDetails {
    /// `user`, `batcher:<run>`, `webhook`, `operator`, …
    pub actor: String,
    /// The provider event that caused it, if any.
    pub event_id: Option<String>,
    pub failure_reason: Option<String>,
    pub provider_reference: Option<String>,
    /// Set by the claim into a batch.
    pub batch_id: Option<BatchId>,
    /// Set by the claim of a withdrawal to a beneficiary: the beneficiary's account, copied
    /// onto the withdrawal, so every send reads it from the withdrawal itself.
    pub bank_account: Option<BankAccount>,
    /// Record this provider event in the same write, so a repeated delivery is recognised and
    /// cannot apply twice.
    pub record_event: Option<EventRecord>,
}

/// A processed provider event, kept (with a TTL) to deduplicate deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub event_id: String,
    pub event_type: String,
    pub reference: String,
    pub outcome: CallbackOutcome,
}

impl TransitionDetails {
    pub fn by(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            ..Self::default()
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Funds enter only here: available and credited grow together, in the same write as the
    /// credit's record under its reference. A reference credits once: the same credit again is
    /// `Replayed` and changes nothing; another credit under it is `ReferenceReused`.
    async fn credit(&self, credit: &CreditRecord) -> Result<CreditOutcome, StoreError>;
    /// The credit recorded under `reference`, if any (one strongly consistent read).
    async fn credit_record(
        &self,
        reference: &CreditReference,
    ) -> Result<Option<CreditRecord>, StoreError>;

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

    /// The same change as [`Self::transition`], written from what `subject` says alone — no
    /// read of the withdrawal first (a settlement knows it from the batch member's entry). The
    /// write is conditional on `subject.status`; a refusal hands back the withdrawal as it is.
    async fn write_transition(
        &self,
        subject: &Subject,
        transition: Transition,
        details: TransitionDetails,
    ) -> Result<Written, StoreError>;

    async fn balances(&self, user: &UserId) -> Result<Vec<Balance>, StoreError>;

    /// Whether a provider event is recorded (only when applying it failed: a repeat is then
    /// still recognised).
    async fn event_recorded(&self, event_id: &str) -> Result<bool, StoreError>;

    /// Records a processed event that changed nothing; `DuplicateEvent` if it already was.
    async fn record_event(&self, event: &EventRecord) -> Result<(), StoreError>;

    /// One atomic write: the beneficiary, its idempotency record and its owner's count (refused
    /// with [`Refusal::TooManyBeneficiaries`] at `max`). A used key is
    /// [`Refusal::IdempotencyKeyTaken`] with the first record.
    async fn add_beneficiary(
        &self,
        beneficiary: &Beneficiary,
        idempotency: &IdempotencyRecord,
        max: u32,
    ) -> Result<(), StoreError>;

    /// One of the user's beneficiaries, removed or not (one consistent read).
    async fn beneficiary(
        &self,
        user: &UserId,
        id: BeneficiaryId,
    ) -> Result<Option<Beneficiary>, StoreError>;

    /// The user's beneficiaries that are not removed, oldest first.
    async fn beneficiaries(&self, user: &UserId) -> Result<Vec<Beneficiary>, StoreError>;

    /// Marks the beneficiary removed and counts it out, in one write conditional on it not being
    /// removed ([`Refusal::BeneficiaryRemoved`]; [`Refusal::NotFound`] without one). Returns it
    /// as written. Withdrawals already naming it are not touched.
    async fn remove_beneficiary(
        &self,
        user: &UserId,
        id: BeneficiaryId,
        at: DateTime<Utc>,
    ) -> Result<Beneficiary, StoreError>;
}

/// Everything the payout side uses — the batcher and the webhook — as one bound: a store of
/// withdrawals that is also a store of batches.
pub trait PayoutStore: Store + BatchStore {}

impl<T: Store + BatchStore + ?Sized> PayoutStore for T {}

/// What operator actions need beyond the pipeline's ports: a withdrawal read by its id alone
/// (a scan on DynamoDB, so never on a request path).
#[async_trait]
pub trait AdminStore: PayoutStore {
    async fn find_withdrawal(&self, id: WithdrawalId) -> Result<Option<Withdrawal>, StoreError>;
    /// Withdrawals of `currency` held for review, oldest first, at most `limit` (the sparse
    /// index: eventually consistent, so one just requested may show a moment later).
    async fn in_review(
        &self,
        currency: &Currency,
        limit: usize,
    ) -> Result<Vec<Withdrawal>, StoreError>;
}

/// The operator's switches: a currency's pause, a user's block. The request path never reads
/// them: its transaction checks them ([`Store::request_withdrawal`] refuses with
/// [`Refusal::UserBlocked`] or [`Refusal::CurrencyPaused`]); the batcher reads the pauses once a
/// run ([`BatchStore::paused_currencies`]).
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Writes the change, conditioned on the switch being the other way (else
    /// [`Refusal::ControlUnchanged`]); returns the switch as written.
    async fn set_control(&self, change: &ControlChange) -> Result<Control, StoreError>;
    /// The switch as stored; `None` when it was never changed (off).
    async fn control(&self, subject: &ControlSubject) -> Result<Option<Control>, StoreError>;
}

/// What became of a change written from a [`Subject`].
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Changed,
    /// The provider event it records was already recorded: a repeat delivery, nothing written.
    DuplicateEvent,
    /// No such withdrawal.
    NotFound,
    /// The withdrawal was not in the expected state: as it is now (from the refusal itself).
    NotAsExpected(Box<Withdrawal>),
}

/// Result of claiming one chunk of pending withdrawals into a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimResult {
    /// Now SUBMITTED in the batch.
    pub claimed: Vec<Withdrawal>,
    /// No longer PENDING when we tried (claimed by another run, cancelled): skipped.
    pub lost: Vec<WithdrawalId>,
}

/// What one provider call did to a batch we hold the lease on.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Accepted {
        provider_batch_id: String,
    },
    /// Definite rejection: the batch moves to REJECTING, its members are then rejected.
    Rejected {
        reason: String,
    },
    /// Outcome unknown; after `max_attempts` the batch needs an operator.
    Ambiguous {
        error: String,
        max_attempts: u32,
    },
}

#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Pending withdrawals of one currency, oldest first, from the sparse index (eventually
    /// consistent: the claim re-checks the status).
    async fn pending(
        &self,
        currency: &Currency,
        limit: usize,
        after: Option<WithdrawalId>,
    ) -> Result<Vec<Withdrawal>, StoreError>;

    /// The most withdrawals one [`Self::claim`] takes (the adapter's transaction size).
    fn claim_chunk(&self) -> usize;

    /// Claims up to [`Self::claim_chunk`] withdrawals PENDING→SUBMITTED into `batch` in one
    /// transaction, together with the batch record (created with the first chunk, extended by
    /// the others while `owner` holds the claiming lease). Withdrawals no longer pending are
    /// skipped.
    async fn claim(
        &self,
        batch: &Batch,
        owner: &str,
        chunk: &[Withdrawal],
        create: bool,
    ) -> Result<ClaimResult, StoreError>;

    /// Non-terminal batches (from the sparse index), oldest first. Each record is decoded on its
    /// own: an unreadable one (corrupt, or its currency no longer configured) is an `Err` in the
    /// list, naming the batch, and never hides the others.
    async fn open_batches(&self) -> Result<Vec<Result<Batch, StoreError>>, StoreError>;

    async fn batch(&self, id: BatchId) -> Result<Option<Batch>, StoreError>;

    /// Takes the batch's lease if it is free (expired) and the batch is in one of `states`.
    /// `None` when someone else holds it or the state moved on.
    async fn take_lease(
        &self,
        id: BatchId,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
        states: &[BatchStatus],
    ) -> Result<Option<Batch>, StoreError>;

    /// CLAIMING → OPEN: membership is final.
    async fn close_claiming(&self, id: BatchId, owner: &str) -> Result<(), StoreError>;

    /// Records a provider call's outcome on an OPEN batch we hold the lease of, and releases
    /// the lease.
    async fn record_attempt(
        &self,
        id: BatchId,
        owner: &str,
        result: &AttemptResult,
    ) -> Result<Batch, StoreError>;

    /// REJECTING → REJECTED once every member is rejected.
    async fn finish_rejecting(&self, id: BatchId) -> Result<(), StoreError>;

    /// ACCEPTED (or NEEDS_OPERATOR) → COMPLETED when every member is final; `false` if not.
    async fn complete_if_final(&self, id: BatchId) -> Result<bool, StoreError>;

    /// Members that reached SETTLED or REJECTED.
    async fn final_count(&self, id: BatchId) -> Result<u32, StoreError>;

    /// The batch with its [`Self::final_count`], in one consistent read of its partition.
    async fn batch_with_final_count(&self, id: BatchId)
        -> Result<Option<(Batch, u32)>, StoreError>;

    /// Hands a NEEDS_OPERATOR batch back to the batcher (operator `retry-batch`), in one
    /// conditional write that also requires no member to have been rejected by an operator:
    /// a batch the provider never accepted goes back to OPEN (attempts reset: the next run asks
    /// the provider before any re-send); one it accepted goes back to ACCEPTED, to be looked up
    /// again, never sent. `BatchChanged` when the batch moved on.
    async fn reset_attempts(&self, batch: &Batch, by: &str) -> Result<(), StoreError>;

    /// Records that the provider was just asked about this batch's status.
    async fn mark_checked(&self, id: BatchId) -> Result<(), StoreError>;

    /// Records the provider's word that it holds the batch (a status answer found it) as its
    /// `provider_batch_id`, audited once in its history, before anything is done on that word:
    /// from then on [`Batch::provider_has_it`] and no 404 ever reads as "never recorded".
    /// Whatever the batch's status; `false` when it already had the provider's id.
    async fn record_found(
        &self,
        batch: &Batch,
        provider_batch_id: &str,
        by: &str,
    ) -> Result<bool, StoreError>;

    /// `from` → NEEDS_OPERATOR, with `reason` in the batch's history, so an operator can act on
    /// it (a batch with no other way out). With `owner`, only while that run holds the lease.
    /// `None` when the batch was no longer `from`.
    async fn escalate(
        &self,
        id: BatchId,
        from: BatchStatus,
        owner: Option<&str>,
        by: &str,
        reason: &str,
    ) -> Result<Option<Batch>, StoreError>;

    /// An operator's reject of a SUBMITTED member of a NEEDS_OPERATOR batch the provider says
    /// it never recorded: the withdrawal's Reject and the batch's `operator_rejected` mark in one
    /// transaction, conditional on the batch still being NEEDS_OPERATOR, never accepted, and
    /// without a send attempt after `quiet_before` (a queued request may still land). So it
    /// cannot interleave with a `retry-batch` or a run. `BatchChanged` otherwise.
    async fn reject_flagged_member(
        &self,
        w: &Withdrawal,
        details: TransitionDetails,
        quiet_before: DateTime<Utc>,
    ) -> Result<Withdrawal, StoreError>;

    /// Final batches (COMPLETED, REJECTED) due for reconciliation (queued before
    /// `due_before`), longest waiting first.
    async fn unreconciled(
        &self,
        due_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Batch>, StoreError>;

    /// Puts a batch whose reconciliation could not be done now at the back of the list.
    async fn requeue_reconcile(&self, id: BatchId) -> Result<(), StoreError>;

    /// Takes a batch off the reconcile list, recording how many mismatches were found.
    /// With `again_at`, it stays listed and is compared once more then (a bank return can
    /// come days after a payout).
    async fn mark_reconciled(
        &self,
        id: BatchId,
        mismatches: u32,
        again_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;

    /// The member withdrawals, read consistently.
    async fn members(&self, batch: &Batch) -> Result<Vec<Withdrawal>, StoreError>;

    /// Every batch (operator listing).
    async fn all_batches(&self) -> Result<Vec<Batch>, StoreError>;
    /// The accounts of these beneficiaries, removed or not (what a withdrawal named when it was
    /// requested is what it is paid to), in as few reads as the keys allow (100 a read). A key
    /// with no beneficiary is absent from the answer.
    async fn beneficiary_accounts(
        &self,
        keys: &[(UserId, BeneficiaryId)],
    ) -> Result<std::collections::HashMap<(UserId, BeneficiaryId), BankAccount>, StoreError>;
    /// Which of `currencies` an operator paused (`operator pause`): one read a run.
    async fn paused_currencies(
        &self,
        currencies: &[CurrencyCode],
    ) -> Result<std::collections::BTreeSet<CurrencyCode>, StoreError>;
}
