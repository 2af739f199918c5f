//! The single table's key layout. Every key string is built here and nowhere else.

use crate::domain::{
    BatchId, BeneficiaryId, CreditReference, CurrencyCode, IdempotencyKey, UserId, WithdrawalId,
};

/// DynamoDB's limit for one item: 400 KB, attribute names and values together.
const ITEM_LIMIT_BYTES: usize = 400 * 1024;
/// One entry of a batch record's `members` map at its largest: the withdrawal id as the map key,
/// its string value `<amount>[+<fee>[k]] <limit day or -> <user id>` at its longest (the widest
/// decimal's text, 31 bytes, twice with the `+` and the `k`; a day, 10; two spaces; the longest
/// user id), and the byte DynamoDB counts per map element.
const MEMBER_ENTRY_BYTES: usize =
    WithdrawalId::TEXT_LEN + 31 + 1 + 31 + 1 + 1 + 10 + 1 + UserId::MAX_LEN + 1;
/// Everything else on the batch record, generously: keys, status, counts, timestamps, lease,
/// index keys (under 1 KB together) and what the provider hands us (`reason`, at most 200
/// characters, `provider_batch_id`, `last_error`), plus the `members` attribute's own overhead.
const BATCH_OTHER_ATTRIBUTES_BYTES: usize = 16 * 1024;

/// The most members one batch may have (`BATCH_MAX_SIZE`, template.yaml's `BatchMaxSize`): the
/// batch record holds every member (withdrawal id → owner, amount, limit day) in one item, so a
/// larger batch could not be claimed once its record outgrew 400 KB. Three quarters of the room
/// left by the other attributes, divided by the largest entry: (409,600 − 16,384) × 3/4 / 234 =
/// 1,260.
pub const MAX_BATCH_MEMBERS: usize =
    (ITEM_LIMIT_BYTES - BATCH_OTHER_ATTRIBUTES_BYTES) * 3 / 4 / MEMBER_ENTRY_BYTES;

