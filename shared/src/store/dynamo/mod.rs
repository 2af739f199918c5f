//! The DynamoDB single-table adapter, one file per job:
//! - `tx`: running a transaction (retries, error classes, reasons read by item name);
//! - `codec`: items ↔ domain values;
//! - `writes`: the conditional write builders (balances, transitions, requests, events);
//! - `claims`: the pending index and claims; `batches`: the rest of the batch store;
//! - `admin`: table creation and operator scans;
//! - `beneficiaries`: registered destinations and the request's check of one;
//! - this file: the struct and the `Store` impl.

mod admin;
mod batches;
mod beneficiaries;
mod claims;
mod codec;
mod controls;
mod skips;
mod tx;
mod writes;

pub use admin::ScanReport;
pub use codec::{decode_stored_item, stored_status, StoredItem};

use crate::domain::{
    timestamp, AuditEntry, Balance, BalanceEffect, Beneficiary, BeneficiaryId, CreditReference,
    Currencies, IdempotencyKey, Subject, Transition, UserId, Withdrawal, WithdrawalId,
    WithdrawalStatus,
};
use crate::store::schema::{self, TableSchema};
use crate::store::{
    CreditOutcome, CreditRecord, EventRecord, IdempotencyRecord, ListQuery, Page, Store,
    StoreError, TransitionDetails, Written,
};
use crate::store::{Failure, Refusal};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use codec::{backend, credit_item, idempotency_from_item, s, Item, Reader};
use rust_decimal::Decimal;
use std::str::FromStr;
use tx::{classify, TxError, TxGuard};
use writes::{changed, CreditGuard, RequestGuard};

/// The DynamoDB single-table adapter. Build one per process (at cold start) and share it.
#[derive(Clone)]
pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    pub(super) currencies: Currencies,
    pub(super) pending_shards: u32,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, currencies: Currencies) -> Self {
        Self {
            client,
            table: table.into(),
            currencies,
            pending_shards: Self::DEFAULT_PENDING_SHARDS,
        }
    }

    /// Shards of each currency's pending index (see docs/scaling.md). Requests write into
    /// shards `0..n`; the batcher reads up to the highest `n` ever recorded
    /// ([`Self::record_pending_shards`]), so the setting may go down as well as up.
    pub const DEFAULT_PENDING_SHARDS: u32 = 4;

    pub fn with_pending_shards(mut self, shards: u32) -> Self {
        self.pending_shards = shards.max(1);
        self
    }

    pub fn pending_shards(&self) -> u32 {
        self.pending_shards
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    pub fn currencies(&self) -> &Currencies {
        &self.currencies
    }

    /// A query over one user's items of one kind (`BAL#`, `WD#`).
    fn user_items(
        &self,
        user: &UserId,
        sk_prefix: &str,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", schema::PK)
            .expression_attribute_names("#sk", schema::SK)
            .expression_attribute_values(":pk", s(TableSchema::user_pk(user)))
            .expression_attribute_values(":prefix", s(sk_prefix))
    }

    /// One item by key, read consistently.
    pub(super) async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(schema::PK, s(pk))
            .key(schema::SK, s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.item)
    }
}

impl DynamoStore {
    /// Items by key, read consistently, 100 keys a call (BatchGetItem's limit), keys DynamoDB
    /// left unprocessed asked again with a growing pause. In no particular order; a key without
    /// an item is simply absent.
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending: Vec<Item> = chunk.to_vec();
            let mut rounds = 0;
            while !pending.is_empty() {
                rounds += 1;
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(true)
                    .build()
                    .map_err(backend)?;
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(classify)?;
                if let Some(items) = resp.responses.and_then(|mut r| r.remove(&self.table)) {
                    out.extend(items);
                }
                pending = resp
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|ka| ka.keys)
                    .unwrap_or_default();
                if !pending.is_empty() {
                    if rounds > 8 {
                        return Err(StoreError::Failed(Failure::Unavailable(
                            "unprocessed batch reads".into(),
                        )));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20 << rounds)).await;
                }
            }
        }
        Ok(out)
    }
}

/// What one state change's transaction did, its refusal read by item name.
enum Change {
    /// Written; the audit entry it appended.
    Written(AuditEntry),
    DuplicateEvent,
    NotFound,
    /// The withdrawal's status condition failed: the item as it is.
    NotAsExpected(Item),
}

