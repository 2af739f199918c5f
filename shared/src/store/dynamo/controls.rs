//! The operator's switches on DynamoDB: a user's block beside their balances, a currency's
//! pause in [`TableSchema::PAUSE_SHARDS`] items written together. Requests never read them:
//! their one transaction carries a condition check on each ([`DynamoStore::control_check`]).

use super::codec::{backend, control_from_item, control_key, control_key_parts, s, CONTROL_ON};
use super::tx::TxError;
use super::DynamoStore;
use crate::domain::{timestamp, Control, ControlChange, ControlSubject, CurrencyCode};
use crate::store::schema::{self, TableSchema};
use crate::store::{ControlStore, Failure, Refusal, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, TransactWriteItem, Update};
use std::collections::BTreeSet;

/// A switch's items in its transaction, to read a cancellation by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlGuard {
    /// The item that holds the last change and counts them (a block; a pause's shard 0).
    History,
    /// Another shard of a pause: the same flag, written unconditionally beside the history.
    Shard,
}

/// The condition that a switch is off: never written, or switched off since.
const OFF: &str = "attribute_not_exists(#on) OR #on = :false";

impl DynamoStore {
    /// The condition check a request's transaction carries for `subject`: the switch is off.
    /// A pause is checked on the shard the withdrawal id picks.
    pub(super) fn control_check(
        &self,
        subject: &ControlSubject,
        shard: u32,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .condition_check(
                ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(control_key(subject, shard)))
                    .condition_expression(OFF)
                    .expression_attribute_names("#on", CONTROL_ON)
                    .expression_attribute_values(":false", AttributeValue::Bool(false))
                    .build()
                    .map_err(backend)?,
            )
            .build())
    }

    /// The update of one item of a switch. The history item is conditioned on the switch being
    /// the other way, so a repeated or racing change writes nothing.
    fn control_update(
        &self,
        change: &ControlChange,
        shard: u32,
        guard: ControlGuard,
    ) -> Result<TransactWriteItem, StoreError> {
        let (subject_attr, subject_value, kind) = match (&change.subject, guard) {
            (ControlSubject::Currency(c), ControlGuard::Shard) => {
                ("currency", c.to_string(), schema::PAUSE_SHARD_TYPE)
            }
            (ControlSubject::Currency(c), ControlGuard::History) => {
                ("currency", c.to_string(), schema::CONTROL_TYPE)
            }
            (ControlSubject::User(u), _) => {
                ("user_id", u.as_str().to_string(), schema::CONTROL_TYPE)
            }
        };
        let mut set = vec!["#type = :type", "#subject = :subject", "#on = :on"];
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(control_key(&change.subject, shard)))
            .expression_attribute_names("#type", schema::TYPE_ATTRIBUTE)
            .expression_attribute_names("#subject", subject_attr)
            .expression_attribute_names("#on", CONTROL_ON)
            .expression_attribute_values(":type", s(kind))
            .expression_attribute_values(":subject", s(subject_value))
            .expression_attribute_values(":on", AttributeValue::Bool(change.on));
        if guard == ControlGuard::History {
            set.extend([
                "#by = :by",
                "#at = :at",
                "#changes = if_not_exists(#changes, :zero) + :one",
            ]);
            update = update
                .expression_attribute_names("#by", "by")
                .expression_attribute_names("#at", "at")
                .expression_attribute_names("#changes", "changes")
                .expression_attribute_names("#reason", "reason")
                .expression_attribute_values(":by", s(&change.by))
                .expression_attribute_values(":at", s(timestamp(&change.at)))
                .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                .expression_attribute_values(":one", AttributeValue::N("1".into()));
            if change.on {
                update = update
                    .condition_expression(OFF)
                    .expression_attribute_values(":false", AttributeValue::Bool(false));
            } else {
                update = update
                    .condition_expression("#on = :true")
                    .expression_attribute_values(":true", AttributeValue::Bool(true));
            }
            if let Some(reason) = &change.reason {
                set.push("#reason = :reason");
                update = update.expression_attribute_values(":reason", s(reason));
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if guard == ControlGuard::History && change.reason.is_none() {
            // The last change's reason only: an unblock without one clears the block's.
            expression.push_str(" REMOVE #reason");
        }
        Ok(TransactWriteItem::builder()
            .update(
                update
                    .update_expression(expression)
                    .build()
                    .map_err(backend)?,
            )
            .build())
    }
}

#[async_trait]
impl ControlStore for DynamoStore {
    async fn set_control(&self, change: &ControlChange) -> Result<Control, StoreError> {
        let mut items = vec![(
            ControlGuard::History,
            self.control_update(
                change,
                TableSchema::PAUSE_HISTORY_SHARD,
                ControlGuard::History,
            )?,
        )];
        if let ControlSubject::Currency(_) = change.subject {
            for shard in 0..TableSchema::PAUSE_SHARDS {
                if shard != TableSchema::PAUSE_HISTORY_SHARD {
                    items.push((
                        ControlGuard::Shard,
                        self.control_update(change, shard, ControlGuard::Shard)?,
                    ));
                }
            }
        }
        let token = ulid::Ulid::new().to_string();
        match self.transact(items, &token).await {
            Ok(()) => {}
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Cancelled(refusals)) => {
                return Err(if refusals.refused(ControlGuard::History).is_some() {
                    StoreError::Refused(Refusal::ControlUnchanged(change.subject.to_string()))
                } else {
                    StoreError::Failed(Failure::Backend(format!(
                        "switch cancelled: {:?}",
                        refusals.codes()
                    )))
                });
            }
        }
        self.control(&change.subject).await?.ok_or_else(|| {
            StoreError::Failed(Failure::Backend(format!("{} vanished", change.subject)))
        })
    }

    async fn control(&self, subject: &ControlSubject) -> Result<Option<Control>, StoreError> {
        let (pk, sk) = control_key_parts(subject, TableSchema::PAUSE_HISTORY_SHARD);
        self.get(pk, &sk)
            .await?
            .map(|item| control_from_item(&item))
            .transpose()
    }
}

impl DynamoStore {
    /// The paused ones among `currencies`: their pauses' history shards in one BatchGetItem.
    pub(super) async fn paused(
        &self,
        currencies: &[CurrencyCode],
    ) -> Result<BTreeSet<CurrencyCode>, StoreError> {
        let keys = currencies
            .iter()
            .map(|c| {
                control_key(
                    &ControlSubject::Currency(*c),
                    TableSchema::PAUSE_HISTORY_SHARD,
                )
            })
            .collect();
        let mut paused = BTreeSet::new();
        for item in self.batch_get(keys).await? {
            let control = control_from_item(&item)?;
            if let (true, ControlSubject::Currency(c)) = (control.on, control.subject) {
                paused.insert(c);
            }
        }
        Ok(paused)
    }
}
