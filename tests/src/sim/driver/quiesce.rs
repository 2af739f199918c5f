//! The drive to quiescence and the checks that must hold once nothing is left to do.

use super::{Done, World};
use crate::sim::model::Model;
use crate::sim::ops::BatcherCfg;
use crate::sim::rng::Rng;
use rust_decimal::Decimal;
use shared::domain::{Batch, BatchId, BatchStatus, Withdrawal, WithdrawalStatus};
use shared::payouts::provider::{ItemStatus, PayoutProvider, StatusOutcome};
use shared::store::{BatchStore, ScanReport, Store};
use std::collections::{BTreeMap, BTreeSet};

impl World {
    pub(super) fn state_fingerprint(report: &ScanReport) -> String {
        let mut s: Vec<String> = report
            .withdrawals
            .iter()
            .map(|w| format!("{}{}", w.id, w.status))
            .chain(
                report
                    .batches
                    .iter()
                    .map(|b| format!("{}{}{}", b.id, b.status, b.attempts)),
            )
            .collect();
        s.sort();
        s.join(",")
    }

    /// Drives the system to quiescence: leases expired, every callback delivered, runs (with
    /// the clock moved past every threshold) repeated and flagged batches handled by an operator
    /// until nothing changes. Then the end-of-run checks.
    pub async fn quiesce(&self, model: &mut Model, log: &mut Vec<String>) -> Vec<String> {
        let mut bad = Vec::new();
        let mut rng = Rng::new(self.seed ^ 0xD1CE);
        let given_up = self.dropped.lock().unwrap().len();
        log.push(format!("  callbacks the provider gave up on: {given_up}"));
        let until = *self.lease_horizon.lock().unwrap();
        tokio::time::sleep_until(until.into()).await;
        let mut last = String::new();
        for round in 0..12 {
            // Every held withdrawal is decided: most approved (then paid as usual), some rejected.
            let mut d = Done::default();
            for w in self.scan().await.withdrawals.iter() {
                if w.status == WithdrawalStatus::Review {
                    d.merge(if rng.percent(70) {
                        self.approve(w.id).await
                    } else {
                        self.reject(w.id).await
                    });
                }
            }
            d.merge(self.deliver_all(&mut rng).await);
            for cfg in [BatcherCfg::Normal, BatcherCfg::Escalate] {
                d.merge(self.batcher(1, cfg).await);
                d.merge(self.deliver_all(&mut rng).await);
            }
            for b in self.flagged_batches().await {
                if !b.provider_has_it() && !b.operator_rejected && rng.percent(70) {
                    d.merge(self.operator_retry_id(b.id).await);
                } else {
                    let members = self.p.env.store.members(&b).await.expect("members");
                    for w in members.iter().filter(|w| w.status.is_open()) {
                        d.merge(self.reject(w.id).await);
                    }
                }
            }
            d.merge(self.deliver_all(&mut rng).await);
            for f in &d.facts {
                bad.extend(model.learn(f));
            }
            log.extend(d.log.iter().map(|l| format!("  quiesce {round}: {l}")));
            let report = self.scan().await;
            bad.extend(model.check(&report, &self.ledger(), &self.lost_unheard()));
            let fp = Self::state_fingerprint(&report);
            let busy = report.withdrawals.iter().any(|w| {
                matches!(
                    w.status,
                    WithdrawalStatus::Pending | WithdrawalStatus::Review
                )
            }) || report.batches.iter().any(|b| {
                matches!(
                    b.status,
                    BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Rejecting
                )
            });
            if fp == last && !busy {
                break;
            }
            last = fp;
        }
        bad.extend(self.final_checks(model, log).await);
        bad
    }

    pub(super) async fn final_checks(
        &self,
        model: &mut Model,
        log: &mut Vec<String>,
    ) -> Vec<String> {
        let mut bad = Vec::new();
        let report = self.scan().await;
        let ledger = self.ledger();
        let batches: BTreeMap<_, _> = report.batches.iter().map(|b| (b.id, b)).collect();
        let waiting = self.liveness(&report, &batches, log, &mut bad).await;
        let not_applied = self.final_reconcile(model, &batches, log, &mut bad).await;
        let by_id: BTreeMap<String, _> = report
            .withdrawals
            .iter()
            .map(|w| (w.id.to_string(), w))
            .collect();
        let paid = Paid {
            ledger: &ledger,
            waiting: &waiting,
            not_applied: &not_applied,
        };
        self.paid_here_as_there(model, &report, &by_id, paid, &mut bad);
        self.keys_made_once(model, &by_id, &mut bad).await;
        bad
    }

