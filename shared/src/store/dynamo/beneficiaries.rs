//! Beneficiaries on DynamoDB: one item each under its owner's key (`USER#u/BENEFICIARY#id`),
//! beside a count of the owner's beneficiaries. A withdrawal request checks its beneficiary with
//! a condition in its own transaction ([`DynamoStore::beneficiary_check`]), never a read.

use super::codec::{
    backend, beneficiary_from_item, beneficiary_item, idempotency_from_item, idempotency_item, n,
    s, Item, Reader, REMOVED_AT, USABLE_FROM_MS,
};
use super::tx::{classify, TxError};
use super::DynamoStore;
use crate::domain::{timestamp, BankAccount, Beneficiary, BeneficiaryId, UserId};
use crate::store::schema::{self, TableSchema};
use crate::store::{Failure, IdempotencyRecord, Refusal, StoreError};
use aws_sdk_dynamodb::types::{
    ConditionCheck, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The items of a beneficiary's add or removal, to read a cancellation by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BeneficiaryGuard {
    Beneficiary,
    Count,
    IdempotencyKey,
}

/// The owner's count of beneficiaries not removed.
const ACTIVE: &str = "active";

impl DynamoStore {
    /// The condition a withdrawal request's transaction carries for the beneficiary it names:
    /// it exists under the caller's own key, is not removed and its cooling-off is over at the
    /// request's time. On failure the reason carries the item, to say which of these failed.
    pub(super) fn beneficiary_check(
        &self,
        user: &UserId,
        id: BeneficiaryId,
        now: DateTime<Utc>,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .condition_check(
                ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::beneficiary_key(user, id)))
                    .condition_expression(
                        "attribute_exists(#pk) AND attribute_not_exists(#rm) AND #uf <= :now",
                    )
                    .expression_attribute_names("#pk", schema::PK)
                    .expression_attribute_names("#rm", REMOVED_AT)
                    .expression_attribute_names("#uf", USABLE_FROM_MS)
                    .expression_attribute_values(":now", n(now.timestamp_millis()))
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .build()
                    .map_err(backend)?,
            )
            .build())
    }

    /// Why a beneficiary check failed, from the item its cancellation reason carries.
    pub(super) fn beneficiary_refusal(item: Option<&Item>) -> StoreError {
        let Some(item) = item else {
            return StoreError::Refused(Refusal::UnknownBeneficiary);
        };
        let r = Reader(item);
        if r.opt_s(REMOVED_AT).is_some() {
            return StoreError::Refused(Refusal::BeneficiaryRemoved);
        }
        StoreError::Refused(Refusal::BeneficiaryCoolingOff {
            usable_from: r.opt_s("usable_from").unwrap_or("later").to_string(),
        })
    }

    fn beneficiary_count(
        &self,
        user: &UserId,
        delta: i64,
        max: Option<u32>,
        now: &str,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .key(schema::PK, s(TableSchema::user_pk(user)))
            .key(schema::SK, s(TableSchema::BENEFICIARY_COUNT_SK))
            .update_expression("ADD #act :delta SET updated_at = :now")
            .expression_attribute_names("#act", ACTIVE)
            .expression_attribute_values(":delta", n(delta))
            .expression_attribute_values(":now", s(now));
        if let Some(max) = max {
            update = update
                .condition_expression("attribute_not_exists(#act) OR #act < :max")
                .expression_attribute_values(":max", n(max));
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(backend)?)
            .build())
    }

    pub(super) async fn add_beneficiary_item(
        &self,
        b: &Beneficiary,
        idempotency: &IdempotencyRecord,
        max: u32,
    ) -> Result<(), StoreError> {
        let now = timestamp(&b.created_at);
        let guarded = vec![
            (
                BeneficiaryGuard::Beneficiary,
                self.put_new(beneficiary_item(b))?,
            ),
            (
                BeneficiaryGuard::Count,
                self.beneficiary_count(&b.user_id, 1, Some(max), &now)?,
            ),
            (
                BeneficiaryGuard::IdempotencyKey,
                self.put_new(idempotency_item(idempotency))?,
            ),
        ];
        // A token per call: its own retries after a timeout cannot add twice, and the key's
        // condition makes any other repeat a replay.
        let refusals = match self.transact(guarded, &ulid::Ulid::new().to_string()).await {
            Ok(()) => return Ok(()),
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(refusals)) => refusals,
        };
        if let Some(r) = refusals.refused(BeneficiaryGuard::IdempotencyKey) {
            let first = r
                .item()
                .map(|item| {
                    idempotency_from_item(&idempotency.user_id, &idempotency.key, item)
                        .map(Box::new)
                })
                .transpose()?;
            return Err(StoreError::Refused(Refusal::IdempotencyKeyTaken(first)));
        }
        if refusals.refused(BeneficiaryGuard::Count).is_some() {
            return Err(StoreError::Refused(Refusal::TooManyBeneficiaries(max)));
        }
        Err(StoreError::Failed(Failure::Backend(format!(
            "beneficiary id collision: {:?}",
            refusals.codes()
        ))))
    }

    pub(super) async fn beneficiary_item(
        &self,
        user: &UserId,
        id: BeneficiaryId,
    ) -> Result<Option<Beneficiary>, StoreError> {
        self.get(TableSchema::user_pk(user), &TableSchema::beneficiary_sk(id))
            .await?
            .map(|i| beneficiary_from_item(&i))
            .transpose()
    }

    pub(super) async fn active_beneficiaries(
        &self,
        user: &UserId,
    ) -> Result<Vec<Beneficiary>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .user_items(user, TableSchema::BENEFICIARY_SK_PREFIX)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(classify)?;
            for item in page.items() {
                let b = beneficiary_from_item(item)?;
                if !b.is_removed() {
                    out.push(b);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    pub(super) async fn remove_beneficiary_item(
        &self,
        user: &UserId,
        id: BeneficiaryId,
        at: DateTime<Utc>,
    ) -> Result<Beneficiary, StoreError> {
        let now = timestamp(&at);
        let mark = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::beneficiary_key(user, id)))
            .update_expression("SET #rm = :now")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#rm)")
            .expression_attribute_names("#pk", schema::PK)
            .expression_attribute_names("#rm", REMOVED_AT)
            .expression_attribute_values(":now", s(&now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(backend)?;
        let guarded = vec![
            (
                BeneficiaryGuard::Beneficiary,
                TransactWriteItem::builder().update(mark).build(),
            ),
            (
                BeneficiaryGuard::Count,
                self.beneficiary_count(user, -1, None, &now)?,
            ),
        ];
        let refusals = match self.transact(guarded, &ulid::Ulid::new().to_string()).await {
            Ok(()) => {
                return self
                    .beneficiary_item(user, id)
                    .await?
                    .ok_or(StoreError::Refused(Refusal::NotFound))
            }
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(refusals)) => refusals,
        };
        match refusals.refused(BeneficiaryGuard::Beneficiary) {
            Some(r) if r.item().is_some() => Err(StoreError::Refused(Refusal::BeneficiaryRemoved)),
            Some(_) => Err(StoreError::Refused(Refusal::NotFound)),
            None => Err(StoreError::Failed(Failure::Backend(format!(
                "beneficiary removal cancelled: {:?}",
                refusals.codes()
            )))),
        }
    }

    /// See [`crate::store::BatchStore::beneficiary_accounts`]: only the account and the key are
    /// read.
    pub(super) async fn accounts_of(
        &self,
        keys: &[(UserId, BeneficiaryId)],
    ) -> Result<HashMap<(UserId, BeneficiaryId), BankAccount>, StoreError> {
        let mut wanted: Vec<&(UserId, BeneficiaryId)> = keys.iter().collect();
        wanted.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
        wanted.dedup();
        let items = self
            .batch_get(
                wanted
                    .iter()
                    .map(|(user, id)| Self::beneficiary_key(user, *id))
                    .collect(),
            )
            .await?;
        // One item this code cannot read (a later release's stricter rules, a hand-written item)
        // must not stop its currency's claims: it is left out, so its withdrawal is counted
        // `unresolved` and stays pending, and the log names it (never its account).
        Ok(items
            .iter()
            .filter_map(|item| match beneficiary_from_item(item) {
                Ok(b) => Some(((b.user_id, b.id), b.details.bank_account)),
                Err(e) => {
                    tracing::error!(
                        pk = item.get(schema::PK).and_then(|v| v.as_s().ok()).map(String::as_str),
                        sk = item.get(schema::SK).and_then(|v| v.as_s().ok()).map(String::as_str),
                        error = %e,
                        "unreadable beneficiary: its withdrawals are not claimed"
                    );
                    None
                }
            })
            .collect())
    }
}
