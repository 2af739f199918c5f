//! The single table's key layout. Every key string is built here and nowhere else.

use crate::domain::{BatchId, CreditReference, CurrencyCode, IdempotencyKey, UserId, WithdrawalId};

pub const PK: &str = "PK";
pub const SK: &str = "SK";
pub const PENDING_INDEX: &str = "pending-index";
pub const PENDING_PK: &str = "pending_pk";
pub const PENDING_SK: &str = "pending_sk";
/// How a UTC day is written in keys and on the withdrawal (`limit_day`).
pub const DAY_FORMAT: &str = "%Y-%m-%d";
/// Epoch seconds; DynamoDB's TTL deletes the item some time after.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// Names and shapes of the table, shared by `create-table`, the tests and template.yaml's test.
pub struct TableSchema;

impl TableSchema {
    pub fn user_pk(user: &UserId) -> String {
        format!("USER#{}", user.as_str())
    }
    pub fn balance_sk(currency: CurrencyCode) -> String {
        format!("BAL#{currency}")
    }
    pub fn withdrawal_sk(id: WithdrawalId) -> String {
        format!("WD#{id}")
    }
    /// One user's daily-limit counter for one currency and UTC day, beside the balance.
    pub fn day_counter_sk(currency: CurrencyCode, day: chrono::NaiveDate) -> String {
        format!("DAY#{currency}#{}", day.format(DAY_FORMAT))
    }
    pub const WITHDRAWAL_SK_PREFIX: &'static str = "WD#";
    pub const BALANCE_SK_PREFIX: &'static str = "BAL#";
    /// User ids cannot contain `#`, so the key after the second `#` is unambiguous.
    pub fn idempotency_pk(user: &UserId, key: &IdempotencyKey) -> String {
        format!("IDEM#{}#{}", user.as_str(), key.as_str())
    }
    pub const SINGLETON_SK: &'static str = "-";
    /// A batch's small counter item beside its record: settlements bump it without rewriting
    /// the (up to ~35 KB) member list, which would cost ~70 WCU per callback on one partition.
    pub const BATCH_COUNTER_SK: &'static str = "COUNTER";
    /// A credit's record: one item per reference, so a reference can credit only once.
    pub fn credit_pk(reference: &CreditReference) -> String {
        format!("CREDIT#{}", reference.as_str())
    }
    pub const CREDIT_PK_PREFIX: &'static str = "CREDIT#";
    pub fn event_pk(event_id: &str) -> String {
        format!("EVT#{event_id}")
    }
    pub fn batch_pk(batch: BatchId) -> String {
        format!("BATCH#{batch}")
    }
    /// Open (non-terminal) batches share this key in the sparse index, so a run finds
    /// unfinished work without a scan.
    pub const OPEN_BATCHES_PK: &'static str = "BATCHES#OPEN";
    /// The pending index is sharded per currency (`PENDING#USD#0` …) so one currency's writes
    /// spread over several index partitions; see docs/scaling.md.
    pub fn pending_pk(currency: CurrencyCode, shard: u32) -> String {
        format!("PENDING#{currency}#{shard}")
    }
}
