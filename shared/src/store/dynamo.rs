use super::schema::{self, TableSchema};
use super::{
    CreditOutcome, CreditRecord, IdempotencyRecord, ListQuery, Page, Store, StoreError,
    TransitionDetails,
};
use crate::domain::{
    Amount, AuditEntry, Balance, BalanceEffect, BankAccount, BatchId, CreditReference, Currencies,
    Currency, IdempotencyKey, Transition, UserId, Withdrawal, WithdrawalId, WithdrawalStatus,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

pub(super) type Item = HashMap<String, AttributeValue>;

/// How long a processed provider event is remembered for deduplication.
const EVENT_TTL_SECS: i64 = 30 * 24 * 3600;
/// How long an idempotency record is honoured (DynamoDB's TTL removes it some time after).
const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;
/// Days a daily-limit counter is kept after its own day (only its own day reads it; a cancel
/// or rejection after it expired finds nothing to give back to and recreates it at zero).
const DAY_COUNTER_KEEP_DAYS: u64 = 3;
/// Attempts for a transaction that loses a race (TransactionConflict) or is throttled.
const TX_ATTEMPTS: u32 = 8;
/// On the `META`/`PENDING_SHARDS` item: the most pending-index shards ever written.
pub(super) const MAX_SHARDS_ATTRIBUTE: &str = "max_shards";

/// The DynamoDB single-table adapter. Build one per process (at cold start) and share it.
#[derive(Clone)]
pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    pub(super) currencies: Currencies,
    pub(super) pending_shards: u32,
}

/// `attribute = value`, for operator scans.
pub(super) struct ScanFilter {
    attribute: &'static str,
    value: AttributeValue,
}

impl ScanFilter {
    pub(super) fn new(attribute: &'static str, value: AttributeValue) -> Self {
        Self { attribute, value }
    }
}

