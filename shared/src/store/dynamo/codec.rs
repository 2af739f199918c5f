//! Items ↔ domain values: the one place an attribute name is written or read.

use super::DynamoStore;
use crate::domain::{
    timestamp, Amount, AuditEntry, Balance, BankAccount, Batch, BatchId, BatchNote, BatchStatus,
    Beneficiary, BeneficiaryDetails, BeneficiaryId, Control, ControlSubject, CreditReference,
    Currencies, Currency, CurrencyCode, Destination, FeeOnReturn, IdempotencyKey, Member,
    MemberTerms, UserId, Withdrawal, WithdrawalId, WithdrawalStatus,
};
use crate::store::schema::{self, TableSchema};
use crate::store::Failure;
use crate::store::{CreditRecord, IdempotencyRecord, Resource, StoreError};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

pub(super) type Item = HashMap<String, AttributeValue>;

/// How long an idempotency record is honoured (DynamoDB's TTL removes it some time after).
pub(super) const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;

impl DynamoStore {
    pub(super) fn balance_key(user: &UserId, currency: &Currency) -> Item {
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

    pub(super) fn withdrawal_item(&self, w: &Withdrawal) -> Item {
        let mut item = Self::withdrawal_key(&w.user_id, w.id);
        let mut put = |k: &str, v: AttributeValue| {
            item.insert(k.to_string(), v);
        };
        put(schema::TYPE_ATTRIBUTE, s(schema::WITHDRAWAL_TYPE));
        put("id", s(w.id.to_string()));
        put("user_id", s(w.user_id.as_str()));
        put("currency", s(w.currency.code().as_str()));
        put("amount", n(w.amount.value()));
        // Only a charged fee is stored: a free withdrawal's item is as it was before fees.
        if !w.fee.is_zero() {
            put("fee", n(w.fee));
            if w.fee_on_return == FeeOnReturn::Keep {
                put("fee_on_return", s("keep"));
            }
        }
        if let Some(id) = w.destination.beneficiary_id() {
            put("beneficiary_id", s(id.to_string()));
        }
        if let Some(account) = w.destination.account() {
            put("bank_account", s(account.expose()));
        }
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
        if let Some(index_pk) =
            Self::waiting_index_pk(w.status, &w.currency, w.id, self.pending_shards)
        {
            put(schema::PENDING_PK, s(index_pk));
            put(schema::PENDING_SK, s(w.id.to_string()));
        }
        item
    }

    /// Sparse index: only withdrawals waiting for someone carry its keys. Pending ones under
    /// one of `shards` shards of their currency (the batcher reads exactly what is due, oldest
    /// first), held ones under their currency's review key (what operators have to decide).
    pub(super) fn waiting_index_pk(
        status: WithdrawalStatus,
        currency: &Currency,
        id: WithdrawalId,
        shards: u32,
    ) -> Option<String> {
        match status {
            WithdrawalStatus::Pending => {
                Some(TableSchema::pending_pk(currency.code(), id.shard(shards)))
            }
            WithdrawalStatus::Review => Some(TableSchema::review_pk(currency.code())),
            _ => None,
        }
    }

    pub(super) fn withdrawal_from_item(&self, item: &Item) -> Result<Withdrawal, StoreError> {
        withdrawal_from_item(&self.currencies, item)
    }

    pub(super) fn balance_from_item(&self, item: &Item) -> Result<(UserId, Balance), StoreError> {
        let r = Reader(item);
        let user = UserId::parse(r.s("user_id")?).map_err(corrupt)?;
        let balance = Balance {
            currency: self.currency(r.s("currency")?)?,
            available: r.n("available")?,
            locked: r.n("locked")?,
            paid_out: r.n("paid_out")?,
            // Written by the first fee charged: none before.
            fees: r.opt_n("fees")?.unwrap_or_default(),
            credited: r.n("credited")?,
            open_count: r
                .n("open_count")?
                .try_into()
                .map_err(|_| StoreError::Failed(Failure::Corrupt("open_count".into())))?,
        };
        Ok((user, balance))
    }

    pub(super) fn credit_from_item(&self, item: &Item) -> Result<CreditRecord, StoreError> {
        credit_from_item(&self.currencies, item)
    }

    pub(super) fn currency(&self, code: &str) -> Result<Currency, StoreError> {
        currency(&self.currencies, code)
    }
}

/// A table item as the table's stream shows it, decoded by the same codec as every read.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredItem {
    Withdrawal(Box<Withdrawal>),
    Credit(CreditRecord),
    /// A currency's pause (its history shard) or a user's block.
    Control(Control),
    Beneficiary(Box<Beneficiary>),
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
        Some(schema::CONTROL_TYPE) => Ok(StoredItem::Control(control_from_item(item)?)),
        Some(schema::BENEFICIARY_TYPE) => Ok(StoredItem::Beneficiary(Box::new(
            beneficiary_from_item(item)?,
        ))),
        _ => Ok(StoredItem::Other),
    }
}

