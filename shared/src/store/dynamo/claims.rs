//! Reading the pending index and claiming pending withdrawals into a batch, chunk by chunk.

use super::codec::{backend, member_to_item, n, s, Item, Reader};
use super::tx::{classify, TxError, TxGuard};
use super::writes::changed;
use super::DynamoStore;
use crate::domain::{
    timestamp, Batch, BatchStatus, Currency, Member, Transition, Withdrawal, WithdrawalId,
};
use crate::store::schema::{self, TableSchema};
use crate::store::{ClaimResult, StoreError, TransitionDetails};
use crate::store::{Failure, Refusal};
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use chrono::Utc;
use rust_decimal::Decimal;
use std::collections::HashMap;

/// A transaction's items, each under the guard its refusal is read by.
type Guarded = Vec<(TxGuard, TransactWriteItem)>;

/// Withdrawals per claim transaction: 100 items at most, two of them the batch record and its
/// counter (created with the first chunk).
pub(super) const CLAIM_CHUNK: usize = 98;

impl DynamoStore {
    /// Our own shard count, or more if request functions ever wrote into more shards (their
    /// count is recorded at their cold start): one small read per page of pending withdrawals.
    async fn pending_shards_to_read(&self) -> Result<u32, StoreError> {
        let recorded = match self
            .get(
                TableSchema::META_PK.to_string(),
                TableSchema::PENDING_SHARDS_SK,
            )
            .await?
        {
            Some(item) => Reader(&item)
                .n(super::admin::MAX_SHARDS_ATTRIBUTE)?
                .try_into()
                .map_err(|_| StoreError::Failed(Failure::Corrupt("max_shards".into())))?,
            None => 0,
        };
        Ok(self.pending_shards.max(recorded))
    }

    async fn pending_in_shard(
        &self,
        pk: &str,
        limit: usize,
        after: Option<WithdrawalId>,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        self.index_items(pk, SortKeys::after(after.map(|id| id.to_string())), limit)
            .await?
            .iter()
            .map(|i| self.withdrawal_from_item(i))
            .collect()
    }

    /// Up to `limit` items of one sparse-index key whose sort keys are in `range`, in sort-key
    /// order.
    pub(super) async fn index_items(
        &self,
        pk: &str,
        range: SortKeys,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        let (condition, bound) = match range {
            SortKeys::After(k) => ("#pk = :pk AND #sk > :bound", k),
            SortKeys::Before(k) => ("#pk = :pk AND #sk < :bound", k),
        };
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(schema::PENDING_INDEX)
                .key_condition_expression(condition)
                .expression_attribute_names("#pk", schema::PENDING_PK)
                .expression_attribute_names("#sk", schema::PENDING_SK)
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":bound", s(bound.clone()))
                .limit((limit - out.len()).min(1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(classify)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// See [`crate::store::BatchStore::pending`]. Exactly the oldest `limit` after `after`
    /// across the shards, reading little more than `limit` items: each shard is read a share at
    /// a time, and every withdrawal up to the lowest last id read from a shard that still has
    /// more is known (a shard's items come in id order). Only the shard that holds that boundary
    /// is read further, until `limit` are known or every shard is exhausted. (Reading `limit`
    /// from every shard would read `shards` times what a page returns.)
    pub(super) async fn pending_oldest(
        &self,
        currency: &Currency,
        limit: usize,
        after: Option<WithdrawalId>,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        let shards = self.pending_shards_to_read().await?;
        // A quarter over the even share: with ids spread evenly over shards, one read each
        // usually covers the page.
        let share = limit
            .div_ceil(shards.max(1) as usize)
            .saturating_mul(5)
            .div_ceil(4)
            .max(1);
        let mut reads: Vec<ShardRead> = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            let mut read = ShardRead::new(TableSchema::pending_pk(currency.code(), shard), after);
            self.read_more(&mut read, share).await?;
            reads.push(read);
        }
        loop {
            // The shard with more to read whose last id is lowest bounds what is known.
            let bound = reads
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.exhausted)
                .min_by_key(|(_, r)| r.last)
                .map(|(i, r)| (i, r.last));
            let known = |w: &&Withdrawal| bound.is_none_or(|(_, last)| Some(w.id) <= last);
            let count = reads.iter().flat_map(|r| &r.items).filter(known).count();
            match bound {
                // At least what is still missing: a shard holding most of the backlog (shards
                // lowered, uneven ids) is then read in a few queries, not a share at a time.
                Some((i, _)) if count < limit => {
                    self.read_more(&mut reads[i], share.max(limit - count))
                        .await?
                }
                _ => {
                    let mut out: Vec<Withdrawal> = reads
                        .iter()
                        .flat_map(|r| &r.items)
                        .filter(known)
                        .cloned()
                        .collect();
                    out.sort_by_key(|w| w.id);
                    out.truncate(limit);
                    return Ok(out);
                }
            }
        }
    }