/// What `check` found: the invariant per balance and per withdrawal set.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub balances: Vec<(UserId, Balance)>,
    pub withdrawals: Vec<Withdrawal>,
    pub credits: Vec<CreditRecord>,
    pub batches: Vec<crate::domain::Batch>,
    /// Items that could not be read back as domain values.
    pub unreadable: Vec<String>,
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

    /// Raises the table's record of the most shards ever written to this store's count (never
    /// lowers it). Whatever writes into the pending index calls it before its first write — the
    /// request function once per cold start — so no batcher configured with fewer shards can
    /// miss a withdrawal: the batcher reads every shard up to the recorded count.
    pub async fn record_pending_shards(&self) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(schema::PK, s(TableSchema::META_PK))
            .key(schema::SK, s(TableSchema::PENDING_SHARDS_SK))
            .update_expression("SET #max = :n, #ty = :ty")
            .condition_expression("attribute_not_exists(#max) OR #max < :n")
            .expression_attribute_names("#max", MAX_SHARDS_ATTRIBUTE)
            .expression_attribute_names("#ty", "type")
            .expression_attribute_values(":n", n(self.pending_shards))
            .expression_attribute_values(":ty", s("META"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already as high or higher.
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(classify(e)),
        }
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

    /// Creates the table with its sparse pending index, stream and TTL. An existing table is left alone.
    pub async fn create_table(&self) -> Result<bool, StoreError> {
        self.create(true).await
    }

    /// The same table without its stream, for tests that never read it: on DynamoDB Local a
    /// stream makes every write markedly slower (the simulation's seeds ran several times
    /// longer).
    pub async fn create_table_without_stream(&self) -> Result<bool, StoreError> {
        self.create(false).await
    }

    async fn create(&self, stream: bool) -> Result<bool, StoreError> {
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("static key schema")
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("static attribute definition")
        };
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr(schema::PK))
            .attribute_definitions(attr(schema::SK))
            .attribute_definitions(attr(schema::PENDING_PK))
            .attribute_definitions(attr(schema::PENDING_SK))
            .key_schema(key(schema::PK, KeyType::Hash))
            .key_schema(key(schema::SK, KeyType::Range))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(schema::PENDING_INDEX)
                    .key_schema(key(schema::PENDING_PK, KeyType::Hash))
                    .key_schema(key(schema::PENDING_SK, KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .expect("static index"),
            )
            // Every committed change, old and new image, for the event publisher (template.yaml).
            .set_stream_specification(stream.then(|| {
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .expect("static stream specification")
            }))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(false),
            Err(e) => return Err(classify(e)),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(schema::TTL_ATTRIBUTE)
                    .build()
                    .expect("static ttl"),
            )
            .send()
            .await
            .map_err(classify)?;
        Ok(true)
    }

    /// Reads every balance and withdrawal (operator `check` only; the request path never scans).
    pub async fn scan_all(&self) -> Result<ScanReport, StoreError> {
        let mut report = ScanReport::default();
        for item in self.scan(None).await? {
            let sk = item.get(schema::SK).and_then(|v| v.as_s().ok());
            let pk = item.get(schema::PK).and_then(|v| v.as_s().ok());
            let label = format!("{}/{}", pk.map_or("?", |s| s), sk.map_or("?", |s| s));
            match sk {
                Some(sk) if sk.starts_with(TableSchema::BALANCE_SK_PREFIX) => {
                    match self.balance_from_item(&item) {
                        Ok(b) => report.balances.push(b),
                        Err(e) => report.unreadable.push(format!("{label}: {e}")),
                    }
                }
                Some(sk) if sk.starts_with(TableSchema::WITHDRAWAL_SK_PREFIX) => {
                    match self.withdrawal_from_item(&item) {
                        Ok(w) => report.withdrawals.push(w),
                        Err(e) => report.unreadable.push(format!("{label}: {e}")),
                    }
                }
                Some(sk)
                    if sk == TableSchema::SINGLETON_SK
                        && pk.is_some_and(|pk| pk.starts_with(TableSchema::BATCH_PK_PREFIX)) =>
                {
                    match self.batch_from_item(&item) {
                        Ok(b) => report.batches.push(b),
                        Err(e) => report.unreadable.push(format!("{label}: {e}")),
                    }
                }
                _ if pk.is_some_and(|pk| pk.starts_with(TableSchema::CREDIT_PK_PREFIX)) => {
                    match self.credit_from_item(&item) {
                        Ok(c) => report.credits.push(c),
                        Err(e) => report.unreadable.push(format!("{label}: {e}")),
                    }
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Finds a withdrawal by id alone (operator tools only: this scans).
    pub async fn find_withdrawal(
        &self,
        id: WithdrawalId,
    ) -> Result<Option<Withdrawal>, StoreError> {
        let filter = ScanFilter::new("id", s(id.to_string()));
        match self.scan(Some(filter)).await?.first() {
            Some(item) => self.withdrawal_from_item(item).map(Some),
            None => Ok(None),
        }
    }

    /// Every item of the table, or those whose `attribute` equals a value, across all pages
    /// (operator tools only).
    pub(super) async fn scan(&self, filter: Option<ScanFilter>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some(f) = &filter {
                req = req
                    .filter_expression("#f = :f")
                    .expression_attribute_names("#f", f.attribute)
                    .expression_attribute_values(":f", f.value.clone());
            }
            let page = req.send().await.map_err(classify)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// A put that creates the item or fails its condition (it never overwrites). On failure
    /// the cancellation reason carries the existing item.
    pub(super) fn put_new(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(PK)")
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .build()
                    .map_err(backend)?,
            )
            .build())
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

    /// Runs one transaction, retrying what the SDK does not: cancellation because a concurrent
    /// transaction held one of the items (TransactionConflict). The client request token makes a retry after an ambiguous
    /// failure (timeout) idempotent on DynamoDB's side for ten minutes.
    pub(super) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        token: &str,
    ) -> Result<(), TxError> {
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
                        if reasons.iter().any(|r| code(r) == "ConditionalCheckFailed") {
                            return Err(TxError::Cancelled(reasons));
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
                            return Err(TxError::Store(StoreError::Backend(format!(
                                "transaction cancelled: {codes:?}"
                            ))));
                        }
                        codes.join(",")
                    }
                    TransactWriteItemsError::TransactionInProgressException(_) => {
                        "TransactionInProgress".to_string()
                    }
                    TransactWriteItemsError::IdempotentParameterMismatchException(_) => {
                        return Err(TxError::Store(StoreError::Backend(
                            "client request token reused with other items".into(),
                        )))
                    }
                    // Throttling and timeouts were already retried by the SDK's retry policy;
                    // retrying them again here would only multiply the wait.
                    _ => return Err(TxError::Store(classify(SdkError::ServiceError(se)))),
                },
                Err(other) => return Err(TxError::Store(classify(other))),
            };
            if attempt >= TX_ATTEMPTS {
                return Err(TxError::Store(StoreError::Unavailable(retry_reason)));
            }
            tracing::debug!(attempt, reason = %retry_reason, "retrying transaction");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    fn balance_key(user: &UserId, currency: &Currency) -> Item {
        HashMap::from([
            (schema::PK.to_string(), s(TableSchema::user_pk(user))),
            (
                schema::SK.to_string(),
                s(TableSchema::balance_sk(currency.code())),
            ),
        ])
    }

    pub(super) fn withdrawal_key(user: &UserId, id: WithdrawalId) -> Item {
        HashMap::from([
            (schema::PK.to_string(), s(TableSchema::user_pk(user))),
            (schema::SK.to_string(), s(TableSchema::withdrawal_sk(id))),
        ])
    }

    /// The one place a balance movement becomes a DynamoDB update, mirroring
    /// [`Balance::apply`]: the condition makes any movement that would go negative fail.
    fn balance_update(
        &self,
        user: &UserId,
        currency: &Currency,
        effect: BalanceEffect,
        amount: Decimal,
        now: &str,
        max_open: Option<u32>,
    ) -> Result<TransactWriteItem, StoreError> {
        let (set, condition) = match effect {
            BalanceEffect::Credit => (
                "#av = if_not_exists(#av, :zero) + :amt, #cr = if_not_exists(#cr, :zero) + :amt, \
                 #lk = if_not_exists(#lk, :zero), #po = if_not_exists(#po, :zero), \
                 #oc = if_not_exists(#oc, :zero), #cy = :cy, #ui = :ui",
                None,
            ),
            BalanceEffect::Lock => (
                "#av = #av - :amt, #lk = #lk + :amt, #oc = if_not_exists(#oc, :zero) + :one",
                Some("#av >= :amt AND (attribute_not_exists(#oc) OR #oc < :max_open)"),
            ),
            BalanceEffect::Unlock => (
                "#av = #av + :amt, #lk = #lk - :amt, #oc = #oc - :one",
                Some("#lk >= :amt"),
            ),
            BalanceEffect::PayOut => (
                "#lk = #lk - :amt, #po = #po + :amt, #oc = #oc - :one",
                Some("#lk >= :amt"),
            ),
            BalanceEffect::Return => ("#po = #po - :amt, #av = #av + :amt", Some("#po >= :amt")),
            BalanceEffect::None => ("#ua = :now", None),
        };
        let expression = if effect == BalanceEffect::None {
            format!("SET {set}")
        } else {
            format!("SET {set}, #ua = :now")
        };
        let names = [
            ("#av", "available"),
            ("#lk", "locked"),
            ("#po", "paid_out"),
            ("#cr", "credited"),
            ("#oc", "open_count"),
            ("#ua", "updated_at"),
            ("#cy", "currency"),
            ("#ui", "user_id"),
        ];
        let mut values = vec![
            (":amt", n(amount)),
            (":zero", n(0)),
            (":one", n(1)),
            (":now", s(now)),
            (":cy", s(currency.code().as_str())),
            (":ui", s(user.as_str())),
        ];
        if let Some(max) = max_open {
            values.push((":max_open", n(max)));
        }
        let used = |token: &str| {
            expression.contains(token) || condition.is_some_and(|c| c.contains(token))
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::balance_key(user, currency)))
            .update_expression(&expression)
            .set_condition_expression(condition.map(str::to_string))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (token, name) in names {
            if used(token) {
                update = update.expression_attribute_names(token, name);
            }
        }
        for (token, value) in values {
            if used(token) {
                update = update.expression_attribute_values(token, value);
            }
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(backend)?)
            .build())
    }

    /// The conditional writes of one state-machine edge: the withdrawal's status change
    /// (conditioned on the exact status it was read in, with an audit entry appended to the
    /// same item), the balance movement, and the member's shard of the batch's final counter
    /// when a member settles or is rejected. Returns them with the withdrawal as it will be.
    pub(super) fn transition_items(
        &self,
        w: &Withdrawal,
        transition: Transition,
        details: &TransitionDetails,
        now_t: DateTime<Utc>,
    ) -> Result<(Vec<(TxGuard, TransactWriteItem)>, Withdrawal), StoreError> {
        let to = w
            .status
            .apply(transition)
            .map_err(|e| StoreError::StateChanged {
                current: Some(e.from),
            })?;
        let now = timestamp(&now_t);
        let entry = AuditEntry {
            at: now.clone(),
            from: Some(w.status),
            to,
            by: details.actor.clone(),
            event_id: details.event_id.clone(),
            reason: details.failure_reason.clone(),
        };
        let mut updated = w.clone();
        updated.status = to;
        updated.updated_at = now_t;
        updated.audit.push(entry.clone());
        let mut set = vec![
            "#st = :to",
            "#ua = :now",
            "#au = list_append(if_not_exists(#au, :empty), :audit)",
        ];
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::withdrawal_key(&w.user_id, w.id)))
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ua", "updated_at")
            .expression_attribute_names("#au", "audit")
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":from", s(w.status.as_str()))
            .expression_attribute_values(":now", s(&now))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":audit", AttributeValue::L(vec![audit_to_item(&entry)]))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(reason) = &details.failure_reason {
            set.push("#fr = :fr");
            update = update
                .expression_attribute_names("#fr", "failure_reason")
                .expression_attribute_values(":fr", s(reason));
            updated.failure_reason = Some(reason.clone());
        }
        if let Some(reference) = &details.provider_reference {
            set.push("#pr = :pr");
            update = update
                .expression_attribute_names("#pr", "provider_reference")
                .expression_attribute_values(":pr", s(reference));
            updated.provider_reference = Some(reference.clone());
        }
        if let Some(batch) = details.batch_id {
            set.push("#bi = :bi");
            update = update
                .expression_attribute_names("#bi", "batch_id")
                .expression_attribute_values(":bi", s(batch.to_string()));
            updated.batch_id = Some(batch);
        }
        let mut expression = format!("SET {}", set.join(", "));
        if w.status == WithdrawalStatus::Pending {
            expression.push_str(&format!(
                " REMOVE {}, {}",
                schema::PENDING_PK,
                schema::PENDING_SK
            ));
        }
        let update = update
            .update_expression(expression)
            .condition_expression("#st = :from")
            .build()
            .map_err(backend)?;
        let mut items = vec![(
            TxGuard::Withdrawal(w.id),
            TransactWriteItem::builder().update(update).build(),
        )];
        let effect = transition.balance_effect();
        if effect != BalanceEffect::None {
            items.push((
                TxGuard::Balance,
                self.balance_update(
                    &w.user_id,
                    &w.currency,
                    effect,
                    w.amount.value(),
                    &now,
                    None,
                )?,
            ));
        }
        if matches!(transition, Transition::Cancel | Transition::Reject) {
            if let Some(day) = w.limit_day {
                items.push((TxGuard::DayCounter, self.day_counter_give_back(w, day)?));
            }
        }
        let member_finishes = matches!(transition, Transition::Settle | Transition::Reject)
            && w.status == WithdrawalStatus::Submitted;
        if let (true, Some(batch)) = (member_finishes, w.batch_id) {
            items.push((
                TxGuard::BatchCounter,
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .key(schema::PK, s(TableSchema::batch_pk(batch)))
                            .key(schema::SK, s(TableSchema::batch_counter_sk(w.id)))
                            // No existence condition: a shard is created by its first
                            // settlement. The withdrawal's conditional status change in the same
                            // transaction is what makes each member count once.
                            .update_expression("ADD final_count :one SET updated_at = :now")
                            .expression_attribute_values(":one", n(1))
                            .expression_attribute_values(":now", s(&now))
                            .build()
                            .map_err(backend)?,
                    )
                    .build(),
            ));
        }
        if let Some(event) = &details.record_event {
            items.push((TxGuard::Event, self.event_put(event, &now_t)?));
        }
        Ok((items, updated))
    }

    fn event_put(
        &self,
        event: &super::EventRecord,
        now: &DateTime<Utc>,
    ) -> Result<TransactWriteItem, StoreError> {
        let item = HashMap::from([
            (
                schema::PK.to_string(),
                s(TableSchema::event_pk(&event.event_id)),
            ),
            (schema::SK.to_string(), s(TableSchema::SINGLETON_SK)),
            ("type".into(), s("EVENT")),
            ("event_type".into(), s(&event.event_type)),
            ("reference".into(), s(&event.reference)),
            ("outcome".into(), s(&event.outcome)),
            ("received_at".into(), s(timestamp(now))),
            (
                schema::TTL_ATTRIBUTE.into(),
                n(now.timestamp() + EVENT_TTL_SECS),
            ),
        ]);
        self.put_new(item)
    }

    /// The items of a withdrawal request's single transaction: the balance lock, the withdrawal,
    /// with a key the idempotency record and, when the currency has a daily limit, the day's
    /// counter. Public so the benchmark can send exactly these items through the bare SDK.
    pub fn request_items(
        &self,
        w: &Withdrawal,
        idempotency: Option<&IdempotencyRecord>,
        max_open: u32,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        Ok(self
            .request_guarded(w, idempotency, max_open)?
            .into_iter()
            .map(|(_, item)| item)
            .collect())
    }

    /// [`Self::request_items`], each named by the condition it guards, so a cancellation reason
    /// is read by name, never by position.
    fn request_guarded(
        &self,
        w: &Withdrawal,
        idempotency: Option<&IdempotencyRecord>,
        max_open: u32,
    ) -> Result<Vec<(RequestGuard, TransactWriteItem)>, StoreError> {
        let now = timestamp(&w.created_at);
        let lock = self.balance_update(
            &w.user_id,
            &w.currency,
            BalanceEffect::Lock,
            w.amount.value(),
            &now,
            Some(max_open),
        )?;
        let mut items = vec![
            (RequestGuard::Balance, lock),
            (
                RequestGuard::Withdrawal,
                self.put_new(self.withdrawal_item(w))?,
            ),
        ];
        if let Some(rec) = idempotency {
            items.push((
                RequestGuard::IdempotencyKey,
                self.put_new(idempotency_item(rec))?,
            ));
        }
        if let (Some(day), Some(limit)) = (w.limit_day, w.currency.daily_limit()) {
            items.push((
                RequestGuard::DayCounter,
                self.day_counter_take(w, day, limit)?,
            ));
        }
        Ok(items)
    }

    fn day_counter_key(user: &UserId, currency: &Currency, day: NaiveDate) -> Item {
        HashMap::from([
            (schema::PK.to_string(), s(TableSchema::user_pk(user))),
            (
                schema::SK.to_string(),
                s(TableSchema::day_counter_sk(currency.code(), day)),
            ),
        ])
    }

    /// Adds the amount to the day's counter unless that would pass the limit. The condition
    /// compares with `limit - amount` because a condition cannot add; an amount above the
    /// whole limit is refused here, as `attribute_not_exists` would otherwise let it through
    /// on a fresh day.
    fn day_counter_take(
        &self,
        w: &Withdrawal,
        day: NaiveDate,
        limit: Decimal,
    ) -> Result<TransactWriteItem, StoreError> {
        let room = limit - w.amount.value();
        if room < Decimal::ZERO {
            return Err(StoreError::DailyLimitExceeded(format!(
                "{} {ccy} is above the daily withdrawal limit of {} {ccy}",
                w.amount,
                w.currency.format(limit),
                ccy = w.currency.code()
            )));
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::day_counter_key(&w.user_id, &w.currency, day)))
            .update_expression("ADD #used :amt SET #ttl = if_not_exists(#ttl, :ttl)")
            .condition_expression("attribute_not_exists(#used) OR #used <= :room")
            .expression_attribute_names("#used", "used")
            .expression_attribute_names("#ttl", schema::TTL_ATTRIBUTE)
            .expression_attribute_values(":amt", n(w.amount.value()))
            .expression_attribute_values(":room", n(room))
            .expression_attribute_values(":ttl", n(day_counter_expiry(day)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(backend)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Gives a cancelled or rejected withdrawal's amount back to its creation day. No
    /// condition, so the counter can never block a cancel: a counter that expired is recreated
    /// at zero (`if_not_exists(used, :amt) - :amt`) rather than negative.
    fn day_counter_give_back(
        &self,
        w: &Withdrawal,
        day: NaiveDate,
    ) -> Result<TransactWriteItem, StoreError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::day_counter_key(&w.user_id, &w.currency, day)))
            .update_expression(
                "SET #used = if_not_exists(#used, :amt) - :amt, #ttl = if_not_exists(#ttl, :ttl)",
            )
            .expression_attribute_names("#used", "used")
            .expression_attribute_names("#ttl", schema::TTL_ATTRIBUTE)
            .expression_attribute_values(":amt", n(w.amount.value()))
            .expression_attribute_values(":ttl", n(day_counter_expiry(day)))
            .build()
            .map_err(backend)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The refusal for a day counter whose condition failed, with what is left of the limit
    /// today, read from the counter as the cancellation reason returned it.
    fn daily_limit_exceeded(&self, w: &Withdrawal, counter: Option<&Item>) -> StoreError {
        let limit = w.currency.daily_limit().unwrap_or(Decimal::ZERO);
        let used = counter
            .and_then(|i| i.get("used"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| Decimal::from_str(v).ok())
            .unwrap_or(Decimal::ZERO);
        let remaining = (limit - used).max(Decimal::ZERO);
        StoreError::DailyLimitExceeded(format!(
            "daily withdrawal limit of {} {ccy} reached: {} {ccy} left today (UTC)",
            w.currency.format(limit),
            w.currency.format(remaining),
            ccy = w.currency.code()
        ))
    }

    fn withdrawal_item(&self, w: &Withdrawal) -> Item {
        let mut item = Self::withdrawal_key(&w.user_id, w.id);
        let mut put = |k: &str, v: AttributeValue| {
            item.insert(k.to_string(), v);
        };
        put(schema::TYPE_ATTRIBUTE, s(schema::WITHDRAWAL_TYPE));
        put("id", s(w.id.to_string()));
        put("user_id", s(w.user_id.as_str()));
        put("currency", s(w.currency.code().as_str()));
        put("amount", n(w.amount.value()));
        put("bank_account", s(w.bank_account.expose()));
        put("status", s(w.status.as_str()));
        put("created_at", s(timestamp(&w.created_at)));
        put("updated_at", s(timestamp(&w.updated_at)));
        if let Some(b) = w.batch_id {
            put("batch_id", s(b.to_string()));
        }
        if let Some(r) = &w.provider_reference {
            put("provider_reference", s(r));
        }
        if let Some(r) = &w.failure_reason {
            put("failure_reason", s(r));
        }
        if let Some(day) = w.limit_day {
            put("limit_day", s(day.format(schema::DAY_FORMAT).to_string()));
        }
        put(
            "audit",
            AttributeValue::L(w.audit.iter().map(audit_to_item).collect()),
        );
        if w.status == WithdrawalStatus::Pending {
            // Sparse index: only pending withdrawals carry these, so the batcher reads exactly
            // what is due, oldest first.
            put(
                schema::PENDING_PK,
                s(TableSchema::pending_pk(
                    w.currency.code(),
                    w.id.shard(self.pending_shards),
                )),
            );
            put(schema::PENDING_SK, s(w.id.to_string()));
        }
        item
    }

    pub(super) fn withdrawal_from_item(&self, item: &Item) -> Result<Withdrawal, StoreError> {
        withdrawal_from_item(&self.currencies, item)
    }

    fn balance_from_item(&self, item: &Item) -> Result<(UserId, Balance), StoreError> {
        let r = Reader(item);
        let user = UserId::parse(r.s("user_id")?).map_err(corrupt)?;
        let balance = Balance {
            currency: self.currency(r.s("currency")?)?,
            available: r.n("available")?,
            locked: r.n("locked")?,
            paid_out: r.n("paid_out")?,
            credited: r.n("credited")?,
            open_count: r
                .n("open_count")?
                .try_into()
                .map_err(|_| StoreError::Corrupt("open_count".into()))?,
        };
        Ok((user, balance))
    }

    fn credit_from_item(&self, item: &Item) -> Result<CreditRecord, StoreError> {
        credit_from_item(&self.currencies, item)
    }

    pub(super) fn currency(&self, code: &str) -> Result<Currency, StoreError> {
        currency(&self.currencies, code)
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
            &timestamp(&credit.created_at),
            None,
        )?;
        // The record's put is the only conditional item: it exists already exactly when the
        // reference was used, and then the cancellation reason carries that first record.
        let guarded = [
            (CreditGuard::Balance, balance),
            (CreditGuard::Record, self.put_new(credit_item(credit))?),
        ];
        let (guards, items): (Vec<_>, Vec<_>) = guarded.into_iter().unzip();
        // A fresh token per call: the record's condition, not the token, makes a repeat a no-op.
        let token = ulid::Ulid::new().to_string();
        let reasons = match self.transact(items, &token).await {
            Ok(()) => return Ok(CreditOutcome::Recorded(credit.clone())),
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(reasons)) => reasons,
        };
        let first = guards
            .iter()
            .zip(&reasons)
            .find(|(g, r)| **g == CreditGuard::Record && failed(r))
            .and_then(|(_, r)| r.item())
            .ok_or_else(|| StoreError::Backend(format!("credit cancelled: {reasons:?}")))?;
        let first = self.credit_from_item(first)?;
        if first.same_credit(credit) {
            Ok(CreditOutcome::Replayed(first))
        } else {
            Err(StoreError::ReferenceReused(format!(
                "{} was credited {} {} to {} at {}",
                first.reference,
                first.currency.format(first.amount.value()),
                first.currency,
                first.user_id,
                timestamp(&first.created_at)
            )))
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
        let (guards, items): (Vec<_>, Vec<_>) = self
            .request_guarded(w, idempotency, max_open)?
            .into_iter()
            .unzip();
        let reasons = match self.transact(items, &w.id.to_string()).await {
            Ok(()) => return Ok(()),
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(reasons)) => reasons,
        };
        let refused = |guard: RequestGuard| {
            guards
                .iter()
                .zip(&reasons)
                .find(|(g, r)| **g == guard && failed(r))
                .map(|(_, r)| r)
        };
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
            return Err(StoreError::IdempotencyKeyTaken(first));
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
            if available >= w.amount.value() && open.is_some_and(|o| o >= max_open) {
                return Err(StoreError::TooManyOpen);
            }
            return Err(StoreError::InsufficientFunds);
        }
        Err(StoreError::Backend(format!(
            "withdrawal id collision: {:?}",
            reasons.iter().map(|r| r.code()).collect::<Vec<_>>()
        )))
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
        let (guarded, updated) = self.transition_items(w, transition, &details, Utc::now())?;
        let (guards, items): (Vec<_>, Vec<_>) = guarded.into_iter().unzip();
        // One token per call, reused by its own retries: a retry after a timeout cannot apply
        // twice, while a concurrent caller's attempt stays a separate, conditional one.
        let token = ulid::Ulid::new().to_string();
        match self.transact(items, &token).await {
            Ok(()) => Ok(updated),
            Err(TxError::Store(e)) => Err(e),
            Err(TxError::Cancelled(reasons)) => {
                let refused = |want: TxGuard| {
                    guards
                        .iter()
                        .zip(&reasons)
                        .find(|(g, r)| **g == want && failed(r))
                        .map(|(_, r)| r)
                };
                let status = refused(TxGuard::Withdrawal(w.id));
                if status.is_none() && refused(TxGuard::Event).is_some() {
                    return Err(StoreError::DuplicateEvent);
                }
                if let Some(r) = status {
                    let current = r
                        .item()
                        .and_then(|i| i.get("status"))
                        .and_then(|v| v.as_s().ok())
                        .and_then(|s| WithdrawalStatus::parse(s));
                    return match r.item() {
                        None => Err(StoreError::NotFound),
                        Some(_) => Err(StoreError::StateChanged { current }),
                    };
                }
                // The status matched but the balance (or batch) refused: the books would break.
                Err(StoreError::Corrupt(format!(
                    "{} {}: {:?} refused by {:?}",
                    w.user_id,
                    w.id,
                    transition,
                    reasons.iter().map(|r| r.code()).collect::<Vec<_>>()
                )))
            }
        }
    }

    async fn event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .get(TableSchema::event_pk(event_id), TableSchema::SINGLETON_SK)
            .await?
            .is_some())
    }

    async fn record_event(&self, event: &super::EventRecord) -> Result<(), StoreError> {
        let put = self.event_put(event, &Utc::now())?;
        match self
            .transact(vec![put], &ulid::Ulid::new().to_string())
            .await
        {
            Ok(()) => Ok(()),
            Err(TxError::Cancelled(_)) => Err(StoreError::DuplicateEvent),
            Err(TxError::Store(e)) => Err(e),
        }
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

/// The items of a withdrawal request's transaction, to read its cancellation reasons by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestGuard {
    Balance,
    Withdrawal,
    IdempotencyKey,
    DayCounter,
}

