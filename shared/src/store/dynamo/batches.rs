//! The batch store: batch records, leases, attempts, completion, reconciliation and operator
//! actions (claims are in `claims`).

use super::admin::ScanFilter;
use super::codec::{backend, n, note, s, Item, Reader};
use super::tx::{classify, TxError, TxGuard};
use crate::domain::{
    timestamp, Batch, BatchId, BatchStatus, Currency, CurrencyCode, Transition, Withdrawal,
    WithdrawalId, WithdrawalStatus,
};
use crate::store::schema::{self, TableSchema};
use crate::store::{AttemptResult, BatchStore, ClaimResult, StoreError, TransitionDetails};
use crate::store::{Failure, Refusal};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::writes::changed;
use super::DynamoStore;

use super::claims::{SortKeys, CLAIM_CHUNK};

impl DynamoStore {
    /// A conditional update of a batch record, returning the record as it now is.
    async fn update_batch(
        &self,
        id: BatchId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Batch>, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::batch_key(id)))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#st", "status")
            .return_values(ReturnValue::AllNew);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(out) => out.attributes.map(|a| self.batch_from_item(&a)).transpose(),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }
}

/// A batch's place on the reconcile list: queued now, after everything queued before.
fn reconcile_sk(id: BatchId) -> String {
    format!("{}#{id}", timestamp(&Utc::now()))
}

/// What each item of an operator's reject transaction guards, so a cancellation is read by
/// name: the batch's state, or the withdrawal's own transition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RejectGuard {
    BatchFlagged,
    WithdrawalStatus,
    Effect,
}

