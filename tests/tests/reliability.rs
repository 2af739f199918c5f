//! The reliability and security suite: load, concurrency, crash points, store faults, webhook
//! attacks and fuzzed input against DynamoDB Local and the sandbox provider, each scenario its
//! own test ending with the full invariant check. With `RELIABILITY_REPORT` set (scripts/test.sh
//! sets it to `target/reliability-report.md`) each scenario adds its row to one table: scenario,
//! operations, failures found, money lost.
//!
//! `RELIABILITY_SCALE` (default 1.0) scales the counts; the defaults are the CI figures.

use futures::future::join_all;
use integration_tests::faults::{Fault as StoreFault, FaultyStore, When};
use integration_tests::{
    callback_body, deliver, now_secs, sign, spawn_webhook_server, webhook_request, withdrawal_body,
    ApiRequest, PayoutEnv, TestEnv, TestResponse, ACCOUNTS, API_KEY, BATCHER_FN, IBAN, REQUEST_FN,
    WEBHOOK_FN, WEBHOOK_SECRET,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;
use sandbox_provider::Fault as ProviderFault;
use shared::domain::{BatchStatus, Withdrawal, WithdrawalStatus};
use shared::payouts::batcher::{Batcher, BatcherConfig};
use shared::payouts::webhook::WebhookProcessor;
use shared::requests::withdrawals::WithdrawalService;
use shared::store::Failure;
use shared::store::{BatchStore, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use withdrawal_request::App;

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

#[test]
fn s1_no_overdraw_under_load() {
    scenario(|rt| vec![rt.block_on(no_overdraw_under_load())]);
}

#[test]
fn s2_idempotency_under_concurrency() {
    scenario(|rt| vec![rt.block_on(idempotency_under_concurrency())]);
}

#[test]
fn s3_overlapping_batchers() {
    scenario(|rt| vec![rt.block_on(overlapping_batchers())]);
}

#[test]
fn s5_store_faults() {
    scenario(|rt| vec![rt.block_on(store_faults())]);
}

#[test]
fn s6_webhook_attacks() {
    scenario(|rt| vec![rt.block_on(webhook_attacks())]);
}

#[test]
fn s7_fuzzed_input() {
    scenario(|rt| vec![fuzzed_input(rt)]);
}

#[test]
fn s8_racing_operators() {
    scenario(|rt| vec![rt.block_on(racing_operators())]);
}

#[test]
fn s9_forgetful_provider() {
    scenario(|rt| vec![rt.block_on(forgetful_provider())]);
}

#[test]
fn s10_provider_loses_batches() {
    scenario(|rt| vec![rt.block_on(provider_loses_batches())]);
}

#[test]
fn s11_provider_found_then_lost() {
    scenario(|rt| vec![rt.block_on(provider_found_then_lost())]);
}

// 1 ------------------------------------------------------------------------------------------
async fn no_overdraw_under_load() -> Row {
    let env = Arc::new(TestEnv::with_max_open(u32::MAX).await);
    let amounts = ["1.00", "2.50", "7.25", "10.00", "3.33", "4.20"];
    let per_user = scale(40);
    for i in 0..amounts.len() {
        env.credit(&format!("load-{i}"), "USD", "60.00").await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Sample balances while the load runs: available must never be negative.
    let sampler = {
        let env = env.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            let mut negative = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 0..6 {
                    for b in env
                        .store
                        .balances(&shared::domain::UserId::parse(&format!("load-{i}")).unwrap())
                        .await
                        .unwrap()
                    {
                        samples += 1;
                        if b.available < Decimal::ZERO || b.locked < Decimal::ZERO {
                            negative += 1;
                        }
                    }
                }
            }
            (samples, negative)
        })
    };
    let calls = (0..amounts.len() * per_user).map(|n| {
        let env = env.clone();
        let user = n % amounts.len();
        let amount = amounts[user];
        async move {
            let key = format!("load-{n}");
            loop {
                let r = env
                    .call(
                        ApiRequest::new("POST", "/withdrawals")
                            .user(&format!("load-{user}"))
                            .header("idempotency-key", &key)
                            .body(withdrawal_body("USD", amount))
                            .build(),
                    )
                    .await;
                if r.status != 503 {
                    return (user, r.status);
                }
            }
        }
    });
    let results = join_all(calls).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, negative) = sampler.await.unwrap();
    let mut failures = negative;
    for (i, amount) in amounts.iter().enumerate() {
        let allowed = (Decimal::from(60) / amount.parse::<Decimal>().unwrap()).floor();
        let expected = allowed.min(Decimal::from(per_user));
        let ok = results.iter().filter(|(u, s)| *u == i && *s == 201).count();
        if Decimal::from(ok) != expected {
            failures += 1;
        }
        let other = results
            .iter()
            .filter(|(u, s)| *u == i && *s != 201 && *s != 409)
            .count();
        failures += other;
    }
    let (violations, lost) = audit(&env, None).await;
    Row {
        scenario: "1. no overdraw under load",
        operations: results.len(),
        failures: failures + violations,
        money_lost: lost,
        note: format!(
            "{} requests on 6 balances, {} accepted = exactly what funds allow; {samples} balance samples, 0 negative",
            results.len(),
            results.iter().filter(|(_, s)| *s == 201).count()
        ),
    }
}