    /// The next `n` items of one shard after what it read so far.
    async fn read_more(&self, read: &mut ShardRead, n: usize) -> Result<(), StoreError> {
        let page = self.pending_in_shard(&read.pk, n, read.last).await?;
        read.exhausted = page.len() < n;
        if let Some(w) = page.last() {
            read.last = Some(w.id);
        }
        read.items.extend(page);
        Ok(())
    }

    /// See [`crate::store::BatchStore::claim`].
    pub(super) async fn claim_members(
        &self,
        batch: &Batch,
        owner: &str,
        chunk: &[Withdrawal],
        create: bool,
    ) -> Result<ClaimResult, StoreError> {
        assert!(chunk.len() <= CLAIM_CHUNK, "claim chunk too large");
        let mut remaining: Vec<Withdrawal> = chunk.to_vec();
        let mut lost = Vec::new();
        while !remaining.is_empty() {
            let (items, claimed) = self.claim_items(batch, owner, &remaining, create)?;
            let token = ulid::Ulid::new().to_string();
            match self.transact(items, &token).await {
                Ok(()) => {
                    return Ok(ClaimResult { claimed, lost });
                }
                Err(TxError::Store(e)) => return Err(e),
                Err(TxError::Cancelled(refusals)) => {
                    let refused = refusals.refused_guards();
                    if refused.contains(&TxGuard::Batch) {
                        return Err(if create {
                            StoreError::Failed(Failure::Backend(format!(
                                "batch {} already exists",
                                batch.id
                            )))
                        } else {
                            StoreError::Refused(Refusal::LeaseLost)
                        });
                    }
                    let before = remaining.len();
                    let mut keep = Vec::with_capacity(before);
                    for w in remaining {
                        if refused.contains(&TxGuard::Withdrawal(w.id)) {
                            lost.push(w.id);
                        } else {
                            keep.push(w);
                        }
                    }
                    if keep.len() == before {
                        return Err(StoreError::Failed(Failure::Backend(
                            "claim cancelled without a failed condition".into(),
                        )));
                    }
                    remaining = keep;
                }
            }
        }
        Ok(ClaimResult {
            claimed: Vec::new(),
            lost,
        })
    }