/// When DynamoDB may delete a day's counter: [`DAY_COUNTER_KEEP_DAYS`] after the day ends.
fn day_counter_expiry(day: NaiveDate) -> i64 {
    (day + chrono::Days::new(DAY_COUNTER_KEEP_DAYS + 1))
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp())
}

/// The items of a credit's transaction, to read its cancellation reasons by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CreditGuard {
    Balance,
    Record,
}

/// Whether this item's condition is what cancelled the transaction.
pub(super) fn failed(reason: &CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

/// A table item as the table's stream shows it, decoded by the same codec as every read.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredItem {
    Withdrawal(Box<Withdrawal>),
    Credit(CreditRecord),
    /// Balances, batches, idempotency keys, events, counters: no one outside hears of them.
    Other,
}

/// The status a withdrawal image holds, read without decoding the rest (the publisher's old
/// image: only whether the status changed matters there).
pub fn stored_status(item: &Item) -> Option<WithdrawalStatus> {
    let r = Reader(item);
    (r.opt_s(schema::TYPE_ATTRIBUTE) == Some(schema::WITHDRAWAL_TYPE))
        .then(|| r.opt_s("status").and_then(WithdrawalStatus::parse))
        .flatten()
}

/// Decodes a stream image (event-publisher); items are told apart by their `type` attribute.
pub fn decode_stored_item(currencies: &Currencies, item: &Item) -> Result<StoredItem, StoreError> {
    match Reader(item).opt_s(schema::TYPE_ATTRIBUTE) {
        Some(schema::WITHDRAWAL_TYPE) => Ok(StoredItem::Withdrawal(Box::new(
            withdrawal_from_item(currencies, item)?,
        ))),
        Some(schema::CREDIT_TYPE) => Ok(StoredItem::Credit(credit_from_item(currencies, item)?)),
        _ => Ok(StoredItem::Other),
    }
}

