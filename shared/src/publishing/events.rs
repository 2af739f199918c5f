//! Events out: what the rest of the platform hears. One event per withdrawal status change, one
//! per credit, one per beneficiary added or removed and one per change of an operator's switch
//! (a pause, a block), derived from the table's stream, which holds exactly what was committed, in
//! commit order per item. Nothing on the money path publishes anything: a commit cannot be
//! lost between the table and the bus, and a failed publish never undoes a commit.
//!
//! Delivery is at least once (the stream re-delivers after a failure); each event carries an
//! `event_id` (the withdrawal id and its new status, or the credit's reference) for consumers to
//! deduplicate, and a `sequence` that orders one withdrawal's events (EventBridge does not
//! promise delivery order).

use crate::domain::{
    Beneficiary, Control, ControlSubject, Currencies, Withdrawal, WithdrawalStatus,
};
use crate::requests::beneficiaries::BeneficiaryView;
use crate::requests::credits::CreditView;
use crate::requests::withdrawals::WithdrawalView;
use crate::store::{decode_stored_item, stored_status, CreditRecord, StoreError, StoredItem};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use std::collections::HashMap;

/// The `source` of every event: consumers' rules match on it.
pub const SOURCE: &str = "withdrawal-pipeline";
/// PutEvents takes at most this many entries per call.
pub const MAX_ENTRIES_PER_CALL: usize = 10;

pub type Image = HashMap<String, AttributeValue>;

/// Every `detail-type` the pipeline publishes (the catalogue in docs/events.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A withdrawal entered this status (PENDING from REVIEW is [`Self::WithdrawalApproved`]).
    Withdrawal(WithdrawalStatus),
    /// An operator released a held withdrawal to the batcher.
    WithdrawalApproved,
    CreditRecorded,
    CurrencyPaused,
    CurrencyResumed,
    UserBlocked,
    UserUnblocked,
    /// A user registered a destination (masked): the platform tells the user, so one added by
    /// someone else is removed within its cooling-off.
    BeneficiaryAdded,
    BeneficiaryRemoved,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        EventKind::Withdrawal(WithdrawalStatus::Review),
        EventKind::WithdrawalApproved,
        EventKind::Withdrawal(WithdrawalStatus::Pending),
        EventKind::Withdrawal(WithdrawalStatus::Submitted),
        EventKind::Withdrawal(WithdrawalStatus::Settled),
        EventKind::Withdrawal(WithdrawalStatus::Rejected),
        EventKind::Withdrawal(WithdrawalStatus::Returned),
        EventKind::Withdrawal(WithdrawalStatus::Cancelled),
        EventKind::CreditRecorded,
        EventKind::CurrencyPaused,
        EventKind::CurrencyResumed,
        EventKind::UserBlocked,
        EventKind::UserUnblocked,
        EventKind::BeneficiaryAdded,
        EventKind::BeneficiaryRemoved,
    ];

    pub fn detail_type(&self) -> &'static str {
        match self {
            // A new withdrawal is pending: consumers hear that it was requested.
            Self::Withdrawal(WithdrawalStatus::Pending) => "withdrawal.requested",
            // Requested above the review threshold: requested, and waiting for an operator.
            Self::Withdrawal(WithdrawalStatus::Review) => "withdrawal.held_for_review",
            Self::WithdrawalApproved => "withdrawal.approved",
            Self::Withdrawal(WithdrawalStatus::Submitted) => "withdrawal.submitted",
            Self::Withdrawal(WithdrawalStatus::Settled) => "withdrawal.settled",
            Self::Withdrawal(WithdrawalStatus::Rejected) => "withdrawal.rejected",
            Self::Withdrawal(WithdrawalStatus::Returned) => "withdrawal.returned",
            Self::Withdrawal(WithdrawalStatus::Cancelled) => "withdrawal.cancelled",
            Self::CreditRecorded => "credit.recorded",
            Self::CurrencyPaused => "currency.paused",
            Self::CurrencyResumed => "currency.resumed",
            Self::UserBlocked => "user.blocked",
            Self::UserUnblocked => "user.unblocked",
            Self::BeneficiaryAdded => "beneficiary.added",
            Self::BeneficiaryRemoved => "beneficiary.removed",
        }
    }
}

