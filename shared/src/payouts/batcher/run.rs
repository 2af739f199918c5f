//! One run's state: its owner (the lease holder name), its deadline and its summary.

use crate::domain::BatchId;
use crate::store::StoreError;
use chrono::Utc;
use std::collections::BTreeMap;
use std::time::Instant;

use super::{BatcherConfig, CurrencySummary, RunError, RunSummary};

pub(super) struct Run {
    pub(super) owner: String,
    pub(super) deadline: Instant,
    pub(super) summary: RunSummary,
}

impl Run {
    pub(super) fn out_of_time(&mut self, config: &BatcherConfig) -> bool {
        let out = Instant::now() + config.safety_margin >= self.deadline;
        if out {
            self.summary.stopped_early = true;
        }
        out
    }

    /// A run for one currency's claims, side by side with the others': the same owner and
    /// deadline, holding that currency's counts until [`Run::merge`] gives them back.
    pub(super) fn part(&mut self, ccy: &str) -> Run {
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

    pub(super) fn merge(&mut self, part: Run) {
        self.summary.currencies.extend(part.summary.currencies);
        self.summary.errors.extend(part.summary.errors);
        self.summary.stopped_early |= part.summary.stopped_early;
    }

    pub(super) fn counts(&mut self, ccy: &str) -> &mut CurrencySummary {
        self.summary.currencies.entry(ccy.to_string()).or_default()
    }

    /// Records a failure the run goes on past.
    pub(super) fn failed(&mut self, ccy: Option<&str>, batch: Option<BatchId>, e: &StoreError) {
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

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