fn withdrawal_from_item(currencies: &Currencies, item: &Item) -> Result<Withdrawal, StoreError> {
    let r = Reader(item);
    let currency = currency(currencies, r.s("currency")?)?;
    let amount = Amount::new(r.n("amount")?, &currency).map_err(corrupt)?;
    Ok(Withdrawal {
        id: WithdrawalId::parse(r.s("id")?).map_err(corrupt)?,
        user_id: UserId::parse(r.s("user_id")?).map_err(corrupt)?,
        amount,
        currency,
        bank_account: BankAccount::parse(r.s("bank_account")?).map_err(corrupt)?,
        status: WithdrawalStatus::parse(r.s("status")?)
            .ok_or_else(|| StoreError::Corrupt("unknown status".into()))?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        batch_id: r
            .opt_s("batch_id")
            .map(BatchId::parse)
            .transpose()
            .map_err(corrupt)?,
        provider_reference: r.opt_s("provider_reference").map(str::to_string),
        failure_reason: r.opt_s("failure_reason").map(str::to_string),
        limit_day: r
            .opt_s("limit_day")
            .map(|d| NaiveDate::parse_from_str(d, schema::DAY_FORMAT))
            .transpose()
            .map_err(corrupt)?,
        audit: match item.get("audit") {
            Some(AttributeValue::L(l)) => {
                l.iter().map(audit_from_item).collect::<Result<_, _>>()?
            }
            _ => Vec::new(),
        },
    })
}