impl DynamoStore {
    /// The batch record (unless `counters_only`) and the sum of its counter items, from one
    /// consistent query of the batch's partition (the record and its counters share it).
    async fn batch_partition(
        &self,
        id: BatchId,
        counters_only: bool,
    ) -> Result<(Option<Batch>, u32), StoreError> {
        let mut total = Decimal::ZERO;
        let mut batch = None;
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_names("#pk", schema::PK)
                .expression_attribute_values(":pk", s(TableSchema::batch_pk(id)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            query = if counters_only {
                query
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :counter)")
                    .expression_attribute_names("#sk", schema::SK)
                    .expression_attribute_values(":counter", s(TableSchema::BATCH_COUNTER_SK))
            } else {
                query.key_condition_expression("#pk = :pk")
            };
            let page = query.send().await.map_err(classify)?;
            for item in page.items() {
                let r = Reader(item);
                let sk = r.s(schema::SK)?;
                if sk.starts_with(TableSchema::BATCH_COUNTER_SK) {
                    total += r.n("final_count")?;
                } else if sk == TableSchema::SINGLETON_SK {
                    batch = Some(self.batch_from_item(item)?);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let count = total
            .try_into()
            .map_err(|_| StoreError::Failed(Failure::Corrupt("final_count".into())))?;
        Ok((batch, count))
    }
}

#[async_trait]
impl BatchStore for DynamoStore {
    fn claim_chunk(&self) -> usize {
        CLAIM_CHUNK
    }

    async fn pending(
        &self,
        currency: &Currency,
        limit: usize,
        after: Option<WithdrawalId>,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        self.pending_oldest(currency, limit, after).await
    }

    async fn claim(
        &self,
        batch: &Batch,
        owner: &str,
        chunk: &[Withdrawal],
        create: bool,
    ) -> Result<ClaimResult, StoreError> {
        self.claim_members(batch, owner, chunk, create).await
    }

    async fn open_batches(&self) -> Result<Vec<Result<Batch, StoreError>>, StoreError> {
        Ok(self
            .index_items(
                TableSchema::OPEN_BATCHES_PK,
                SortKeys::after(None),
                usize::MAX,
            )
            .await?
            .iter()
            .map(|i| {
                self.batch_from_item(i).map_err(|e| {
                    let id = i.get("id").and_then(|v| v.as_s().ok()).map_or("?", |v| v);
                    StoreError::Failed(Failure::Corrupt(format!("batch {id}: {e}")))
                })
            })
            .collect())
    }

    async fn batch(&self, id: BatchId) -> Result<Option<Batch>, StoreError> {
        self.get(TableSchema::batch_pk(id), TableSchema::SINGLETON_SK)
            .await?
            .map(|i| self.batch_from_item(&i))
            .transpose()
    }

    async fn take_lease(
        &self,
        id: BatchId,
        owner: &str,
        until_ms: i64,
        now_ms: i64,
        states: &[BatchStatus],
    ) -> Result<Option<Batch>, StoreError> {
        let mut values = vec![
            (":owner", s(owner)),
            (":until", n(until_ms)),
            (":now", n(now_ms)),
            (":ts", s(timestamp(&Utc::now()))),
        ];
        let tokens = [":s0", ":s1", ":s2", ":s3", ":s4", ":s5", ":s6"];
        for (token, st) in tokens.iter().zip(states) {
            values.push((token, s(st.as_str())));
        }
        let condition = format!(
            "lease_until < :now AND #st IN ({})",
            tokens[..states.len()].join(", ")
        );
        self.update_batch(
            id,
            "SET lease_owner = :owner, lease_until = :until, updated_at = :ts",
            &condition,
            values,
        )
        .await
    }

    async fn close_claiming(&self, id: BatchId, owner: &str) -> Result<(), StoreError> {
        self.update_batch(
            id,
            "SET #st = :open, updated_at = :ts",
            "#st = :claiming AND lease_owner = :owner",
            vec![
                (":open", s(BatchStatus::Open.as_str())),
                (":claiming", s(BatchStatus::Claiming.as_str())),
                (":owner", s(owner)),
                (":ts", s(timestamp(&Utc::now()))),
            ],
        )
        .await?
        .map(|_| ())
        .ok_or(StoreError::Refused(Refusal::LeaseLost))
    }

    async fn record_attempt(
        &self,
        id: BatchId,
        owner: &str,
        result: &AttemptResult,
    ) -> Result<Batch, StoreError> {
        let now = timestamp(&Utc::now());
        let mut values = vec![
            (":open", s(BatchStatus::Open.as_str())),
            (":owner", s(owner)),
            (":ts", s(&now)),
            (":zero", n(0)),
            (":one", n(1)),
        ];
        // Every outcome releases the lease so the next run (or the webhook) can proceed.
        let update = match result {
            AttemptResult::Accepted { provider_batch_id } => {
                values.push((":to", s(BatchStatus::Accepted.as_str())));
                values.push((":pb", s(provider_batch_id)));
                "SET #st = :to, provider_batch_id = :pb, accepted_at = :ts, updated_at = :ts, \
                 last_attempt_at = :ts, lease_until = :zero, attempts = attempts + :one \
                 REMOVE last_error"
                    .to_string()
            }
            AttemptResult::Rejected { reason } => {
                values.push((":to", s(BatchStatus::Rejecting.as_str())));
                values.push((":reason", s(reason)));
                "SET #st = :to, reason = :reason, updated_at = :ts, last_attempt_at = :ts, \
                 lease_until = :zero, attempts = attempts + :one"
                    .to_string()
            }
            AttemptResult::Ambiguous {
                error,
                max_attempts,
            } => {
                let current = self.batch(id).await?.ok_or_else(|| {
                    StoreError::Failed(Failure::Backend(format!("batch {id} vanished")))
                })?;
                let flag = current.attempts + 1 >= *max_attempts;
                let to = if flag {
                    BatchStatus::NeedsOperator
                } else {
                    BatchStatus::Open
                };
                values.push((":to", s(to.as_str())));
                values.push((":err", s(error)));
                "SET #st = :to, last_error = :err, updated_at = :ts, last_attempt_at = :ts, \
                 lease_until = :zero, attempts = attempts + :one"
                    .to_string()
            }
        };
        self.update_batch(id, &update, "#st = :open AND lease_owner = :owner", values)
            .await?
            .ok_or(StoreError::Refused(Refusal::LeaseLost))
    }

    async fn finish_rejecting(&self, id: BatchId) -> Result<(), StoreError> {
        self.update_batch(
            id,
            &format!(
                "SET #st = :to, updated_at = :ts, {} = :reconcile, {} = :queued",
                schema::PENDING_PK,
                schema::PENDING_SK
            ),
            "#st = :rejecting",
            vec![
                (":to", s(BatchStatus::Rejected.as_str())),
                (":rejecting", s(BatchStatus::Rejecting.as_str())),
                (":ts", s(timestamp(&Utc::now()))),
                (":reconcile", s(TableSchema::RECONCILE_PK)),
                (":queued", s(reconcile_sk(id))),
            ],
        )
        .await?;
        Ok(())
    }

    async fn complete_if_final(&self, id: BatchId) -> Result<bool, StoreError> {
        let Some(batch) = self.batch(id).await? else {
            return Ok(false);
        };
        if !matches!(
            batch.status,
            BatchStatus::Accepted | BatchStatus::NeedsOperator
        ) {
            return Ok(false);
        }
        // A consistent read of the counters is enough to close: they only grow, each member
        // counts once (with its conditional status change), so reaching the member count means
        // every member is final for good.
        if self.final_count(id).await? < batch.member_count() {
            return Ok(false);
        }
        // Final: off the open list, onto the reconcile list.
        let closed = self
            .update_batch(
                id,
                &format!(
                    "SET #st = :to, updated_at = :ts, {} = :reconcile, {} = :queued",
                    schema::PENDING_PK,
                    schema::PENDING_SK
                ),
                "#st IN (:accepted, :flagged)",
                vec![
                    (":to", s(BatchStatus::Completed.as_str())),
                    (":accepted", s(BatchStatus::Accepted.as_str())),
                    (":flagged", s(BatchStatus::NeedsOperator.as_str())),
                    (":ts", s(timestamp(&Utc::now()))),
                    (":reconcile", s(TableSchema::RECONCILE_PK)),
                    (":queued", s(reconcile_sk(id))),
                ],
            )
            .await?;
        Ok(closed.is_some())
    }

    /// The sum of the batch's counter items (the base counter and its shards), read
    /// consistently in one query.
    async fn final_count(&self, id: BatchId) -> Result<u32, StoreError> {
        Ok(self.batch_partition(id, true).await?.1)
    }

    async fn batch_with_final_count(
        &self,
        id: BatchId,
    ) -> Result<Option<(Batch, u32)>, StoreError> {
        let (batch, count) = self.batch_partition(id, false).await?;
        Ok(batch.map(|b| (b, count)))
    }

    async fn reset_attempts(&self, batch: &Batch, by: &str) -> Result<(), StoreError> {
        // Once accepted, a batch is only ever looked up again (its key may be forgotten by
        // now); never accepted, the next run asks the provider before any re-send.
        let (to, update, accepted) = if batch.provider_has_it() {
            (
                BatchStatus::Accepted,
                "SET #st = :to, updated_at = :ts, \
                 history = list_append(if_not_exists(history, :empty), :note) REMOVE checked_at",
                "attribute_exists(provider_batch_id)",
            )
        } else {
            (
                BatchStatus::Open,
                "SET #st = :to, attempts = :zero, updated_at = :ts, lease_until = :zero, \
                 history = list_append(if_not_exists(history, :empty), :note)",
                "attribute_not_exists(provider_batch_id)",
            )
        };
        let mut values = vec![
            (":to", s(to.as_str())),
            (":flagged", s(BatchStatus::NeedsOperator.as_str())),
            (":ts", s(timestamp(&Utc::now()))),
            (":empty", AttributeValue::L(vec![])),
            (
                ":note",
                note(BatchStatus::NeedsOperator, to, by, "retry-batch"),
            ),
        ];
        if to == BatchStatus::Open {
            values.push((":zero", n(0)));
        }
        let reset = self
            .update_batch(
                batch.id,
                update,
                &format!(
                    "#st = :flagged AND attribute_not_exists(operator_rejected) AND {accepted}"
                ),
                values,
            )
            .await?;
        match reset {
            Some(_) => Ok(()),
            None => Err(StoreError::Refused(Refusal::BatchChanged(
                "not NEEDS_OPERATOR, or a member was rejected by an operator".into(),
            ))),
        }
    }

    async fn mark_checked(&self, id: BatchId) -> Result<(), StoreError> {
        self.update_batch(
            id,
            "SET checked_at = :ts",
            "#st IN (:accepted, :flagged)",
            vec![
                (":ts", s(timestamp(&Utc::now()))),
                (":accepted", s(BatchStatus::Accepted.as_str())),
                (":flagged", s(BatchStatus::NeedsOperator.as_str())),
            ],
        )
        .await?;
        Ok(())
    }

    async fn record_found(
        &self,
        batch: &Batch,
        provider_batch_id: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        // Set once (the condition): the history gains one line per batch at most. `accepted_at`
        // too, so a found batch an operator hands back as ACCEPTED is escalated on time.
        let now = Utc::now();
        let recorded = self
            .update_batch(
                batch.id,
                "SET provider_batch_id = :pb, accepted_at = if_not_exists(accepted_at, :ts), \
                 updated_at = :ts, history = list_append(if_not_exists(history, :empty), :note)",
                "attribute_exists(#st) AND attribute_not_exists(provider_batch_id)",
                vec![
                    (":pb", s(provider_batch_id)),
                    (":ts", s(timestamp(&now))),
                    (":empty", AttributeValue::L(vec![])),
                    (
                        ":note",
                        note(
                            batch.status,
                            batch.status,
                            by,
                            &format!("found at the provider as {provider_batch_id}"),
                        ),
                    ),
                ],
            )
            .await?;
        Ok(recorded.is_some())
    }

    async fn escalate(
        &self,
        id: BatchId,
        from: BatchStatus,
        owner: Option<&str>,
        by: &str,
        reason: &str,
    ) -> Result<Option<Batch>, StoreError> {
        let mut values = vec![
            (":to", s(BatchStatus::NeedsOperator.as_str())),
            (":from", s(from.as_str())),
            (":err", s(reason)),
            (":ts", s(timestamp(&Utc::now()))),
            (":zero", n(0)),
            (":empty", AttributeValue::L(vec![])),
            (":note", note(from, BatchStatus::NeedsOperator, by, reason)),
        ];
        let mut condition = "#st = :from".to_string();
        if let Some(owner) = owner {
            condition.push_str(" AND lease_owner = :owner");
            values.push((":owner", s(owner)));
        }
        self.update_batch(
            id,
            "SET #st = :to, last_error = :err, updated_at = :ts, lease_until = :zero, \
             history = list_append(if_not_exists(history, :empty), :note)",
            &condition,
            values,
        )
        .await
    }

    async fn reject_flagged_member(
        &self,
        w: &Withdrawal,
        details: TransitionDetails,
        quiet_before: DateTime<Utc>,
    ) -> Result<Withdrawal, StoreError> {
        let Some(batch) = w.batch_id else {
            return Err(StoreError::Refused(Refusal::BatchChanged(
                "the withdrawal is in no batch".into(),
            )));
        };
        if w.status != WithdrawalStatus::Submitted {
            return Err(StoreError::Refused(Refusal::StateChanged {
                current: Some(w.status),
            }));
        }
        // The batch only learns that an operator took a member (never sent again): a mark of a
        // fixed size, however many members are rejected. Who rejected and why is the member's
        // own audit entry, written by the same transaction, so the batch record cannot grow
        // past its 400 KB item limit through rejects and lock the remaining members in.
        let mark = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::batch_key(batch)))
            .update_expression("SET operator_rejected = :yes, updated_at = :ts")
            .condition_expression(
                "#st = :flagged AND attribute_not_exists(provider_batch_id) AND \
                 (attribute_not_exists(last_attempt_at) OR last_attempt_at < :quiet)",
            )
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":quiet", s(timestamp(&quiet_before)))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":flagged", s(BatchStatus::NeedsOperator.as_str()))
            .expression_attribute_values(":ts", s(timestamp(&Utc::now())))
            .build()
            .map_err(backend)?;
        let now = Utc::now();
        let (transition, entry) =
            self.transition_items(&w.into(), Transition::Reject, &details, now)?;
        let updated = changed(w, &entry, &details, now);
        let mut items = vec![(
            RejectGuard::BatchFlagged,
            TransactWriteItem::builder().update(mark).build(),
        )];
        for (guard, item) in transition {
            let guard = match guard {
                TxGuard::Withdrawal(_) => RejectGuard::WithdrawalStatus,
                _ => RejectGuard::Effect,
            };
            items.push((guard, item));
        }
        match self.transact(items, &ulid::Ulid::new().to_string()).await {
            Ok(()) => Ok(updated),
            Err(TxError::Store(e)) => Err(e),
            Err(TxError::Cancelled(refusals)) => {
                let refused = |g: RejectGuard| refusals.refused(g).is_some();
                if refused(RejectGuard::BatchFlagged) {
                    Err(StoreError::Refused(Refusal::BatchChanged(
                        "the batch is no longer NEEDS_OPERATOR, was accepted, or was sent again \
                         too recently"
                            .into(),
                    )))
                } else if refused(RejectGuard::WithdrawalStatus) {
                    Err(StoreError::Refused(Refusal::StateChanged { current: None }))
                } else {
                    Err(StoreError::Failed(Failure::Corrupt(format!(
                        "operator reject of {} refused by its balance or counter",
                        w.id
                    ))))
                }
            }
        }
    }

    async fn unreconciled(
        &self,
        due_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Batch>, StoreError> {
        // Queued under `<time>#<id>`: the due ones are one key range, oldest first.
        let due = SortKeys::Before(timestamp(&due_before));
        self.index_items(TableSchema::RECONCILE_PK, due, limit)
            .await?
            .iter()
            .map(|i| self.batch_from_item(i))
            .collect()
    }

    async fn requeue_reconcile(&self, id: BatchId) -> Result<(), StoreError> {
        self.update_batch(
            id,
            &format!("SET {} = :sk", schema::PENDING_SK),
            "#st IN (:completed, :rejected)",
            vec![
                (":sk", s(reconcile_sk(id))),
                (":completed", s(BatchStatus::Completed.as_str())),
                (":rejected", s(BatchStatus::Rejected.as_str())),
            ],
        )
        .await?;
        Ok(())
    }

    async fn mark_reconciled(
        &self,
        id: BatchId,
        mismatches: u32,
        again_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let mut values = vec![
            (":ts", s(timestamp(&Utc::now()))),
            (":m", n(mismatches)),
            (":completed", s(BatchStatus::Completed.as_str())),
            (":rejected", s(BatchStatus::Rejected.as_str())),
        ];
        let update = match again_at {
            // Stays listed, due again at `again_at`; the first pass's time is kept.
            Some(at) => {
                values.push((":again", s(format!("{}#{id}", timestamp(&at)))));
                format!(
                    "SET reconciled_at = if_not_exists(reconciled_at, :ts), \
                     reconcile_mismatches = :m, {} = :again",
                    schema::PENDING_SK
                )
            }
            None => format!(
                "SET reconciled_at = if_not_exists(reconciled_at, :ts), reconcile_mismatches = :m \
                 REMOVE {}, {}",
                schema::PENDING_PK,
                schema::PENDING_SK
            ),
        };
        self.update_batch(id, &update, "#st IN (:completed, :rejected)", values)
            .await?;
        Ok(())
    }

    async fn members(&self, batch: &Batch) -> Result<Vec<Withdrawal>, StoreError> {
        let keys: Vec<Item> = batch
            .members
            .iter()
            .map(|(id, member)| Self::withdrawal_key(&member.user_id, *id))
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for item in self.batch_get(keys).await? {
            out.push(self.withdrawal_from_item(&item)?);
        }
        if out.len() != batch.members.len() {
            return Err(StoreError::Failed(Failure::Corrupt(format!(
                "batch {} lists {} members, {} found",
                batch.id,
                batch.members.len(),
                out.len()
            ))));
        }
        out.sort_by_key(|w| w.id);
        Ok(out)
    }

    async fn beneficiary_accounts(
        &self,
        keys: &[(crate::domain::UserId, crate::domain::BeneficiaryId)],
    ) -> Result<
        std::collections::HashMap<
            (crate::domain::UserId, crate::domain::BeneficiaryId),
            crate::domain::BankAccount,
        >,
        StoreError,
    > {
        self.accounts_of(keys).await
    }

    async fn paused_currencies(
        &self,
        currencies: &[CurrencyCode],
    ) -> Result<std::collections::BTreeSet<CurrencyCode>, StoreError> {
        self.paused(currencies).await
    }

    async fn all_batches(&self) -> Result<Vec<Batch>, StoreError> {
        let items = self.scan(Some(ScanFilter::new("type", s("BATCH")))).await?;
        let mut out = items
            .iter()
            .map(|i| self.batch_from_item(i))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|b| b.id);
        Ok(out)
    }
}