/// One event for the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineEvent {
    pub kind: EventKind,
    /// The same for every delivery of the same change: what consumers deduplicate on.
    pub event_id: String,
    /// When the change was committed (RFC 3339), the event's `time`.
    pub occurred_at: String,
    pub detail: serde_json::Value,
}

/// One change from the table's stream, as the event-source mapping (or the local relay) hands
/// it over: its sequence number (what a batch item failure names) and its two images.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub sequence_number: String,
    pub old: Option<Image>,
    pub new: Option<Image>,
}

/// The event one committed change makes, if any: a withdrawal created or moved to another
/// status, or a credit recorded. Everything else (balances, batches, a withdrawal rewritten in
/// the same status, items removed by TTL) makes none. An image the codec cannot read is an
/// error: the record is retried until it can be read or an operator skips it
/// ([`SkippedRecords`]) — never skipped silently.
pub fn event_of(
    currencies: &Currencies,
    change: &Change,
) -> Result<Option<PipelineEvent>, StoreError> {
    let Some(new) = &change.new else {
        return Ok(None);
    };
    match decode_stored_item(currencies, new)? {
        StoredItem::Withdrawal(w) => {
            let previous = change.old.as_ref().and_then(stored_status);
            if previous == Some(w.status) {
                return Ok(None);
            }
            Ok(Some(withdrawal_event(&w, previous)))
        }
        StoredItem::Credit(c) if change.old.is_none() => Ok(Some(credit_event(&c))),
        // Each change of a switch counts itself: a rewrite without a change makes no event.
        StoredItem::Control(c) => {
            let before =
                change
                    .old
                    .as_ref()
                    .and_then(|old| match decode_stored_item(currencies, old) {
                        Ok(StoredItem::Control(b)) => Some(b.changes),
                        _ => None,
                    });
            Ok((before != Some(c.changes)).then(|| control_event(&c)))
        }
        // Added (a new item) or removed (the mark appears): a beneficiary changes nothing else.
        StoredItem::Beneficiary(b) => {
            let was_removed = change.old.as_ref().map(|old| {
                matches!(decode_stored_item(currencies, old), Ok(StoredItem::Beneficiary(o)) if o.is_removed())
            });
            Ok(match was_removed {
                None => Some(beneficiary_event(&b)),
                Some(false) if b.is_removed() => Some(beneficiary_event(&b)),
                Some(_) => None,
            })
        }
        StoredItem::Credit(_) | StoredItem::Other => Ok(None),
    }
}

/// The event of beneficiary `b` having been added, or removed once it is: the account masked.
pub fn beneficiary_event(b: &Beneficiary) -> PipelineEvent {
    let (kind, event_id, occurred_at) = match &b.removed_at {
        None => (
            EventKind::BeneficiaryAdded,
            format!("{}.added", b.id),
            crate::domain::timestamp(&b.created_at),
        ),
        Some(at) => (
            EventKind::BeneficiaryRemoved,
            format!("{}.removed", b.id),
            crate::domain::timestamp(at),
        ),
    };
    PipelineEvent {
        kind,
        detail: json!({
            "event_id": event_id,
            "user_id": b.user_id.as_str(),
            "beneficiary": BeneficiaryView::from(b),
            "occurred_at": occurred_at,
        }),
        event_id,
        occurred_at,
    }
}

/// The event of `w` having just reached its status from `previous`: the one builder, for the
/// stream and for `operator republish` alike, so a rebuilt event has the publisher's `event_id`.
pub fn withdrawal_event(w: &Withdrawal, previous: Option<WithdrawalStatus>) -> PipelineEvent {
    // The audit entry written by the same write as this status: who and when.
    let entry = w.audit.iter().rev().find(|e| e.to == w.status);
    let occurred_at =
        entry.map_or_else(|| crate::domain::timestamp(&w.updated_at), |e| e.at.clone());
    let event_id = format!("{}.{}", w.id, w.status);
    let detail = json!({
        "event_id": event_id,
        "user_id": w.user_id.as_str(),
        "withdrawal": WithdrawalView::from(w),
        "previous_status": previous.map(|p| p.as_str()),
        "actor": entry.map(|e| e.by.as_str()),
        "reason": entry.and_then(|e| e.reason.as_deref()),
        "occurred_at": occurred_at,
        // Orders one withdrawal's events: its number of status changes so far.
        "sequence": w.audit.len(),
    });
    let approved = w.status == WithdrawalStatus::Pending
        && entry.is_some_and(|e| e.from == Some(WithdrawalStatus::Review));
    PipelineEvent {
        kind: if approved {
            EventKind::WithdrawalApproved
        } else {
            EventKind::Withdrawal(w.status)
        },
        event_id,
        occurred_at,
        detail,
    }
}