fn credit_from_item(currencies: &Currencies, item: &Item) -> Result<CreditRecord, StoreError> {
    let r = Reader(item);
    let currency = currency(currencies, r.s("currency")?)?;
    Ok(CreditRecord {
        reference: CreditReference::parse(r.s("reference")?).map_err(corrupt)?,
        user_id: UserId::parse(r.s("user_id")?).map_err(corrupt)?,
        amount: Amount::new(r.n("amount")?, &currency).map_err(corrupt)?,
        currency,
        actor: r.s("actor")?.to_string(),
        description: r.opt_s("description").map(str::to_string),
        created_at: r.time("created_at")?,
    })
}

fn currency(currencies: &Currencies, code: &str) -> Result<Currency, StoreError> {
    currencies
        .get(code)
        .cloned()
        .map_err(|_| StoreError::Corrupt(format!("currency {code} is not configured")))
}

fn credit_item(c: &CreditRecord) -> Item {
    let mut item = HashMap::from([
        (
            schema::PK.to_string(),
            s(TableSchema::credit_pk(&c.reference)),
        ),
        (schema::SK.to_string(), s(TableSchema::SINGLETON_SK)),
        (schema::TYPE_ATTRIBUTE.into(), s(schema::CREDIT_TYPE)),
        ("reference".into(), s(c.reference.as_str())),
        ("user_id".into(), s(c.user_id.as_str())),
        ("currency".into(), s(c.currency.code().as_str())),
        ("amount".into(), n(c.amount.value())),
        ("actor".into(), s(&c.actor)),
        ("created_at".into(), s(timestamp(&c.created_at))),
    ]);
    if let Some(d) = &c.description {
        item.insert("description".into(), s(d));
    }
    item
}