pub(super) fn withdrawal_from_item(
    currencies: &Currencies,
    item: &Item,
) -> Result<Withdrawal, StoreError> {
    let r = Reader(item);
    let currency = currency(currencies, r.s("currency")?)?;
    let amount = Amount::new(r.n("amount")?, &currency).map_err(corrupt)?;
    let fee = fee_value(r.opt_n("fee")?.unwrap_or_default(), &currency)?;
    let fee_returned = r
        .opt_n("fee_returned")?
        .map(|f| fee_value(f, &currency))
        .transpose()?;
    Ok(Withdrawal {
        id: WithdrawalId::parse(r.s("id")?).map_err(corrupt)?,
        user_id: UserId::parse(r.s("user_id")?).map_err(corrupt)?,
        amount,
        fee,
        fee_on_return: match r.opt_s("fee_on_return") {
            None => FeeOnReturn::Refund,
            Some("keep") => FeeOnReturn::Keep,
            Some(other) => {
                return Err(StoreError::Failed(Failure::Corrupt(format!(
                    "fee_on_return {other:?}"
                ))))
            }
        },
        fee_returned,
        currency,
        destination: destination_from_item(&r)?,
        status: WithdrawalStatus::parse(r.s("status")?)
            .ok_or_else(|| StoreError::Failed(Failure::Corrupt("unknown status".into())))?,
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

/// A withdrawal names a beneficiary (with its account once claimed), or, recorded before
/// beneficiaries, the account alone.
fn destination_from_item(r: &Reader) -> Result<Destination, StoreError> {
    let account = r
        .opt_s("bank_account")
        .map(BankAccount::parse)
        .transpose()
        .map_err(corrupt)?;
    match (r.opt_s("beneficiary_id"), account) {
        (Some(id), account) => Ok(Destination::Beneficiary {
            id: BeneficiaryId::parse(id).map_err(corrupt)?,
            account,
        }),
        (None, Some(account)) => Ok(Destination::Account(account)),
        (None, None) => Err(StoreError::Failed(Failure::Corrupt(
            "withdrawal without a destination".into(),
        ))),
    }
}

impl DynamoStore {
    pub(super) fn beneficiary_key(user: &UserId, id: BeneficiaryId) -> Item {
        HashMap::from([
            (schema::PK.to_string(), s(TableSchema::user_pk(user))),
            (schema::SK.to_string(), s(TableSchema::beneficiary_sk(id))),
        ])
    }
}

/// `usable_from` is kept twice: as text (shown) and in epoch milliseconds, what the request's
/// condition compares with its own time (a condition cannot parse a date).
pub(super) const USABLE_FROM_MS: &str = "usable_from_ms";
pub(super) const REMOVED_AT: &str = "removed_at";

pub(super) fn beneficiary_item(b: &Beneficiary) -> Item {
    let mut item = DynamoStore::beneficiary_key(&b.user_id, b.id);
    item.extend([
        (
            schema::TYPE_ATTRIBUTE.to_string(),
            s(schema::BENEFICIARY_TYPE),
        ),
        ("id".into(), s(b.id.to_string())),
        ("user_id".into(), s(b.user_id.as_str())),
        ("bank_account".into(), s(b.details.bank_account.expose())),
        ("holder_name".into(), s(&b.details.holder_name)),
        ("created_at".into(), s(timestamp(&b.created_at))),
        ("usable_from".into(), s(timestamp(&b.usable_from))),
        (USABLE_FROM_MS.into(), n(b.usable_from.timestamp_millis())),
    ]);
    if let Some(label) = &b.details.label {
        item.insert("label".into(), s(label));
    }
    if let Some(at) = &b.removed_at {
        item.insert(REMOVED_AT.into(), s(timestamp(at)));
    }
    item
}

pub(super) fn beneficiary_from_item(item: &Item) -> Result<Beneficiary, StoreError> {
    let r = Reader(item);
    Ok(Beneficiary {
        id: BeneficiaryId::parse(r.s("id")?).map_err(corrupt)?,
        user_id: UserId::parse(r.s("user_id")?).map_err(corrupt)?,
        details: BeneficiaryDetails::parse(
            r.s("bank_account")?,
            r.s("holder_name")?,
            r.opt_s("label"),
        )
        .map_err(corrupt)?,
        created_at: r.time("created_at")?,
        usable_from: r.time("usable_from")?,
        removed_at: r
            .opt_s(REMOVED_AT)
            .map(|_| r.time(REMOVED_AT))
            .transpose()?,
    })
}

pub(super) fn credit_from_item(
    currencies: &Currencies,
    item: &Item,
) -> Result<CreditRecord, StoreError> {
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

pub(super) fn currency(currencies: &Currencies, code: &str) -> Result<Currency, StoreError> {
    currencies.get(code).cloned().map_err(|_| {
        StoreError::Failed(Failure::Corrupt(format!(
            "currency {code} is not configured"
        )))
    })
}

pub(super) fn credit_item(c: &CreditRecord) -> Item {
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

pub(super) fn idempotency_from_item(
    user: &UserId,
    key: &IdempotencyKey,
    item: &Item,
) -> Result<IdempotencyRecord, StoreError> {
    let r = Reader(item);
    Ok(IdempotencyRecord {
        user_id: user.clone(),
        key: key.clone(),
        fingerprint: r.s("fingerprint")?.to_string(),
        resource: match r.opt_s("beneficiary_id") {
            Some(id) => Resource::Beneficiary(BeneficiaryId::parse(id).map_err(corrupt)?),
            None => {
                Resource::Withdrawal(WithdrawalId::parse(r.s("withdrawal_id")?).map_err(corrupt)?)
            }
        },
        status_code: r
            .n("status_code")?
            .try_into()
            .map_err(|_| StoreError::Failed(Failure::Corrupt("status_code".into())))?,
        response_body: r.s("response_body")?.to_string(),
        created_at: r.time("created_at")?,
    })
}

pub(super) fn idempotency_item(rec: &IdempotencyRecord) -> Item {
    let resource = match rec.resource {
        Resource::Withdrawal(id) => ("withdrawal_id".to_string(), s(id.to_string())),
        Resource::Beneficiary(id) => ("beneficiary_id".to_string(), s(id.to_string())),
    };
    HashMap::from([
        resource,
        (
            schema::PK.to_string(),
            s(TableSchema::idempotency_pk(&rec.user_id, &rec.key)),
        ),
        (schema::SK.to_string(), s(TableSchema::SINGLETON_SK)),
        ("type".into(), s("IDEMPOTENCY")),
        ("fingerprint".into(), s(&rec.fingerprint)),
        ("status_code".into(), n(rec.status_code)),
        ("response_body".into(), s(&rec.response_body)),
        ("created_at".into(), s(timestamp(&rec.created_at))),
        (
            schema::TTL_ATTRIBUTE.into(),
            n(rec.created_at.timestamp() + IDEMPOTENCY_TTL_SECS),
        ),
    ])
}

/// Audit entries live on the withdrawal item itself, so each is written by the same
/// conditional write as the change it records.
pub(super) fn audit_to_item(e: &AuditEntry) -> AttributeValue {
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

pub(super) fn audit_from_item(v: &AttributeValue) -> Result<AuditEntry, StoreError> {
    let m = v
        .as_m()
        .map_err(|_| StoreError::Failed(Failure::Corrupt("audit entry".into())))?;
    let r = Reader(m);
    let status = |name: &str| -> Result<WithdrawalStatus, StoreError> {
        WithdrawalStatus::parse(r.s(name)?)
            .ok_or_else(|| StoreError::Failed(Failure::Corrupt(format!("audit {name}"))))
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

/// The key of a switch's item: a user's block, or shard `shard` of a currency's pause.
pub(super) fn control_key_parts(subject: &ControlSubject, shard: u32) -> (String, String) {
    match subject {
        ControlSubject::Currency(c) => (TableSchema::pause_pk(*c), TableSchema::pause_sk(shard)),
        ControlSubject::User(u) => (TableSchema::user_pk(u), TableSchema::BLOCK_SK.to_string()),
    }
}

pub(super) fn control_key(subject: &ControlSubject, shard: u32) -> Item {
    let (pk, sk) = control_key_parts(subject, shard);
    HashMap::from([
        (schema::PK.to_string(), s(pk)),
        (schema::SK.to_string(), s(sk)),
    ])
}

/// Whether a switch is on: `on` is a BOOL, absent on an item never switched.
pub(super) const CONTROL_ON: &str = "on";

pub(super) fn control_from_item(item: &Item) -> Result<Control, StoreError> {
    let r = Reader(item);
    let subject = match (r.opt_s("currency"), r.opt_s("user_id")) {
        (Some(c), None) => ControlSubject::Currency(CurrencyCode::parse(c).map_err(corrupt)?),
        (None, Some(u)) => ControlSubject::User(UserId::parse(u).map_err(corrupt)?),
        _ => return Err(corrupt("a switch names one currency or one user")),
    };
    Ok(Control {
        subject,
        on: matches!(item.get(CONTROL_ON), Some(AttributeValue::Bool(true))),
        reason: r.opt_s("reason").map(str::to_string),
        by: r.s("by")?.to_string(),
        at: r.time("at")?,
        changes: rust_decimal::prelude::ToPrimitive::to_u32(&r.n("changes")?)
            .ok_or_else(|| corrupt("a switch's change count"))?,
    })
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(Failure::Corrupt(e.to_string()))
}

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(Failure::Backend(e.to_string()))
}

pub(super) struct Reader<'a>(pub(super) &'a Item);

impl Reader<'_> {
    pub(super) fn s(&self, name: &str) -> Result<&str, StoreError> {
        self.opt_s(name).ok_or_else(|| {
            StoreError::Failed(Failure::Corrupt(format!("missing string attribute {name}")))
        })
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
            .ok_or_else(|| {
                StoreError::Failed(Failure::Corrupt(format!("missing number attribute {name}")))
            })
    }
    /// A number that may be absent; present but not a number is corrupt.
    pub(super) fn opt_n(&self, name: &str) -> Result<Option<Decimal>, StoreError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(_) => self.n(name).map(Some),
        }
    }
    pub(super) fn time(&self, name: &str) -> Result<DateTime<Utc>, StoreError> {
        DateTime::parse_from_rfc3339(self.s(name)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| StoreError::Failed(Failure::Corrupt(format!("bad timestamp {name}"))))
    }
}

impl DynamoStore {
    pub(super) fn batch_key(id: BatchId) -> Item {
        HashMap::from([
            (schema::PK.to_string(), s(TableSchema::batch_pk(id))),
            (schema::SK.to_string(), s(TableSchema::SINGLETON_SK)),
        ])
    }

    pub(super) fn batch_from_item(&self, item: &Item) -> Result<Batch, StoreError> {
        let r = Reader(item);
        let currency = self.currency(r.s("currency")?)?;
        let mut members = BTreeMap::new();
        if let Some(AttributeValue::M(m)) = item.get("members") {
            for (wd, entry) in m {
                members.insert(
                    WithdrawalId::parse(wd).map_err(corrupt)?,
                    member_from_item(entry, &currency)?,
                );
            }
        }
        let count = |name: &str| -> Result<u32, StoreError> {
            r.n(name)?
                .try_into()
                .map_err(|_| StoreError::Failed(Failure::Corrupt(name.into())))
        };
        Ok(Batch {
            id: BatchId::parse(r.s("id")?).map_err(corrupt)?,
            currency,
            status: BatchStatus::parse(r.s("status")?)
                .ok_or_else(|| StoreError::Failed(Failure::Corrupt("batch status".into())))?,
            members,
            total: r.n("total")?,
            attempts: count("attempts")?,
            last_error: r.opt_s("last_error").map(str::to_string),
            provider_batch_id: r.opt_s("provider_batch_id").map(str::to_string),
            reason: r.opt_s("reason").map(str::to_string),
            lease_owner: r.opt_s("lease_owner").map(str::to_string),
            lease_until_ms: r
                .n("lease_until")?
                .try_into()
                .map_err(|_| StoreError::Failed(Failure::Corrupt("lease_until".into())))?,
            created_at: r.time("created_at")?,
            updated_at: r.time("updated_at")?,
            accepted_at: r
                .opt_s("accepted_at")
                .map(|_| r.time("accepted_at"))
                .transpose()?,
            last_attempt_at: r
                .opt_s("last_attempt_at")
                .map(|_| r.time("last_attempt_at"))
                .transpose()?,
            checked_at: r
                .opt_s("checked_at")
                .map(|_| r.time("checked_at"))
                .transpose()?,
            reconciled_at: r
                .opt_s("reconciled_at")
                .map(|_| r.time("reconciled_at"))
                .transpose()?,
            operator_rejected: matches!(
                item.get("operator_rejected"),
                Some(AttributeValue::Bool(true))
            ),
            history: match item.get("history") {
                Some(AttributeValue::L(notes)) => {
                    notes.iter().map(note_from_item).collect::<Result<_, _>>()?
                }
                _ => Vec::new(),
            },
        })
    }
}

pub(super) fn note_to_item(n: &BatchNote) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("at".to_string(), s(&n.at)),
        ("from".into(), s(&n.from)),
        ("to".into(), s(&n.to)),
        ("by".into(), s(&n.by)),
        ("reason".into(), s(&n.reason)),
    ]))
}

