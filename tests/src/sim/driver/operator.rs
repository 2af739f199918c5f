//! Operator commands: approve, reject, retry, reconcile.

use super::{Done, World};
use crate::sim::model::Fact;
use shared::domain::{BatchStatus, WithdrawalStatus};
use shared::payouts::reconcile::MismatchKind;
use shared::store::BatchStore;
use std::collections::BTreeSet;
use std::time::Duration;

impl World {
    /// A third of the time, when any withdrawal is held in REVIEW, an approval of one of them;
    /// otherwise a reject of an open one (held ones included).
    pub(super) async fn operator_decision(&self, pick: u64) -> Done {
        let report = self.scan().await;
        let mut held: Vec<_> = report
            .withdrawals
            .iter()
            .filter(|w| w.status == WithdrawalStatus::Review)
            .map(|w| w.id)
            .collect();
        held.sort();
        if !held.is_empty() && pick.is_multiple_of(3) {
            return self
                .approve(held[(pick / 3 % held.len() as u64) as usize])
                .await;
        }
        let mut d = Done::default();
        let flagged: BTreeSet<_> = report
            .batches
            .iter()
            .filter(|b| b.status == BatchStatus::NeedsOperator)
            .map(|b| b.id)
            .collect();
        let mut open: Vec<_> = report
            .withdrawals
            .iter()
            .filter(|w| w.status.is_open())
            .collect();
        open.sort_by_key(|w| w.id);
        let in_flagged: Vec<_> = open
            .iter()
            .filter(|w| w.batch_id.is_some_and(|b| flagged.contains(&b)))
            .copied()
            .collect();
        let pool = if !in_flagged.is_empty() && pick % 10 < 7 {
            in_flagged
        } else {
            open
        };
        if pool.is_empty() {
            return d;
        }
        let w = pool[(pick / 10 % pool.len() as u64) as usize];
        d.merge(self.reject(w.id).await);
        d
    }

    pub(super) async fn reject(&self, id: shared::domain::WithdrawalId) -> Done {
        let mut d = Done::default();
        let r = shared::operator::operations::reject_withdrawal(
            &*self.p.env.store,
            self.provider.as_ref(),
            id,
            "operator (simulation)",
            Duration::ZERO,
        )
        .await;
        match r {
            Ok(w) => {
                self.stat(|s| s.operator_rejects += 1);
                if w.status != WithdrawalStatus::Rejected {
                    d.bad(format!("operator reject of {id} left it {}", w.status));
                }
                d.facts.push(Fact::OperatorRejected { id: id.to_string() });
                d.line(format!("operator reject {id}: done"));
            }
            Err(e) => {
                self.stat(|s| s.operator_refusals += 1);
                d.line(format!("operator reject {id}: {e}"));
            }
        }
        d
    }

    pub(super) async fn approve(&self, id: shared::domain::WithdrawalId) -> Done {
        let mut d = Done::default();
        let r = shared::operator::operations::approve_withdrawal(
            &*self.p.env.store,
            id,
            "operator:simulation",
        )
        .await;
        match r {
            Ok(w) => {
                self.stat(|s| s.operator_approvals += 1);
                if w.status != WithdrawalStatus::Pending {
                    d.bad(format!("operator approve of {id} left it {}", w.status));
                }
                d.line(format!("operator approve {id}: done"));
            }
            Err(e) => {
                self.stat(|s| s.operator_refusals += 1);
                d.line(format!("operator approve {id}: {e}"));
            }
        }
        d
    }

    pub(super) async fn flagged_batches(&self) -> Vec<shared::domain::Batch> {
        let mut v: Vec<_> = self
            .p
            .env
            .store
            .all_batches()
            .await
            .expect("batches")
            .into_iter()
            .filter(|b| b.status == BatchStatus::NeedsOperator)
            .collect();
        v.sort_by_key(|b| b.id);
        v
    }

    pub(super) async fn operator_retry(&self, pick: u64) -> Done {
        let mut d = Done::default();
        let flagged = self.flagged_batches().await;
        if flagged.is_empty() {
            return d;
        }
        let b = &flagged[(pick % flagged.len() as u64) as usize];
        let r = shared::operator::operations::retry_batch(&*self.p.env.store, b.id).await;
        if r.is_ok() {
            self.stat(|s| s.operator_retries += 1);
        }
        d.line(format!("operator retry-batch {}: {r:?}", b.id));
        d
    }

    /// `operator reconcile` over every final batch: only mismatches the scenario explains are
    /// allowed (a `payout.returned` not delivered yet, a batch the provider lost). Returns the
    /// withdrawals it reported to an operator (a return not applied here, or a member of a batch
    /// the provider lost).
    pub async fn reconcile(&self) -> (Done, BTreeSet<String>) {
        let mut d = Done::default();
        let mut return_not_applied = BTreeSet::new();
        let lost = self.p.sandbox.memory().lost_batches;
        let delivered = self.returned_delivered.lock().unwrap().clone();
        let batches = self.p.env.store.all_batches().await.expect("batches");
        let mut n = 0;
        for b in batches.iter().filter(|b| b.status.is_terminal()) {
            let found = match shared::payouts::reconcile::batch(
                self.p.env.store.as_ref(),
                self.provider.as_ref(),
                b,
            )
            .await
            {
                Ok(f) => f,
                Err(e) => {
                    d.line(format!("reconcile {}: {e}", b.id));
                    continue;
                }
            };
            n += 1;
            for m in found {
                let explained = match m.kind {
                    MismatchKind::ReturnNotApplied => !delivered.contains(&m.withdrawal_id),
                    MismatchKind::UnknownToProvider => lost.contains(&b.id.to_string()),
                    _ => false,
                };
                d.line(format!("reconcile mismatch: {m}"));
                // A return we never heard of is reported as not applied; if the provider has
                // since lost the batch too, as unknown to it: either way an operator is told
                // about that withdrawal (seed 44).
                if matches!(
                    m.kind,
                    MismatchKind::ReturnNotApplied | MismatchKind::UnknownToProvider
                ) && explained
                {
                    return_not_applied.insert(m.withdrawal_id.clone());
                }
                if !explained {
                    d.bad(format!("reconcile: {m}"));
                }
            }
        }
        d.line(format!("reconciled {n} final batches"));
        (d, return_not_applied)
    }

    pub(super) async fn operator_retry_id(&self, id: shared::domain::BatchId) -> Done {
        let mut d = Done::default();
        let r = shared::operator::operations::retry_batch(&*self.p.env.store, id).await;
        if r.is_ok() {
            self.stat(|s| s.operator_retries += 1);
        }
        d.line(format!("operator retry-batch {id}: {r:?}"));
        d
    }
}