/// The event of credit `c` having been recorded.
pub fn credit_event(c: &CreditRecord) -> PipelineEvent {
    let event_id = format!("credit.{}", c.reference);
    let view = CreditView::from(c);
    let occurred_at = view.created_at.clone();
    PipelineEvent {
        kind: EventKind::CreditRecorded,
        detail: json!({"event_id": event_id, "credit": view, "occurred_at": occurred_at}),
        event_id,
        occurred_at,
    }
}

/// The event of switch `c`'s last change: who paused, resumed, blocked or unblocked, and why.
pub fn control_event(c: &Control) -> PipelineEvent {
    let kind = match (&c.subject, c.on) {
        (ControlSubject::Currency(_), true) => EventKind::CurrencyPaused,
        (ControlSubject::Currency(_), false) => EventKind::CurrencyResumed,
        (ControlSubject::User(_), true) => EventKind::UserBlocked,
        (ControlSubject::User(_), false) => EventKind::UserUnblocked,
    };
    let (event_id, about) = match &c.subject {
        ControlSubject::Currency(code) => (
            format!("pause.{code}.{}", c.changes),
            json!({"currency": code.as_str()}),
        ),
        ControlSubject::User(user) => (
            format!("block.{}.{}", user.as_str(), c.changes),
            json!({"user_id": user.as_str()}),
        ),
    };
    let occurred_at = crate::domain::timestamp(&c.at);
    let mut detail = json!({
        "event_id": event_id,
        "actor": c.by,
        "reason": c.reason,
        "occurred_at": occurred_at,
        // Orders one switch's events: its number of changes so far.
        "sequence": c.changes,
    });
    if let (Some(d), Some(a)) = (detail.as_object_mut(), about.as_object()) {
        d.extend(a.clone());
    }
    PipelineEvent {
        kind,
        event_id,
        occurred_at,
        detail,
    }
}

/// Stream records an operator decided to skip (`operator skip-record`): the only way past a
/// record the publisher cannot read, which otherwise holds its shard (and alarms) until someone
/// acts. Asked only about such a record, never on the common path.
#[async_trait]
pub trait SkippedRecords: Send + Sync {
    /// Who skipped the record with this sequence number, and why; `None` when nobody did.
    async fn skipped(&self, sequence_number: &str) -> Result<Option<String>, StoreError>;
}

/// No record is ever skipped (a publisher without the table).
pub struct NoneSkipped;

#[async_trait]
impl SkippedRecords for NoneSkipped {
    async fn skipped(&self, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// The bus: one PutEvents call.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Puts up to [`MAX_ENTRIES_PER_CALL`] events; per entry, in order, whether the bus took it.
    /// `Err` when the call as a whole failed (nothing may be assumed taken).
    async fn put(&self, events: &[PipelineEvent]) -> Result<Vec<bool>, String>;
}

/// What one stream batch came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    /// Events the bus took.
    pub events: usize,
    /// Changes that make no event.
    pub skipped: usize,
    /// PutEvents calls made.
    pub calls: usize,
    /// Unreadable records passed over because an operator skipped them (counted in `skipped`).
    pub skipped_unreadable: usize,
    /// The batch stopped at a record that cannot be read and nobody skipped.
    pub unreadable: bool,
    /// The first change not (certainly) published: the batch item failure. The stream hands
    /// it and everything after it over again, so nothing is lost and one item's events keep
    /// their order; the events after it that did go out are sent again (same `event_id`).
    pub retry_from: Option<String>,
}

