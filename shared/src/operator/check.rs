//! The money invariants, checked over a full read of the table by the operator's `check`.

use crate::domain::{Balance, CurrencyCode, UserId, Withdrawal};
use crate::store::ScanReport;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// Every violation found; empty means the books balance.
///
/// Per user and currency: `available + locked + paid_out + fees == credited`, no bucket
/// negative, `locked` equals the amounts and fees of open withdrawals and `open_count` their
/// number, `fees` the fees of settled withdrawals and what returned ones kept, and `credited`
/// the sum of the credit records (every credit is recorded in the same write); and every open
/// withdrawal has a way out (`batch_gaps`).
pub fn violations(report: &ScanReport) -> Vec<String> {
    let mut problems: Vec<String> = report
        .unreadable
        .iter()
        .map(|u| format!("unreadable item {u}"))
        .collect();
    let mut open: BTreeMap<(UserId, CurrencyCode), (Decimal, u32)> = BTreeMap::new();
    let mut charged: BTreeMap<(UserId, CurrencyCode), Decimal> = BTreeMap::new();
    for w in &report.withdrawals {
        if let Some(gap) = audit_gap(w) {
            problems.push(format!("{} {}: audit trail {gap}", w.user_id, w.id));
        }
        let key = (w.user_id.clone(), w.currency.code());
        let entry = open.entry(key.clone()).or_insert((Decimal::ZERO, 0));
        if w.status.is_open() {
            entry.0 += w.total();
            entry.1 += 1;
        }
        let kept = match w.status {
            crate::domain::WithdrawalStatus::Settled => w.fee,
            crate::domain::WithdrawalStatus::Returned => w.fee - w.fee_returned.unwrap_or(w.fee),
            _ => Decimal::ZERO,
        };
        *charged.entry(key).or_insert(Decimal::ZERO) += kept;
    }
    let mut credits: BTreeMap<(UserId, CurrencyCode), Decimal> = BTreeMap::new();
    for c in &report.credits {
        *credits
            .entry((c.user_id.clone(), c.currency.code()))
            .or_insert(Decimal::ZERO) += c.amount.value();
    }
    let mut balances: BTreeMap<(UserId, CurrencyCode), &Balance> = BTreeMap::new();
    for (user, b) in &report.balances {
        balances.insert((user.clone(), b.currency.code()), b);
    }
    for ((user, ccy), b) in &balances {
        if !b.is_conserved() {
            problems.push(format!(
                "{user} {ccy}: available {} + locked {} + paid_out {} + fees {} != credited {} \
                 (or negative)",
                b.available, b.locked, b.paid_out, b.fees, b.credited
            ));
        }
        let fees = charged
            .get(&(user.clone(), *ccy))
            .copied()
            .unwrap_or(Decimal::ZERO);
        if b.fees != fees {
            problems.push(format!(
                "{user} {ccy}: fees {} != fees charged {}",
                b.currency.format(b.fees),
                b.currency.format(fees)
            ));
        }
        let (sum, count) = open
            .get(&(user.clone(), *ccy))
            .copied()
            .unwrap_or((Decimal::ZERO, 0));
        if b.locked != sum {
            problems.push(format!(
                "{user} {ccy}: locked {} != open withdrawals {sum}",
                b.locked
            ));
        }
        let recorded = credits
            .get(&(user.clone(), *ccy))
            .copied()
            .unwrap_or(Decimal::ZERO);
        if b.credited != recorded {
            problems.push(format!(
                "{user} {ccy}: credited {} != credit records {recorded}",
                b.credited
            ));
        }
        if b.open_count != count {
            problems.push(format!(
                "{user} {ccy}: open_count {} != {count} open withdrawals",
                b.open_count
            ));
        }
    }
    for (user, ccy) in open.keys() {
        if !balances.contains_key(&(user.clone(), *ccy)) {
            problems.push(format!("{user} {ccy}: withdrawals without a balance"));
        }
    }
    for (user, ccy) in credits.keys() {
        if !balances.contains_key(&(user.clone(), *ccy)) {
            problems.push(format!("{user} {ccy}: credit records without a balance"));
        }
    }
    problems.extend(batch_gaps(report));
    problems
}