impl DynamoStore {
    /// Writes one state change of `subject`. A recorded provider event wins over the status: the
    /// delivery is a repeat whatever state the withdrawal is in now.
    async fn write_change(
        &self,
        subject: &Subject,
        transition: Transition,
        details: &TransitionDetails,
        now: DateTime<Utc>,
    ) -> Result<Change, StoreError> {
        let (guarded, entry) = self.transition_items(subject, transition, details, now)?;
        // One token per call, reused by its own retries: a retry after a timeout cannot apply
        // twice, while a concurrent caller's attempt stays a separate, conditional one.
        let token = ulid::Ulid::new().to_string();
        let refusals = match self.transact(guarded, &token).await {
            Ok(()) => return Ok(Change::Written(entry)),
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(refusals)) => refusals,
        };
        if refusals.refused(TxGuard::Event).is_some() {
            return Ok(Change::DuplicateEvent);
        }
        if let Some(r) = refusals.refused(TxGuard::Withdrawal(subject.id)) {
            return Ok(match r.item() {
                None => Change::NotFound,
                Some(item) => Change::NotAsExpected(item.clone()),
            });
        }
        // The status matched but the balance (or batch) refused: the books would break.
        Err(StoreError::Failed(Failure::Corrupt(format!(
            "{} {}: {:?} refused by {:?}",
            subject.user_id,
            subject.id,
            transition,
            refusals.codes()
        ))))
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn credit(&self, credit: &CreditRecord) -> Result<CreditOutcome, StoreError> {
        let balance = self.balance_update(
            &credit.user_id,
            &credit.currency,
            BalanceEffect::Credit,
            credit.amount.value(),
            Decimal::ZERO,
            &timestamp(&credit.created_at),
            None,
        )?;
        // The record's put is the only conditional item: it exists already exactly when the
        // reference was used, and then the cancellation reason carries that first record.
        let guarded = [
            (CreditGuard::Balance, balance),
            (CreditGuard::Record, self.put_new(credit_item(credit))?),
        ];
        // A fresh token per call: the record's condition, not the token, makes a repeat a no-op.
        let token = ulid::Ulid::new().to_string();
        let refusals = match self.transact(guarded.into(), &token).await {
            Ok(()) => return Ok(CreditOutcome::Recorded(credit.clone())),
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(refusals)) => refusals,
        };
        let first = refusals
            .refused(CreditGuard::Record)
            .and_then(|r| r.item())
            .ok_or_else(|| {
                StoreError::Failed(Failure::Backend(format!(
                    "credit cancelled: {:?}",
                    refusals.codes()
                )))
            })?;
        let first = self.credit_from_item(first)?;
        if first.same_credit(credit) {
            Ok(CreditOutcome::Replayed(first))
        } else {
            Err(StoreError::Refused(Refusal::ReferenceReused(format!(
                "{} was credited {} {} to {} at {}",
                first.reference,
                first.currency.format(first.amount.value()),
                first.currency,
                first.user_id,
                timestamp(&first.created_at)
            ))))
        }
    }

    async fn credit_record(
        &self,
        reference: &CreditReference,
    ) -> Result<Option<CreditRecord>, StoreError> {
        self.get(TableSchema::credit_pk(reference), TableSchema::SINGLETON_SK)
            .await?
            .map(|item| self.credit_from_item(&item))
            .transpose()
    }

    async fn request_withdrawal(
        &self,
        w: &Withdrawal,
        idempotency: Option<&IdempotencyRecord>,
        max_open: u32,
    ) -> Result<(), StoreError> {
        let guarded = self.request_guarded(w, idempotency, max_open)?;
        let refusals = match self.transact(guarded, &w.id.to_string()).await {
            Ok(()) => return Ok(()),
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(refusals)) => refusals,
        };
        let refused = |guard: RequestGuard| refusals.refused(guard);
        // The key wins: a replayed request must replay, not report that the (already locked)
        // funds or the day's allowance it used itself are now short.
        if let Some(r) = refused(RequestGuard::IdempotencyKey) {
            let first = match (idempotency, r.item()) {
                (Some(mine), Some(item)) => Some(Box::new(idempotency_from_item(
                    &mine.user_id,
                    &mine.key,
                    item,
                )?)),
                _ => None,
            };
            return Err(StoreError::Refused(Refusal::IdempotencyKeyTaken(first)));
        }
        // An operator's switch before the user's own limits: the answer says what to wait for.
        if refused(RequestGuard::UserBlock).is_some() {
            return Err(StoreError::Refused(Refusal::UserBlocked));
        }
        if refused(RequestGuard::CurrencyPause).is_some() {
            return Err(StoreError::Refused(Refusal::CurrencyPaused));
        }
        // Where the money would go before whether there is enough of it.
        if let Some(r) = refused(RequestGuard::Beneficiary) {
            return Err(Self::beneficiary_refusal(r.item()));
        }
        if let Some(r) = refused(RequestGuard::DayCounter) {
            return Err(self.daily_limit_exceeded(w, r.item()));
        }
        if let Some(r) = refused(RequestGuard::Balance) {
            let old = r.item();
            let open = old
                .and_then(|i| i.get("open_count"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u32>().ok());
            let available = old
                .and_then(|i| i.get("available"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| Decimal::from_str(v).ok())
                .unwrap_or(Decimal::ZERO);
            if available >= w.total() && open.is_some_and(|o| o >= max_open) {
                return Err(StoreError::Refused(Refusal::TooManyPending));
            }
            return Err(StoreError::Refused(Refusal::InsufficientFunds));
        }
        Err(StoreError::Failed(Failure::Backend(format!(
            "withdrawal id collision: {:?}",
            refusals.codes()
        ))))
    }

    async fn idempotency_record(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let item = self
            .get(
                TableSchema::idempotency_pk(user, key),
                TableSchema::SINGLETON_SK,
            )
            .await?;
        item.map(|item| idempotency_from_item(user, key, &item))
            .transpose()
    }

    async fn withdrawal(
        &self,
        user: &UserId,
        id: WithdrawalId,
    ) -> Result<Option<Withdrawal>, StoreError> {
        self.get(TableSchema::user_pk(user), &TableSchema::withdrawal_sk(id))
            .await?
            .map(|i| self.withdrawal_from_item(&i))
            .transpose()
    }

    async fn list_withdrawals(&self, user: &UserId, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.limit.clamp(1, 100) as usize;
        let mut items = Vec::new();
        let mut start = query.after.map(|id| Self::withdrawal_key(user, id));
        loop {
            let mut q = self
                .user_items(user, TableSchema::WITHDRAWAL_SK_PREFIX)
                .scan_index_forward(false)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            q = match query.status {
                Some(st) => q
                    .filter_expression("#st = :st")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":st", s(st.as_str()))
                    .limit(100),
                None => q.limit((limit - items.len()) as i32),
            };
            let out = q.send().await.map_err(classify)?;
            let page_items = out.items();
            for (i, item) in page_items.iter().enumerate() {
                items.push(self.withdrawal_from_item(item)?);
                if items.len() == limit {
                    let more = i + 1 < page_items.len() || out.last_evaluated_key.is_some();
                    let next = more.then(|| items[limit - 1].id);
                    return Ok(Page { items, next });
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(Page { items, next: None }),
            }
        }
    }

    async fn transition(
        &self,
        w: &Withdrawal,
        transition: Transition,
        details: TransitionDetails,
    ) -> Result<Withdrawal, StoreError> {
        let now = Utc::now();
        match self
            .write_change(&Subject::from(w), transition, &details, now)
            .await?
        {
            Change::Written(entry) => Ok(changed(w, &entry, &details, now)),
            Change::DuplicateEvent => Err(StoreError::Refused(Refusal::DuplicateEvent)),
            Change::NotFound => Err(StoreError::Refused(Refusal::NotFound)),
            Change::NotAsExpected(item) => Err(StoreError::Refused(Refusal::StateChanged {
                current: Reader(&item)
                    .opt_s("status")
                    .and_then(WithdrawalStatus::parse),
            })),
        }
    }

    async fn write_transition(
        &self,
        subject: &Subject,
        transition: Transition,
        details: TransitionDetails,
    ) -> Result<Written, StoreError> {
        Ok(
            match self
                .write_change(subject, transition, &details, Utc::now())
                .await?
            {
                Change::Written(_) => Written::Changed,
                Change::DuplicateEvent => Written::DuplicateEvent,
                Change::NotFound => Written::NotFound,
                Change::NotAsExpected(item) => {
                    Written::NotAsExpected(Box::new(self.withdrawal_from_item(&item)?))
                }
            },
        )
    }

    async fn event_recorded(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .get(TableSchema::event_pk(event_id), TableSchema::SINGLETON_SK)
            .await?
            .is_some())
    }

    async fn record_event(&self, event: &EventRecord) -> Result<(), StoreError> {
        let put = self.event_put(event, &Utc::now())?;
        match self
            .transact(vec![(TxGuard::Event, put)], &ulid::Ulid::new().to_string())
            .await
        {
            Ok(()) => Ok(()),
            Err(TxError::Cancelled(_)) => Err(StoreError::Refused(Refusal::DuplicateEvent)),
            Err(TxError::Store(e)) => Err(e),
        }
    }

    async fn add_beneficiary(
        &self,
        beneficiary: &Beneficiary,
        idempotency: &IdempotencyRecord,
        max: u32,
    ) -> Result<(), StoreError> {
        self.add_beneficiary_item(beneficiary, idempotency, max)
            .await
    }

    async fn beneficiary(
        &self,
        user: &UserId,
        id: BeneficiaryId,
    ) -> Result<Option<Beneficiary>, StoreError> {
        self.beneficiary_item(user, id).await
    }

    async fn beneficiaries(&self, user: &UserId) -> Result<Vec<Beneficiary>, StoreError> {
        self.active_beneficiaries(user).await
    }

    async fn remove_beneficiary(
        &self,
        user: &UserId,
        id: BeneficiaryId,
        at: DateTime<Utc>,
    ) -> Result<Beneficiary, StoreError> {
        self.remove_beneficiary_item(user, id, at).await
    }

    async fn balances(&self, user: &UserId) -> Result<Vec<Balance>, StoreError> {
        let out = self
            .user_items(user, TableSchema::BALANCE_SK_PREFIX)
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.items()
            .iter()
            .map(|i| self.balance_from_item(i).map(|(_, b)| b))
            .collect()
    }
}
