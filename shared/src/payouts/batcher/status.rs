//! Asking the provider about batches: the stale check, applying its item states, and
//! reconciling recently final batches.

use crate::domain::{Batch, BatchStatus};
use crate::payouts::provider::{BatchState, ItemStatus, PayoutProvider, StatusOutcome};
use crate::payouts::reconcile::{self, ReconcileError};
use crate::payouts::settlement::{self, Applied, ProviderWord};
use crate::platform::metrics;
use crate::store::{PayoutStore, StoreError};
use chrono::Utc;
use std::collections::BTreeSet;

use super::{older_than, Batcher, Run, RECONCILE_PER_RUN};

impl<S, P> Batcher<S, P>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    /// Applies the final items of a status answer under the webhook's rules (amount and
    /// currency must match exactly; contradictions are never applied). Returns how many members
    /// are still without a final answer there.
    pub(super) async fn apply_status(
        &self,
        run: &mut Run,
        batch: &Batch,
        members: &[crate::domain::Withdrawal],
        state: &BatchState,
    ) -> Result<usize, StoreError> {
        let ccy = batch.currency.code().to_string();
        let mut unresolved = 0;
        let mut seen = BTreeSet::new();
        for item in &state.items {
            let Some(w) = members.iter().find(|w| w.id.to_string() == item.reference) else {
                tracing::error!(batch_id = %batch.id, reference = %item.reference, "provider reports an item not in the batch");
                continue;
            };
            seen.insert(w.id);
            if settlement::reported_mismatch(
                w.amount,
                &w.currency,
                Some(&item.amount),
                Some(&state.currency),
            ) {
                tracing::error!(batch_id = %batch.id, withdrawal_id = %w.id, "provider status reports another amount or currency: not applied");
                metrics::count("StatusConflicts", &ccy);
                run.counts(&ccy).conflicts += 1;
                unresolved += 1;
                continue;
            }
            let outcome = match item.status {
                ItemStatus::Pending => {
                    unresolved += 1;
                    continue;
                }
                ItemStatus::Paid => ProviderWord::Paid {
                    provider_reference: item.provider_reference.clone(),
                },
                ItemStatus::Failed => ProviderWord::Failed {
                    reason: item.reason.clone().unwrap_or_else(|| "failed".into()),
                },
                ItemStatus::Returned => ProviderWord::Returned {
                    reason: item.reason.clone().unwrap_or_else(|| "returned".into()),
                },
            };
            let actor = format!("batcher:{}:status", run.owner);
            match settlement::apply(self.store.as_ref(), w, &outcome, &actor, None).await? {
                Applied::Changed(_) => run.counts(&ccy).resolved_from_status += 1,
                Applied::AlreadyDone(_) | Applied::Duplicate => {}
                Applied::Conflict(current) => {
                    tracing::error!(withdrawal_id = %w.id, %current, ?outcome, "provider status contradicts our state");
                    metrics::count("StatusConflicts", &ccy);
                    run.counts(&ccy).conflicts += 1;
                }
            }
        }
        unresolved += members.iter().filter(|w| !seen.contains(&w.id)).count();
        Ok(unresolved)
    }

    /// Asks the provider about an accepted batch that has waited too long for callbacks. One
    /// the provider no longer knows, or whose items stay without a final answer past
    /// `escalate_after`, is handed to an operator: it would otherwise hold its funds forever.
    pub(super) async fn check_stale(&self, run: &mut Run, hint: &Batch) -> Result<(), StoreError> {
        let ccy = hint.currency.code().to_string();
        // Only an accepted batch is escalated; a flagged one already waits for an operator.
        let overdue = hint.status == BatchStatus::Accepted
            && older_than(hint.accepted_at, self.config.escalate_after);
        match self.provider.batch_status(hint.id).await {
            StatusOutcome::Found(state) => {
                // The provider's word that it holds the batch is kept before anything is done
                // on it: a flagged batch found here is never "never recorded" again.
                if !hint.provider_has_it() {
                    let by = format!("batcher:{}:status", run.owner);
                    self.store
                        .record_found(hint, &state.provider_batch_id, &by)
                        .await?;
                }
                let members = self.store.members(hint).await?;
                let unresolved = self.apply_status(run, hint, &members, &state).await?;
                if self.store.complete_if_final(hint.id).await? || unresolved == 0 {
                    return Ok(());
                }
                tracing::error!(batch_id = %hint.id, unresolved, "stale batch still has items without a final answer");
                run.counts(&ccy).stale_unknown += 1;
                if overdue {
                    let reason = format!(
                        "{unresolved} item(s) without a final answer {} h after acceptance",
                        self.config.escalate_after.as_secs() / 3600
                    );
                    self.escalate(run, hint, BatchStatus::Accepted, None, &reason)
                        .await?;
                }
            }
            StatusOutcome::NotFound if hint.status != BatchStatus::Accepted => {}
            StatusOutcome::NotFound => {
                tracing::error!(batch_id = %hint.id, "provider does not know an accepted batch");
                run.counts(&ccy).stale_unknown += 1;
                self.escalate(
                    run,
                    hint,
                    BatchStatus::Accepted,
                    None,
                    "the provider no longer knows this accepted batch (404)",
                )
                .await?;
            }
            StatusOutcome::Ambiguous { error } => {
                tracing::error!(batch_id = %hint.id, %error, "stale batch status unknown");
                run.counts(&ccy).stale_unknown += 1;
                if overdue {
                    let reason = format!("provider status unreachable past the limit: {error}");
                    self.escalate(run, hint, BatchStatus::Accepted, None, &reason)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The slow cadence of reconciliation: final batches, once each, `reconcile_after` after
    /// they ended, compared with the provider's status endpoint. Mismatches are logged,
    /// counted (`ReconcileMismatches`, alarmed on) and recorded on the batch.
    pub(super) async fn reconcile_recent(&self, run: &mut Run) {
        let due_before = Utc::now()
            - chrono::Duration::from_std(self.config.reconcile_after).unwrap_or_default();
        let due = match self.store.unreconciled(due_before, RECONCILE_PER_RUN).await {
            Ok(due) => due,
            Err(e) => return run.failed(None, None, &e),
        };
        for batch in due {
            if run.out_of_time(&self.config) {
                return;
            }
            let ccy = batch.currency.code().to_string();
            let provider = self.provider.as_ref();
            let found = match reconcile::batch(self.store.as_ref(), provider, &batch).await {
                Ok(found) => found,
                // Unreachable provider: to the back of the list, so it never blocks the others.
                Err(ReconcileError::Provider(e)) => {
                    tracing::warn!(batch_id = %batch.id, error = %e, "reconcile postponed");
                    if let Err(e) = self.store.requeue_reconcile(batch.id).await {
                        run.failed(Some(&ccy), Some(batch.id), &e);
                    }
                    continue;
                }
                Err(ReconcileError::Store(e)) => {
                    run.failed(Some(&ccy), Some(batch.id), &e);
                    continue;
                }
            };
            for m in &found {
                tracing::error!(batch_id = %batch.id, mismatch = %m, "reconcile mismatch");
            }
            metrics::emit(
                "ReconcileMismatches",
                found.len() as f64,
                metrics::Unit::Count,
                &[],
            );
            let c = run.counts(&ccy);
            c.reconciled += 1;
            c.reconcile_mismatches += found.len() as u32;
            // First pass: listed again after the return window; second pass: done.
            let again_at = batch.reconciled_at.is_none().then(|| {
                Utc::now()
                    + chrono::Duration::from_std(self.config.reconcile_again_after)
                        .unwrap_or_default()
            });
            if let Err(e) = self
                .store
                .mark_reconciled(batch.id, found.len() as u32, again_at)
                .await
            {
                run.failed(Some(&ccy), Some(batch.id), &e);
            }
        }
    }
}