// 2 ------------------------------------------------------------------------------------------
async fn idempotency_under_concurrency() -> Row {
    let env = TestEnv::new().await;
    env.credit("idem", "EUR", "1000").await;
    let n = scale(20).max(20);
    let responses = join_all((0..n).map(|_| {
        env.call(
            ApiRequest::new("POST", "/withdrawals")
                .user("idem")
                .header("idempotency-key", "the-one-key")
                .body(withdrawal_body("EUR", "33.00"))
                .build(),
        )
    }))
    .await;
    let first = &responses[0].body;
    let mut failures = responses
        .iter()
        .filter(|r| r.status != 201 || &r.body != first)
        .count();
    let created = responses.iter().filter(|r| !r.replayed).count();
    failures += created.abs_diff(1);
    let list = env
        .call(ApiRequest::new("GET", "/withdrawals").user("idem").build())
        .await
        .json();
    failures += list["items"].as_array().unwrap().len().abs_diff(1);
    let (violations, lost) = audit(&env, None).await;
    Row {
        scenario: "2. idempotency under concurrency",
        operations: n,
        failures: failures + violations,
        money_lost: lost,
        note: format!("{n} parallel requests with one key: 1 withdrawal, {n} identical responses"),
    }
}

// 3 ------------------------------------------------------------------------------------------
async fn overlapping_batchers() -> Row {
    let p = PayoutEnv::new(|_| {}).await;
    let mut seeded = Vec::new();
    seeded.extend(
        p.seed("ovl-usd", "USD", "1.00", scale(400), ACCOUNTS[0])
            .await,
    );
    seeded.extend(
        p.seed("ovl-eur", "EUR", "2.00", scale(350), ACCOUNTS[1])
            .await,
    );
    seeded.extend(
        p.seed("ovl-jpy", "JPY", "300", scale(300), ACCOUNTS[2])
            .await,
    );
    let config = BatcherConfig {
        max_batch_size: 200,
        ..PayoutEnv::config()
    };
    let batchers: Vec<_> = (0..4).map(|_| p.batcher(config.clone())).collect();
    join_all(
        batchers
            .iter()
            .map(|b| b.run(Instant::now() + Duration::from_secs(120))),
    )
    .await;
    let mut membership: BTreeMap<String, usize> = BTreeMap::new();
    for b in p.env.store.all_batches().await.unwrap() {
        for id in b.members.keys() {
            *membership.entry(id.to_string()).or_default() += 1;
        }
    }
    let paid = p.sandbox.payouts_by_reference();
    let mut failures = 0;
    for w in &seeded {
        let id = w.id.to_string();
        if membership.get(&id) != Some(&1) || paid.get(&id) != Some(&1) {
            failures += 1;
        }
    }
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "3. overlapping batchers",
        operations: seeded.len(),
        failures: failures + violations,
        money_lost: lost,
        note: format!(
            "4 runs in parallel over {} pending in 3 currencies: each in exactly 1 batch, paid exactly once ({} provider calls)",
            seeded.len(),
            p.sandbox.submit_calls()
        ),
    }
}

// 4 ------------------------------------------------------------------------------------------
#[derive(Clone, Debug)]
enum Crash {
    /// A store call of the batcher fails (before / after it is written).
    Batcher(StoreFault),
    /// The provider misbehaves around recording the batch.
    Provider(ProviderFault),
    /// The run's process dies at this store call (the call hangs and the run is dropped).
    Abort(StoreFault),
    /// A store call of the webhook fails.
    Webhook(StoreFault),
}

fn crash_config(budget: Duration) -> (BatcherConfig, Instant) {
    (
        BatcherConfig {
            provider_timeout: Duration::from_millis(500),
            safety_margin: Duration::from_millis(50),
            lease_margin: Duration::ZERO,
            ..BatcherConfig::default()
        },
        Instant::now() + budget,
    )
}

/// One crash point per test: the run (or webhook) dies there, recovery runs, the books balance.
macro_rules! crash_point {
    ($test:ident, $name:expr, $crash:expr) => {
        #[test]
        fn $test() {
            scenario(|rt| vec![rt.block_on(crash_scenario($name, $crash))]);
        }
    };
}

crash_point!(
    s4a_crash_after_claim_before_the_provider_call,
    "4a. crash after claim, before the provider call",
    Crash::Batcher(StoreFault::new("close_claiming", 1, When::Before))
);

crash_point!(
    s4b_crash_between_claim_chunks,
    "4b. crash between claim chunks",
    Crash::Batcher(StoreFault::new("claim", 2, When::Before))
);

crash_point!(
    s4c_crash_right_after_a_claim_was_written,
    "4c. crash right after a claim was written",
    Crash::Batcher(StoreFault::new("claim", 1, When::After))
);

