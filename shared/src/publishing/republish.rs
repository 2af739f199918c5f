//! Events that missed the bus, rebuilt from the table: the recovery path behind
//! `operator republish`. A withdrawal's audit trail holds every status change it went through,
//! and a credit record is its own event, so each event the publisher would have put in a time
//! window can be made again, with the publisher's own `event_id` (consumers' deduplication holds)
//! and built by the publisher's own functions ([`events::withdrawal_event`],
//! [`events::credit_event`], [`events::beneficiary_event`]). A beneficiary keeps both its times,
//! so its `beneficiary.added` (the user's warning of a new destination) and its removal can be
//! made again too.

use crate::domain::{Beneficiary, Destination, Withdrawal, WithdrawalStatus};
use crate::publishing::events::{self, EventBus, PipelineEvent};
use crate::store::CreditRecord;
use chrono::{DateTime, Utc};

/// `[since, until)`: the changes committed in it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

impl Window {
    fn holds(&self, at: DateTime<Utc>) -> bool {
        at >= self.since && self.until.is_none_or(|u| at < u)
    }
}

/// `w` as it was right after the change recorded by its audit entry `index`: that status, its
/// time, the trail up to it, and none of the fields a later change set. `None` past the trail.
pub fn as_of(w: &Withdrawal, index: usize) -> Option<Withdrawal> {
    let entry = w.audit.get(index)?;
    let mut then = w.clone();
    then.audit.truncate(index + 1);
    then.status = entry.to;
    if let Ok(at) = DateTime::parse_from_rfc3339(&entry.at) {
        then.updated_at = at.with_timezone(&Utc);
    }
    use WithdrawalStatus::*;
    if matches!(entry.to, Review | Pending | Cancelled)
        || (entry.to == Rejected && matches!(entry.from, Some(Review | Pending)))
    {
        then.batch_id = None;
    }
    if matches!(entry.to, Review | Pending | Submitted | Cancelled) {
        then.provider_reference = None;
    }
    // A beneficiary's account is copied onto the withdrawal by the claim, which also sets the
    // batch: out of a batch, the event named the beneficiary alone.
    if then.batch_id.is_none() {
        if let Destination::Beneficiary { account, .. } = &mut then.destination {
            *account = None;
        }
    }
    if matches!(entry.to, Review | Pending | Submitted | Settled) {
        then.failure_reason = None;
    }
    if entry.to != Returned {
        then.fee_returned = None;
    }
    Some(then)
}

/// Every event the publisher would have put for the changes committed in `window`, oldest
/// first (one withdrawal's in its order).
pub fn rebuilt(
    withdrawals: &[Withdrawal],
    credits: &[CreditRecord],
    beneficiaries: &[Beneficiary],
    window: Window,
) -> Vec<PipelineEvent> {
    let mut out: Vec<(DateTime<Utc>, usize, PipelineEvent)> = Vec::new();
    for w in withdrawals {
        // One withdrawal's events keep their trail's order even if writers' clocks disagree:
        // each sorts no earlier than the one before it.
        let mut latest = DateTime::<Utc>::MIN_UTC;
        for (i, entry) in w.audit.iter().enumerate() {
            let Ok(at) = DateTime::parse_from_rfc3339(&entry.at) else {
                continue;
            };
            let at = at.with_timezone(&Utc);
            latest = latest.max(at);
            if !window.holds(at) {
                continue;
            }
            if let Some(then) = as_of(w, i) {
                out.push((latest, i, events::withdrawal_event(&then, entry.from)));
            }
        }
    }
    for c in credits.iter().filter(|c| window.holds(c.created_at)) {
        out.push((c.created_at, 0, events::credit_event(c)));
    }
    for b in beneficiaries {
        if window.holds(b.created_at) {
            // As it was when added: not yet removed.
            let added = Beneficiary {
                removed_at: None,
                ..b.clone()
            };
            out.push((b.created_at, 0, events::beneficiary_event(&added)));
        }
        if let Some(at) = b.removed_at.filter(|at| window.holds(*at)) {
            out.push((at, 1, events::beneficiary_event(b)));
        }
    }
    out.sort_by(|a, b| (a.0, a.1, &a.2.event_id).cmp(&(b.0, b.1, &b.2.event_id)));
    out.into_iter().map(|(_, _, e)| e).collect()
}

/// What a republish came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Republished {
    pub events: usize,
    pub calls: usize,
    /// The first event the bus did not take: run again (the same ids; consumers deduplicate).
    pub stopped_at: Option<String>,
}

