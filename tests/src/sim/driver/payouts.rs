//! Batcher runs (healthy and crashing) and the delivery of the provider's callbacks to the webhook.

use super::{
    ms, ulid_text, Callback, Done, World, CALL_TIMEOUT, CRASH_BUDGET, PROVIDER_TIMEOUT, RUN_BUDGET,
};
use crate::faults::{Fault as StoreFault, FaultyStore, When};
use crate::sim::ops::{BatcherCfg, StoreFaultSpec};
use crate::sim::rng::Rng;
use crate::{deliver, now_secs, sign, webhook_request, TestResponse, WEBHOOK_SECRET};
use futures::future::join_all;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use shared::payouts::batcher::{Batcher, BatcherConfig, RunSummary};
use shared::payouts::provider::PayoutProvider;
use shared::payouts::webhook::WebhookProcessor;
use shared::store::PayoutStore;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl World {
    pub(super) async fn batcher(&self, runs: usize, cfg: BatcherCfg) -> Done {
        let mut d = Done::default();
        let batchers: Vec<_> = (0..runs)
            .map(|_| {
                payout_batcher::App::new(Batcher::new(
                    self.batcher_store.clone(),
                    self.provider.clone(),
                    self.p.env.currencies.clone(),
                    batcher_config(cfg),
                ))
            })
            .collect();
        let results = join_all(batchers.iter().map(|b| invoke(b, RUN_BUDGET))).await;
        for r in results {
            match r {
                Ok(s) => {
                    let errors = s.errors.len() as u64;
                    self.stat(|st| st.run_errors += errors);
                    d.line(format!("run {cfg:?}: {}", summary_line(&s)));
                }
                Err(e) => {
                    self.stat(|st| st.run_errors += 1);
                    d.line(format!("run {cfg:?} failed: {e}"));
                }
            }
        }
        d
    }

    pub(super) async fn crash_batcher(&self, cfg: BatcherCfg, fault: &StoreFaultSpec) -> Done {
        let mut d = Done::default();
        let faulty = Arc::new(FaultyStore::new(
            self.batcher_store.clone(),
            vec![StoreFault::new(fault.method, fault.nth, fault.when)],
        ));
        let batcher = payout_batcher::App::new(Batcher::new(
            faulty.clone(),
            self.provider.clone(),
            self.p.env.currencies.clone(),
            batcher_config(cfg),
        ));
        let started = Instant::now();
        {
            // Every lease the run takes ends by its deadline + the provider timeout.
            let mut h = self.lease_horizon.lock().unwrap();
            *h = (*h).max(started + CRASH_BUDGET + PROVIDER_TIMEOUT + Duration::from_millis(50));
        }
        let r = tokio::time::timeout(CRASH_BUDGET, invoke(&batcher, CRASH_BUDGET)).await;
        let fired = self.count_fired(&Some(faulty));
        d.line(format!(
            "crash run {cfg:?} {fault:?}: {} (fired {fired:?})",
            match r {
                Err(_) => "killed".to_string(),
                Ok(Ok(s)) => summary_line(&s),
                Ok(Err(e)) => format!("failed: {e}"),
            }
        ));
        d
    }

    /// Delivers one callback (signed now_secs, as a provider's retry is) to the webhook handler.
    pub(super) async fn deliver_one(
        &self,
        cb: &Callback,
        faulty: Option<&Arc<FaultyStore>>,
        hangs: bool,
    ) -> Option<TestResponse> {
        let sig = sign(&cb.body, WEBHOOK_SECRET, now_secs());
        let req = webhook_request(&cb.body, Some(sig));
        let limit = if hangs {
            CALL_TIMEOUT
        } else {
            Duration::from_secs(10)
        };
        match faulty {
            Some(f) => {
                let app = provider_webhook::App::from(WebhookProcessor::new(
                    f.clone(),
                    vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
                    300,
                ));
                tokio::time::timeout(limit, deliver(&app, req)).await.ok()
            }
            None => tokio::time::timeout(limit, deliver(&self.webhook, req))
                .await
                .ok(),
        }
    }

    pub(super) async fn deliver(
        &self,
        picks: &[u64],
        duplicate: bool,
        concurrent: bool,
        fault: Option<&StoreFaultSpec>,
    ) -> Done {
        let mut d = Done::default();
        let chosen: Vec<(usize, Callback)> = {
            let q = self.queue.lock().unwrap();
            if q.is_empty() {
                return d;
            }
            let mut idx: Vec<usize> = picks
                .iter()
                .map(|p| (*p % q.len() as u64) as usize)
                .collect();
            let mut seen = BTreeSet::new();
            idx.retain(|i| seen.insert(*i));
            idx.into_iter().map(|i| (i, q[i].clone())).collect()
        };
        let faulty = fault.map(|f| {
            Arc::new(FaultyStore::new(
                self.webhook_store.clone(),
                vec![StoreFault::new(f.method, f.nth, f.when)],
            ))
        });
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let mut jobs = Vec::new();
        for (i, cb) in &chosen {
            for _ in 0..if duplicate { 2 } else { 1 } {
                jobs.push((*i, cb.clone()));
            }
        }
        if duplicate {
            self.stat(|s| s.callbacks_duplicated += chosen.len() as u64);
        }
        let answers: Vec<Option<TestResponse>> = if concurrent {
            join_all(
                jobs.iter()
                    .map(|(_, cb)| self.deliver_one(cb, faulty.as_ref(), hangs)),
            )
            .await
        } else {
            let mut out = Vec::new();
            for (_, cb) in &jobs {
                out.push(self.deliver_one(cb, faulty.as_ref(), hangs).await);
            }
            out
        };
        let fired = self.count_fired(&faulty);
        let mut acked = BTreeSet::new();
        for ((_, cb), answer) in jobs.iter().zip(&answers) {
            let (status, result) = match answer {
                Some(r) => (
                    r.status,
                    r.json()["status"].as_str().unwrap_or("").to_string(),
                ),
                None => (0, String::new()),
            };
            d.line(format!(
                "webhook {} {} → {status} {result}",
                cb.kind, cb.reference
            ));
            match status {
                200 => {
                    if ["conflict", "unknown_withdrawal"].contains(&result.as_str()) {
                        d.bad(format!(
                            "webhook {} {} answered {result}",
                            cb.kind, cb.reference
                        ));
                    }
                    acked.insert(cb.id.clone());
                    self.stat(|s| s.callbacks_delivered += 1);
                    if cb.kind == "payout.returned" {
                        self.returned_delivered
                            .lock()
                            .unwrap()
                            .insert(cb.reference.clone());
                    }
                }
                500..=599 if !fired.is_empty() => self.stat(|s| s.webhook_5xx += 1),
                // The provider stopped waiting on a delivery armed to hang (reached or not on
                // a slow machine); it retries, as it does after any unanswered callback.
                0 if hangs => self.stat(|s| s.webhook_5xx += 1),
                _ => d.bad(format!(
                    "webhook {} {} answered {status}",
                    cb.kind, cb.reference
                )),
            }
        }
        if !fired.is_empty() {
            d.line(format!("webhook faults fired {fired:?}"));
        }
        // The provider stops retrying what was acknowledged; the rest stays queued.
        self.queue
            .lock()
            .unwrap()
            .retain(|cb| !acked.contains(&cb.id));
        d
    }

    /// Delivers every queued callback, in the seed's order, each once.
    pub(super) async fn deliver_all(&self, rng: &mut Rng) -> Done {
        let mut d = Done::default();
        for _ in 0..1000 {
            self.sync_callbacks().await;
            if self.queue.lock().unwrap().is_empty() {
                break;
            }
            d.merge(self.deliver(&[rng.next_u64()], false, false, None).await);
        }
        d
    }
}