pub(super) enum TxError {
    Cancelled(Vec<CancellationReason>),
    Store(StoreError),
}

fn idempotency_from_item(
    user: &UserId,
    key: &IdempotencyKey,
    item: &Item,
) -> Result<IdempotencyRecord, StoreError> {
    let r = Reader(item);
    Ok(IdempotencyRecord {
        user_id: user.clone(),
        key: key.clone(),
        fingerprint: r.s("fingerprint")?.to_string(),
        withdrawal_id: WithdrawalId::parse(r.s("withdrawal_id")?).map_err(corrupt)?,
        status_code: r
            .n("status_code")?
            .try_into()
            .map_err(|_| StoreError::Corrupt("status_code".into()))?,
        response_body: r.s("response_body")?.to_string(),
        created_at: r.time("created_at")?,
    })
}

fn idempotency_item(rec: &IdempotencyRecord) -> Item {
    HashMap::from([
        (
            schema::PK.to_string(),
            s(TableSchema::idempotency_pk(&rec.user_id, &rec.key)),
        ),
        (schema::SK.to_string(), s(TableSchema::SINGLETON_SK)),
        ("type".into(), s("IDEMPOTENCY")),
        ("fingerprint".into(), s(&rec.fingerprint)),
        ("withdrawal_id".into(), s(rec.withdrawal_id.to_string())),
        ("status_code".into(), n(rec.status_code)),
        ("response_body".into(), s(&rec.response_body)),
        ("created_at".into(), s(timestamp(&rec.created_at))),
        (
            schema::TTL_ATTRIBUTE.into(),
            n(rec.created_at.timestamp() + IDEMPOTENCY_TTL_SECS),
        ),
    ])
}

