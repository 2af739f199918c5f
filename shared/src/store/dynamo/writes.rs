//! The conditional writes: balance movements, state-machine edges, requests, event records and
//! day counters, each returned as transaction items named by the condition they guard.

use super::codec::{audit_to_item, backend, idempotency_item, n, s, Item};
use super::tx::TxGuard;
use super::DynamoStore;
use crate::domain::{
    timestamp, AuditEntry, BalanceEffect, BatchId, ControlSubject, Currency, Subject, Transition,
    UserId, Withdrawal, WithdrawalStatus,
};
use crate::store::schema::{self, TableSchema};
use crate::store::Refusal;
use crate::store::{EventRecord, IdempotencyRecord, StoreError, TransitionDetails};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::str::FromStr;

/// How long a processed provider event is remembered for deduplication.
pub(super) const EVENT_TTL_SECS: i64 = 30 * 24 * 3600;
/// Days a daily-limit counter is kept after its own day (only its own day reads it; a cancel
/// or rejection after it expired finds nothing to give back to and recreates it at zero).
pub(super) const DAY_COUNTER_KEEP_DAYS: u64 = 3;

impl DynamoStore {
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

    /// The one place a balance movement becomes a DynamoDB update, mirroring
    /// [`Balance::apply`] for `amount` and `fee` (`:tot` is both): the condition makes any
    /// movement that would go negative fail. A free movement (fee zero) writes what it wrote
    /// before fees, so `fees` appears with the first fee charged.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn balance_update(
        &self,
        user: &UserId,
        currency: &Currency,
        effect: BalanceEffect,
        amount: Decimal,
        fee: Decimal,
        now: &str,
        max_open: Option<u32>,
    ) -> Result<TransactWriteItem, StoreError> {
        let free = fee.is_zero();
        let (set, condition) = match (effect, free) {
            (BalanceEffect::Credit, _) => (
                "#av = if_not_exists(#av, :zero) + :amt, #cr = if_not_exists(#cr, :zero) + :amt, \
                 #lk = if_not_exists(#lk, :zero), #po = if_not_exists(#po, :zero), \
                 #oc = if_not_exists(#oc, :zero), #cy = :cy, #ui = :ui",
                None,
            ),
            (BalanceEffect::Lock, _) => (
                "#av = #av - :tot, #lk = #lk + :tot, #oc = if_not_exists(#oc, :zero) + :one",
                Some("#av >= :tot AND (attribute_not_exists(#oc) OR #oc < :max_open)"),
            ),
            (BalanceEffect::Unlock, _) => (
                "#av = #av + :tot, #lk = #lk - :tot, #oc = #oc - :one",
                Some("#lk >= :tot"),
            ),
            (BalanceEffect::PayOut, true) => (
                "#lk = #lk - :tot, #po = #po + :amt, #oc = #oc - :one",
                Some("#lk >= :tot"),
            ),
            (BalanceEffect::PayOut, false) => (
                "#lk = #lk - :tot, #po = #po + :amt, #fe = if_not_exists(#fe, :zero) + :fee, \
                 #oc = #oc - :one",
                Some("#lk >= :tot"),
            ),
            (BalanceEffect::Return, true) => {
                ("#po = #po - :amt, #av = #av + :tot", Some("#po >= :amt"))
            }
            (BalanceEffect::Return, false) => (
                "#po = #po - :amt, #fe = #fe - :fee, #av = #av + :tot",
                Some("#po >= :amt AND #fe >= :fee"),
            ),
            (BalanceEffect::None, _) => ("#ua = :now", None),
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
            ("#fe", "fees"),
            ("#cr", "credited"),
            ("#oc", "open_count"),
            ("#ua", "updated_at"),
            ("#cy", "currency"),
            ("#ui", "user_id"),
        ];
        let mut values = vec![
            (":amt", n(amount)),
            (":fee", n(fee)),
            (":tot", n(amount + fee)),
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
    /// (conditioned on the exact status `w` expects, with an audit entry appended to the same
    /// item), the balance movement, and the member's shard of the batch's final counter when a
    /// member settles or is rejected. Returns them with the audit entry they append.
    pub(super) fn transition_items(
        &self,
        w: &Subject,
        transition: Transition,
        details: &TransitionDetails,
        now_t: DateTime<Utc>,
    ) -> Result<(Vec<(TxGuard, TransactWriteItem)>, AuditEntry), StoreError> {
        let to = w.status.apply(transition).map_err(|e| {
            StoreError::Refused(Refusal::StateChanged {
                current: Some(e.from),
            })
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
        let update = self.status_change(w, to, details, &entry, &now)?;
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
                    w.fee_moved(transition),
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
                self.final_count_shard(w, batch, &now)?,
            ));
        }
        if let Some(event) = &details.record_event {
            items.push((TxGuard::Event, self.event_put(event, &now_t)?));
        }
        Ok((items, entry))
    }

    /// The withdrawal's own update: the status change conditioned on the exact status, amount
    /// and batch the subject expects, with its audit entry appended and the details it carries.
    fn status_change(
        &self,
        w: &Subject,
        to: WithdrawalStatus,
        details: &TransitionDetails,
        entry: &AuditEntry,
        now: &str,
    ) -> Result<Update, StoreError> {
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
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":audit", AttributeValue::L(vec![audit_to_item(entry)]))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(reason) = &details.failure_reason {
            set.push("#fr = :fr");
            update = update
                .expression_attribute_names("#fr", "failure_reason")
                .expression_attribute_values(":fr", s(reason));
        }
        if let Some(reference) = &details.provider_reference {
            set.push("#pr = :pr");
            update = update
                .expression_attribute_names("#pr", "provider_reference")
                .expression_attribute_values(":pr", s(reference));
        }
        if let Some(batch) = details.batch_id {
            set.push("#bi = :bi");
            update = update
                .expression_attribute_names("#bi", "batch_id")
                .expression_attribute_values(":bi", s(batch.to_string()));
        }
        if let Some(account) = &details.bank_account {
            set.push("#ba = :ba");
            update = update
                .expression_attribute_names("#ba", "bank_account")
                .expression_attribute_values(":ba", s(account.expose()));
        }
        // What a bank return gave back of the fee, kept for `operator check` (the policy may
        // change later).
        if to == WithdrawalStatus::Returned && !w.fee.is_zero() {
            set.push("#fret = :fret");
            update = update
                .expression_attribute_names("#fret", "fee_returned")
                .expression_attribute_values(":fret", n(w.fee_moved(Transition::Return)));
        }
        // The sparse index follows the status: an approval moves the withdrawal from its
        // currency's review key to a pending shard; leaving either takes it out. An approval
        // lands on shard 0, which every batcher reads whatever its PENDING_SHARDS: the
        // operator's own setting may be higher than any request function's, and a shard above
        // the recorded `max_shards` would never be read (approvals are rare: no hot key).
        let was_waiting = Self::waiting_index_pk(w.status, &w.currency, w.id, 1).is_some();
        let waits = Self::waiting_index_pk(to, &w.currency, w.id, 1);
        let leaves_index = was_waiting && waits.is_none();
        if let Some(index_pk) = waits {
            set.push("#ipk = :ipk");
            set.push("#isk = :isk");
            update = update
                .expression_attribute_names("#ipk", schema::PENDING_PK)
                .expression_attribute_names("#isk", schema::PENDING_SK)
                .expression_attribute_values(":ipk", s(index_pk))
                .expression_attribute_values(":isk", s(w.id.to_string()));
        }
        let mut expression = format!("SET {}", set.join(", "));
        if leaves_index {
            expression.push_str(&format!(
                " REMOVE {}, {}",
                schema::PENDING_PK,
                schema::PENDING_SK
            ));
        }
        // The expected status, and the amount, fee and batch the change moves money for: a
        // subject built from a batch entry (not read from the item) is refused if any differs.
        let mut condition = "#st = :from AND #amt = :amt".to_string();
        update = update
            .expression_attribute_names("#amt", "amount")
            .expression_attribute_values(":amt", n(w.amount.value()))
            .expression_attribute_names("#fee", "fee");
        if w.fee.is_zero() {
            condition.push_str(" AND attribute_not_exists(#fee)");
        } else {
            condition.push_str(" AND #fee = :fee");
            update = update.expression_attribute_values(":fee", n(w.fee));
        }
        // The account is copied once, by the claim, and never overwritten.
        if details.bank_account.is_some() {
            condition.push_str(" AND attribute_not_exists(#ba)");
        }
        if let (Some(batch), false) = (w.batch_id, w.status == WithdrawalStatus::Pending) {
            condition.push_str(" AND #wbi = :wbi");
            update = update
                .expression_attribute_names("#wbi", "batch_id")
                .expression_attribute_values(":wbi", s(batch.to_string()));
        }
        update
            .update_expression(expression)
            .condition_expression(condition)
            .build()
            .map_err(backend)
    }

    /// A member's shard of its batch's final counter, counted when the member settles or is
    /// rejected.
    fn final_count_shard(
        &self,
        w: &Subject,
        batch: BatchId,
        now: &str,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
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
                    .expression_attribute_values(":now", s(now))
                    .build()
                    .map_err(backend)?,
            )
            .build())
    }

    pub(super) fn event_put(
        &self,
        event: &EventRecord,
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
            ("outcome".into(), s(event.outcome.as_str())),
            ("received_at".into(), s(timestamp(now))),
            (
                schema::TTL_ATTRIBUTE.into(),
                n(now.timestamp() + EVENT_TTL_SECS),
            ),
        ]);
        self.put_new(item)
    }

    /// The items of a withdrawal request's single transaction: the balance lock, the withdrawal,
    /// with a key the idempotency record, the checks that neither the user is blocked nor the
    /// currency paused, the check of the beneficiary it names and, when the currency has a daily
    /// limit, the day's counter. Public so the benchmark can send exactly these items through the bare SDK.
    #[doc(hidden)]
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
    pub(super) fn request_guarded(
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
            w.fee,
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
        // The operator's switches, checked without a read: a block of the user, a pause of the
        // currency (on one of its shards, so requests spread their reads over them).
        items.push((
            RequestGuard::UserBlock,
            self.control_check(&ControlSubject::User(w.user_id.clone()), 0)?,
        ));
        items.push((
            RequestGuard::CurrencyPause,
            self.control_check(
                &ControlSubject::Currency(w.currency.code()),
                w.id.shard(TableSchema::PAUSE_SHARDS),
            )?,
        ));
        if let Some(beneficiary) = w.destination.beneficiary_id() {
            items.push((
                RequestGuard::Beneficiary,
                self.beneficiary_check(&w.user_id, beneficiary, w.created_at)?,
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

    pub(super) fn day_counter_key(user: &UserId, currency: &Currency, day: NaiveDate) -> Item {
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
    pub(super) fn day_counter_take(
        &self,
        w: &Withdrawal,
        day: NaiveDate,
        limit: Decimal,
    ) -> Result<TransactWriteItem, StoreError> {
        let room = limit - w.amount.value();
        if room < Decimal::ZERO {
            return Err(StoreError::Refused(Refusal::DailyLimitExceeded(format!(
                "{} {ccy} is above the daily withdrawal limit of {} {ccy}",
                w.amount,
                w.currency.format(limit),
                ccy = w.currency.code()
            ))));
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
    pub(super) fn day_counter_give_back(
        &self,
        w: &Subject,
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
    pub(super) fn daily_limit_exceeded(
        &self,
        w: &Withdrawal,
        counter: Option<&Item>,
    ) -> StoreError {
        let limit = w.currency.daily_limit().unwrap_or(Decimal::ZERO);
        let used = counter
            .and_then(|i| i.get("used"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| Decimal::from_str(v).ok())
            .unwrap_or(Decimal::ZERO);
        let remaining = (limit - used).max(Decimal::ZERO);
        StoreError::Refused(Refusal::DailyLimitExceeded(format!(
            "daily withdrawal limit of {} {ccy} reached: {} {ccy} left today (UTC)",
            w.currency.format(limit),
            w.currency.format(remaining),
            ccy = w.currency.code()
        )))
    }
}

/// `w` as it is once the change that appended `entry` is written.
pub(super) fn changed(
    w: &Withdrawal,
    entry: &AuditEntry,
    details: &TransitionDetails,
    now_t: DateTime<Utc>,
) -> Withdrawal {
    let mut updated = w.clone();
    updated.status = entry.to;
    updated.updated_at = now_t;
    updated.audit.push(entry.clone());
    if let Some(reason) = &details.failure_reason {
        updated.failure_reason = Some(reason.clone());
    }
    if let Some(reference) = &details.provider_reference {
        updated.provider_reference = Some(reference.clone());
    }
    if let Some(batch) = details.batch_id {
        updated.batch_id = Some(batch);
    }
    if let (Some(account), crate::domain::Destination::Beneficiary { id, .. }) =
        (&details.bank_account, &updated.destination)
    {
        updated.destination = crate::domain::Destination::Beneficiary {
            id: *id,
            account: Some(account.clone()),
        };
    }
    if entry.to == WithdrawalStatus::Returned && !w.fee.is_zero() {
        updated.fee_returned = Some(Subject::from(w).fee_moved(Transition::Return));
    }
    updated
}

/// The items of a withdrawal request's transaction, to read its cancellation reasons by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RequestGuard {
    Balance,
    Withdrawal,
    IdempotencyKey,
    UserBlock,
    CurrencyPause,
    /// The beneficiary it names: the caller's, not removed, past its cooling-off.
    Beneficiary,
    DayCounter,
}

/// When DynamoDB may delete a day's counter: [`DAY_COUNTER_KEEP_DAYS`] after the day ends.
pub(super) fn day_counter_expiry(day: NaiveDate) -> i64 {
    (day + chrono::Days::new(DAY_COUNTER_KEEP_DAYS + 1))
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp())
}

/// The items of a credit's transaction, to read its cancellation reasons by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CreditGuard {
    Balance,
    Record,
}
