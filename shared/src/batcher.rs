//! One run of the payout batcher: finish what earlier runs left open, then claim pending
//! withdrawals per currency into batches and send each batch to the provider once.
//!
//! Safety rests on three things: a claim is a conditional write on `status = PENDING`, so two
//! runs never put one withdrawal in two batches; a batch's idempotency key is its id, so a re-send
//! is never paid twice; and only a definite rejection returns funds — an ambiguous outcome keeps
//! the batch open for the next run.

use crate::domain::{Batch, BatchId, BatchStatus, Currencies, Transition, WithdrawalStatus};
use crate::metrics;
use crate::provider::{PayoutBatchRequest, PayoutProvider, StatusOutcome, SubmitOutcome};
use crate::settlement::{self, Applied, Outcome};
use crate::store::{AttemptResult, BatchStore, Store, StoreError, TransitionDetails, CLAIM_CHUNK};
use chrono::Utc;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    /// Ambiguous sends before a batch is flagged for an operator.
    pub max_attempts: u32,
    /// An accepted batch without final answers after this long is checked with the provider.
    pub stale_after: Duration,
    /// Stop starting new work this long before the deadline.
    pub safety_margin: Duration,
    /// The provider client's timeout: a lease must outlive our last call.
    pub provider_timeout: Duration,
    /// Extra lease time past the deadline and the last call, for clock skew.
    pub lease_margin: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        let provider_timeout = Duration::from_secs(10);
        let lease_margin = Duration::from_secs(5);
        Self {
            max_batch_size: 500,
            max_attempts: 5,
            stale_after: Duration::from_secs(3600),
            safety_margin: Self::stop_margin(provider_timeout, lease_margin),
            provider_timeout,
            lease_margin,
        }
    }
}

/// A run needs at least this long after its stop margin to do anything useful.
const MIN_WORK: Duration = Duration::from_secs(10);
/// A provider call longer than this is a misconfiguration (the function's own limit is 15 min).
const MAX_PROVIDER_TIMEOUT: Duration = Duration::from_secs(60);

impl BatcherConfig {
    /// How long before the deadline a run stops starting work: a provider call started just
    /// before must time out and its answer be recorded (the lease margin) before Lambda kills
    /// the invocation — otherwise the run dies mid-send, the errors alarm fires and the
    /// invocation is retried.
    pub fn stop_margin(provider_timeout: Duration, lease_margin: Duration) -> Duration {
        provider_timeout + lease_margin
    }

    /// Checks the settings against each other and, when known, the function's timeout
    /// (`FUNCTION_TIMEOUT_SECS`, set by the template from the same parameter as `Timeout`).
    pub fn validate(&self, function_timeout: Option<Duration>) -> Result<(), String> {
        if self.max_batch_size > crate::store::MAX_BATCH_MEMBERS {
            return Err(format!(
                "BATCH_MAX_SIZE must be at most {} (a batch's record lists every member in one \
                 DynamoDB item of at most 400 KB)",
                crate::store::MAX_BATCH_MEMBERS
            ));
        }
        if self.provider_timeout > MAX_PROVIDER_TIMEOUT {
            return Err(format!(
                "PROVIDER_TIMEOUT_MS must be at most {} ms",
                MAX_PROVIDER_TIMEOUT.as_millis()
            ));
        }
        if self.safety_margin < Self::stop_margin(self.provider_timeout, self.lease_margin) {
            return Err(
                "the stop margin must cover the provider timeout and the lease margin".into(),
            );
        }
        if let Some(timeout) = function_timeout {
            if timeout < self.safety_margin + MIN_WORK {
                return Err(format!(
                    "FUNCTION_TIMEOUT_SECS ({} s) leaves no time to work: it must be at least the \
                     provider timeout + {} s lease margin + {} s ({} s)",
                    timeout.as_secs(),
                    self.lease_margin.as_secs(),
                    MIN_WORK.as_secs(),
                    (self.safety_margin + MIN_WORK).as_secs()
                ));
            }
        }
        Ok(())
    }

