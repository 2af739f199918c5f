//! Sending a batch to the provider, recording what it answered, and what a definite refusal
//! or too many unknown outcomes lead to.

use crate::domain::{provider_evidence, Batch, BatchId, BatchStatus, Transition, WithdrawalStatus};
use crate::payouts::provider::{PayoutBatchRequest, PayoutProvider, StatusOutcome, SubmitOutcome};
use crate::platform::metrics;
use crate::store::Refusal;
use crate::store::{AttemptResult, PayoutStore, StoreError, TransitionDetails};
use std::time::Instant;

use super::{Batcher, Run};

impl<S, P> Batcher<S, P>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    /// A batch that may have been sent before (an ambiguous attempt, a run that died after
    /// closing its claim, an operator's `retry-batch`). Its idempotency key may have expired at
    /// the provider, so it is never simply sent again: the provider is asked first, and only a
    /// definite "never recorded" (404) allows a re-send.
    pub(super) async fn resend(
        &self,
        run: &mut Run,
        batch: &Batch,
        members: &[crate::domain::Withdrawal],
    ) -> Result<(), StoreError> {
        let ccy = batch.currency.code().to_string();
        match self.provider.batch_status(batch.id).await {
            StatusOutcome::Found(state) => {
                tracing::warn!(batch_id = %batch.id, "the provider already has a batch due for a re-send: recording it as accepted");
                let accepted = AttemptResult::Accepted {
                    provider_batch_id: state.provider_batch_id.clone(),
                };
                match self
                    .store
                    .record_attempt(batch.id, &run.owner, &accepted)
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Refused(Refusal::LeaseLost)) => return Ok(()),
                    Err(e) => return Err(e),
                }
                let c = run.counts(&ccy);
                c.found_at_provider += 1;
                self.apply_status(run, batch, members, &state).await?;
                self.store.complete_if_final(batch.id).await?;
                Ok(())
            }
            StatusOutcome::NotFound => {
                // Read again after the answer: a callback, or another reader's `found` (an
                // operator's look-up, a run holding an older copy), may have landed since the
                // lease was taken. A 404 for a batch the provider has shown it holds contradicts
                // its own word, and a member already final contradicts it too: sending again
                // could pay twice (the key may be forgotten by now), so an operator decides.
                let fresh = self.store.batch(batch.id).await?;
                let batch = fresh.as_ref().unwrap_or(batch);
                let members = self.store.members(batch).await?;
                let blocked = provider_evidence(batch, &members).or_else(|| {
                    members
                        .iter()
                        .find(|w| {
                            w.status != WithdrawalStatus::Submitted || w.batch_id != Some(batch.id)
                        })
                        .map(|w| format!("member {} is already {}", w.id, w.status))
                });
                if let Some(why) = blocked {
                    let reason = format!("provider answers 404 but {why}: not re-sent");
                    tracing::error!(batch_id = %batch.id, %reason, "not re-sending");
                    let owner = run.owner.clone();
                    return self
                        .escalate(run, batch, BatchStatus::Open, Some(&owner), &reason)
                        .await;
                }
                run.counts(&ccy).resent += 1;
                self.send(run, batch, &members).await
            }
            StatusOutcome::Ambiguous { error } => {
                let outcome = SubmitOutcome::Ambiguous {
                    error: format!("status before re-send unknown: {error}"),
                };
                self.record_outcome(run, batch, members.len(), outcome, None)
                    .await
            }
        }
    }

    /// Sends a batch we hold the lease of and records the outcome.
    pub(super) async fn send(
        &self,
        run: &mut Run,
        batch: &Batch,
        members: &[crate::domain::Withdrawal],
    ) -> Result<(), StoreError> {
        let request = PayoutBatchRequest::new(batch, members)
            .map_err(|e| StoreError::Failed(crate::store::Failure::Corrupt(e)))?;
        let started = Instant::now();
        let outcome = self.provider.submit_batch(&request).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        self.record_outcome(run, batch, members.len(), outcome, Some(latency_ms))
            .await
    }

    pub(super) async fn record_outcome(
        &self,
        run: &mut Run,
        batch: &Batch,
        items: usize,
        outcome: SubmitOutcome,
        latency_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let ccy = batch.currency.code().to_string();
        let result = match &outcome {
            SubmitOutcome::Accepted { provider_batch_id } => AttemptResult::Accepted {
                provider_batch_id: provider_batch_id.clone(),
            },
            SubmitOutcome::Rejected { reason } => AttemptResult::Rejected {
                reason: reason.clone(),
            },
            SubmitOutcome::Ambiguous { error } => AttemptResult::Ambiguous {
                error: error.clone(),
                max_attempts: self.config.max_attempts,
            },
        };
        let recorded = self
            .store
            .record_attempt(batch.id, &run.owner, &result)
            .await;
        let recorded = match recorded {
            Ok(b) => b,
            Err(StoreError::Refused(Refusal::LeaseLost)) => {
                tracing::warn!(batch_id = %batch.id, "lease lost before recording the provider's answer");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if let Some(latency_ms) = latency_ms {
            tracing::info!(batch_id = %batch.id, currency = %ccy, items, latency_ms, status = %recorded.status, "provider call");
            metrics::emit(
                "ProviderLatency",
                latency_ms as f64,
                metrics::Unit::Milliseconds,
                &[("Currency", &ccy)],
            );
            metrics::emit(
                "BatchSize",
                items as f64,
                metrics::Unit::Count,
                &[("Currency", &ccy)],
            );
        }
        match outcome {
            SubmitOutcome::Accepted { .. } => {
                let c = run.counts(&ccy);
                c.batches += 1;
                c.submitted += items as u32;
            }
            SubmitOutcome::Rejected { reason } => {
                tracing::warn!(batch_id = %batch.id, %reason, "provider rejected the batch");
                self.reject_members(run, batch.id).await?;
            }
            SubmitOutcome::Ambiguous { error } => {
                let c = run.counts(&ccy);
                c.ambiguous += 1;
                if recorded.status == BatchStatus::NeedsOperator {
                    c.flagged += 1;
                    metrics::emit("BatchesFlagged", 1.0, metrics::Unit::Count, &[]);
                    tracing::error!(batch_id = %batch.id, attempts = recorded.attempts, %error, "batch flagged for an operator");
                } else {
                    tracing::warn!(batch_id = %batch.id, attempts = recorded.attempts, %error, "provider outcome unknown; the next run asks before re-sending");
                }
            }
        }
        Ok(())
    }

    /// Hands a batch with no other way out to an operator, audited in its history.
    pub(super) async fn escalate(
        &self,
        run: &mut Run,
        batch: &Batch,
        from: BatchStatus,
        owner: Option<&str>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let by = format!("batcher:{}", run.owner);
        if self
            .store
            .escalate(batch.id, from, owner, &by, reason)
            .await?
            .is_some()
        {
            let c = run.counts(batch.currency.code().as_str());
            c.escalated += 1;
            c.flagged += 1;
            metrics::emit("BatchesFlagged", 1.0, metrics::Unit::Count, &[]);
            tracing::error!(batch_id = %batch.id, %reason, "batch escalated to an operator");
        }
        Ok(())
    }

    /// Rejects every still-submitted member of a REJECTING batch, then closes it. Each member is
    /// its own conditional transition, so a crash half way resumes where it stopped.
    pub(super) async fn reject_members(
        &self,
        run: &mut Run,
        id: BatchId,
    ) -> Result<(), StoreError> {
        let Some(batch) = self.store.batch(id).await? else {
            return Ok(());
        };
        let reason = batch
            .reason
            .clone()
            .unwrap_or_else(|| "rejected by provider".into());
        let ccy = batch.currency.code().to_string();
        for w in self.store.members(&batch).await? {
            if w.status != WithdrawalStatus::Submitted || w.batch_id != Some(batch.id) {
                continue;
            }
            let mut details = TransitionDetails::by(format!("batcher:{}", run.owner));
            details.failure_reason = Some(reason.clone());
            match self.store.transition(&w, Transition::Reject, details).await {
                Ok(_) => run.counts(&ccy).rejected += 1,
                Err(StoreError::Refused(Refusal::StateChanged { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        self.store.finish_rejecting(batch.id).await
    }
}
