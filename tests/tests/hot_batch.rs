//! A hot batch: every member of one 500-withdrawal batch reported paid at the same moment, the
//! way a provider answers a whole batch in one burst. Each callback must end applied after at
//! most a few provider-style retries of a 503, never a 4xx or another 5xx; the batch completes
//! (by the batcher's next run when no callback saw itself last).
//!
//! DynamoDB Local never cancels a transaction for a conflict, so the webhook's client carries
//! [`ConflictEmulator`]: a transaction touching an item another one is still writing is cancelled
//! with `TransactionConflict`, as on AWS. Its own test binary: it counts the store's transaction
//! retries from the debug log, which other tests running beside it would add to.

use futures::future::join_all;
use integration_tests::conflicts::ConflictEmulator;
use integration_tests::{
    callback_body, deliver, function_client, now_secs, sign, webhook_request, BalanceView,
    LogCapture, PayoutEnv, ACCOUNTS, WEBHOOK_FN, WEBHOOK_SECRET,
};
use shared::domain::{BatchStatus, Withdrawal, WithdrawalStatus};
use shared::payouts::signature::WebhookSecret;
use shared::payouts::webhook::WebhookProcessor;
use shared::store::{BatchStore, DynamoStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMBERS: usize = 500;
/// Deliveries per callback at most, as a provider retries: the first and four retries.
const ATTEMPTS: u32 = 5;

struct Delivery {
    attempts: u32,
    statuses: Vec<u16>,
    outcome: String,
    latency: Duration,
}

/// Delivers one event like a provider: retried with backoff while the answer is 5xx or 429.
async fn deliver_like_a_provider(app: &provider_webhook::App, body: &str) -> Delivery {
    let started = Instant::now();
    let mut statuses = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let r = deliver(
            app,
            webhook_request(body, Some(sign(body, WEBHOOK_SECRET, now_secs()))),
        )
        .await;
        statuses.push(r.status);
        let retry = r.status >= 500 || r.status == 429;
        if !retry || attempt == ATTEMPTS {
            return Delivery {
                attempts: attempt,
                statuses,
                outcome: r.json()["status"].as_str().unwrap_or("").to_string(),
                latency: started.elapsed(),
            };
        }
        // 100 ms, 200 ms, 400 ms, 800 ms, with jitter, as the sandbox's own retries grow.
        let base = 100u64 << (attempt - 1);
        let jitter = ulid::Ulid::new().random() as u64 % base;
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
    unreachable!()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "current_thread")]
async fn five_hundred_concurrent_callbacks_of_one_batch_all_apply() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("shared=debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let p = PayoutEnv::new(|_| {}).await;
    // At most 5 open withdrawals per user and currency (the default cap): 100 users of 5.
    let mut seeded = Vec::new();
    for u in 0..MEMBERS / 5 {
        seeded.extend(
            p.seed(&format!("hot{u}"), "USD", "10.00", 5, ACCOUNTS[0])
                .await,
        );
    }
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["USD"].batches, 1);
    let mut members: Vec<Withdrawal> = Vec::new();
    for w in &seeded {
        members.push(p.reload(w).await);
    }
    let batch_id = members[0].batch_id.expect("claimed");
    assert!(members.iter().all(|w| w.batch_id == Some(batch_id)));
    let store: &DynamoStore = &p.env.store;
    assert_eq!(
        store.batch(batch_id).await.unwrap().unwrap().member_count() as usize,
        MEMBERS
    );

    let conflicts = ConflictEmulator::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        function_client(WEBHOOK_FN)
            .config()
            .to_builder()
            .interceptor(conflicts.clone())
            .build(),
    );
    let app = provider_webhook::App::from(WebhookProcessor::new(
        Arc::new(DynamoStore::new(
            client,
            store.table_name(),
            p.env.currencies.clone(),
        )),
        vec![WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
        300,
    ));
    let bodies: Vec<String> = members
        .iter()
        .map(|w| callback_body(&format!("evt_hot_{}", w.id), "payout.paid", w, None))
        .collect();
    let retries_before = capture.text().matches("retrying transaction").count();
    let started = Instant::now();
    let deliveries = join_all(bodies.iter().map(|b| deliver_like_a_provider(&app, b))).await;
    let wall = started.elapsed();

    let logs = capture.text();
    let tx_retries = logs.matches("retrying transaction").count() - retries_before;
    let conflict_retries = logs
        .lines()
        .filter(|l| l.contains("retrying transaction") && l.contains("TransactionConflict"))
        .count();
    let (tx_attempts, cancelled) = conflicts.counts();
    let retried = deliveries.iter().filter(|d| d.attempts > 1).count();
    let refused = deliveries
        .iter()
        .filter(|d| d.statuses.last() != Some(&200))
        .count();
    let max_attempts = deliveries.iter().map(|d| d.attempts).max().unwrap();
    let answers_5xx = deliveries
        .iter()
        .flat_map(|d| &d.statuses)
        .filter(|s| **s >= 500)
        .count();
    let mut latencies: Vec<Duration> = deliveries.iter().map(|d| d.latency).collect();
    latencies.sort();
    let report = format!(
        "hot batch: {MEMBERS} concurrent payout.paid callbacks of one batch in {:.1} s; \
         {tx_attempts} transaction attempts, {cancelled} cancelled for a conflict (items in the way: \
         {:?}); transaction retries \
         {tx_retries} (TransactionConflict {conflict_retries}); deliveries retried \
         {retried} (5xx answers {answers_5xx}, most attempts {max_attempts}, still refused after \
         {ATTEMPTS}: {refused}); latency per callback \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        wall.as_secs_f64(),
        conflicts.conflicts_by_kind(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!("{report}");

    for (d, w) in deliveries.iter().zip(&members) {
        // Only what a provider retries (503 try_again) may come before the final answer.
        assert!(
            d.statuses[..d.statuses.len() - 1].iter().all(|s| *s == 503),
            "{}: {:?}",
            w.id,
            d.statuses
        );
        assert_eq!(
            *d.statuses.last().unwrap(),
            200,
            "{}: {:?}",
            w.id,
            d.statuses
        );
        // A retry after a 503 whose change had committed is acknowledged as a duplicate.
        assert!(
            d.outcome == "applied" || (d.outcome == "duplicate" && d.attempts > 1),
            "{}: {} after {:?}",
            w.id,
            d.outcome,
            d.statuses
        );
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Settled);
    }
    // Callbacks at once each read the counters before the others committed, so none may see
    // itself last: the batcher's next run closes what they left (a settlement never pays a
    // request to look).
    p.run(PayoutEnv::config()).await;
    assert_eq!(
        store.batch(batch_id).await.unwrap().unwrap().status,
        BatchStatus::Completed,
        "{report}"
    );
    assert_eq!(store.final_count(batch_id).await.unwrap() as usize, MEMBERS);
    assert_eq!(
        p.env.balance("hot0-0", "USD").await,
        BalanceView {
            available: "50.00".into(),
            locked: "0.00".into(),
            paid_out: "50.00".into(),
            credited: "100.00".into()
        }
    );
    p.env.assert_conserved().await;
}