fn note_from_item(v: &AttributeValue) -> Result<BatchNote, StoreError> {
    let m = v
        .as_m()
        .map_err(|_| StoreError::Failed(Failure::Corrupt("batch history".into())))?;
    let r = Reader(m);
    Ok(BatchNote {
        at: r.s("at")?.to_string(),
        from: r.s("from")?.to_string(),
        to: r.s("to")?.to_string(),
        by: r.s("by")?.to_string(),
        reason: r.s("reason")?.to_string(),
    })
}

/// A history line as the one-element list `list_append` takes.
pub(super) fn note(from: BatchStatus, to: BatchStatus, by: &str, reason: &str) -> AttributeValue {
    AttributeValue::L(vec![note_to_item(&BatchNote {
        at: timestamp(&Utc::now()),
        from: from.as_str().into(),
        to: to.as_str().into(),
        by: by.into(),
        reason: reason.into(),
    })])
}

/// A batch member's entry, one string: `<amount>[+<fee>[k]] <limit day or -> <user id>` (the
/// fee only when there is one, so a free withdrawal's entry is as it was before fees; `k` when
/// a bank return keeps it; user ids hold no spaces; the entry's size is what bounds a batch, `schema::MAX_BATCH_MEMBERS`). Entries
/// written before the terms were kept are the user id alone.
pub(super) fn member_to_item(m: &Member) -> AttributeValue {
    match &m.terms {
        None => s(m.user_id.as_str()),
        Some(terms) => {
            let money = if terms.fee.is_zero() {
                terms.amount.value().to_string()
            } else {
                let keep = match terms.fee_on_return {
                    FeeOnReturn::Keep => "k",
                    FeeOnReturn::Refund => "",
                };
                format!("{}+{}{keep}", terms.amount.value(), terms.fee)
            };
            s(format!(
                "{money} {} {}",
                terms.limit_day.map_or("-".to_string(), |d| d
                    .format(schema::DAY_FORMAT)
                    .to_string()),
                m.user_id
            ))
        }
    }
}