pub const PK: &str = "PK";
pub const SK: &str = "SK";
pub const PENDING_INDEX: &str = "pending-index";
pub const PENDING_PK: &str = "pending_pk";
pub const PENDING_SK: &str = "pending_sk";
/// How a UTC day is written in keys and on the withdrawal (`limit_day`).
pub const DAY_FORMAT: &str = "%Y-%m-%d";
/// What kind of item this is. The event publisher's stream filter (template.yaml) selects on it.
pub const TYPE_ATTRIBUTE: &str = "type";
pub const WITHDRAWAL_TYPE: &str = "WITHDRAWAL";
pub const CREDIT_TYPE: &str = "CREDIT";
/// An operator's switch: a user's block, or shard 0 of a currency's pause (the one that
/// carries its history and makes its events).
pub const CONTROL_TYPE: &str = "CONTROL";
/// A user's registered destination (its events: added, removed).
pub const BENEFICIARY_TYPE: &str = "BENEFICIARY";
/// The other shards of a currency's pause: the same flag, no history, no events.
pub const PAUSE_SHARD_TYPE: &str = "PAUSE_SHARD";
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
    /// A beneficiary lives under its owner's key: a withdrawal's check of
    /// `USER#<caller>/BENEFICIARY#<id>` can only ever find the caller's own, so ownership is
    /// structural, not a compared attribute.
    pub fn beneficiary_sk(id: BeneficiaryId) -> String {
        format!("{}{id}", Self::BENEFICIARY_SK_PREFIX)
    }
    pub const BENEFICIARY_SK_PREFIX: &'static str = "BENEFICIARY#";
    /// How many beneficiaries a user has (not removed): the add's condition against the
    /// configured maximum, beside the balances.
    pub const BENEFICIARY_COUNT_SK: &'static str = "BENEFICIARIES";
    pub const BALANCE_SK_PREFIX: &'static str = "BAL#";
    /// User ids cannot contain `#`, so the key after the second `#` is unambiguous.
    pub fn idempotency_pk(user: &UserId, key: &IdempotencyKey) -> String {
        format!("IDEM#{}#{}", user.as_str(), key.as_str())
    }
    pub const SINGLETON_SK: &'static str = "-";
    /// A batch's small counter items beside its record: settlements count its final members
    /// there without rewriting the (up to ~300 KB) member list. This base counter is created
    /// with the batch (at 0; settlements before the counter was sharded bumped it), the shards
    /// ([`Self::batch_counter_sk`]) by their first settlement; the final count is the sum of
    /// every item whose sort key starts with this.
    pub const BATCH_COUNTER_SK: &'static str = "COUNTER";
    /// Counter shards per batch: a batch's callbacks arrive in one burst, and transactions that
    /// all wrote one counter item would cancel each other (TransactionConflict) — a
    /// 500-member burst against one item ended with callbacks refused five times in a row
    /// (tests/tests/hot_batch.rs). Each settlement bumps the shard its withdrawal id picks.
    pub const BATCH_COUNTER_SHARDS: u32 = 32;
    pub fn batch_counter_sk(member: WithdrawalId) -> String {
        format!(
            "{}#{}",
            Self::BATCH_COUNTER_SK,
            member.shard(Self::BATCH_COUNTER_SHARDS)
        )
    }
    /// A credit's record: one item per reference, so a reference can credit only once.
    pub fn credit_pk(reference: &CreditReference) -> String {
        format!("CREDIT#{}", reference.as_str())
    }
    pub const CREDIT_PK_PREFIX: &'static str = "CREDIT#";
    pub fn event_pk(event_id: &str) -> String {
        format!("EVT#{event_id}")
    }
    /// An operator's decision to skip one stream record the publisher cannot read.
    pub fn stream_skip_pk(sequence_number: &str) -> String {
        format!("STREAMSKIP#{sequence_number}")
    }
    pub fn batch_pk(batch: BatchId) -> String {
        format!("{}{batch}", Self::BATCH_PK_PREFIX)
    }
    pub const BATCH_PK_PREFIX: &'static str = "BATCH#";
    /// Open (non-terminal) batches share this key in the sparse index, so a run finds
    /// unfinished work without a scan.
    pub const OPEN_BATCHES_PK: &'static str = "BATCHES#OPEN";
    /// Final batches wait under this key until the batcher has reconciled them with the
    /// provider's status endpoint (`reconcile`), then leave the index.
    pub const RECONCILE_PK: &'static str = "BATCHES#RECONCILE";
    /// The pending index is sharded per currency (`PENDING#USD#0` …) so one currency's writes
    /// spread over several index partitions; see docs/scaling.md.
    pub fn pending_pk(currency: CurrencyCode, shard: u32) -> String {
        format!("PENDING#{currency}#{shard}")
    }
    /// Withdrawals held for review share this key in the same sparse index, one per currency:
    /// operators list them (`operator reviews`) without a scan, and the batcher, reading only
    /// `PENDING#…` keys, never sees them. Reviews are rare (large amounts), so one key is enough.
    pub fn review_pk(currency: CurrencyCode) -> String {
        format!("REVIEW#{currency}")
    }
    /// A currency's pause, one item per shard, all written by the same transaction. Every
    /// request's transaction checks one shard (picked by its withdrawal id) without writing it:
    /// a check of one item is 2 RCU, so one item would cap a currency at 1,500 requests/s
    /// (3,000 RCU/s a partition); four carry 6,000/s. See docs/scaling.md.
    pub fn pause_pk(currency: CurrencyCode) -> String {
        format!("PAUSE#{currency}")
    }
    pub const PAUSE_PK_PREFIX: &'static str = "PAUSE#";
    pub const PAUSE_SHARDS: u32 = 4;
    pub fn pause_sk(shard: u32) -> String {
        format!("SHARD#{shard}")
    }
    /// The shard of a currency's pause that holds its history (and the one the batcher reads).
    pub const PAUSE_HISTORY_SHARD: u32 = 0;
    /// A user's block, beside their balances: checked by each of their requests' transactions.
    pub const BLOCK_SK: &'static str = "BLOCK";
    /// Table-wide settings that must outlive any one function's configuration.
    pub const META_PK: &'static str = "META";
    /// The most pending-index shards any request function was ever configured with
    /// (`max_shards`): the batcher reads at least that many, so lowering `PENDING_SHARDS` strands
    /// nothing written under the higher count.
    pub const PENDING_SHARDS_SK: &'static str = "PENDING_SHARDS";
}
