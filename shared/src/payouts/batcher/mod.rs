//! One run of the payout batcher: finish what earlier runs left open, then claim pending
//! withdrawals per currency into batches and send each batch to the provider once.
//!
//! Safety rests on three things: a claim is a conditional write on `status = PENDING`, so two
//! runs never put one withdrawal in two batches; a batch's idempotency key is its id, so a re-send
//! is never paid twice; and only a definite rejection returns funds — an ambiguous outcome keeps
//! the batch open for the next run.
//!
//! The run is here; its steps live beside it: `claiming` (pending → batches), `sending` (the
//! provider call and what its answer leads to), `status` (asking the provider about batches
//! already sent), `run` (one run's state).

use crate::domain::{Batch, BatchStatus, Currencies, CurrencyCode};
use crate::payouts::provider::PayoutProvider;
pub use crate::platform::config::BatcherConfig;
use crate::platform::metrics;
use crate::store::{PayoutStore, StoreError};
use chrono::Utc;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod claiming;
mod run;
mod sending;
mod status;

use run::{now_ms, Run};

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
    /// Pending withdrawals whose beneficiary could not be found: left pending, not claimed
    /// (never paid elsewhere); each is logged with its ids for an operator.
    pub unresolved: u32,
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
    /// An operator paused the currency (or its pause could not be read): nothing new was
    /// claimed; open batches, status checks and reconciliation went on.
    pub paused: bool,
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
        let paused = &self.paused(&mut run).await;
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
                    if paused.contains(&currency.code()) {
                        part.counts(currency.code().as_str()).paused = true;
                    } else if !part.out_of_time(&self.config) {
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

    /// The currencies an operator paused, read once a run. A pause that cannot be read pauses
    /// every currency for this run: claiming what an operator may have stopped is the one
    /// mistake that cannot be taken back (the provider pays it).
    async fn paused(&self, run: &mut Run) -> BTreeSet<CurrencyCode> {
        let all: Vec<CurrencyCode> = self.currencies.iter().map(|c| c.code()).collect();
        match self.store.paused_currencies(&all).await {
            Ok(paused) => paused,
            Err(e) => {
                run.failed(None, None, &e);
                all.into_iter().collect()
            }
        }
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