    /// `BATCH_MAX_SIZE`, `BATCH_MAX_ATTEMPTS`, `BATCH_STALE_AFTER_SECS`, `PROVIDER_TIMEOUT_MS`,
    /// `FUNCTION_TIMEOUT_SECS`; the stop margin is derived, never set on its own.
    pub fn from_env() -> Result<Self, String> {
        let d = Self::default();
        let num = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name} must be a positive integer")),
                Err(_) => Ok(default),
            }
        };
        let provider_timeout = Duration::from_millis(num("PROVIDER_TIMEOUT_MS", 10_000)?);
        let config = Self {
            max_batch_size: num("BATCH_MAX_SIZE", d.max_batch_size as u64)? as usize,
            max_attempts: num("BATCH_MAX_ATTEMPTS", d.max_attempts as u64)? as u32,
            stale_after: Duration::from_secs(num("BATCH_STALE_AFTER_SECS", 3600)?),
            provider_timeout,
            safety_margin: Self::stop_margin(provider_timeout, d.lease_margin),
            lease_margin: d.lease_margin,
        };
        let function_timeout = match std::env::var("FUNCTION_TIMEOUT_SECS") {
            Ok(_) => Some(Duration::from_secs(num("FUNCTION_TIMEOUT_SECS", 0)?)),
            Err(_) => None,
        };
        config.validate(function_timeout)?;
        Ok(config)
    }
}

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
    /// Batches sent again after an earlier ambiguous attempt or a crashed run.
    pub resent: u32,
    /// Withdrawals rejected because the provider definitely refused their batch.
    pub rejected: u32,
    /// Pending withdrawals another run (or a cancel) took first.
    pub skipped: u32,
    /// Sends with an unknown outcome in this run (batch stays open).
    pub ambiguous: u32,
    /// Batches waiting for an operator.
    pub flagged: u32,
    /// Stale accepted batches whose items the provider still does not report final.
    pub stale_unknown: u32,
    /// Withdrawals settled or rejected from the provider's status endpoint.
    pub resolved_from_status: u32,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub currencies: BTreeMap<String, CurrencySummary>,
    /// The time budget ran out; the rest waits for the next run.
    pub stopped_early: bool,
}

pub struct Batcher<S, P: ?Sized> {
    store: Arc<S>,
    provider: Arc<P>,
    currencies: Currencies,
    config: BatcherConfig,
}