fn member_from_item(v: &AttributeValue, currency: &Currency) -> Result<Member, StoreError> {
    let entry = v
        .as_s()
        .map_err(|_| StoreError::Failed(Failure::Corrupt("batch member".into())))?;
    let parts: Vec<&str> = entry.split(' ').collect();
    let (user, terms) = match parts[..] {
        [user] => (user, None),
        [money, day, user] => {
            let (amount, fee) = money.split_once('+').unwrap_or((money, "0"));
            let (fee, fee_on_return) = match fee.strip_suffix('k') {
                Some(fee) => (fee, FeeOnReturn::Keep),
                None => (fee, FeeOnReturn::Refund),
            };
            let amount = Decimal::from_str(amount).map_err(corrupt)?;
            let fee = fee_value(Decimal::from_str(fee).map_err(corrupt)?, currency)?;
            let limit_day = match day {
                "-" => None,
                d => Some(NaiveDate::parse_from_str(d, schema::DAY_FORMAT).map_err(corrupt)?),
            };
            let terms = MemberTerms {
                amount: Amount::new(amount, currency).map_err(corrupt)?,
                fee,
                fee_on_return,
                limit_day,
            };
            (user, Some(terms))
        }
        _ => return Err(StoreError::Failed(Failure::Corrupt("batch member".into()))),
    };
    Ok(Member {
        user_id: UserId::parse(user).map_err(corrupt)?,
        terms,
    })
}

/// A stored fee: not negative, within its currency's scale, rescaled to it.
fn fee_value(value: Decimal, currency: &Currency) -> Result<Decimal, StoreError> {
    if value < Decimal::ZERO || value.normalize().scale() > currency.scale() {
        return Err(StoreError::Failed(Failure::Corrupt(format!(
            "fee {value} is not a {} quantity",
            currency.code()
        ))));
    }
    let mut v = value;
    v.rescale(currency.scale());
    Ok(v)
}
