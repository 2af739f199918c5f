//! One run of the payout batcher: finish what earlier runs left open, then claim pending
//! withdrawals per currency into batches and send each batch to the provider once.
//!
//! Safety rests on three things: a claim is a conditional write on `status = PENDING`, so two
//! runs never put one withdrawal in two batches; a batch's idempotency key is its id, so a re-send
//! is never paid twice; and only a definite rejection returns funds — an ambiguous outcome keeps
//! the batch open for the next run.

use crate::domain::{
    provider_evidence, Batch, BatchId, BatchStatus, Currencies, Member, Transition,
    WithdrawalStatus,
};
use crate::payouts::provider::{
    BatchState, ItemStatus, PayoutBatchRequest, PayoutProvider, StatusOutcome, SubmitOutcome,
};
use crate::payouts::reconcile::{self, ReconcileError};
use crate::payouts::settlement::{self, Applied, Outcome};
pub use crate::platform::config::BatcherConfig;
use crate::platform::metrics;
use crate::store::Refusal;
use crate::store::{AttemptResult, PayoutStore, StoreError, TransitionDetails};
use chrono::Utc;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time a run may use: until the invocation's deadline, or `fallback` where the runtime
/// gives no usable deadline (`cargo lambda watch` without `--timeout` sends a constant that is
/// long past).
pub fn run_budget(deadline_ms: i64, now_ms: i64, fallback: Duration) -> Duration {
    match deadline_ms - now_ms {
        left if left > 0 => Duration::from_millis(left as u64),
        _ => fallback,
    }
}

/// Counts per currency for one run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CurrencySummary {
    /// Withdrawals this run moved PENDING → SUBMITTED.
    pub claimed: u32,
    /// Withdrawals in batches the provider accepted during this run.
    pub submitted: u32,
    /// Batches the provider accepted during this run.
    pub batches: u32,
    /// Batches sent again after the provider said it never recorded them (404), or taken over
    /// from a run that died before sending.
    pub resent: u32,
    /// Batches due for a re-send that the provider already had: recorded as accepted, its
    /// answers applied, not sent again.
    pub found_at_provider: u32,
    /// Withdrawals rejected because the provider definitely refused their batch.
    pub rejected: u32,
    /// Pending withdrawals another run (or a cancel) took first.
    pub skipped: u32,
    /// Sends (or status checks before a re-send) with an unknown outcome in this run.
    pub ambiguous: u32,
    /// Batches waiting for an operator.
    pub flagged: u32,
    /// Batches this run handed to an operator (no other way out), with the reason in their
    /// history.
    pub escalated: u32,
    /// Stale accepted batches whose items the provider still does not report final.
    pub stale_unknown: u32,
    /// Withdrawals settled or rejected from the provider's status endpoint.
    pub resolved_from_status: u32,
    /// Provider answers (status endpoint) that contradict ours: not applied.
    pub conflicts: u32,
    /// Final batches compared with the provider's status endpoint, and mismatches found.
    pub reconciled: u32,
    pub reconcile_mismatches: u32,
    /// Batches or steps of this currency that failed; the run went on with the rest.
    pub errors: u32,
}

/// A failure the run isolated: it is logged, counted and the run goes on.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub currencies: BTreeMap<String, CurrencySummary>,
    /// The time budget ran out; the rest waits for the next run.
    pub stopped_early: bool,
    /// What failed without stopping the run (one bad batch or currency never blocks the others).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RunError>,
}

/// Batches' worth of pending withdrawals read from the index at once.
const BATCHES_PER_READ: usize = 4;
/// Final batches compared with the provider per run, at most.
const RECONCILE_PER_RUN: usize = 20;
/// Stale or flagged batches looked up at the provider per run, at most (each call may take the
/// provider timeout): the rest wait for the next run, least recently asked first.
const STATUS_CHECKS_PER_RUN: usize = 10;

pub struct Batcher<S, P: ?Sized> {
    store: Arc<S>,
    provider: Arc<P>,
    currencies: Currencies,
    config: BatcherConfig,
}

