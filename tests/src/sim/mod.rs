//! A seeded whole-system simulation (issue #14): random operations, provider behaviour, store
//! faults and crashes, several in flight at once, against a model of the money, from one seed.
//!
//! - [`rng`]: the seeded random source;
//! - [`ops`]: the operations and the schedule (a pure function of the seed);
//! - [`model`]: what must be true, checked after every step and at quiescence;
//! - [`driver`]: one seed's world and the execution of each operation through the real handlers
//!   (each function's `App::handle`), the
//!   operator commands (`shared::operator::operations`, `shared::payouts::reconcile`) and the sandbox provider.
//!
//! Determinism: the schedule — every operation, its parameters, which operations run at once,
//! every injected fault and every choice of target — is generated from the seed before anything
//! runs, and targets are resolved by index into what exists at that step, so a seed always runs
//! the same schedule. What a real DynamoDB Local and real sockets decide is not fixed: which of
//! the operations run at once commits first, ids (ULIDs) and timestamps, and whether a provider
//! call near its timeout answers in time. The step log records every outcome, and the model
//! only checks properties that hold under every interleaving, so a failure is a real violation
//! whichever interleaving produced it; re-running its seed repeats the schedule exactly and, in
//! practice, the outcome (each step waits for the provider's callbacks to settle before the
//! next one starts, so nothing runs between steps).

pub mod driver;
pub mod model;
pub mod ops;
pub mod rng;

use driver::{Stats, World};
use model::{Fact, Model};
use std::time::{Duration, Instant};

pub struct SeedResult {
    pub seed: u64,
    pub steps: usize,
    pub stats: Stats,
    pub violations: Vec<String>,
    pub log: Vec<String>,
    pub elapsed: Duration,
}

/// `SIM_CHECK_EVERY` (1): the full check after every this many steps (answers are always
/// checked as they come; quiescence always ends with the full check).
fn check_every() -> usize {
    std::env::var("SIM_CHECK_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

fn order(f: &Fact) -> u8 {
    // Facts of operations that ran at once are learned creations first, so a replay is never
    // judged before the creation it replays.
    match f {
        Fact::Request {
            status: 201,
            replayed: false,
            ..
        } => 0,
        Fact::Request { status: 201, .. } => 1,
        Fact::Request { .. } => 2,
        _ => 3,
    }
}

/// Runs one seed: the schedule, the model's checks after every step, quiescence, the final
/// checks. Stops at the first step with a violation.
pub async fn run_seed(seed: u64, steps: usize) -> SeedResult {
    let started = Instant::now();
    let world = World::new(seed).await;
    let mut model = Model::default();
    let schedule = ops::schedule(seed, steps);
    let mut log = vec![format!(
        "seed {seed}, {steps} steps (+{} setup credits), provider forgets: {:?}, table {}",
        schedule.len() - steps,
        ops::forgetting(seed),
        world.table()
    )];
    let mut violations = Vec::new();
    for (i, op) in schedule.iter().enumerate() {
        world.sync_callbacks().await;
        let t = Instant::now();
        let done = world.exec(op, &model, i).await;
        let op_ms = t.elapsed().as_millis() as u64;
        *world
            .stats
            .lock()
            .unwrap()
            .op_ms
            .entry(op.kind())
            .or_default() += op_ms;
        log.push(format!("#{i} {op:?}"));
        log.extend(done.log.iter().map(|l| format!("    {l}")));
        let mut facts = done.facts;
        facts.sort_by_key(order);
        for f in &facts {
            violations.extend(model.learn(f));
        }
        world.sync_callbacks().await;
        if op.writes() && (i + 1) % check_every() == 0 {
            let t = Instant::now();
            let report = world.scan().await;
            violations.extend(model.check(&report, &world.ledger(), &world.lost_unheard()));
            *world
                .stats
                .lock()
                .unwrap()
                .op_ms
                .entry("(check)")
                .or_default() += t.elapsed().as_millis() as u64;
        }
        world.stats.lock().unwrap().steps += 1;
        if !violations.is_empty() {
            log.push(format!("VIOLATIONS after step #{i}:"));
            log.extend(violations.iter().map(|v| format!("  {v}")));
            break;
        }
    }
    if violations.is_empty() {
        log.push("quiescence:".into());
        let t = Instant::now();
        violations = world.quiesce(&mut model, &mut log).await;
        *world
            .stats
            .lock()
            .unwrap()
            .op_ms
            .entry("(quiesce)")
            .or_default() += t.elapsed().as_millis() as u64;
        if !violations.is_empty() {
            log.push("VIOLATIONS at quiescence:".into());
            log.extend(violations.iter().map(|v| format!("  {v}")));
        }
    }
    if violations.is_empty() {
        let _ = world.p_delete_table().await;
    }
    let stats = world.stats.lock().unwrap().clone();
    SeedResult {
        seed,
        steps,
        stats,
        violations,
        log,
        elapsed: started.elapsed(),
    }
}

/// Seeds that once failed, run before the others: `tests/sim-corpus.txt`, one seed per line
/// (optionally `seed steps`), `#` comments.
pub fn corpus() -> Vec<(u64, Option<usize>)> {
    include_str!("../../sim-corpus.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let seed = parts.next().unwrap().parse().expect("corpus seed");
            let steps = parts.next().map(|s| s.parse().expect("corpus steps"));
            (seed, steps)
        })
        .collect()
}