    /// Liveness: nothing pending, no batch the batcher still owes a send or a reject, and
    /// every submitted withdrawal waiting for an answer the provider has not given. Returns
    /// the ones that wait.
    async fn liveness(
        &self,
        report: &ScanReport,
        batches: &BTreeMap<BatchId, &Batch>,
        log: &mut Vec<String>,
        bad: &mut Vec<String>,
    ) -> BTreeSet<String> {
        let mut waiting = BTreeSet::new();
        for w in &report.withdrawals {
            if w.audit
                .first()
                .is_some_and(|e| e.to == WithdrawalStatus::Review)
            {
                self.stat(|s| s.held_for_review += 1);
            }
            match w.status {
                WithdrawalStatus::Pending | WithdrawalStatus::Review => {
                    bad.push(format!("{}: still {} at quiescence", w.id, w.status))
                }
                WithdrawalStatus::Submitted => {
                    let Some(b) = w.batch_id.and_then(|b| batches.get(&b)) else {
                        bad.push(format!("{}: SUBMITTED without a batch", w.id));
                        continue;
                    };
                    let why = match self.provider.batch_status(b.id).await {
                        StatusOutcome::NotFound if b.provider_has_it() => {
                            self.stat(|s| s.waiting_lost += 1);
                            Some("accepted, then lost by the provider")
                        }
                        StatusOutcome::Found(state)
                            if state.items.iter().any(|i| {
                                i.reference == w.id.to_string() && i.status == ItemStatus::Pending
                            }) =>
                        {
                            self.stat(|s| s.waiting_pending += 1);
                            Some("the provider keeps the item pending")
                        }
                        _ => None,
                    };
                    match why {
                        Some(why) => {
                            log.push(format!(
                                "  waits for the provider: {} in {} {} ({why})",
                                w.id, b.status, b.id
                            ));
                            waiting.insert(w.id.to_string());
                        }
                        None => bad.push(format!(
                            "{}: SUBMITTED at quiescence in {} batch {} with no documented wait",
                            w.id, b.status, b.id
                        )),
                    }
                }
                WithdrawalStatus::Settled => self.stat(|s| s.settled += 1),
                WithdrawalStatus::Returned => self.stat(|s| s.returned += 1),
                WithdrawalStatus::Rejected => self.stat(|s| s.rejected += 1),
                WithdrawalStatus::Cancelled => self.stat(|s| s.cancelled += 1),
            }
        }
        for b in &report.batches {
            if matches!(
                b.status,
                BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Rejecting
            ) {
                bad.push(format!("batch {} still {} at quiescence", b.id, b.status));
            }
            if matches!(b.status, BatchStatus::Accepted | BatchStatus::NeedsOperator)
                && !b.members.keys().any(|m| waiting.contains(&m.to_string()))
            {
                bad.push(format!(
                    "batch {} still {} with nothing to wait for",
                    b.id, b.status
                ));
            }
        }
        waiting
    }

    /// Reconcile: a return the provider made that never reached us must be reported. Returns
    /// the withdrawals whose provider answer was not applied here.
    async fn final_reconcile(
        &self,
        model: &mut Model,
        batches: &BTreeMap<BatchId, &Batch>,
        log: &mut Vec<String>,
        bad: &mut Vec<String>,
    ) -> BTreeSet<String> {
        let (d, mut not_applied) = self.reconcile().await;
        // A batch the provider accepted and then lost stays with an operator (above, a documented
        // wait): a return for one of its settled members that the provider gave up on reaches no
        // one but that operator, and reconcile looks only at final batches (seed 229).
        let lost = self.p.sandbox.memory().lost_batches;
        for b in batches
            .values()
            .filter(|b| !b.status.is_terminal() && lost.contains(&b.id.to_string()))
        {
            not_applied.extend(b.members.keys().map(|m| m.to_string()));
        }
        for f in &d.facts {
            bad.extend(model.learn(f));
        }
        log.extend(d.log.iter().map(|l| format!("  final: {l}")));
        not_applied
    }