/// Publishes a stream batch in order, at most [`MAX_ENTRIES_PER_CALL`] events per call. Stops
/// at the first change that cannot be read (unless an operator skipped it) or published and
/// names it in `retry_from`.
pub async fn publish(
    bus: &dyn EventBus,
    currencies: &Currencies,
    skips: &dyn SkippedRecords,
    changes: &[Change],
) -> Published {
    let mut out = Published::default();
    let mut ready: Vec<(&str, PipelineEvent)> = Vec::new();
    let mut unreadable = None;
    for change in changes {
        match event_of(currencies, change) {
            Ok(Some(event)) => ready.push((&change.sequence_number, event)),
            Ok(None) => out.skipped += 1,
            Err(e) => match skips.skipped(&change.sequence_number).await {
                Ok(Some(by)) => {
                    tracing::warn!(sequence_number = %change.sequence_number, item = %item_key(change), error = %e, skipped_by = %by,
                        "an unreadable stream record skipped by an operator (`operator republish` rebuilds its event)");
                    out.skipped += 1;
                    out.skipped_unreadable += 1;
                }
                not_skipped => {
                    if let Err(lookup) = not_skipped {
                        tracing::warn!(error = %lookup, "could not read the skipped records");
                    }
                    tracing::error!(sequence_number = %change.sequence_number, item = %item_key(change), error = %e,
                        "a stream record cannot be read; it is retried until an operator skips it (`operator skip-record`)");
                    out.unreadable = true;
                    unreadable = Some(change.sequence_number.clone());
                    break;
                }
            },
        }
    }
    let (events, calls, failed) = put_in_order(bus, &ready).await;
    out.events = events;
    out.calls = calls;
    out.retry_from = failed.or(unreadable);
    out
}

/// Puts `events` in order, at most [`MAX_ENTRIES_PER_CALL`] a call, stopping at the first one
/// not (certainly) taken. Returns the events taken, the calls made and the first event's tag
/// (a sequence number, an event id) not taken.
pub async fn put_in_order(
    bus: &dyn EventBus,
    events: &[(&str, PipelineEvent)],
) -> (usize, usize, Option<String>) {
    let (mut taken_count, mut calls) = (0, 0);
    for chunk in events.chunks(MAX_ENTRIES_PER_CALL) {
        let events: Vec<PipelineEvent> = chunk.iter().map(|(_, e)| e.clone()).collect();
        calls += 1;
        let first_failed = match bus.put(&events).await {
            Ok(taken) if taken.len() == events.len() => {
                taken_count += taken.iter().filter(|t| **t).count();
                taken.iter().position(|t| !*t)
            }
            Ok(taken) => {
                tracing::error!(
                    sent = events.len(),
                    answered = taken.len(),
                    "PutEvents answered another number of entries"
                );
                Some(0)
            }
            Err(e) => {
                tracing::warn!(error = %e, "PutEvents failed; the stream retries from this batch");
                Some(0)
            }
        };
        if let Some(i) = first_failed {
            tracing::warn!(tag = %chunk[i].0, event_id = %chunk[i].1.event_id,
                "not published; this event and the rest are handed over again");
            return (taken_count, calls, Some(chunk[i].0.to_string()));
        }
    }
    (taken_count, calls, None)
}

/// The item a change is about, for the logs: its sort key (`WD#<id>`, `-` for a credit) and the
/// partition key of a credit (`CREDIT#<reference>`); never an attribute's value.
fn item_key(change: &Change) -> String {
    let image = change.new.as_ref().or(change.old.as_ref());
    let key = |k: &str| {
        image
            .and_then(|i| i.get(k))
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    let (pk, sk) = (key("PK"), key("SK"));
    if pk.starts_with("USER#") {
        sk
    } else {
        pk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_detail_type() {
        let types: std::collections::BTreeSet<_> =
            EventKind::ALL.iter().map(EventKind::detail_type).collect();
        assert_eq!(types.len(), EventKind::ALL.len());
        for status in WithdrawalStatus::ALL {
            assert!(
                EventKind::ALL.contains(&EventKind::Withdrawal(status)),
                "{status}"
            );
        }
    }
}