/// Every state has a way out: a SUBMITTED withdrawal belongs to a batch record that lists it
/// and is still open (a final batch is never looked at again, so its SUBMITTED member would be
/// locked for ever); a batch an operator rejected a member of is never back in the batcher's
/// hands (it would be sent again); a completed batch has no open member; no member was returned
/// on a 404 from a provider that had shown it holds the batch.
fn batch_gaps(report: &ScanReport) -> Vec<String> {
    use crate::domain::{BatchStatus, WithdrawalStatus};
    let batches: BTreeMap<_, _> = report.batches.iter().map(|b| (b.id, b)).collect();
    let mut problems = Vec::new();
    for w in &report.withdrawals {
        if w.status != WithdrawalStatus::Submitted {
            continue;
        }
        match w.batch_id.and_then(|id| batches.get(&id)) {
            None => problems.push(format!(
                "{} {}: SUBMITTED without its batch record",
                w.user_id, w.id
            )),
            Some(b) if !b.members.contains_key(&w.id) => problems.push(format!(
                "{} {}: SUBMITTED but batch {} does not list it",
                w.user_id, w.id, b.id
            )),
            Some(b) if b.status.is_terminal() => problems.push(format!(
                "{} {}: SUBMITTED in {} batch {}: no way out",
                w.user_id, w.id, b.status, b.id
            )),
            Some(_) => {}
        }
    }
    for b in &report.batches {
        if b.operator_rejected
            && matches!(
                b.status,
                BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Accepted
            )
        {
            problems.push(format!(
                "batch {}: a member was rejected by an operator, yet it is {}",
                b.id, b.status
            ));
        }
    }
    // Evidence is monotonic: a member returned on the provider's 404 ("never recorded") in a
    // batch the provider has shown it holds was returned while the provider may still pay it.
    for w in &report.withdrawals {
        let returned_on_404 = w.status == WithdrawalStatus::Rejected
            && w.audit.last().is_some_and(|e| {
                e.from == Some(WithdrawalStatus::Submitted) && e.by == crate::domain::OPERATOR_ACTOR
            });
        if let Some(b) = w.batch_id.and_then(|id| batches.get(&id)) {
            if returned_on_404 && b.provider_has_it() {
                problems.push(format!(
                    "{} {}: returned as never recorded, yet the provider holds batch {} ({}): \
                     ask the provider whether it paid",
                    w.user_id,
                    w.id,
                    b.id,
                    b.provider_batch_id.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    let withdrawals: BTreeMap<_, _> = report.withdrawals.iter().map(|w| (w.id, w)).collect();
    for b in report
        .batches
        .iter()
        .filter(|b| b.status == BatchStatus::Completed)
    {
        let open = b
            .members
            .keys()
            .filter(|id| withdrawals.get(id).is_none_or(|w| w.status.is_open()))
            .count();
        if open > 0 {
            problems.push(format!(
                "batch {}: COMPLETED with {open} open member(s)",
                b.id
            ));
        }
    }
    problems
}

/// A complete trail starts with the creation (as PENDING, or REVIEW when held), chains each entry's `from` to the
/// previous `to`, and ends in the withdrawal's current status.
fn audit_gap(w: &Withdrawal) -> Option<String> {
    let Some(first) = w.audit.first() else {
        return Some("is empty".into());
    };
    use crate::domain::WithdrawalStatus::{Pending, Review};
    if first.from.is_some() || !matches!(first.to, Pending | Review) {
        return Some("does not start with the creation".into());
    }
    for pair in w.audit.windows(2) {
        if pair[1].from != Some(pair[0].to) {
            return Some(format!(
                "breaks between {} and {:?}",
                pair[0].to, pair[1].from
            ));
        }
    }
    let last = w.audit.last()?;
    (last.to != w.status).then(|| format!("ends in {} but the withdrawal is {}", last.to, w.status))
}

/// One line per balance for the operator's report.
pub fn summary(report: &ScanReport) -> Vec<String> {
    report
        .balances
        .iter()
        .map(|(u, b)| {
            format!(
                "{u} {}: available {} locked {} paid_out {} fees {} credited {} open {}",
                b.currency.code(),
                b.currency.format(b.available),
                b.currency.format(b.locked),
                b.currency.format(b.paid_out),
                b.currency.format(b.fees),
                b.currency.format(b.credited),
                b.open_count
            )
        })
        .collect()
}

/// The house's fee revenue, one line per currency that has any balance: the sum of users'
/// `fees` and how many users paid some.
pub fn fee_revenue(report: &ScanReport) -> Vec<String> {
    let mut by_currency: BTreeMap<CurrencyCode, (&crate::domain::Currency, Decimal, usize)> =
        BTreeMap::new();
    for (_, b) in &report.balances {
        let entry = by_currency
            .entry(b.currency.code())
            .or_insert((&b.currency, Decimal::ZERO, 0));
        entry.1 += b.fees;
        entry.2 += usize::from(!b.fees.is_zero());
    }
    by_currency
        .into_values()
        .map(|(currency, total, users)| {
            format!(
                "{}: fees {} from {users} user(s)",
                currency.code(),
                currency.format(total)
            )
        })
        .collect()
}

/// What open withdrawals of one user lock (amounts and fees), for tests and tools that look at
/// a single balance.
pub fn open_total(withdrawals: &[Withdrawal], user: &UserId, ccy: CurrencyCode) -> Decimal {
    withdrawals
        .iter()
        .filter(|w| &w.user_id == user && w.currency.code() == ccy && w.status.is_open())
        .map(Withdrawal::total)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Amount, BalanceEffect, BankAccount, CreditReference, Currencies};
    use crate::store::CreditRecord;
    use chrono::Utc;

    fn credit_of(user: &UserId, amount: &str, reference: &str) -> CreditRecord {
        let usd = Currencies::default().get("USD").unwrap().clone();
        CreditRecord {
            reference: CreditReference::parse(reference).unwrap(),
            user_id: user.clone(),
            amount: Amount::parse(amount, &usd).unwrap(),
            currency: usd,
            actor: "operator".into(),
            description: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn the_fees_bucket_must_equal_what_settled_and_returned_withdrawals_kept() {
        use crate::domain::{Transition, WithdrawalStatus};
        let currencies = Currencies::default()
            .with_fees("USD:1.00:0:0:0:keep")
            .unwrap();
        let usd = currencies.get("USD").unwrap().clone();
        let user = UserId::parse("u1").unwrap();
        let mut w = Withdrawal::new(
            user.clone(),
            usd.clone(),
            Amount::parse("10", &usd).unwrap(),
            crate::domain::Destination::Account(
                BankAccount::parse("DE89370400440532013000").unwrap(),
            ),
            Utc::now(),
        );
        assert_eq!(w.fee, Decimal::new(100, 2));
        let mut balance = Balance::empty(usd.clone())
            .apply(BalanceEffect::Credit, Decimal::from(100), Decimal::ZERO)
            .unwrap()
            .apply(BalanceEffect::Lock, w.amount.value(), w.fee)
            .unwrap();
        for t in [Transition::Submit, Transition::Settle] {
            balance = balance
                .apply(t.balance_effect(), w.amount.value(), w.fee)
                .unwrap();
        }
        w.status = WithdrawalStatus::Settled;
        for (at, status) in [
            ("2026-12-01T10:00:00.000Z", WithdrawalStatus::Submitted),
            ("2026-12-01T10:01:00.000Z", WithdrawalStatus::Settled),
        ] {
            w.audit.push(crate::domain::AuditEntry {
                at: at.into(),
                from: w.audit.last().map(|e| e.to),
                to: status,
                by: "test".into(),
                event_id: None,
                reason: None,
            });
        }
        let report = |b: &Balance, w: &Withdrawal| ScanReport {
            balances: vec![(user.clone(), b.clone())],
            withdrawals: vec![w.clone()],
            credits: vec![CreditRecord {
                currency: usd.clone(),
                amount: Amount::parse("100", &usd).unwrap(),
                ..credit_of(&user, "100", "c-1")
            }],
            ..ScanReport::default()
        };
        assert!(violations(&report(&balance, &w)).is_empty());
        assert_eq!(
            fee_revenue(&report(&balance, &w)),
            ["USD: fees 1.00 from 1 user(s)"]
        );
        // The fee left the bucket without its withdrawal saying so (or never arrived in it).
        let mut lost = balance.clone();
        lost.fees = Decimal::ZERO;
        lost.available += Decimal::new(100, 2);
        let found = violations(&report(&lost, &w));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("fees 0.00 != fees charged 1.00"),
            "{found:?}"
        );
        // A return under `keep` leaves the fee with the house; the withdrawal says so.
        let mut returned = w.clone();
        returned.status = WithdrawalStatus::Returned;
        returned.fee_returned = Some(Decimal::ZERO);
        returned.audit.push(crate::domain::AuditEntry {
            at: "2026-12-01T10:02:00.000Z".into(),
            from: Some(WithdrawalStatus::Settled),
            to: WithdrawalStatus::Returned,
            by: "test".into(),
            event_id: None,
            reason: None,
        });
        let back = balance
            .apply(
                BalanceEffect::Return,
                w.amount.value(),
                crate::domain::Subject::from(&w).fee_moved(Transition::Return),
            )
            .unwrap();
        assert_eq!(back.fees, Decimal::new(100, 2));
        assert!(violations(&report(&back, &returned)).is_empty());
    }

    #[test]
    fn detects_a_lock_without_a_withdrawal_and_broken_conservation() {
        let usd = Currencies::default().get("USD").unwrap().clone();
        let user = UserId::parse("u1").unwrap();
        let amt = Amount::parse("10", &usd).unwrap();
        let credited = Balance::empty(usd.clone())
            .apply(BalanceEffect::Credit, Decimal::from(100), Decimal::ZERO)
            .unwrap();
        let locked = credited
            .apply(BalanceEffect::Lock, amt.value(), Decimal::ZERO)
            .unwrap();
        let w = Withdrawal::new(
            user.clone(),
            usd.clone(),
            amt,
            crate::domain::Destination::Account(
                BankAccount::parse("DE89370400440532013000").unwrap(),
            ),
            Utc::now(),
        );
        assert_eq!(audit_gap(&w), None);
        let mut gap = w.clone();
        gap.status = crate::domain::WithdrawalStatus::Settled;
        assert!(audit_gap(&gap).is_some());
        let mut empty = w.clone();
        empty.audit.clear();
        assert!(audit_gap(&empty).is_some());
        let good = ScanReport {
            balances: vec![(user.clone(), locked.clone())],
            withdrawals: vec![w],
            credits: vec![credit_of(&user, "100", "c-1")],
            batches: vec![],
            unreadable: vec![],
            beneficiaries: vec![],
        };
        assert!(violations(&good).is_empty(), "{:?}", violations(&good));

        let orphan_lock = ScanReport {
            balances: vec![(user.clone(), locked.clone())],
            withdrawals: vec![],
            credits: good.credits.clone(),
            batches: vec![],
            unreadable: vec![],
            beneficiaries: vec![],
        };
        assert_eq!(violations(&orphan_lock).len(), 2);

        let mut broken = locked;
        broken.available += Decimal::ONE;
        let report = ScanReport {
            balances: vec![(user, broken)],
            withdrawals: good.withdrawals.clone(),
            credits: good.credits.clone(),
            batches: vec![],
            unreadable: vec![],
            beneficiaries: vec![],
        };
        assert_eq!(violations(&report).len(), 1);
    }

    #[test]
    fn credited_must_equal_the_credit_records() {
        let usd = Currencies::default().get("USD").unwrap().clone();
        let user = UserId::parse("u1").unwrap();
        let balance = Balance::empty(usd)
            .apply(BalanceEffect::Credit, Decimal::from(100), Decimal::ZERO)
            .unwrap();
        let report = |credits: Vec<CreditRecord>| ScanReport {
            balances: vec![(user.clone(), balance.clone())],
            credits,
            ..ScanReport::default()
        };
        let split = report(vec![
            credit_of(&user, "60", "c-1"),
            credit_of(&user, "40.00", "c-2"),
        ]);
        assert!(violations(&split).is_empty(), "{:?}", violations(&split));
        // Funds that entered without a record (or a record whose funds never arrived).
        let missing = violations(&report(vec![credit_of(&user, "60", "c-1")]));
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].contains("credited 100"), "{missing:?}");
        let unrecorded = violations(&report(vec![]));
        assert_eq!(unrecorded.len(), 1, "{unrecorded:?}");
        // A record for a balance that does not exist.
        let other = UserId::parse("u2").unwrap();
        let orphan = violations(&report(vec![
            credit_of(&user, "100", "c-1"),
            credit_of(&other, "5", "c-3"),
        ]));
        assert_eq!(orphan.len(), 1, "{orphan:?}");
    }

    #[test]
    fn an_open_withdrawal_must_have_a_way_out() {
        use crate::domain::{BankAccount, Batch, BatchStatus, Withdrawal, WithdrawalStatus};
        let usd = Currencies::default().get("USD").unwrap().clone();
        let user = UserId::parse("u1").unwrap();
        let mut w = Withdrawal::new(
            user.clone(),
            usd.clone(),
            crate::domain::Amount::parse("10.00", &usd).unwrap(),
            crate::domain::Destination::Account(
                BankAccount::parse("DE89370400440532013000").unwrap(),
            ),
            chrono::Utc::now(),
        );
        let mut batch = Batch::claiming(usd, "run", 0);
        batch.members.insert(w.id, crate::domain::Member::of(&w));
        batch.status = BatchStatus::Accepted;
        w.status = WithdrawalStatus::Submitted;
        w.batch_id = Some(batch.id);
        let report = |b: &Batch| ScanReport {
            withdrawals: vec![w.clone()],
            batches: vec![b.clone()],
            ..ScanReport::default()
        };
        assert!(batch_gaps(&report(&batch)).is_empty());
        let mut done = batch.clone();
        done.status = BatchStatus::Completed;
        let gaps = batch_gaps(&report(&done));
        assert_eq!(gaps.len(), 2, "{gaps:?}"); // no way out, and completed with an open member
        let mut resendable = batch.clone();
        resendable.status = BatchStatus::Open;
        resendable.operator_rejected = true;
        assert_eq!(batch_gaps(&report(&resendable)).len(), 1);
        let orphan = ScanReport {
            withdrawals: vec![w.clone()],
            ..ScanReport::default()
        };
        assert_eq!(batch_gaps(&orphan).len(), 1);
    }
}