fn batcher_config(cfg: BatcherCfg) -> BatcherConfig {
    let mut c = BatcherConfig {
        provider_timeout: PROVIDER_TIMEOUT,
        safety_margin: Duration::from_millis(100),
        lease_margin: Duration::ZERO,
        ..BatcherConfig::default()
    };
    match cfg {
        BatcherCfg::Normal => {}
        BatcherCfg::Stale => c.stale_after = Duration::ZERO,
        BatcherCfg::Escalate => {
            c.stale_after = Duration::ZERO;
            c.escalate_after = Duration::ZERO;
        }
        BatcherCfg::Reconcile => {
            c.reconcile_after = Duration::ZERO;
            c.reconcile_again_after = Duration::ZERO;
        }
        BatcherCfg::OneAttempt => c.max_attempts = 1,
    }
    c
}

/// An invocation of the `payout-batcher` function through its handler, with the scheduled
/// event and a deadline `budget` from now.
async fn invoke<S, P>(
    app: &payout_batcher::App<S, P>,
    budget: Duration,
) -> Result<RunSummary, String>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    let event: Value =
        serde_json::from_str(include_str!("../../../payloads/scheduled-event.json")).unwrap();
    let mut ctx = Context::default();
    ctx.request_id = format!("sim-{}", ulid_text());
    ctx.deadline = (chrono::Utc::now().timestamp_millis() as u64) + ms(budget);
    app.handle(LambdaEvent::new(event, ctx))
        .await
        .map_err(|e| e.to_string())
}

fn summary_line(s: &RunSummary) -> String {
    let mut parts = Vec::new();
    for (c, x) in &s.currencies {
        let v = serde_json::to_value(x).unwrap_or_default();
        let nz: Vec<String> = v
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        if !nz.is_empty() {
            parts.push(format!("{c}[{}]", nz.join(" ")));
        }
    }
    if !s.errors.is_empty() {
        parts.push(format!(
            "errors={:?}",
            s.errors.iter().map(|e| &e.error).collect::<Vec<_>>()
        ));
    }
    if parts.is_empty() {
        "nothing to do".into()
    } else {
        parts.join(" ")
    }
}
