//! The reliability and security suite: load, concurrency, crash points, store faults, webhook
//! attacks and fuzzed input against DynamoDB Local and the sandbox provider, each scenario its
//! own test ending with the full invariant check. With `RELIABILITY_REPORT` set (scripts/test.sh
//! sets it to `target/reliability-report.md`) each scenario adds its row to one table: scenario,
//! operations, failures found, money lost.
//!
//! `RELIABILITY_SCALE` (default 1.0) scales the counts; the defaults are the CI figures.

mod attacks;
mod crashes;
mod faults;
mod fuzz;
mod load;
mod provider;

use integration_tests::TestEnv;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("RELIABILITY_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * s).ceil().max(1.0) as usize
}

struct Row {
    scenario: &'static str,
    operations: usize,
    failures: usize,
    money_lost: Decimal,
    note: String,
}

/// Money lost = what the books say left or is owed beyond what users asked for: any violation of
/// conservation or a payout beyond one per withdrawal, valued.
async fn audit(env: &TestEnv, sandbox: Option<&sandbox_provider::Sandbox>) -> (usize, Decimal) {
    let report = env.store.scan_all().await.unwrap();
    let violations = shared::operator::check::violations(&report);
    let mut lost = Decimal::ZERO;
    for (_, b) in &report.balances {
        let diff = b.credited - (b.available + b.locked + b.paid_out);
        lost += diff.abs();
    }
    let mut double = 0;
    if let Some(sb) = sandbox {
        let amounts: BTreeMap<String, Decimal> = sb
            .ledger()
            .iter()
            .map(|e| (e.reference.clone(), e.amount.parse().unwrap()))
            .collect();
        for (reference, n) in sb.payouts_by_reference() {
            if n > 1 {
                double += 1;
                lost += amounts[&reference] * Decimal::from(n - 1);
            }
        }
    }
    assert!(
        violations.is_empty(),
        "invariants violated: {violations:#?}"
    );
    (violations.len() + double, lost)
}

/// Scenarios run one at a time: their crash timings and load figures assume the machine is not
/// running another scenario beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one scenario on its own runtime, reports its rows, and fails on any failure found or
/// money lost.
fn scenario(run: impl FnOnce(&tokio::runtime::Runtime) -> Vec<Row>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let rows = run(&rt);
    report(&rows);
    for r in &rows {
        assert_eq!(r.failures, 0, "{}: {}", r.scenario, r.note);
        assert_eq!(r.money_lost, Decimal::ZERO, "{}", r.scenario);
    }
}

/// Prints the rows and, when `RELIABILITY_REPORT` names a file, appends them to its table.
fn report(rows: &[Row]) {
    let mut lines = String::new();
    for r in rows {
        lines.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.scenario, r.operations, r.failures, r.money_lost, r.note
        ));
    }
    println!("\n{lines}");
    let Ok(path) = std::env::var("RELIABILITY_REPORT") else {
        return;
    };
    use std::io::Write;
    let new = !std::path::Path::new(&path).exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("report file");
    if new {
        let header = "| scenario | operations | failures found | money lost | notes |\n\
                      |---|---:|---:|---:|---|\n";
        file.write_all(header.as_bytes()).expect("report header");
    }
    file.write_all(lines.as_bytes()).expect("report rows");
}