    /// The items of one claim transaction, each under its guard, and the withdrawals as the
    /// transaction leaves them: `remaining` moved PENDING → SUBMITTED into `batch`, and the
    /// batch record created (`create`: with its counter) or extended.
    fn claim_items(
        &self,
        batch: &Batch,
        owner: &str,
        remaining: &[Withdrawal],
        create: bool,
    ) -> Result<(Guarded, Vec<Withdrawal>), StoreError> {
        let actor = format!("batcher:{owner}");
        let now_t = Utc::now();
        let now = timestamp(&now_t);
        let mut items = Vec::with_capacity(remaining.len() + 2);
        let mut claimed = Vec::with_capacity(remaining.len());
        for w in remaining {
            if let Some(beneficiary) = w.destination.unresolved() {
                // The batcher resolves every destination before it claims: a member without an
                // account could not be paid.
                return Err(StoreError::Failed(Failure::Backend(format!(
                    "{}: beneficiary {beneficiary} not resolved before the claim",
                    w.id
                ))));
            }
            let details = TransitionDetails {
                batch_id: Some(batch.id),
                bank_account: match &w.destination {
                    crate::domain::Destination::Beneficiary { account, .. } => account.clone(),
                    crate::domain::Destination::Account(_) => None,
                },
                ..TransitionDetails::by(&actor)
            };
            let (tx, entry) =
                self.transition_items(&w.into(), Transition::Submit, &details, now_t)?;
            items.extend(tx);
            claimed.push(changed(w, &entry, &details, now_t));
        }
        let sum: Decimal = remaining.iter().map(|w| w.amount.value()).sum();
        let members: HashMap<String, AttributeValue> = remaining
            .iter()
            .map(|w| (w.id.to_string(), member_to_item(&Member::of(w))))
            .collect();
        let batch_item = if create {
            let mut item = Self::batch_key(batch.id);
            item.extend([
                ("type".to_string(), s("BATCH")),
                ("id".into(), s(batch.id.to_string())),
                ("currency".into(), s(batch.currency.code().as_str())),
                ("status".into(), s(BatchStatus::Claiming.as_str())),
                ("members".into(), AttributeValue::M(members)),
                ("member_count".into(), n(remaining.len())),
                ("total".into(), n(sum)),
                ("attempts".into(), n(0)),
                ("lease_owner".into(), s(owner)),
                ("lease_until".into(), n(batch.lease_until_ms)),
                ("created_at".into(), s(&now)),
                ("updated_at".into(), s(&now)),
                (schema::PENDING_PK.into(), s(TableSchema::OPEN_BATCHES_PK)),
                (schema::PENDING_SK.into(), s(batch.id.to_string())),
            ]);
            self.put_new(item)?
        } else {
            self.batch_extension(batch, owner, members, remaining.len(), sum, &now)?
        };
        items.push((TxGuard::Batch, batch_item));
        if create {
            let mut counter = HashMap::from([
                (schema::PK.to_string(), s(TableSchema::batch_pk(batch.id))),
                (schema::SK.to_string(), s(TableSchema::BATCH_COUNTER_SK)),
            ]);
            counter.insert("type".into(), s("BATCH_COUNTER"));
            counter.insert("final_count".into(), n(0));
            items.push((TxGuard::BatchCounter, self.put_new(counter)?));
        }
        Ok((items, claimed))
    }

    /// Adds a chunk's members to the batch this run is still claiming into (under its lease).
    fn batch_extension(
        &self,
        batch: &Batch,
        owner: &str,
        members: HashMap<String, AttributeValue>,
        count: usize,
        sum: Decimal,
        now: &str,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut set = vec!["updated_at = :now".to_string()];
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::batch_key(batch.id)))
            .condition_expression("#st = :claiming AND lease_owner = :owner")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":claiming", s(BatchStatus::Claiming.as_str()))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":sum", n(sum))
            .expression_attribute_values(":count", n(count));
        for (i, (wd, user)) in members.into_iter().enumerate() {
            set.push(format!("members.#m{i} = :m{i}"));
            update = update
                .expression_attribute_names(format!("#m{i}"), wd)
                .expression_attribute_values(format!(":m{i}"), user);
        }
        // `total` is a DynamoDB reserved word.
        let expr = format!("SET {} ADD #tot :sum, member_count :count", set.join(", "));
        update = update.expression_attribute_names("#tot", "total");
        Ok(TransactWriteItem::builder()
            .update(update.update_expression(expr).build().map_err(backend)?)
            .build())
    }

    /// The items of the claim transaction the batcher sends for `chunk`. Public so the benchmark
    /// can send exactly these through the bare SDK; everything else claims through
    /// [`crate::store::BatchStore::claim`] (lease, retries, refusals).
    #[doc(hidden)]
    pub fn claim_transaction_items(
        &self,
        batch: &Batch,
        owner: &str,
        chunk: &[Withdrawal],
        create: bool,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let (items, _) = self.claim_items(batch, owner, chunk, create)?;
        Ok(items.into_iter().map(|(_, item)| item).collect())
    }
}

/// What has been read of one pending-index shard: its items in id order, the last id read, and
/// whether the shard has nothing after it.
struct ShardRead {
    pk: String,
    items: Vec<Withdrawal>,
    last: Option<WithdrawalId>,
    exhausted: bool,
}

impl ShardRead {
    fn new(pk: String, after: Option<WithdrawalId>) -> Self {
        Self {
            pk,
            items: Vec::new(),
            last: after,
            exhausted: false,
        }
    }
}

/// The sort keys a sparse-index read takes: those after a key, or those before one.
pub(super) enum SortKeys {
    After(String),
    Before(String),
}

impl SortKeys {
    /// After `key`, or from the first: "0" sorts before every id ("wd_…", "bt_…").
    pub(super) fn after(key: Option<String>) -> Self {
        Self::After(key.unwrap_or_else(|| "0".to_string()))
    }
}