    /// Paid there ⇔ settled (or returned) here; per user and currency, paid_out here equals
    /// what the provider paid minus what it returned.
    fn paid_here_as_there(
        &self,
        model: &Model,
        report: &ScanReport,
        by_id: &BTreeMap<String, &Withdrawal>,
        paid: Paid<'_>,
        bad: &mut Vec<String>,
    ) {
        let Paid {
            ledger,
            waiting,
            not_applied,
        } = paid;
        let mut expected: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        for e in ledger {
            let Some(w) = by_id.get(&e.reference) else {
                bad.push(format!("the provider paid {}, unknown here", e.reference));
                continue;
            };
            let key = (w.user_id.to_string(), w.currency.code().to_string());
            let theirs: Decimal = e.amount.parse().unwrap_or_default();
            match (w.status, e.returned) {
                (WithdrawalStatus::Settled, false) | (WithdrawalStatus::Returned, true) => {}
                (WithdrawalStatus::Settled, true) if not_applied.contains(&e.reference) => {
                    self.stat(|s| s.returns_flagged_by_reconcile += 1);
                }
                (WithdrawalStatus::Submitted, _) if waiting.contains(&e.reference) => continue,
                (WithdrawalStatus::Rejected, _) if model.contract_broken.contains(&e.reference) => {
                    self.stat(|s| s.provider_contract_broken += 1);
                    continue;
                }
                (st, returned) => bad.push(format!(
                    "{}: paid by the provider (returned: {returned}) but {st} here at quiescence",
                    e.reference
                )),
            }
            // What the provider paid and kept (a return not applied here is still paid out
            // here, and reported by reconcile above).
            if !e.returned
                || (w.status == WithdrawalStatus::Settled && not_applied.contains(&e.reference))
            {
                *expected.entry(key).or_default() += theirs;
            }
        }
        for (user, b) in &report.balances {
            let key = (user.to_string(), b.currency.code().to_string());
            let want = expected.get(&key).copied().unwrap_or_default();
            if b.paid_out != want {
                bad.push(format!(
                    "{} {}: paid_out {} != provider paid minus returned {want}",
                    key.0, key.1, b.paid_out
                ));
            }
        }
    }

    /// Idempotency: each key made at most one withdrawal, the one its 201s named, and every
    /// withdrawal in the table was made under exactly one key.
    async fn keys_made_once(
        &self,
        model: &Model,
        by_id: &BTreeMap<String, &Withdrawal>,
        bad: &mut Vec<String>,
    ) {
        let mut made = BTreeSet::new();
        for (u, k) in model.keys_used() {
            let rec = self
                .p
                .env
                .store
                .idempotency_record(
                    &shared::domain::UserId::parse(&u).unwrap(),
                    &shared::domain::IdempotencyKey::parse(&k).unwrap(),
                )
                .await
                .expect("idempotency record");
            let ids = model.key_ids(&u, &k);
            match rec {
                Some(r) => {
                    let id = match r.resource {
                        shared::store::Resource::Withdrawal(id) => id.to_string(),
                        shared::store::Resource::Beneficiary(id) => id.to_string(),
                    };
                    if !ids.is_empty() && ids != BTreeSet::from([id.clone()]) {
                        bad.push(format!("{u} key {k}: answered {ids:?}, recorded {id}"));
                    }
                    if !by_id.contains_key(&id) {
                        bad.push(format!("{u} key {k}: recorded {id}, not in the table"));
                    }
                    made.insert(id);
                }
                None if !ids.is_empty() => {
                    bad.push(format!("{u} key {k}: answered {ids:?}, no record"))
                }
                None => {}
            }
        }
        for id in by_id.keys() {
            if !made.contains(id) {
                bad.push(format!(
                    "{id}: in the table, made under no key the clients used"
                ));
            }
        }
        if made.len() != by_id.len() {
            bad.push(format!(
                "{} keys made {} withdrawals",
                made.len(),
                by_id.len()
            ));
        }
    }
}

/// What the provider's ledger is checked against at quiescence.
struct Paid<'a> {
    ledger: &'a [sandbox_provider::LedgerEntry],
    waiting: &'a BTreeSet<String>,
    not_applied: &'a BTreeSet<String>,
}