impl<S, P> Batcher<S, P>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    pub fn new(
        store: Arc<S>,
        provider: Arc<P>,
        currencies: Currencies,
        config: BatcherConfig,
    ) -> Self {
        Self {
            store,
            provider,
            currencies,
            config,
        }
    }

    /// The provider client (operator commands ask it before acting).
    pub fn provider(&self) -> &Arc<P> {
        &self.provider
    }

    /// One run that must finish by `deadline` (the Lambda context's deadline). A failure of one
    /// batch or currency is recorded in the summary (`errors`), logged and counted
    /// (`BatchErrors`), and the run goes on with the rest.
    pub async fn run(&self, deadline: Instant) -> Result<RunSummary, StoreError> {
        let mut run = Run {
            owner: format!("run_{}", ulid::Ulid::new()),
            deadline,
            summary: RunSummary::default(),
        };
        run.summary.run_id = run.owner.clone();
        for c in self.currencies.iter() {
            run.summary
                .currencies
                .insert(c.code().to_string(), CurrencySummary::default());
        }
        let due = self.resume_open_batches(&mut run).await;
        // A gauge, every run: the alarm fires when batches stay flagged, not only when flagged.
        let waiting: u32 = run.summary.currencies.values().map(|c| c.flagged).sum();
        metrics::emit(
            "BatchesNeedingOperator",
            waiting as f64,
            metrics::Unit::Count,
            &[],
        );
        // Currencies are claimed side by side: each has its own index partitions, batches and
        // provider calls, so one currency's index reads and provider call overlap another's
        // claim transactions (the bench's batcher ÷ raw). Each works on its own share of the
        // summary, merged back after.
        let parts: Vec<Run> = self
            .currencies
            .iter()
            .map(|c| run.part(c.code().as_str()))
            .collect();
        let claims =
            parts
                .into_iter()
                .zip(self.currencies.iter())
                .map(|(mut part, currency)| async move {
                    if !part.out_of_time(&self.config) {
                        if let Err(e) = self.batch_currency(&mut part, currency).await {
                            part.failed(Some(currency.code().as_str()), None, &e);
                        }
                    }
                    part
                });
        for part in futures::future::join_all(claims).await {
            run.merge(part);
        }
        // Looking up slow batches comes after new claims, and is bounded per run, so batches
        // whose items stay pending for days never starve fresh withdrawals.
        self.status_checks(&mut run, due).await;
        if !run.out_of_time(&self.config) {
            self.reconcile_recent(&mut run).await;
        }
        metrics::emit(
            "BatchErrors",
            run.summary.errors.len() as f64,
            metrics::Unit::Count,
            &[],
        );
        tracing::info!(summary = %serde_json::to_string(&run.summary).unwrap_or_default(), "batcher run done");
        Ok(run.summary)
    }

    fn lease_until_ms(&self, run: &Run) -> i64 {
        let left = run.deadline.saturating_duration_since(Instant::now());
        now_ms()
            + (left + self.config.provider_timeout + self.config.lease_margin).as_millis() as i64
    }

    /// Finishes what earlier runs left; returns the batches due for a status check.
    async fn resume_open_batches(&self, run: &mut Run) -> Vec<Batch> {
        let open = match self.store.open_batches().await {
            Ok(open) => open,
            Err(e) => {
                run.failed(None, None, &e);
                return Vec::new();
            }
        };
        let mut readable = Vec::new();
        for b in open {
            match b {
                Ok(b) => readable.push(b),
                // An unreadable record (corrupt, or its currency no longer configured) is
                // reported every run; the others proceed.
                Err(e) => run.failed(None, None, &e),
            }
        }
        readable.sort_by_key(|b| b.id);
        let mut due = Vec::new();
        for hint in readable {
            if run.out_of_time(&self.config) {
                break;
            }
            match self.resume(run, &hint).await {
                Ok(true) => due.push(hint),
                Ok(false) => {}
                Err(e) => run.failed(Some(hint.currency.code().as_str()), Some(hint.id), &e),
            }
        }
        due
    }

    /// Asks the provider about up to `STATUS_CHECKS_PER_RUN` due batches, least recently
    /// asked first.
    async fn status_checks(&self, run: &mut Run, mut due: Vec<Batch>) {
        due.sort_by_key(|b| b.checked_at.or(b.accepted_at));
        for hint in due.into_iter().take(STATUS_CHECKS_PER_RUN) {
            if run.out_of_time(&self.config) {
                return;
            }
            let checked = match self.check_stale(run, &hint).await {
                Ok(()) => self.store.mark_checked(hint.id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                run.failed(Some(hint.currency.code().as_str()), Some(hint.id), &e);
            }
        }
    }

    /// One open batch; `true` when it is due for a status check (done after the claims).
    async fn resume(&self, run: &mut Run, hint: &Batch) -> Result<bool, StoreError> {
        let ccy = hint.currency.code().to_string();
        let step = resume_step(hint, now_ms());
        match step {
            Resume::Leave => Ok(false),
            Resume::TakeOver => {
                let taken = self
                    .store
                    .take_lease(
                        hint.id,
                        &run.owner,
                        self.lease_until_ms(run),
                        now_ms(),
                        &[BatchStatus::Claiming, BatchStatus::Open],
                    )
                    .await?;
                let Some(batch) = taken else { return Ok(false) };
                let members = self.store.members(&batch).await?;
                if batch.status == BatchStatus::Claiming {
                    // Its run died while claiming, before any send: the recorded members are
                    // the batch, and nothing was sent yet.
                    tracing::warn!(batch_id = %batch.id, members = batch.member_count(), "taking over a batch left claiming");
                    self.store.close_claiming(batch.id, &run.owner).await?;
                    run.counts(&ccy).resent += 1;
                    self.send(run, &batch, &members).await?;
                    return Ok(false);
                }
                self.resend(run, &batch, &members).await?;
                Ok(false)
            }
            Resume::RejectMembers => {
                self.reject_members(run, hint.id).await?;
                Ok(false)
            }
            Resume::CloseOrAsk | Resume::CloseOrAskFlagged => {
                // Completes a batch whose last callback's run died before closing it, or whose
                // members operators' rejects and late callbacks made final.
                if self.store.complete_if_final(hint.id).await? {
                    return Ok(false);
                }
                if step == Resume::CloseOrAskFlagged {
                    tracing::error!(batch_id = %hint.id, attempts = hint.attempts, last_error = ?hint.last_error, "batch needs an operator");
                    run.counts(&ccy).flagged += 1;
                }
                // A flagged batch too: what the provider says of it still applies (never a
                // send), so lost callbacks never leave it waiting for a person who cannot act.
                Ok(status_due(hint, self.config.stale_after, Utc::now()))
            }
        }
    }

    async fn batch_currency(
        &self,
        run: &mut Run,
        currency: &crate::domain::Currency,
    ) -> Result<(), StoreError> {
        // Several batches' worth per index read: a read's cost is mostly per page and per
        // shard, and what a page reads past the last batch it fills would be read again.
        let page = self.config.max_batch_size * BATCHES_PER_READ;
        let mut after = None;
        loop {
            if run.out_of_time(&self.config) {
                return Ok(());
            }
            let candidates = self.store.pending(currency, page, after).await?;
            let Some(last) = candidates.last() else {
                return Ok(());
            };
            after = Some(last.id);
            for members in candidates.chunks(self.config.max_batch_size) {
                if run.out_of_time(&self.config) {
                    return Ok(());
                }
                self.claim_batch(run, currency, members).await?;
            }
            if candidates.len() < page {
                return Ok(());
            }
        }
    }

    /// Claims `candidates` into a new batch, chunk by chunk, and sends what it claimed.
    async fn claim_batch(
        &self,
        run: &mut Run,
        currency: &crate::domain::Currency,
        candidates: &[crate::domain::Withdrawal],
    ) -> Result<(), StoreError> {
        let ccy = currency.code().to_string();
        let mut batch = Batch::claiming(currency.clone(), &run.owner, self.lease_until_ms(run));
        let mut members = Vec::new();
        for chunk in candidates.chunks(self.store.claim_chunk()) {
            if run.out_of_time(&self.config) {
                run.summary.stopped_early = true;
                break;
            }
            let create = members.is_empty();
            let result = match self.store.claim(&batch, &run.owner, chunk, create).await {
                Ok(r) => r,
                Err(StoreError::Refused(Refusal::LeaseLost)) => {
                    tracing::warn!(batch_id = %batch.id, "lost the claiming lease");
                    break;
                }
                Err(e) => return Err(e),
            };
            run.counts(&ccy).skipped += result.lost.len() as u32;
            run.counts(&ccy).claimed += result.claimed.len() as u32;
            members.extend(result.claimed);
        }
        if members.is_empty() {
            return Ok(());
        }
        for w in &members {
            batch.members.insert(w.id, Member::of(w));
            batch.total += w.amount.value();
        }
        match self.store.close_claiming(batch.id, &run.owner).await {
            Ok(()) => {
                batch.status = BatchStatus::Open;
                if let Err(e) = self.send(run, &batch, &members).await {
                    // The batch is recorded OPEN: the next run asks the provider about it.
                    // This currency's other pending withdrawals go on.
                    run.failed(Some(&ccy), Some(batch.id), &e);
                }
                Ok(())
            }
            // Taken over after our lease ran out: the other run sends it.
            Err(StoreError::Refused(Refusal::LeaseLost)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A batch that may have been sent before (an ambiguous attempt, a run that died after
    /// closing its claim, an operator's `retry-batch`). Its idempotency key may have expired at
    /// the provider, so it is never simply sent again: the provider is asked first, and only a
    /// definite "never recorded" (404) allows a re-send.
    async fn resend(
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
    async fn send(
        &self,
        run: &mut Run,
        batch: &Batch,
        members: &[crate::domain::Withdrawal],
    ) -> Result<(), StoreError> {
        let request = PayoutBatchRequest::new(batch, members);
        let started = Instant::now();
        let outcome = self.provider.submit_batch(&request).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        self.record_outcome(run, batch, members.len(), outcome, Some(latency_ms))
            .await
    }

    async fn record_outcome(
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
    async fn escalate(
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
    async fn reject_members(&self, run: &mut Run, id: BatchId) -> Result<(), StoreError> {
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

    /// Applies the final items of a status answer under the webhook's rules (amount and
    /// currency must match exactly; contradictions are never applied). Returns how many members
    /// are still without a final answer there.
    async fn apply_status(
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
                ItemStatus::Paid => Outcome::Paid {
                    provider_reference: item.provider_reference.clone(),
                },
                ItemStatus::Failed => Outcome::Failed {
                    reason: item.reason.clone().unwrap_or_else(|| "failed".into()),
                },
                ItemStatus::Returned => Outcome::Returned {
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
    async fn check_stale(&self, run: &mut Run, hint: &Batch) -> Result<(), StoreError> {
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
    async fn reconcile_recent(&self, run: &mut Run) {
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

/// What a run does with an open batch it finds at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Another run is building or sending it, or nothing is left to do.
    Leave,
    /// The run that held it died (its lease ran out): take it over, then send what it claimed,
    /// or ask the provider before any re-send.
    TakeOver,
    /// The provider definitely refused it: reject its members (and return their funds).
    RejectMembers,
    /// Waiting on the provider: close it if every member is final, else ask the provider once
    /// the status check is due.
    CloseOrAsk,
    /// As `CloseOrAsk`, and counted as waiting for an operator.
    CloseOrAskFlagged,
}

fn resume_step(b: &Batch, now_ms: i64) -> Resume {
    match b.status {
        BatchStatus::Claiming | BatchStatus::Open if b.lease_alive(now_ms) => Resume::Leave,
        BatchStatus::Claiming | BatchStatus::Open => Resume::TakeOver,
        BatchStatus::Rejecting => Resume::RejectMembers,
        BatchStatus::Accepted => Resume::CloseOrAsk,
        BatchStatus::NeedsOperator => Resume::CloseOrAskFlagged,
        BatchStatus::Rejected | BatchStatus::Completed => Resume::Leave,
    }
}

/// Whether the provider should be asked about `b` at `now`: once per `stale_after` since it was
/// accepted, last asked or last changed, whichever came last.
fn status_due(b: &Batch, stale_after: Duration, now: chrono::DateTime<Utc>) -> bool {
    let since = [b.accepted_at, b.checked_at]
        .into_iter()
        .flatten()
        .fold(b.updated_at, std::cmp::max);
    now - since > chrono::Duration::from_std(stale_after).unwrap_or_default()
}

fn older_than(t: Option<chrono::DateTime<Utc>>, age: Duration) -> bool {
    t.is_some_and(|t| Utc::now() - t > chrono::Duration::from_std(age).unwrap_or_default())
}

struct Run {
    owner: String,
    deadline: Instant,
    summary: RunSummary,
}

impl Run {
    fn out_of_time(&mut self, config: &BatcherConfig) -> bool {
        let out = Instant::now() + config.safety_margin >= self.deadline;
        if out {
            self.summary.stopped_early = true;
        }
        out
    }

    /// A run for one currency's claims, side by side with the others': the same owner and
    /// deadline, holding that currency's counts until [`Run::merge`] gives them back.
    fn part(&mut self, ccy: &str) -> Run {
        let counts = self.summary.currencies.remove(ccy).unwrap_or_default();
        Run {
            owner: self.owner.clone(),
            deadline: self.deadline,
            summary: RunSummary {
                run_id: self.summary.run_id.clone(),
                currencies: BTreeMap::from([(ccy.to_string(), counts)]),
                stopped_early: false,
                errors: Vec::new(),
            },
        }
    }

    fn merge(&mut self, part: Run) {
        self.summary.currencies.extend(part.summary.currencies);
        self.summary.errors.extend(part.summary.errors);
        self.summary.stopped_early |= part.summary.stopped_early;
    }

    fn counts(&mut self, ccy: &str) -> &mut CurrencySummary {
        self.summary.currencies.entry(ccy.to_string()).or_default()
    }

    /// Records a failure the run goes on past.
    fn failed(&mut self, ccy: Option<&str>, batch: Option<BatchId>, e: &StoreError) {
        tracing::error!(currency = ?ccy, batch_id = ?batch.map(|b| b.to_string()), error = %e, "batcher step failed; going on with the rest");
        if let Some(ccy) = ccy {
            self.counts(ccy).errors += 1;
        }
        self.summary.errors.push(RunError {
            currency: ccy.map(str::to_string),
            batch_id: batch.map(|b| b.to_string()),
            error: e.to_string(),
        });
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Failure;

    #[test]
    fn the_budget_runs_to_the_deadline_or_falls_back() {
        let fallback = Duration::from_secs(60);
        assert_eq!(
            run_budget(10_500, 10_000, fallback),
            Duration::from_millis(500)
        );
        // cargo lambda watch without --timeout: a constant deadline long past.
        assert_eq!(run_budget(600_000, 1_795_953_600_000, fallback), fallback);
        assert_eq!(run_budget(10_000, 10_000, fallback), fallback);
    }

    fn batch(status: BatchStatus, lease_until_ms: i64) -> Batch {
        let usd = crate::domain::Currencies::default()
            .get("USD")
            .unwrap()
            .clone();
        Batch {
            status,
            ..Batch::claiming(usd, "run_a", lease_until_ms)
        }
    }

    #[test]
    fn what_a_run_does_with_each_open_batch_it_finds() {
        use BatchStatus::*;
        let now = 1_000_000;
        let (held, expired) = (now + 1, now);
        let cases = [
            (Claiming, held, Resume::Leave),
            (Claiming, expired, Resume::TakeOver),
            (Open, held, Resume::Leave),
            (Open, expired, Resume::TakeOver),
            // Leases only matter while a run builds or sends a batch.
            (Rejecting, held, Resume::RejectMembers),
            (Rejecting, expired, Resume::RejectMembers),
            (Accepted, held, Resume::CloseOrAsk),
            (Accepted, expired, Resume::CloseOrAsk),
            (NeedsOperator, held, Resume::CloseOrAskFlagged),
            (NeedsOperator, expired, Resume::CloseOrAskFlagged),
            (Rejected, expired, Resume::Leave),
            (Completed, expired, Resume::Leave),
        ];
        for (status, lease_until, step) in cases {
            assert_eq!(
                resume_step(&batch(status, lease_until), now),
                step,
                "{status:?}, lease until {lease_until}"
            );
        }
    }

    #[test]
    fn a_batch_is_asked_about_once_per_stale_after_since_its_last_news() {
        let now = Utc::now();
        let ago = |mins: i64| Some(now - chrono::Duration::minutes(mins));
        let hour = Duration::from_secs(3600);
        // (accepted, last asked, last changed, stale_after, due)
        let cases = [
            (ago(61), None, ago(61), hour, true),
            (ago(59), None, ago(59), hour, false),
            // Asked recently: not again before another stale_after.
            (ago(300), ago(10), ago(300), hour, false),
            (ago(300), ago(61), ago(300), hour, true),
            // Changed recently (a callback, an operator): the latest news counts.
            (ago(300), ago(120), ago(5), hour, false),
            // stale_after 0 (tests, `BATCH_STALE_AFTER_SECS=0`): every run.
            (ago(1), None, ago(1), Duration::ZERO, true),
        ];
        for (i, (accepted, checked, updated, stale_after, due)) in cases.into_iter().enumerate() {
            let mut b = batch(BatchStatus::Accepted, 0);
            b.accepted_at = accepted;
            b.checked_at = checked;
            b.updated_at = updated.unwrap();
            assert_eq!(status_due(&b, stale_after, now), due, "case {i}");
        }
    }

    #[test]
    fn a_currency_claimed_side_by_side_keeps_the_counts_the_run_had_for_it() {
        let mut run = Run {
            owner: "run_a".into(),
            deadline: Instant::now() + Duration::from_secs(60),
            summary: RunSummary::default(),
        };
        run.counts("USD").flagged = 1;
        run.counts("EUR").resent = 2;
        let mut usd = run.part("USD");
        usd.counts("USD").claimed = 500;
        usd.failed(
            Some("USD"),
            None,
            &StoreError::Failed(Failure::Backend("boom".into())),
        );
        usd.summary.stopped_early = true;
        run.merge(usd);
        let usd = &run.summary.currencies["USD"];
        assert_eq!((usd.flagged, usd.claimed, usd.errors), (1, 500, 1));
        assert_eq!(run.summary.currencies["EUR"].resent, 2);
        assert_eq!(run.summary.errors.len(), 1);
        assert!(run.summary.stopped_early);
    }
}