/// Maps SDK failures to what callers can act on: transient ones become `Unavailable`.
pub(super) fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    err: SdkError<E, R>,
) -> StoreError {
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(format!("{err:?}").chars().take(200).collect())
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            match code.as_str() {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
                | "InternalServerError"
                | "ServiceUnavailable" => StoreError::Unavailable(code),
                _ => StoreError::Backend(format!(
                    "{code}: {}",
                    se.err().message().unwrap_or_default()
                )),
            }
        }
        _ => StoreError::Backend(format!("{err:?}").chars().take(200).collect()),
    }
}

fn backoff(attempt: u32) -> Duration {
    // Full jitter: spreads retries of transactions that collided on the same balance.
    let cap_ms = (10u64 << attempt.min(6)).min(500);
    let jitter = (ulid::Ulid::new().random() as u64) % cap_ms.max(1);
    Duration::from_millis(5 + jitter)
}

/// Audit entries live on the withdrawal item itself, so each is written by the same
/// conditional write as the change it records.
fn audit_to_item(e: &AuditEntry) -> AttributeValue {
    let mut m = HashMap::from([
        ("at".to_string(), s(&e.at)),
        ("from".to_string(), s(e.from.map_or("-", |f| f.as_str()))),
        ("to".to_string(), s(e.to.as_str())),
        ("by".to_string(), s(&e.by)),
    ]);
    if let Some(id) = &e.event_id {
        m.insert("event_id".into(), s(id));
    }
    if let Some(r) = &e.reason {
        m.insert("reason".into(), s(r));
    }
    AttributeValue::M(m)
}