impl<S, P> Batcher<S, P>
where
    S: Store + BatchStore + 'static,
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

    /// One run that must finish by `deadline` (the Lambda context's deadline).
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
        self.resume_open_batches(&mut run).await?;
        // A gauge, every run: the alarm fires when batches stay flagged, not only when flagged.
        let waiting: u32 = run.summary.currencies.values().map(|c| c.flagged).sum();
        metrics::emit(
            "BatchesNeedingOperator",
            waiting as f64,
            metrics::Unit::Count,
            &[],
        );
        for currency in self.currencies.iter() {
            if run.out_of_time(&self.config) {
                break;
            }
            self.batch_currency(&mut run, currency).await?;
        }
        tracing::info!(summary = %serde_json::to_string(&run.summary).unwrap_or_default(), "batcher run done");
        Ok(run.summary)
    }

    fn lease_until_ms(&self, run: &Run) -> i64 {
        let left = run.deadline.saturating_duration_since(Instant::now());
        now_ms()
            + (left + self.config.provider_timeout + self.config.lease_margin).as_millis() as i64
    }

    async fn resume_open_batches(&self, run: &mut Run) -> Result<(), StoreError> {
        let mut open = self.store.open_batches().await?;
        open.sort_by_key(|b| b.id);
        for hint in open {
            if run.out_of_time(&self.config) {
                return Ok(());
            }
            let ccy = hint.currency.code().to_string();
            match hint.status {
                BatchStatus::Claiming | BatchStatus::Open => {
                    if hint.lease_alive(now_ms()) {
                        continue; // another run is building or sending it
                    }
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
                    let Some(batch) = taken else { continue };
                    if batch.status == BatchStatus::Claiming {
                        // Its run died while claiming: the recorded members are the batch.
                        tracing::warn!(batch_id = %batch.id, members = batch.member_count(), "taking over a batch left claiming");
                        self.store.close_claiming(batch.id, &run.owner).await?;
                    }
                    run.counts(&ccy).resent += 1;
                    let members = self.store.members(&batch).await?;
                    self.send(run, &batch, &members).await?;
                }
                BatchStatus::Rejecting => {
                    self.reject_members(run, hint.id).await?;
                }
                BatchStatus::Accepted => {
                    // Completes a batch whose last callback's run died before closing it.
                    if self.store.complete_if_final(hint.id).await? {
                        continue;
                    }
                    if hint.accepted_at.is_some_and(|t| {
                        Utc::now() - t
                            > chrono::Duration::from_std(self.config.stale_after)
                                .unwrap_or_default()
                    }) {
                        self.check_stale(run, &hint).await?;
                    }
                }
                BatchStatus::NeedsOperator => {
                    tracing::error!(batch_id = %hint.id, attempts = hint.attempts, last_error = ?hint.last_error, "batch needs an operator");
                    run.counts(&ccy).flagged += 1;
                }
                BatchStatus::Rejected | BatchStatus::Completed => {}
            }
        }
        Ok(())
    }

    async fn batch_currency(
        &self,
        run: &mut Run,
        currency: &crate::domain::Currency,
    ) -> Result<(), StoreError> {
        let ccy = currency.code().to_string();
        let mut after = None;
        loop {
            if run.out_of_time(&self.config) {
                return Ok(());
            }
            let candidates = self
                .store
                .pending(currency, self.config.max_batch_size, after)
                .await?;
            let Some(last) = candidates.last() else {
                return Ok(());
            };
            after = Some(last.id);
            let mut batch = Batch {
                id: BatchId::new(),
                currency: currency.clone(),
                status: BatchStatus::Claiming,
                members: BTreeMap::new(),
                total: Default::default(),
                attempts: 0,
                last_error: None,
                provider_batch_id: None,
                reason: None,
                lease_owner: Some(run.owner.clone()),
                lease_until_ms: self.lease_until_ms(run),
                created_at: Utc::now(),
                updated_at: Utc::now(),
                accepted_at: None,
            };
            let mut members = Vec::new();
            for chunk in candidates.chunks(CLAIM_CHUNK) {
                if run.out_of_time(&self.config) {
                    run.summary.stopped_early = true;
                    break;
                }
                let create = members.is_empty();
                let result = match self.store.claim(&batch, &run.owner, chunk, create).await {
                    Ok(r) => r,
                    Err(StoreError::LeaseLost) => {
                        tracing::warn!(batch_id = %batch.id, "lost the claiming lease");
                        break;
                    }
                    Err(e) => return Err(e),
                };
                run.counts(&ccy).skipped += result.lost.len() as u32;
                run.counts(&ccy).claimed += result.claimed.len() as u32;
                members.extend(result.claimed);
            }
            if !members.is_empty() {
                for w in &members {
                    batch.members.insert(w.id, w.user_id.clone());
                    batch.total += w.amount.value();
                }
                match self.store.close_claiming(batch.id, &run.owner).await {
                    Ok(()) => {
                        batch.status = BatchStatus::Open;
                        self.send(run, &batch, &members).await?;
                    }
                    // Taken over after our lease ran out: the other run sends it.
                    Err(StoreError::LeaseLost) => {}
                    Err(e) => return Err(e),
                }
            }
            if candidates.len() < self.config.max_batch_size {
                return Ok(());
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
        let ccy = batch.currency.code().to_string();
        let request = PayoutBatchRequest::new(batch, members);
        let started = Instant::now();
        let outcome = self.provider.submit_batch(&request).await;
        let latency_ms = started.elapsed().as_millis() as u64;
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
            Err(StoreError::LeaseLost) => {
                tracing::warn!(batch_id = %batch.id, "lease lost before recording the provider's answer");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        tracing::info!(batch_id = %batch.id, currency = %ccy, items = members.len(), latency_ms, status = %recorded.status, "provider call");
        metrics::emit(
            "ProviderLatency",
            latency_ms as f64,
            metrics::Unit::Milliseconds,
            &[("Currency", &ccy)],
        );
        metrics::emit(
            "BatchSize",
            members.len() as f64,
            metrics::Unit::Count,
            &[("Currency", &ccy)],
        );
        match outcome {
            SubmitOutcome::Accepted { .. } => {
                let c = run.counts(&ccy);
                c.batches += 1;
                c.submitted += members.len() as u32;
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
                    tracing::warn!(batch_id = %batch.id, attempts = recorded.attempts, %error, "provider outcome unknown; will re-send");
                }
            }
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
                Err(StoreError::StateChanged { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.store.finish_rejecting(batch.id).await
    }

    /// Asks the provider about an accepted batch that has waited too long for callbacks.
    async fn check_stale(&self, run: &mut Run, hint: &Batch) -> Result<(), StoreError> {
        let ccy = hint.currency.code().to_string();
        let state = match self.provider.batch_status(hint.id).await {
            StatusOutcome::Found(state) => state,
            StatusOutcome::NotFound => {
                tracing::error!(batch_id = %hint.id, "provider does not know an accepted batch");
                run.counts(&ccy).stale_unknown += 1;
                return Ok(());
            }
            StatusOutcome::Ambiguous { error } => {
                tracing::error!(batch_id = %hint.id, %error, "stale batch status unknown");
                run.counts(&ccy).stale_unknown += 1;
                return Ok(());
            }
        };
        let members = self.store.members(hint).await?;
        let mut unresolved = 0;
        let mut seen = BTreeSet::new();
        for item in &state.items {
            let Some(w) = members.iter().find(|w| w.id.to_string() == item.reference) else {
                tracing::error!(batch_id = %hint.id, reference = %item.reference, "provider reports an item not in the batch");
                continue;
            };
            seen.insert(w.id);
            let outcome = match item.status {
                crate::provider::ItemStatus::Pending => {
                    unresolved += 1;
                    continue;
                }
                crate::provider::ItemStatus::Paid => Outcome::Paid {
                    provider_reference: item.provider_reference.clone(),
                },
                crate::provider::ItemStatus::Failed => Outcome::Failed {
                    reason: item.reason.clone().unwrap_or_else(|| "failed".into()),
                },
                crate::provider::ItemStatus::Returned => Outcome::Returned {
                    reason: item.reason.clone().unwrap_or_else(|| "returned".into()),
                },
            };
            let actor = format!("batcher:{}:status", run.owner);
            match settlement::apply(self.store.as_ref(), w, &outcome, &actor, None).await? {
                Applied::Changed(_) => run.counts(&ccy).resolved_from_status += 1,
                Applied::AlreadyDone(_) | Applied::Duplicate => {}
                Applied::Conflict(current) => {
                    tracing::error!(withdrawal_id = %w.id, %current, ?outcome, "provider status contradicts our state");
                }
            }
        }
        unresolved += members.iter().filter(|w| !seen.contains(&w.id)).count();
        if unresolved > 0 {
            tracing::error!(batch_id = %hint.id, unresolved, "stale batch still has items without a final answer");
            run.counts(&ccy).stale_unknown += 1;
        }
        self.store.complete_if_final(hint.id).await?;
        Ok(())
    }
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

    fn counts(&mut self, ccy: &str) -> &mut CurrencySummary {
        self.summary.currencies.entry(ccy.to_string()).or_default()
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_margin_covers_a_provider_call_and_recording_its_answer() {
        let c = BatcherConfig::default();
        assert_eq!(c.safety_margin, c.provider_timeout + c.lease_margin);
        assert!(c.validate(Some(Duration::from_secs(120))).is_ok());
    }

    #[test]
    fn a_function_timeout_that_cannot_fit_one_provider_call_is_refused() {
        let c = BatcherConfig::default(); // 10 s provider + 5 s lease margin
        let err = c.validate(Some(Duration::from_secs(20))).unwrap_err();
        assert!(err.contains("FUNCTION_TIMEOUT_SECS"), "{err}");
        assert!(c.validate(Some(Duration::from_secs(25))).is_ok());
        let slow = BatcherConfig {
            provider_timeout: Duration::from_secs(61),
            safety_margin: Duration::from_secs(66),
            ..c.clone()
        };
        assert!(slow
            .validate(None)
            .unwrap_err()
            .contains("PROVIDER_TIMEOUT_MS"));
        let short = BatcherConfig {
            safety_margin: Duration::from_secs(5),
            ..c
        };
        assert!(short.validate(None).is_err());
    }

    #[test]
    fn a_batch_larger_than_one_record_can_hold_is_refused() {
        assert_eq!(crate::store::MAX_BATCH_MEMBERS, 1866);
        let at_bound = BatcherConfig {
            max_batch_size: crate::store::MAX_BATCH_MEMBERS,
            ..BatcherConfig::default()
        };
        assert!(at_bound.validate(None).is_ok());
        let over = BatcherConfig {
            max_batch_size: crate::store::MAX_BATCH_MEMBERS + 1,
            ..at_bound
        };
        let err = over.validate(None).unwrap_err();
        assert!(
            err.contains("BATCH_MAX_SIZE") && err.contains("1866"),
            "{err}"
        );
    }

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
}
