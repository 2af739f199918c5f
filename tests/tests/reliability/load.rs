//! Load and concurrency: no overdraw, idempotency under concurrency, overlapping batchers.

use super::{audit, scale, scenario, Row};
use futures::future::join_all;
use integration_tests::{withdrawal_body, ApiRequest, PayoutEnv, TestEnv, ACCOUNTS};
use rust_decimal::Decimal;
use shared::payouts::batcher::BatcherConfig;
use shared::store::{BatchStore, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
