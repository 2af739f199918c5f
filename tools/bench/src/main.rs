//! `cargo run --release -p bench` (through `./scripts/bench.sh`, which starts DynamoDB Local):
//! measures DynamoDB round trips per lifecycle step, handler overhead against the bare SDK call,
//! provider calls and batcher throughput for a large backlog, and the release binaries. Prints
//! one markdown report. Timings on a shared machine are noisy: ratios are measured side by side
//! in one run, latencies are medians/percentiles over many samples.

mod events;

use integration_tests::{
    counting_client, credit_record, fresh_table, register_beneficiary, seed_pending,
    withdrawal_body, ApiRequest, BENEFICIARY, IBAN,
};
use lambda_http::Body;
use sandbox_provider::{Sandbox, SandboxConfig};
use shared::domain::{
    Amount, BeneficiaryId, Currencies, Currency, Destination, IdempotencyKey, UserId, Withdrawal,
};
use shared::http::auth::Authenticator;
use shared::payouts::batcher::{Batcher, BatcherConfig};
use shared::payouts::provider::HttpProvider;
use shared::payouts::signature::WebhookSecret;
use shared::payouts::webhook::WebhookProcessor;
use shared::requests::withdrawals::{WithdrawalService, WithdrawalView};
use shared::store::{BatchStore, CreditRecord, DynamoStore, IdempotencyRecord, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_bench_0123456789abcdef";

/// Counts DynamoDB requests per operation (every HTTP attempt, retries included): the same
/// interceptor that records the functions' calls for the IAM check.
type Counter = shared::platform::calls::CallRecorder;

/// A fresh table, its client counting requests. The helpers (tables, events, credits, seeding)
/// are the integration tests' own (the `integration_tests` crate, `tests/src/`).
struct Env {
    store: Arc<DynamoStore>,
    counter: Counter,
    currencies: Currencies,
}

async fn env() -> Env {
    env_with(false).await
}

/// `stream` as deployed (only the events section reads it: on DynamoDB Local a stream slows
/// every write, which would skew the other sections against earlier runs).
async fn env_with(stream: bool) -> Env {
    let counter = Counter::counting();
    let currencies = Currencies::default();
    let store = fresh_table(counting_client(&counter), &currencies, stream).await;
    counter.take_counts();
    Env {
        store,
        counter,
        currencies,
    }
}

/// A user's request as API Gateway delivers it; every create carries a key of its own (keys
/// are required), so each one is a new withdrawal.
fn event(method: &str, path: &str, user: &str, body: Option<String>) -> lambda_http::Request {
    let mut e = ApiRequest::new(method, path).user(user);
    if let Some(b) = body {
        e = e.body(b);
    }
    if method == "POST" {
        e = e.fresh_key();
    }
    e.build()
}

/// A credit under a reference of its own (each call funds anew).
fn credit(user: &str, currency: &Currency, amount: &str) -> CreditRecord {
    credit_record(
        currency,
        user,
        amount,
        &format!("bench-{}", ulid::Ulid::new()),
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ops(counts: &BTreeMap<String, u64>) -> (u64, u64) {
    (
        counts.values().sum(),
        counts.get("TransactWriteItems").copied().unwrap_or(0),
    )
}

/// `BENCH_ONLY=events` or `BENCH_ONLY=batching` runs that section alone.
#[tokio::main]
async fn main() {
    let endpoint =
        std::env::var("DYNAMODB_ENDPOINT").expect("DYNAMODB_ENDPOINT (use ./scripts/bench.sh)");
    let n: usize = env_number("BENCH_N", 10_000);
    let samples: usize = env_number("BENCH_SAMPLES", 400);
    let only = std::env::var("BENCH_ONLY").ok();
    if only.as_deref() == Some("events") {
        let moto = std::env::var("MOTO_ENDPOINT").expect("MOTO_ENDPOINT");
        let (a, b) = (env_with(true).await, env_with(true).await);
        let tables = [(a.store, a.currencies), (b.store, b.currencies)];
        println!("{}", events::report(tables, &endpoint, &moto, 60).await);
        return;
    }
    let only_batching = only.as_deref() == Some("batching");
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let mut out = format!(
        "Benchmark run {date} on {} cores, {} GiB, DynamoDB Local 1.25 (in memory), sandbox provider in-process over HTTP.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_gib()
    );
    if !only_batching {
        out.push_str(&round_trips().await);
        out.push_str(&handler_overhead(samples).await);
    }
    out.push_str(&batching(n).await);
    if !only_batching {
        out.push_str(&events_out(&endpoint).await);
        out.push_str(&binaries().await);
    }
    println!("{out}");
    let _ = std::fs::write("target/bench-report.md", &out);
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A sandbox provider in this process, and the HTTP client the batcher talks to it with.
async fn sandbox_provider() -> (Sandbox, Arc<HttpProvider>) {
    let sandbox = Sandbox::new(SandboxConfig::new(
        "bench-key",
        WebhookSecret::new(SECRET).unwrap(),
    ));
    let addr = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let provider = HttpProvider::new(
        &format!("http://{addr}"),
        "bench-key",
        Duration::from_secs(10),
    );
    (sandbox, Arc::new(provider.unwrap()))
}

/// One row of the round-trips table: the step, its requests, of which transactions, a note.
type Row = (String, u64, u64, String);

/// 1. DynamoDB round trips per lifecycle step.
async fn round_trips() -> String {
    let e = env().await;
    let (_sandbox, provider) = sandbox_provider().await;
    let app = withdrawal_request::App::new(
        WithdrawalService::new(e.store.clone(), e.currencies.clone(), u32::MAX),
        Authenticator::ApiGatewayJwt,
    );
    let usd = e.currencies.get("USD").unwrap().clone();
    e.store.credit(&credit("rt", &usd, "100000")).await.unwrap();
    register_beneficiary(e.store.as_ref(), "rt", IBAN, BENEFICIARY).await;
    e.counter.take_counts();
    let mut rows: Vec<Row> = Vec::new();
    request_steps(&e, &app, &mut rows).await;
    claim_steps(&e, provider, &mut rows).await;
    callback_steps(&e, &mut rows).await;
    let mut out = String::new();
    out.push_str("### DynamoDB requests per lifecycle step\n\n| step | requests | of which transactions | target / note |\n|---|---:|---:|---|\n");
    for (step, req, tx, note) in &rows {
        if *req == 0 {
            out.push_str(&format!("| {step} | | | {note} |\n"));
        } else {
            out.push_str(&format!("| {step} | {req} | {tx} | {note} |\n"));
        }
    }
    out.push_str("\nWebhook steps read the batch's partition once (the member entry carries owner, amount and limit day; the counters say how many members are final) and write one transaction for the state the event expects; the member that reads itself last also closes the batch.\n\n");

    out
}

/// A request, its keyed replay and a cancel.
async fn request_steps(e: &Env, app: &withdrawal_request::App, rows: &mut Vec<Row>) {
    let r = app
        .handle(event(
            "POST",
            "/withdrawals",
            "rt",
            Some(withdrawal_body("USD", "10")),
        ))
        .await;
    assert_eq!(r.status(), 201);
    let (req, tx) = ops(&e.counter.take_counts());
    rows.push((
        "request (POST /withdrawals)".into(),
        req,
        tx,
        "1 round trip".into(),
    ));
    // A client's retry with its Idempotency-Key: answered from the cancellation reason.
    let keyed = || {
        let mut req = event(
            "POST",
            "/withdrawals",
            "rt",
            Some(withdrawal_body("USD", "10")),
        );
        req.headers_mut().insert(
            "idempotency-key",
            lambda_http::http::HeaderValue::from_static("bench-replay"),
        );
        req
    };
    assert_eq!(app.handle(keyed()).await.status(), 201);
    e.counter.take_counts();
    let replay = app.handle(keyed()).await;
    assert_eq!(replay.status(), 201);
    assert!(replay.headers().contains_key("idempotent-replayed"));
    let (req_replay, tx_replay) = ops(&e.counter.take_counts());
    rows.push((
        "replay (the same Idempotency-Key again)".into(),
        req_replay,
        tx_replay,
        "1 round trip".into(),
    ));
    let id = match r.body() {
        Body::Text(t) => serde_json::from_str::<serde_json::Value>(t).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string(),
        _ => unreachable!(),
    };
    let r = app
        .handle(event("DELETE", &format!("/withdrawals/{id}"), "rt", None))
        .await;
    assert_eq!(r.status(), 200);
    let (req, tx) = ops(&e.counter.take_counts());
    rows.push((
        "cancel (read + 1 transaction)".into(),
        req,
        tx,
        "1 transaction".into(),
    ));
}

/// Claim: 500 pending, one run.
async fn claim_steps(e: &Env, provider: Arc<HttpProvider>, rows: &mut Vec<Row>) {
    seed(&e.store, &e.currencies, "USD", 500, "claim").await;
    e.counter.take_counts();
    let batcher = Batcher::new(
        e.store.clone(),
        provider,
        e.currencies.clone(),
        BatcherConfig::default(),
    );
    batcher
        .run(Instant::now() + Duration::from_secs(120))
        .await
        .unwrap();
    let (req, tx) = ops(&e.counter.take_counts());
    rows.push((
        format!("claim, per withdrawal (batch of 500: {tx} claim transactions)"),
        0,
        0,
        format!(
            "**{:.4}** transactions/withdrawal (target ≤ 0.02)",
            tx as f64 / 500.0
        ),
    ));
    rows.push((
    format!("whole batcher run, per withdrawal ({req} requests: index pages of 3 currencies × shards, claims, batch bookkeeping, no provider)"),
    0,
    0,
    format!("{:.4} requests/withdrawal", req as f64 / 500.0),
));
}

/// Settle / reject / return through the webhook processor.
async fn callback_steps(e: &Env, rows: &mut Vec<Row>) {
    let processor = WebhookProcessor::new(
        e.store.clone(),
        vec![WebhookSecret::new(SECRET).unwrap()],
        300,
    );
    // The 500-member batch (the replay's withdrawal went into a batch of its own).
    let batch = e
        .store
        .all_batches()
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|b| b.members.len())
        .unwrap();
    let members = e.store.members(&batch).await.unwrap();
    e.counter.take_counts();
    let steps = [
        (&members[0], "payout.paid", "settle (payout.paid)"),
        (&members[1], "payout.failed", "reject (payout.failed)"),
        (&members[0], "payout.returned", "return (payout.returned)"),
    ];
    for (i, (w, kind, label)) in steps.into_iter().enumerate() {
        let b = callback_body(&format!("evt-{i}"), kind, w);
        let now = chrono::Utc::now().timestamp();
        let sig = WebhookSecret::new(SECRET).unwrap().sign(now, b.as_bytes());
        processor
            .handle(Some(&sig), b.as_bytes(), now)
            .await
            .unwrap();
        let (req, tx) = ops(&e.counter.take_counts());
        rows.push((
            label.to_string(),
            req,
            tx,
            "2 requests (target): 1 read + 1 transaction".into(),
        ));
    }
}

/// 2. Handler overhead against the bare SDK call of the same items, interleaved.
async fn handler_overhead(samples: usize) -> String {
    let e2 = env().await;
    let app2 = withdrawal_request::App::new(
        WithdrawalService::new(e2.store.clone(), e2.currencies.clone(), u32::MAX),
        Authenticator::ApiGatewayJwt,
    );
    let usd = e2.currencies.get("USD").unwrap().clone();
    for u in ["h", "r"] {
        e2.store.credit(&credit(u, &usd, "1000000")).await.unwrap();
        register_beneficiary(e2.store.as_ref(), u, IBAN, BENEFICIARY).await;
    }
    let (mut handler_ms, mut raw_ms) = (Vec::new(), Vec::new());
    for i in 0..samples + 20 {
        let t = Instant::now();
        let r = app2
            .handle(event(
                "POST",
                "/withdrawals",
                "h",
                Some(withdrawal_body("USD", "1.00")),
            ))
            .await;
        let h = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(r.status(), 201);
        let w = Withdrawal::new(
            UserId::parse("r").unwrap(),
            usd.clone(),
            Amount::parse("1.00", &usd).unwrap(),
            Destination::beneficiary(BeneficiaryId::parse(BENEFICIARY).unwrap()),
            chrono::Utc::now(),
        );
        // The handler's items exactly: the keyed path records the key and the first response.
        let record = IdempotencyRecord {
            user_id: w.user_id.clone(),
            key: IdempotencyKey::parse(&format!("bench-{}", ulid::Ulid::new())).unwrap(),
            fingerprint: "0".repeat(64),
            resource: shared::store::Resource::Withdrawal(w.id),
            status_code: 201,
            response_body: serde_json::to_string(&WithdrawalView::from(&w)).unwrap(),
            created_at: w.created_at,
        };
        let items = e2.store.request_items(&w, Some(&record), u32::MAX).unwrap();
        let t = Instant::now();
        e2.store
            .client()
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .unwrap();
        let r = t.elapsed().as_secs_f64() * 1000.0;
        if i >= 20 {
            handler_ms.push(h);
            raw_ms.push(r);
        }
    }
    handler_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    raw_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
    "### withdrawal-request handler vs the bare SDK `TransactWriteItems` of the same items ({samples} interleaved pairs)\n\n| | p50 ms | p99 ms |\n|---|---:|---:|\n| handler (HTTP API v2 event → response) | {:.2} | {:.2} |\n| bare SDK call | {:.2} | {:.2} |\n| ratio | **{:.3}** (target ≤ 1.15) | {:.3} |\n\n",
    pct(&handler_ms, 0.5), pct(&handler_ms, 0.99), pct(&raw_ms, 0.5), pct(&raw_ms, 0.99),
    pct(&handler_ms, 0.5) / pct(&raw_ms, 0.5), pct(&handler_ms, 0.99) / pct(&raw_ms, 0.99)
)
}

/// 3 + 4. Provider calls and batcher throughput for a large backlog.
async fn batching(n: usize) -> String {
    let mut out = String::new();
    let e3 = env().await;
    let (sandbox3, provider3) = sandbox_provider().await;
    let per = [
        ("USD", n * 4 / 10),
        ("EUR", n * 35 / 100),
        ("JPY", n - n * 4 / 10 - n * 35 / 100),
    ];
    let seeding = Instant::now();
    for (ccy, count) in per {
        seed(
            &e3.store,
            &e3.currencies,
            ccy,
            count,
            &format!("bulk-{ccy}"),
        )
        .await;
    }
    let seed_secs = seeding.elapsed().as_secs_f64();
    // Raw before and after the batcher's run, averaged: DynamoDB Local warms up (and slows as
    // tables pile up) over a bench run, so neither side gets the better half alone.
    let raw_before = raw_claim_secs(per).await;
    e3.counter.take_counts();
    let batcher3 = Batcher::new(
        e3.store.clone(),
        provider3,
        e3.currencies.clone(),
        BatcherConfig::default(),
    );
    let t = Instant::now();
    let summary = batcher3
        .run(Instant::now() + Duration::from_secs(900))
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let claimed: u32 = summary.currencies.values().map(|c| c.claimed).sum();
    let calls = sandbox3.submit_calls();
    let (req, tx) = ops(&e3.counter.take_counts());
    let paid = sandbox3.payouts_by_reference();
    assert_eq!(claimed as usize, n);
    assert!(paid.values().all(|c| *c == 1) && paid.len() == n);
    out.push_str(&format!(
        "### Batching {n} pending withdrawals in 3 currencies (one run, batch size 500)\n\n| | value |\n|---|---:|\n| provider calls (ours) | {calls} |\n| provider calls (unbatched baseline: one per withdrawal) | {n} |\n| fewer calls | **{:.0}×** (target ≥ 500× with max batch 500 → N/500 calls) |\n| run time to claim and submit all | {secs:.1} s |\n| throughput | **{:.0} withdrawals/s** |\n| DynamoDB requests in the run | {req} ({tx} transactions) = {:.4}/withdrawal |\n| fits one 120 s Lambda invocation | {} |\n| (seeding {n} requests took {seed_secs:.1} s at 8 in flight) | |\n",
        n as f64 / calls as f64,
        n as f64 / secs,
        req as f64 / n as f64,
        if secs < 100.0 { "yes" } else { "no — continues in the next run" },
    ));

    let raw_after = raw_claim_secs(per).await;
    let raw_secs = (raw_before + raw_after) / 2.0;
    out.push_str(&format!(
        "| the same claim transactions, bare SDK calls (one in flight per currency, as the batcher; mean of a run before and one after: {raw_before:.1} s, {raw_after:.1} s) | {raw_secs:.1} s = {:.0} withdrawals/s |\n| batcher ÷ raw | **{:.2}** (target ≥ 0.8) |\n\n",
        n as f64 / raw_secs,
        raw_secs / secs,
    ));

    out
}

/// 5. Events out, when moto's server is there.
async fn events_out(endpoint: &str) -> String {
    match std::env::var("MOTO_ENDPOINT") {
    Ok(moto) => {
        let (a, b) = (env_with(true).await, env_with(true).await);
        let tables = [(a.store, a.currencies), (b.store, b.currencies)];
        events::report(tables, endpoint, &moto, 200).await
    }
    Err(_) => "### Events out\n\nskipped: no `MOTO_ENDPOINT` (scripts/bench.sh starts moto's server)\n\n".into(),
}
}

fn callback_body(id: &str, kind: &str, w: &Withdrawal) -> String {
    serde_json::json!({"id": id, "type": kind, "data": {
        "batch_id": w.batch_id.unwrap().to_string(), "reference": w.id.to_string(),
        "amount": w.amount.to_string(), "currency": w.currency.code().as_str(),
        "provider_reference": "po_bench", "reason": "bench"}})
    .to_string()
}

/// `n` pending withdrawals of the currency's minimum, by users of 100 each.
async fn seed(
    store: &Arc<DynamoStore>,
    currencies: &Currencies,
    ccy: &str,
    n: usize,
    prefix: &str,
) {
    let c = currencies.get(ccy).unwrap();
    let amount = Amount::new(c.min_withdrawal(), c).unwrap().to_string();
    seed_pending(store, currencies, prefix, ccy, &amount, n, 100, IBAN).await;
}

/// Seconds the batcher's own claim transactions take bare: a table seeded alike, the same
/// candidates (read untimed), the same items and request token through the SDK, chunk by chunk
/// as the batcher sends them: one in flight per currency, the currencies side by side. What the
/// batcher adds on top (index reads, batch bookkeeping, provider calls) is what batcher ÷ raw
/// measures.
async fn raw_claim_secs(per: [(&str, usize); 3]) -> f64 {
    let e4 = env().await;
    for (ccy, count) in per {
        seed(&e4.store, &e4.currencies, ccy, count, &format!("raw-{ccy}")).await;
    }
    let max_batch = BatcherConfig::default().max_batch_size;
    let mut candidates = Vec::new();
    for (ccy, count) in per {
        let currency = e4.currencies.get(ccy).unwrap().clone();
        let mut pending = e4.store.pending(&currency, count, None).await.unwrap();
        assert_eq!(pending.len(), count);
        // Their accounts, as the batcher resolves them before claiming (untimed here too).
        let keys: Vec<_> = pending
            .iter()
            .filter_map(|w| w.destination.unresolved().map(|id| (w.user_id.clone(), id)))
            .collect();
        let accounts = e4.store.beneficiary_accounts(&keys).await.unwrap();
        for w in &mut pending {
            if let Some(id) = w.destination.unresolved() {
                w.destination = shared::domain::Destination::Beneficiary {
                    id,
                    account: Some(accounts[&(w.user_id.clone(), id)].clone()),
                };
            }
        }
        candidates.push((currency, pending));
    }
    let store4 = &e4.store;
    let t = Instant::now();
    futures::future::join_all(candidates.iter().map(|(currency, pending)| async move {
        for batch_members in pending.chunks(max_batch) {
            let batch = shared::domain::Batch::claiming(currency.clone(), "raw", i64::MAX);
            for (i, chunk) in batch_members.chunks(store4.claim_chunk()).enumerate() {
                let items = store4
                    .claim_transaction_items(&batch, "raw", chunk, i == 0)
                    .unwrap();
                // With a request token, as every claim is sent (it makes a retry idempotent).
                store4
                    .client()
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .client_request_token(ulid::Ulid::new().to_string())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }))
    .await;
    t.elapsed().as_secs_f64()
}

fn mem_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| (kb as f64 / 1024.0 / 1024.0).round() as u64)
        .unwrap_or(0)
}

/// Sizes of the arm64 bootstraps (from `cargo lambda build --release --arm64`) and the time from
/// process start to the first "next invocation" request against a stub Runtime API, median of
/// 20 starts of the host's release build of the same code.
async fn binaries() -> String {
    let deployed = deployed_env().await;
    let mut s = String::from("### Release binaries\n\n| function | arm64 bootstrap | start → ready for the first event (median of 20, host build) |\n|---|---:|---:|\n");
    for f in [
        "withdrawal-request",
        "payout-batcher",
        "provider-webhook",
        "event-publisher",
    ] {
        let size = std::fs::metadata(format!("target/lambda/{f}/bootstrap"))
            .map(|m| format!("{:.2} MB", m.len() as f64 / 1_000_000.0))
            .unwrap_or_else(|_| "not built (`cargo lambda build --release --arm64`)".into());
        let start = match startup_median(f, &deployed).await {
            Ok(ms) => format!("{ms:.1} ms"),
            Err(e) => e,
        };
        s.push_str(&format!("| {f} | {size} | {start} |\n"));
    }
    s.push_str("\nTarget: bootstrap ≤ 8 MB.\n");
    s
}

/// The environment the template gives the functions, pointing at the emulators: a table of its
/// own (the request function records its shard count there at cold start), the two secrets in
/// moto's Secrets Manager, a bus. Without it the functions' cold starts fail before they ask
/// for an event.
async fn deployed_env() -> Vec<(&'static str, String)> {
    let table = fresh_table(
        counting_client(&Counter::counting()),
        &Currencies::default(),
        false,
    )
    .await;
    let mut vars = vec![
        ("TABLE_NAME", table.table_name().to_string()),
        ("AWS_ENDPOINT_URL_DYNAMODB", integration_tests::endpoint()),
        (
            "INTERNAL_CALLERS",
            integration_tests::DEPOSIT_ROLE.to_string(),
        ),
        ("PROVIDER_URL", "http://127.0.0.1:9".to_string()),
        ("EVENT_BUS_NAME", "bench".to_string()),
    ];
    // scripts/bench.sh points SECRETS_ENDPOINT (the tests' helpers read it) at moto too.
    if let Ok(moto) = std::env::var("SECRETS_ENDPOINT") {
        let suffix = ulid::Ulid::new();
        let api_key =
            integration_tests::put_secret(&format!("bench-api-key-{suffix}"), "bench-key").await;
        let webhook =
            integration_tests::put_secret(&format!("bench-webhook-{suffix}"), SECRET).await;
        vars.extend([
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.clone()),
            ("AWS_ENDPOINT_URL_EVENTBRIDGE", moto),
            ("PROVIDER_API_KEY_SECRET_ARN", api_key),
            ("PROVIDER_WEBHOOK_SECRETS_ARN", webhook),
        ]);
    }
    vars
}

async fn startup_median(function: &str, env: &[(&str, String)]) -> Result<f64, String> {
    let exe = format!("target/release/{function}");
    if !std::path::Path::new(&exe).exists() {
        return Err("not built (`cargo build --release`)".into());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let router = axum::Router::new().route(
        "/2018-06-01/runtime/invocation/next",
        axum::routing::get(move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                futures::future::pending::<()>().await;
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let api = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&exe)
            .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", function)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("could not start: {e}"))?;
        let Ok(Some(ready)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else {
            return Err(match child.try_wait() {
                Ok(Some(status)) => format!("cold start failed ({status})"),
                _ => "no request for an event within 10 s".into(),
            });
        };
        times.push((ready - started).as_secs_f64() * 1000.0);
        let _ = child.kill().await;
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(times[times.len() / 2])
}