fn audit_from_item(v: &AttributeValue) -> Result<AuditEntry, StoreError> {
    let m = v
        .as_m()
        .map_err(|_| StoreError::Corrupt("audit entry".into()))?;
    let r = Reader(m);
    let status = |name: &str| -> Result<WithdrawalStatus, StoreError> {
        WithdrawalStatus::parse(r.s(name)?)
            .ok_or_else(|| StoreError::Corrupt(format!("audit {name}")))
    };
    Ok(AuditEntry {
        at: r.s("at")?.to_string(),
        from: match r.s("from")? {
            "-" => None,
            _ => Some(status("from")?),
        },
        to: status("to")?,
        by: r.s("by")?.to_string(),
        event_id: r.opt_s("event_id").map(str::to_string),
        reason: r.opt_s("reason").map(str::to_string),
    })
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) struct Reader<'a>(pub(super) &'a Item);

impl Reader<'_> {
    pub(super) fn s(&self, name: &str) -> Result<&str, StoreError> {
        self.opt_s(name)
            .ok_or_else(|| StoreError::Corrupt(format!("missing string attribute {name}")))
    }
    pub(super) fn opt_s(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
    }
    pub(super) fn n(&self, name: &str) -> Result<Decimal, StoreError> {
        self.0
            .get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| Decimal::from_str(v).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("missing number attribute {name}")))
    }
    pub(super) fn time(&self, name: &str) -> Result<DateTime<Utc>, StoreError> {
        DateTime::parse_from_rfc3339(self.s(name)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| StoreError::Corrupt(format!("bad timestamp {name}")))
    }
}