crash_point!(
    s4d_provider_recorded_crash_before_our_write,
    "4d. provider recorded, crash before our write",
    Crash::Batcher(StoreFault::new("record_attempt", 1, When::Before))
);

crash_point!(
    s4e_crash_after_recording_the_provider_s_answer,
    "4e. crash after recording the provider's answer",
    Crash::Batcher(StoreFault::new("record_attempt", 1, When::After))
);

crash_point!(
    s4f_provider_times_out_after_recording,
    "4f. provider times out after recording",
    Crash::Provider(ProviderFault::TimeoutAfterRecord)
);

crash_point!(
    s4g_provider_5xx_after_recording,
    "4g. provider 5xx after recording",
    Crash::Provider(ProviderFault::ErrorAfterRecord)
);

crash_point!(
    s4h_process_killed_right_after_the_first_claim,
    "4h. process killed right after the first claim",
    Crash::Abort(StoreFault::new("claim", 1, When::HangAfter))
);

crash_point!(
    s4i_process_killed_between_claim_chunks,
    "4i. process killed between claim chunks",
    Crash::Abort(StoreFault::new("claim", 2, When::HangBefore))
);

crash_point!(
    s4j_process_killed_after_the_provider_recorded,
    "4j. process killed after the provider recorded",
    Crash::Abort(StoreFault::new("record_attempt", 1, When::HangBefore))
);

crash_point!(
    s4k_webhook_store_fails_mid_settlement,
    "4k. webhook: store fails mid-settlement",
    Crash::Webhook(StoreFault::new("write_transition", 1, When::Before))
);

crash_point!(
    s4l_webhook_settled_crash_before_answering,
    "4l. webhook: settled, crash before answering",
    Crash::Webhook(StoreFault::new("write_transition", 2, When::After))
);

crash_point!(
    s4m_webhook_crash_before_the_batch_completes,
    "4m. webhook: crash before the batch completes",
    Crash::Webhook(StoreFault::new("complete_if_final", 1, When::Before))
);

crash_point!(
    s4n_webhook_crash_on_the_batch_read,
    "4n. webhook: crash on the batch read",
    Crash::Webhook(StoreFault::new("batch_with_final_count", 3, When::Before))
);