/// Puts `events` on the bus in order, as the publisher does.
pub async fn republish(bus: &dyn EventBus, events: &[PipelineEvent]) -> Republished {
    let tagged: Vec<(&str, PipelineEvent)> = events
        .iter()
        .map(|e| (e.event_id.as_str(), e.clone()))
        .collect();
    let (published, calls, stopped_at) = events::put_in_order(bus, &tagged).await;
    Republished {
        events: published,
        calls,
        stopped_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuditEntry, BankAccount, Currencies, UserId};

    fn withdrawal() -> Withdrawal {
        let usd = Currencies::default().get("USD").unwrap().clone();
        let mut w = Withdrawal::new(
            UserId::parse("ann").unwrap(),
            usd.clone(),
            crate::domain::Amount::parse("10.00", &usd).unwrap(),
            crate::domain::Destination::Account(
                BankAccount::parse("DE89370400440532013000").unwrap(),
            ),
            "2026-12-01T10:00:00Z".parse().unwrap(),
        );
        for (at, from, to, by) in [
            (
                "2026-12-01T10:05:00.000Z",
                WithdrawalStatus::Pending,
                WithdrawalStatus::Submitted,
                "batcher:run_1",
            ),
            (
                "2026-12-01T10:06:00.000Z",
                WithdrawalStatus::Submitted,
                WithdrawalStatus::Settled,
                "webhook",
            ),
        ] {
            w.audit.push(AuditEntry {
                at: at.into(),
                from: Some(from),
                to,
                by: by.into(),
                event_id: None,
                reason: None,
            });
        }
        w.status = WithdrawalStatus::Settled;
        w.updated_at = "2026-12-01T10:06:00Z".parse().unwrap();
        w.batch_id = Some(crate::domain::BatchId::new());
        w.provider_reference = Some("po_1".into());
        w
    }

    #[test]
    fn each_change_in_the_window_is_rebuilt_with_the_publishers_event_id() {
        let w = withdrawal();
        let all = rebuilt(
            std::slice::from_ref(&w),
            &[],
            &[],
            Window {
                since: "2026-12-01T00:00:00Z".parse().unwrap(),
                until: None,
            },
        );
        let ids: Vec<_> = all.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(
            ids,
            ["PENDING", "SUBMITTED", "SETTLED"].map(|s| format!("{}.{s}", w.id))
        );
        // The last change's event is exactly the one the stream's new image makes.
        assert_eq!(
            all[2],
            events::withdrawal_event(&w, Some(WithdrawalStatus::Submitted))
        );
        // An earlier one shows the withdrawal as it was then.
        assert_eq!(all[1].detail["withdrawal"]["status"], "SUBMITTED");
        assert_eq!(all[1].detail["sequence"], 2);
        assert_eq!(
            all[1].detail["withdrawal"]["provider_reference"],
            serde_json::Value::Null
        );
        assert_eq!(
            all[0].detail["withdrawal"]["batch_id"],
            serde_json::Value::Null
        );
        // The window bounds it: [since, until).
        let window = Window {
            since: "2026-12-01T10:05:00Z".parse().unwrap(),
            until: Some("2026-12-01T10:06:00Z".parse().unwrap()),
        };
        let one = rebuilt(std::slice::from_ref(&w), &[], &[], window);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].event_id, format!("{}.SUBMITTED", w.id));
    }

    #[test]
    fn a_beneficiary_is_rebuilt_as_added_then_removed_and_a_claimed_account_only_from_the_claim() {
        use crate::domain::{Beneficiary, BeneficiaryDetails};
        let details = BeneficiaryDetails::parse("DE89370400440532013000", "Ann Lee", None).unwrap();
        let mut b = Beneficiary::new(
            UserId::parse("ann").unwrap(),
            details,
            "2026-12-01T09:00:00Z".parse().unwrap(),
            chrono::Duration::zero(),
        );
        b.removed_at = Some("2026-12-01T11:00:00Z".parse().unwrap());
        let window = |since: &str| Window {
            since: since.parse().unwrap(),
            until: None,
        };
        let both = rebuilt(
            &[],
            &[],
            std::slice::from_ref(&b),
            window("2026-12-01T00:00:00Z"),
        );
        let kinds: Vec<_> = both.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(
            kinds,
            [format!("{}.added", b.id), format!("{}.removed", b.id)]
        );
        assert!(both[0].detail["beneficiary"]["removed_at"].is_null());
        assert_eq!(both[1], events::beneficiary_event(&b));
        assert!(!both[0]
            .detail
            .to_string()
            .contains("DE89370400440532013000"));
        let late = rebuilt(
            &[],
            &[],
            std::slice::from_ref(&b),
            window("2026-12-01T10:00:00Z"),
        );
        assert_eq!(late.len(), 1);

        // A withdrawal to it: requested with the beneficiary only, the account from the claim.
        let mut w = withdrawal();
        w.destination = Destination::Beneficiary {
            id: b.id,
            account: Some(BankAccount::parse("DE89370400440532013000").unwrap()),
        };
        w.batch_id = Some(crate::domain::BatchId::new());
        assert_eq!(
            as_of(&w, 0).unwrap().destination,
            Destination::beneficiary(b.id)
        );
        assert_eq!(as_of(&w, 1).unwrap().destination, w.destination);
    }
}
