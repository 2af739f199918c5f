//! Table creation and operator scans; nothing on a request, batch or webhook path uses these.

use super::claims::SortKeys;
use super::codec::{n, s, Item};
use super::tx::classify;
use super::DynamoStore;
use crate::domain::{Balance, Currency, UserId, Withdrawal, WithdrawalId};
use crate::store::schema::{self, TableSchema};
use crate::store::{CreditRecord, StoreError};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification,
};

/// On the `META`/`PENDING_SHARDS` item: the most pending-index shards ever written.
pub(super) const MAX_SHARDS_ATTRIBUTE: &str = "max_shards";

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
    /// Removed ones too (their removal is an event `operator republish` can rebuild).
    pub beneficiaries: Vec<crate::domain::Beneficiary>,
}

impl DynamoStore {
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

    pub(super) async fn create(&self, stream: bool) -> Result<bool, StoreError> {
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

    /// Reads every balance, withdrawal, credit, batch and beneficiary (operator tools only; the
    /// request path never scans).
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
                Some(sk) if sk.starts_with(TableSchema::BENEFICIARY_SK_PREFIX) => {
                    match super::codec::beneficiary_from_item(&item) {
                        Ok(b) => report.beneficiaries.push(b),
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
}

#[async_trait::async_trait]
impl crate::store::AdminStore for DynamoStore {
    async fn find_withdrawal(&self, id: WithdrawalId) -> Result<Option<Withdrawal>, StoreError> {
        DynamoStore::find_withdrawal(self, id).await
    }

    async fn in_review(
        &self,
        currency: &Currency,
        limit: usize,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        let pk = TableSchema::review_pk(currency.code());
        self.index_items(&pk, SortKeys::after(None), limit)
            .await?
            .iter()
            .map(|item| self.withdrawal_from_item(item))
            .collect()
    }
}