async fn crash_scenario(name: &'static str, crash: Crash) -> Row {
    // A webhook closes a batch only when its read shows it is the last member: the crash before
    // closing needs callbacks answered item by item (at once, none sees itself last and the
    // batcher closes the batch).
    let one_by_one = matches!(&crash, Crash::Webhook(f) if f.method == "complete_if_final");
    let p = PayoutEnv::new(|c| {
        c.callback_delay = Duration::from_millis(20);
        if one_by_one {
            c.callback_spacing = Duration::from_millis(15);
        }
        c.hang = Duration::from_millis(800);
    })
    .await;
    let webhook_store = Arc::new(FaultyStore::new(
        p.env.store_for(WEBHOOK_FN),
        match &crash {
            Crash::Webhook(f) => vec![f.clone()],
            _ => vec![],
        },
    ));
    let processor = Arc::new(provider_webhook::App::from(WebhookProcessor::new(
        webhook_store.clone(),
        vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
        300,
    )));
    p.sandbox
        .set_webhook_url(&spawn_webhook_server(processor).await);
    let mut seeded = p
        .seed("crash-usd", "USD", "1.00", scale(130).max(100), ACCOUNTS[0])
        .await;
    seeded.extend(
        p.seed("crash-eur", "EUR", "2.00", scale(20), ACCOUNTS[1])
            .await,
    );

    // The crashing run.
    let provider = Arc::new(
        shared::payouts::provider::HttpProvider::new(
            &p.provider_url,
            API_KEY,
            Duration::from_millis(500),
        )
        .unwrap(),
    );
    let (config, deadline) = crash_config(Duration::from_millis(1500));
    let batch_faults = match &crash {
        Crash::Batcher(f) | Crash::Abort(f) => vec![f.clone()],
        _ => vec![],
    };
    if let Crash::Provider(f) = &crash {
        p.sandbox.inject(&[*f]);
    }
    let faulty = Arc::new(FaultyStore::new(p.env.store_for(BATCHER_FN), batch_faults));
    let batcher = Batcher::new(
        faulty.clone(),
        provider.clone(),
        p.env.currencies.clone(),
        config.clone(),
    );
    let first = match &crash {
        Crash::Abort(_) => tokio::time::timeout(Duration::from_millis(1400), batcher.run(deadline))
            .await
            .map_err(|_| "aborted".to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        _ => batcher.run(deadline).await.map_err(|e| e.to_string()),
    };
    // Leases of the crashed run expire at its deadline + the provider timeout.
    tokio::time::sleep_until(
        (deadline + config.provider_timeout + Duration::from_millis(100)).into(),
    )
    .await;

    // Recovery: ordinary runs until nothing is pending or open-but-unsent.
    let healthy = p.batcher(PayoutEnv::config());
    for _ in 0..6 {
        healthy
            .run(Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let open = p.env.store.open_batches().await.unwrap();
        let unsent = open.iter().any(|b| {
            matches!(
                b.as_ref().expect("readable batch").status,
                BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Rejecting
            )
        });
        let pending = !p
            .env
            .store
            .pending(&p.env.currencies.get("USD").unwrap().clone(), 1, None)
            .await
            .unwrap()
            .is_empty()
            || !p
                .env
                .store
                .pending(&p.env.currencies.get("EUR").unwrap().clone(), 1, None)
                .await
                .unwrap()
                .is_empty();
        if !unsent && !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait for the callbacks (the sandbox retries refused deliveries), then let a run complete
    // batches whose last event was processed by a crashed webhook.
    let waited = Instant::now();
    let mut stuck = seeded.len();
    while waited.elapsed() < Duration::from_secs(30) {
        stuck = 0;
        for w in &seeded {
            let w = p.reload(w).await;
            if w.status != WithdrawalStatus::Settled {
                stuck += 1;
            }
        }
        if stuck == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    healthy
        .run(Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let batches = p.env.store.all_batches().await.unwrap();
    let unfinished = batches
        .iter()
        .filter(|b| b.status != BatchStatus::Completed)
        .count();
    let paid = p.sandbox.payouts_by_reference();
    let unpaid = seeded
        .iter()
        .filter(|w| !paid.contains_key(&w.id.to_string()))
        .count();
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    let fired = [faulty.fired(), webhook_store.fired()].concat();
    let injected = match &crash {
        Crash::Batcher(_) | Crash::Webhook(_) => !fired.is_empty(),
        Crash::Provider(_) => p.sandbox.submit_calls() >= 2,
        Crash::Abort(_) => !fired.is_empty() && first.is_err(),
    };
    Row {
        scenario: name,
        operations: seeded.len(),
        failures: violations + stuck + unfinished + unpaid + usize::from(!injected),
        money_lost: lost,
        note: format!(
            "first run: {}; then {} settled, {} stuck, {} batches not completed, max payouts per withdrawal {}",
            match &first {
                Ok(_) => "finished".to_string(),
                Err(e) => format!("failed ({})", e.chars().take(40).collect::<String>()),
            },
            seeded.len() - stuck,
            stuck,
            unfinished,
            paid.values().max().copied().unwrap_or(0)
        ),
    }
}

// 5 ------------------------------------------------------------------------------------------
async fn store_faults() -> Row {
    let env = TestEnv::with_max_open(100).await;
    env.credit("faulty", "USD", "1000").await;
    let conflict =
        shared::store::StoreError::Failed(Failure::Unavailable("TransactionConflict".into()));
    let throttled = shared::store::StoreError::Failed(Failure::Unavailable(
        "ProvisionedThroughputExceededException".into(),
    ));
    let mut faults = Vec::new();
    // Every 3rd write fails before DynamoDB, every 3rd+1 after it was written; reads throttle too.
    for n in (1..=60).step_by(3) {
        faults.push(StoreFault {
            error: conflict.clone(),
            ..StoreFault::new("request_withdrawal", n, When::Before)
        });
        faults.push(StoreFault {
            error: throttled.clone(),
            ..StoreFault::new("request_withdrawal", n + 1, When::After)
        });
    }
    faults.push(StoreFault {
        error: throttled.clone(),
        ..StoreFault::new("withdrawal", 1, When::Before)
    });
    faults.push(StoreFault {
        error: throttled,
        ..StoreFault::new("balances", 1, When::Before)
    });
    let faulty = Arc::new(FaultyStore::new(env.store_for(REQUEST_FN), faults));
    let app = App::new(
        WithdrawalService::new(faulty.clone(), env.currencies.clone(), 100),
        shared::http::auth::Authenticator::ApiGatewayJwt,
    );
    let n = scale(30).min(60);
    let mut ops = 0;
    let mut failures = 0;
    let mut saw_503 = 0;
    for i in 0..n {
        let key = format!("fault-{i}");
        let mut outcome = None;
        for _ in 0..5 {
            ops += 1;
            let r: TestResponse = app
                .handle(
                    ApiRequest::new("POST", "/withdrawals")
                        .user("faulty")
                        .header("idempotency-key", &key)
                        .body(withdrawal_body("USD", "5.00"))
                        .build(),
                )
                .await
                .into();
            match r.status {
                503 => {
                    saw_503 += 1;
                    if r.error_code() != "try_again"
                        || r.body.contains("Transaction")
                        || r.body.contains("Provisioned")
                    {
                        failures += 1; // a clear code and no internals
                    }
                }
                201 => {
                    outcome = Some(r);
                    break;
                }
                _ => {
                    failures += 1;
                    break;
                }
            }
        }
        if outcome.is_none() {
            failures += 1;
        }
    }
    for path in ["/balances", "/withdrawals/wd_01JZZZZZZZZZZZZZZZZZZZZZZZ"] {
        ops += 1;
        let r: TestResponse = app
            .handle(ApiRequest::new("GET", path).user("faulty").build())
            .await
            .into();
        if r.status != 503 {
            failures += 1;
        }
        saw_503 += 1;
    }
    // Exactly one withdrawal per key, whatever failed on the way.
    let report = env.store.scan_all().await.unwrap();
    let count = report.withdrawals.len();
    failures += count.abs_diff(n);
    let (violations, lost) = audit(&env, None).await;
    Row {
        scenario: "5. DynamoDB faults (conflict, throttling, lost answers)",
        operations: ops,
        failures: failures + violations,
        money_lost: lost,
        note: format!("{saw_503} injected faults answered 503 try_again; {n} keys retried → {count} withdrawals, none half-written"),
    }
}

// 6 ------------------------------------------------------------------------------------------
async fn webhook_attacks() -> Row {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let n = scale(20);
    let seeded = p.seed("atk", "USD", "4.00", n, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let mut ws: Vec<Withdrawal> = Vec::new();
    for w in &seeded {
        ws.push(p.reload(w).await);
    }
    let mut ops = 0;
    let mut wrong = 0;
    for (i, w) in ws.iter().enumerate() {
        let (good, bad) = if i % 2 == 0 {
            ("payout.paid", "payout.failed")
        } else {
            ("payout.failed", "payout.paid")
        };
        let body = callback_body(&format!("evt-{i}"), good, w, Some("closed"));
        let contra = callback_body(&format!("evt-{i}-contra"), bad, w, Some("late"));
        let mut expect_401 = vec![
            webhook_request(
                &contra,
                Some(sign(&contra, "whsec_attacker_guess_000", now_secs())),
            ),
            webhook_request(&contra, Some(sign(&body, WEBHOOK_SECRET, now_secs()))), // signature of another body
            webhook_request(&contra, None),
            webhook_request(
                &contra,
                Some(sign(&contra, WEBHOOK_SECRET, now_secs() - 3600)),
            ), // replay outside tolerance
            webhook_request(
                &contra,
                Some(sign(&contra, WEBHOOK_SECRET, now_secs() + 3600)),
            ),
        ];
        for req in expect_401.drain(..) {
            ops += 1;
            if deliver(&app, req).await.status != 401 {
                wrong += 1;
            }
        }
        // The genuine event, delivered 5 times concurrently, then replayed inside the tolerance.
        let results = join_all((0..5).map(|_| {
            deliver(
                &app,
                webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
            )
        }))
        .await;
        ops += 5;
        wrong += results.iter().filter(|r| r.status != 200).count();
        wrong += results
            .iter()
            .filter(|r| r.json()["status"] == "applied")
            .count()
            .abs_diff(1);
        ops += 1;
        let replay = deliver(
            &app,
            webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs() - 200))),
        )
        .await;
        if replay.json()["status"] != "duplicate" {
            wrong += 1;
        }
        // A validly signed contradiction is acknowledged and never applied.
        ops += 1;
        let c = deliver(
            &app,
            webhook_request(&contra, Some(sign(&contra, WEBHOOK_SECRET, now_secs()))),
        )
        .await;
        if c.json()["status"] != "conflict" {
            wrong += 1;
        }
        ops += 2;
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
        if deliver(
            &app,
            webhook_request(&huge, Some(sign(&huge, WEBHOOK_SECRET, now_secs()))),
        )
        .await
        .status
            != 413
        {
            wrong += 1;
        }
        let junk = "{\"id\":1}";
        if deliver(
            &app,
            webhook_request(junk, Some(sign(junk, WEBHOOK_SECRET, now_secs()))),
        )
        .await
        .status
            != 400
        {
            wrong += 1;
        }
        let expected = if i % 2 == 0 {
            WithdrawalStatus::Settled
        } else {
            WithdrawalStatus::Rejected
        };
        if p.reload(w).await.status != expected {
            wrong += 1;
        }
    }
    let (violations, lost) = audit(&p.env, None).await;
    Row {
        scenario: "6. webhook attacks",
        operations: ops,
        failures: wrong + violations,
        money_lost: lost,
        note: format!("{n} withdrawals: forged, stale, future, unsigned, replayed, concurrent, contradicting, oversized and malformed deliveries → 0 wrong transitions"),
    }
}

// 7 ------------------------------------------------------------------------------------------
fn fuzzed_input(rt: &tokio::runtime::Runtime) -> Row {
    let (env, p) = rt.block_on(async {
        let p = PayoutEnv::new(|_| {}).await;
        // Room for every accepted request: no open-withdrawal cap, balances far above the sum
        // of the largest amounts the valid generator can draw.
        let env = TestEnv::with_max_open(u32::MAX).await;
        env.credit("fuzz", "USD", "10000000").await;
        env.credit("fuzz", "EUR", "10000000").await;
        env.credit("fuzz", "JPY", "1000000000").await;
        (env, p)
    });
    let webhook = p.webhook_app(&[WEBHOOK_SECRET]);
    let created = std::cell::Cell::new(0usize);
    let created_total = std::cell::Cell::new(Decimal::ZERO);
    let server_errors = std::cell::Cell::new(0usize);
    let mut cases = 0;

    let currency = prop_oneof![
        Just("USD".to_string()),
        Just("JPY".to_string()),
        Just("usd".to_string()),
        "[A-Z]{0,4}",
        any::<String>()
    ];
    let amount = prop_oneof![
        "-?[0-9]{0,7}(\\.[0-9]{0,4})?".prop_map(serde_json::Value::String),
        "[0-9]{1,6}(\\.[0-9]{1,3})?(e-?[0-9])?"
            .prop_map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null)),
        any::<String>().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<bool>().prop_map(|b| serde_json::json!(b)),
        Just(serde_json::Value::Null),
    ];
    let account = prop_oneof![
        Just(IBAN.to_string()),
        Just(ACCOUNTS[4].to_string()),
        "[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}",
        any::<String>()
    ];
    let structured = (
        currency,
        amount,
        account,
        proptest::option::of(("[a-z_]{1,8}", any::<String>())),
    )
        .prop_map(|(c, a, b, extra)| {
            let mut m = serde_json::json!({"currency": c, "amount": a, "bank_account": b});
            if let Some((k, v)) = extra {
                m[k] = serde_json::Value::String(v);
            }
            m.to_string()
        });
    let body = prop_oneof![3 => structured, 1 => any::<String>(), 1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned())];
    // Mostly valid keys (a create needs one); the rest are missing or arbitrary.
    let key = prop_oneof![
        2 => "[!-~]{1,64}".prop_map(Some),
        1 => proptest::option::of("[ -~]{0,300}"),
    ];
    // What real clients send: a configured currency, an amount within its bounds and scale, a
    // valid account and a key. Half the cases, so the accepting path is fuzzed as hard as the
    // refusing ones (the mixed generator above alone is accepted a few times in 10,000).
    let valid_amount = prop_oneof![
        (
            "[1-9][0-9]{0,3}(\\.[0-9]{1,2})?",
            prop_oneof![Just("USD"), Just("EUR")]
        ),
        ("[1-9][0-9]{2,5}", Just("JPY")),
    ];
    let valid = (
        valid_amount,
        proptest::sample::select(ACCOUNTS.to_vec()),
        "[!-~]{8,64}",
    )
        .prop_map(|((amount, currency), account, key)| {
            let body = serde_json::json!({"currency": currency, "amount": amount, "bank_account": account});
            (body.to_string(), Some(key))
        });
    let request = prop_oneof![1 => valid, 1 => (body, key)];

    let mut runner = TestRunner::new(Config {
        cases: scale(5000) as u32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request, |(body, key)| {
            let mut e = ApiRequest::new("POST", "/withdrawals")
                .user("fuzz")
                .body(body.clone());
            if let Some(k) = &key {
                e = e.header("idempotency-key", k);
            }
            let r = rt.block_on(env.call(e.build()));
            prop_assert!(r.status < 500, "{} for {body:?}: {}", r.status, r.body);
            if r.status == 201 && !r.replayed {
                created.set(created.get() + 1);
                created_total.set(
                    created_total.get()
                        + r.json()["amount"]
                            .as_str()
                            .unwrap()
                            .parse::<Decimal>()
                            .unwrap(),
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| {
            server_errors.set(server_errors.get() + 1);
            eprintln!("request fuzz: {e}");
        });
    cases += scale(5000);
    // A realistic mix reaches the accepting path at least a third of the time.
    let accepted_share = created.get() as f64 / scale(5000) as f64;
    let too_few_accepted = usize::from(accepted_share < 1.0 / 3.0);

    let query = (
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
    );
    let mut runner = TestRunner::new(Config {
        cases: scale(2000) as u32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&query, |(status, limit, cursor)| {
            let mut e = ApiRequest::new("GET", "/withdrawals").user("fuzz");
            let mut params = serde_json::Map::new();
            for (k, v) in [("status", status), ("limit", limit), ("cursor", cursor)] {
                if let Some(v) = v {
                    params.insert(k.into(), serde_json::Value::String(v));
                }
            }
            e = e.query(params);
            let r = rt.block_on(env.call(e.build()));
            prop_assert!(
                r.status == 200 || r.status == 400,
                "{}: {}",
                r.status,
                r.body
            );
            Ok(())
        })
        .unwrap_or_else(|e| {
            server_errors.set(server_errors.get() + 1);
            eprintln!("query fuzz: {e}");
        });
    cases += scale(2000);

    let event_body = prop_oneof![
        any::<String>(),
        ("[a-z._]{0,20}", any::<String>(), "(bt|wd)_[0-9A-Z]{0,30}", "(bt|wd)_[0-9A-Z]{0,30}").prop_map(|(t, id, b, r)| {
            serde_json::json!({"id": id, "type": t, "data": {"batch_id": b, "reference": r}}).to_string()
        }),
        (prop_oneof![Just("payout.paid"), Just("payout.failed"), Just("payout.returned")], "[ -~]{1,40}").prop_map(|(t, id)| {
            serde_json::json!({"id": id, "type": t, "data": {"batch_id": shared::domain::BatchId::new().to_string(), "reference": shared::domain::WithdrawalId::new().to_string()}}).to_string()
        }),
    ];
    let signature =
        prop_oneof![3 => Just(None), 1 => proptest::option::of("[ -~]{0,120}").prop_map(Some)];
    let mut runner = TestRunner::new(Config {
        cases: scale(3000) as u32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(event_body, signature), |(body, sig)| {
            let header = match sig {
                None => Some(sign(&body, WEBHOOK_SECRET, now_secs())),
                Some(s) => s,
            };
            let r = rt.block_on(deliver(&webhook, webhook_request(&body, header)));
            prop_assert!(r.status < 500, "{}: {}", r.status, r.body);
            if r.status == 200 {
                prop_assert!(
                    r.json()["status"] == "unknown_withdrawal" || r.json()["status"] == "duplicate",
                    "{}",
                    r.body
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| {
            server_errors.set(server_errors.get() + 1);
            eprintln!("webhook fuzz: {e}");
        });
    cases += scale(3000);

    // Rejected input changed nothing: the table holds exactly the accepted withdrawals.
    let (failures, lost) = rt.block_on(async {
        let report = env.store.scan_all().await.unwrap();
        let mut f = report.withdrawals.len().abs_diff(created.get());
        let locked: Decimal = report.balances.iter().map(|(_, b)| b.locked).sum();
        if locked != created_total.get() {
            f += 1;
        }
        let (v, lost) = audit(&env, None).await;
        (f + v, lost)
    });
    Row {
        scenario: "7. fuzzed input (proptest)",
        operations: cases,
        failures: failures + server_errors.get() + too_few_accepted,
        money_lost: lost,
        note: format!(
            "request bodies and keys, query strings, webhook bodies and signatures: 0 panics, 0 5xx; {} of {} requests accepted ({:.0}%), everything else changed nothing",
            created.get(),
            scale(5000),
            accepted_share * 100.0
        ),
    }
}

/// Withdrawals the provider paid that are REJECTED or CANCELLED here (paid and returned), and
/// their value.
async fn paid_and_returned(p: &PayoutEnv) -> (usize, Decimal) {
    let paid = p.sandbox.payouts_by_reference();
    let mut n = 0;
    let mut value = Decimal::new(0, 2);
    for w in p.env.store.scan_all().await.unwrap().withdrawals {
        if paid.contains_key(&w.id.to_string())
            && matches!(
                w.status,
                WithdrawalStatus::Rejected | WithdrawalStatus::Cancelled
            )
        {
            n += 1;
            value += w.amount.value();
        }
    }
    (n, value)
}

async fn racing_operators() -> Row {
    let p = PayoutEnv::new(|_| {}).await;
    let provider = p.provider();
    let rounds = scale(20);
    let (mut rejects, mut retries, mut both) = (0, 0, 0);
    for round in 0..rounds {
        let (seeded, batch) = p
            .flagged_unrecorded(&format!("race{round}"), "40.00", 2)
            .await;
        let (rejected, retried) = tokio::join!(
            shared::operator::operations::reject_withdrawal(
                &*p.env.store,
                &provider,
                seeded[0].id,
                "operator A",
                Duration::ZERO
            ),
            async {
                // Spread the start so either side can win: the reject asks the provider first.
                tokio::time::sleep(Duration::from_millis((round % 6) as u64 * 8)).await;
                shared::operator::operations::retry_batch(&*p.env.store, batch).await
            },
        );
        rejects += rejected.is_ok() as usize;
        retries += retried.is_ok() as usize;
        both += (rejected.is_ok() && retried.is_ok()) as usize;
        p.run(PayoutEnv::config()).await;
    }
    p.settle_from_status().await;
    let (returned, value) = paid_and_returned(&p).await;
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "8. racing operators (reject vs retry-batch)",
        operations: rounds * 2,
        failures: both + returned + violations,
        money_lost: lost + value,
        note: format!(
            "{rounds} flagged batches, a reject and a retry-batch at once on each: {rejects} rejects and {retries} retries won, {both} both; {returned} withdrawals paid and returned"
        ),
    }
}

async fn forgetful_provider() -> Row {
    // Keys forgotten at once: any re-send of a recorded batch would be paid again.
    let p = PayoutEnv::new(|c| c.memory.idempotency_key_ttl = Some(Duration::ZERO)).await;
    let mut seeded = Vec::new();
    let faults = [
        ProviderFault::ErrorAfterRecord,
        ProviderFault::TimeoutAfterRecord,
        ProviderFault::ErrorBeforeRecord,
        ProviderFault::TimeoutBeforeRecord,
    ];
    for (i, fault) in faults.iter().enumerate() {
        seeded.extend(
            p.seed(&format!("forget{i}"), "USD", "3.00", scale(25), ACCOUNTS[0])
                .await,
        );
        p.sandbox.inject(&[*fault]);
        p.run(PayoutEnv::config()).await;
    }
    // Every open batch resolved first, so the next fault hits the next batch.
    for _ in 0..2 {
        p.run(PayoutEnv::config()).await;
    }
    // A flagged batch the provider recorded, retried by an operator long after.
    let flagged = p
        .seed("forget-op", "USD", "3.00", scale(25), ACCOUNTS[0])
        .await;
    p.sandbox.inject(&[ProviderFault::ErrorAfterRecord]);
    p.run(BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let batch = p.reload(&flagged[0]).await.batch_id.unwrap();
    shared::operator::operations::retry_batch(&*p.env.store, batch)
        .await
        .unwrap();
    seeded.extend(flagged);
    for _ in 0..2 {
        p.run(PayoutEnv::config()).await;
    }
    p.settle_from_status().await;
    let paid = p.sandbox.payouts_by_reference();
    let mut failures = 0;
    for w in &seeded {
        let w = p.reload(w).await;
        if paid.get(&w.id.to_string()) != Some(&1) || w.status != WithdrawalStatus::Settled {
            failures += 1;
        }
    }
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "9. provider forgets its idempotency keys",
        operations: seeded.len(),
        failures: failures + violations,
        money_lost: lost,
        note: format!(
            "keys kept 0 s; timeouts and 5xx before and after recording, and an operator retry of a recorded batch: each paid exactly once and settled, {} re-sends under an expired key",
            p.sandbox.expired_keys()
        ),
    }
}

/// An operator's reject of every seeded withdrawal (no quiet period), then a retry-batch of
/// their batch and a run that asks the provider: how many rejects were refused.
async fn reject_all_then_retry(
    p: &PayoutEnv,
    seeded: &[shared::domain::Withdrawal],
    stale: BatcherConfig,
) -> usize {
    let provider = p.provider();
    let mut refused = 0;
    for w in seeded {
        let r = shared::operator::operations::reject_withdrawal(
            &*p.env.store,
            &provider,
            w.id,
            "lost?",
            Duration::ZERO,
        )
        .await;
        refused += r.is_err() as usize;
    }
    let batch = p.reload(&seeded[0]).await.batch_id.unwrap();
    shared::operator::operations::retry_batch(&*p.env.store, batch)
        .await
        .unwrap();
    p.run(stale).await;
    refused
}

async fn provider_loses_batches() -> Row {
    let p = PayoutEnv::new(|c| c.memory.lose_next_batches = 1).await;
    let seeded = p.seed("lost", "USD", "5.00", scale(50), ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    let escalated = p.run(stale.clone()).await.currencies["USD"].escalated;
    let refused = reject_all_then_retry(&p, &seeded, stale).await;
    let (returned, value) = paid_and_returned(&p).await;
    let still_locked = p
        .env
        .store
        .scan_all()
        .await
        .unwrap()
        .withdrawals
        .iter()
        .filter(|w| w.status == WithdrawalStatus::Submitted)
        .count();
    let resent = p.sandbox.submit_calls() - 1;
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "10. provider loses an accepted batch",
        operations: seeded.len(),
        failures: returned + resent as usize + violations + (escalated != 1) as usize,
        money_lost: lost + value,
        note: format!(
            "paid, then its status answers 404: escalated to an operator ({escalated}), {refused} of {} operator rejects refused, retry-batch looked it up again and sent nothing ({resent} re-sends); {still_locked} stay locked until the provider answers",
            seeded.len()
        ),
    }
}

/// The provider records a batch while its answer is lost (the batch is flagged without its id),
/// a stale check finds it with its items pending, then the provider loses it and pays the items
/// all the same. Its later 404 contradicts the found answer, which was kept: every operator
/// reject is refused and a retry-batch looks it up again, never sends.
async fn provider_found_then_lost() -> Row {
    let p = PayoutEnv::new(|c| {
        c.memory.pending_next_batches = 1;
        c.memory.lose_next_found = 1;
    })
    .await;
    let seeded = p.seed("found", "USD", "5.00", scale(50), ACCOUNTS[0]).await;
    p.sandbox
        .inject(&[sandbox_provider::Fault::TimeoutAfterRecord]);
    p.run(BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    p.run(stale.clone()).await;
    let refused = reject_all_then_retry(&p, &seeded, stale).await;
    let (returned, value) = paid_and_returned(&p).await;
    let paid_there = p.sandbox.payouts_by_reference().len();
    let resent = p.sandbox.submit_calls() - 1;
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "11. provider finds a flagged batch, then loses it",
        operations: seeded.len(),
        failures: returned + resent as usize + violations + (refused != seeded.len()) as usize,
        money_lost: lost + value,
        note: format!(
            "recorded while its answer was lost, found once by the stale check (items pending), then lost and paid ({paid_there} paid there): {refused} of {} operator rejects refused, {resent} re-sends; they stay locked until the provider answers",
            seeded.len()
        ),
    }
}
