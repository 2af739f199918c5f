//! Events out: the table's stream (DynamoDB Local) → the local relay → event-publisher →
//! EventBridge (moto) → a rule → an SQS queue the test reads. Asserts what a subscriber really
//! receives.

use event_publisher::EventBridgeBus;
use integration_tests::events::{moto_endpoint, sdk_config, EventsEnv, FlakyBus, Received};
use integration_tests::{
    spawn_webhook_server, ApiRequest, PayoutEnv, TestEnv, ACCOUNTS, DEPOSIT_CALLER, WEBHOOK_SECRET,
};
use serde_json::json;
use shared::publishing::events::{EventBus, PipelineEvent};
use shared::publishing::republish::{self, Window};
use shared::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// `(detail-type, subject)` pairs: the subject is the withdrawal id, the credit's reference or,
/// for a beneficiary, `beneficiary:<its user>`.
fn pairs(received: &[Received]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let owner = r.detail["beneficiary"]["id"].as_str().map(|_| {
                format!(
                    "beneficiary:{}",
                    r.detail["user_id"].as_str().unwrap_or("?")
                )
            });
            let subject = r.detail["withdrawal"]["id"]
                .as_str()
                .or(r.detail["credit"]["reference"].as_str())
                .map(str::to_string)
                .or(owner)
                .unwrap_or_else(|| "?".into());
            (r.detail_type.clone(), subject)
        })
        .collect();
    out.sort();
    out
}

async fn request(env: &TestEnv, user: &str, account: &str) -> String {
    let beneficiary = env.beneficiary(user, account).await;
    request_to(env, user, &beneficiary).await
}

async fn request_to(env: &TestEnv, user: &str, beneficiary: &str) -> String {
    let body =
        json!({"currency": "EUR", "amount": "60.00", "beneficiary_id": beneficiary}).to_string();
    let r = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user(user)
                .fresh_key()
                .body(body)
                .build(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

async fn cancel(env: &TestEnv, user: &str, id: &str) {
    let r = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
                .user(user)
                .build(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn deposit(env: &TestEnv, user: &str, reference: &str) {
    let body = json!({"user_id": user, "currency": "EUR", "amount": "100.00",
                      "reference": reference, "description": "SEPA in"});
    let r = env
        .call(
            ApiRequest::new("POST", "/internal/credits")
                .iam_caller(DEPOSIT_CALLER)
                .body(body.to_string())
                .build(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn a_whole_loop_publishes_exactly_one_event_per_state_change() {
    let p = PayoutEnv::new(|c| {
        c.callback_delay = Duration::from_millis(50);
        c.return_delay = Duration::from_millis(100);
        c.fail_accounts.insert(ACCOUNTS[1].to_string());
        c.return_accounts.insert(ACCOUNTS[2].to_string());
    })
    .await;
    let events = EventsEnv::new(&p.env).await;
    let app = Arc::new(p.webhook_app(&[WEBHOOK_SECRET]));
    p.sandbox.set_webhook_url(&spawn_webhook_server(app).await);
    let env = &p.env;

    let users = ["paid", "failed", "returned", "cancelled"];
    for user in users {
        deposit(env, user, &format!("dep-{user}")).await;
    }
    let paid = request(env, "paid", ACCOUNTS[0]).await;
    let failed = request(env, "failed", ACCOUNTS[1]).await;
    let returned = request(env, "returned", ACCOUNTS[2]).await;
    let cancelled = request(env, "cancelled", ACCOUNTS[0]).await;
    cancel(env, "cancelled", &cancelled).await;
    // A second beneficiary of `paid`'s, added and removed: both heard, the account masked.
    integration_tests::register_beneficiary(
        env.store.as_ref(),
        "paid",
        ACCOUNTS[0],
        integration_tests::BENEFICIARY,
    )
    .await;
    // An idempotent replay changes nothing, so it tells nobody anything.
    let keyed = || {
        ApiRequest::new("POST", "/withdrawals")
            .user("paid")
            .header("Idempotency-Key", "same")
            .body(
                json!({"currency": "EUR", "amount": "1.00", "beneficiary_id": integration_tests::BENEFICIARY})
                    .to_string(),
            )
            .build()
    };
    let first = env.call(keyed()).await;
    let again = env.call(keyed()).await;
    assert_eq!((first.status, again.status), (201, 201), "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let small = first.json()["id"].as_str().unwrap().to_string();
    let spare = env.beneficiary("paid", ACCOUNTS[3]).await;
    let removed = env
        .call(
            ApiRequest::new("DELETE", &format!("/beneficiaries/{spare}"))
                .user("paid")
                .build(),
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);

    p.run(PayoutEnv::config()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while p.sandbox.sent_events().len() < 5
        || !p
            .sandbox
            .sent_events()
            .iter()
            .all(|e| e.delivered_status == 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = events.pump().await;
    assert_eq!(delivered.retried, 0, "{delivered:?}");

    let received = events.received().await;
    let expected = |kinds: &[&str], id: &str| -> Vec<(String, String)> {
        kinds
            .iter()
            .map(|k| (k.to_string(), id.to_string()))
            .collect()
    };
    let mut want = vec![];
    want.extend(expected(
        &[
            "withdrawal.requested",
            "withdrawal.submitted",
            "withdrawal.settled",
        ],
        &paid,
    ));
    want.extend(expected(
        &[
            "withdrawal.requested",
            "withdrawal.submitted",
            "withdrawal.settled",
        ],
        &small,
    ));
    want.extend(expected(
        &[
            "withdrawal.requested",
            "withdrawal.submitted",
            "withdrawal.rejected",
        ],
        &failed,
    ));
    want.extend(expected(
        &[
            "withdrawal.requested",
            "withdrawal.submitted",
            "withdrawal.settled",
            "withdrawal.returned",
        ],
        &returned,
    ));
    want.extend(expected(
        &["withdrawal.requested", "withdrawal.cancelled"],
        &cancelled,
    ));
    for user in users {
        want.push(("credit.recorded".into(), format!("dep-{user}")));
        // The beneficiary each user's request named.
        want.push(("beneficiary.added".into(), format!("beneficiary:{user}")));
    }
    // `paid`'s: the keyed request's, and the spare one added and removed.
    want.push(("beneficiary.added".into(), "beneficiary:paid".into()));
    want.push(("beneficiary.added".into(), "beneficiary:paid".into()));
    want.push(("beneficiary.removed".into(), "beneficiary:paid".into()));
    want.sort();
    assert_eq!(pairs(&received), want, "exactly one event per state change");
    let gone = received
        .iter()
        .find(|r| r.detail_type == "beneficiary.removed")
        .unwrap();
    assert_eq!(gone.event_id(), format!("{spare}.removed"));
    assert_eq!(gone.detail["beneficiary"]["bank_account"], "NL91…4300");
    assert!(gone.detail["beneficiary"]["removed_at"].is_string());

    // Published in stream order: moto hands each PutEvents to the queue as it is made, so each
    // withdrawal's events arrive in its sequence order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for r in &received {
        if let Some(id) = r.detail["withdrawal"]["id"].as_str() {
            let seq = r.detail["sequence"].as_u64().unwrap();
            let before = last.insert(id.to_string(), seq).unwrap_or(0);
            assert!(seq > before, "{id}: sequence {seq} arrived after {before}");
        }
    }

    // What a consumer reads in them.
    for r in &received {
        assert_eq!(r.source, shared::publishing::events::SOURCE);
        let text = r.detail.to_string();
        for account in ACCOUNTS {
            assert!(!text.contains(account), "a full bank account in {text}");
        }
    }
    let of = |id: &str| -> Vec<&Received> {
        let mut v: Vec<&Received> = received
            .iter()
            .filter(|r| r.detail["withdrawal"]["id"] == id)
            .collect();
        v.sort_by_key(|r| r.detail["sequence"].as_u64());
        v
    };
    let trail: Vec<(String, String, u64)> = of(&returned)
        .iter()
        .map(|r| {
            (
                r.detail["previous_status"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
                r.detail["withdrawal"]["status"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r.detail["sequence"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        vec![
            ("-".into(), "PENDING".into(), 1),
            ("PENDING".into(), "SUBMITTED".into(), 2),
            ("SUBMITTED".into(), "SETTLED".into(), 3),
            ("SETTLED".into(), "RETURNED".into(), 4),
        ]
    );
    let rejected = of(&failed).pop().unwrap().clone();
    assert_eq!(rejected.event_id(), format!("{failed}.REJECTED"));
    assert_eq!(rejected.detail["user_id"], "failed");
    assert_eq!(rejected.detail["actor"], "webhook");
    assert!(rejected.detail["withdrawal"]["failure_reason"].is_string());
    assert!(rejected.detail["withdrawal"]["batch_id"].is_string());
    let settled = of(&paid).pop().unwrap().clone();
    assert!(settled.detail["withdrawal"]["provider_reference"].is_string());
    let credit = received
        .iter()
        .find(|r| r.detail_type == "credit.recorded" && r.detail["credit"]["user_id"] == "paid")
        .unwrap();
    assert_eq!(credit.detail["credit"]["amount"], "100.00");
    assert_eq!(credit.detail["credit"]["actor"], DEPOSIT_CALLER);
    assert_eq!(credit.event_id(), "credit.dep-paid");

    // The stream holds nothing more: a second pass publishes nothing.
    assert_eq!(events.pump().await.invocations, 0);
    assert_eq!(events.received().await.len(), received.len());
    env.assert_conserved().await;
}

#[tokio::test]
async fn refused_entries_and_failed_calls_are_sent_again_and_no_event_is_lost() {
    let env = TestEnv::with_max_open(u32::MAX).await;
    // Call 1: the fourth entry refused (PutEvents' partial failure). Call 3 (the first retry's
    // second call) fails as a whole.
    let events = EventsEnv::with_bus(&env, |bus| {
        let mut flaky = FlakyBus::new(bus);
        flaky.refuse_entries = vec![(1, 3)];
        flaky.fail_calls = vec![3];
        Box::new(flaky)
    })
    .await;
    env.credit("fay", "USD", "1000").await;
    let mut ids = vec![];
    for _ in 0..24 {
        let r = env
            .call(
                ApiRequest::new("POST", "/withdrawals")
                    .user("fay")
                    .fresh_key()
                    .body(integration_tests::withdrawal_body("USD", "10.00"))
                    .build(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let delivered = events.pump().await;
    assert!(delivered.retried >= 2, "{delivered:?}");
    assert_eq!(delivered.given_up, 0);

    let received = events.received().await;
    let distinct: BTreeSet<&str> = received.iter().map(Received::event_id).collect();
    let mut want: BTreeSet<String> = ids.iter().map(|id| format!("{id}.PENDING")).collect();
    want.insert(
        received
            .iter()
            .find(|r| r.detail_type == "credit.recorded")
            .map(|r| r.event_id().to_string())
            .expect("the credit's event"),
    );
    // The test beneficiary `credit` registered for fay.
    want.insert(format!("{}.added", integration_tests::BENEFICIARY));
    assert_eq!(
        distinct,
        want.iter().map(String::as_str).collect(),
        "every change published"
    );
    // At least once: what went out after the refused entry went out again, with the same
    // event_id (consumers deduplicate on it); nothing else repeats.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &received {
        *counts.entry(r.event_id()).or_default() += 1;
    }
    assert!(counts.values().any(|n| *n > 1), "{counts:?}");
    assert!(received.len() < 2 * want.len(), "{}", received.len());
}

#[test]
fn the_template_filters_the_stream_as_the_local_relay_does() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let t: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let filters =
        &t["Resources"]["EventPublisherStreamMapping"]["Properties"]["FilterCriteria"]["Filters"];
    let patterns: Vec<serde_json::Value> = filters
        .as_sequence()
        .expect("the mapping has filters")
        .iter()
        .map(|f| serde_json::from_str(f["Pattern"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(patterns, vec![stream_relay::filter_pattern()]);
}

/// A bus that refuses every call: the publisher's outage (a bad deploy, EventBridge down).
struct DownBus;

#[async_trait::async_trait]
impl EventBus for DownBus {
    async fn put(&self, _: &[PipelineEvent]) -> Result<Vec<bool>, String> {
        Err("injected: the bus is down".into())
    }
}

/// Counts of each `event_id` received.
fn by_event_id(received: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in received {
        *counts.entry(r.event_id().to_string()).or_insert(0) += 1;
    }
    counts
}

/// The table's events of a window put on the test's bus, as `operator republish` does.
async fn republish_since(
    store: &shared::store::DynamoStore,
    events: &EventsEnv,
    since: chrono::DateTime<chrono::Utc>,
) -> shared::publishing::republish::Republished {
    let report = store.scan_all().await.unwrap();
    let window = Window { since, until: None };
    let rebuilt = republish::rebuilt(
        &report.withdrawals,
        &report.credits,
        &report.beneficiaries,
        window,
    );
    let client = aws_sdk_eventbridge::Client::new(&sdk_config(&moto_endpoint()));
    republish::republish(&EventBridgeBus::new(client, &events.bus_name), &rebuilt).await
}

/// Publishing stops for longer than the mapping retries (the relay's bound shortened to two
/// attempts stands for the hour the template once allowed): the records are given up and the
/// subscriber hears nothing. `operator republish` rebuilds every change of the window from the
/// table, and the subscriber's queue then holds each expected event once, under the id the
/// publisher would have used.
#[tokio::test]
async fn events_lost_past_the_retry_bound_are_republished_from_the_table_once_each() {
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let p = PayoutEnv::new(|_| {}).await;
    let events = EventsEnv::with_bus(&p.env, |_| Box::new(DownBus)).await;
    events.set_relay_attempts(2).await;
    let env = &p.env;
    deposit(env, "ora", "dep-ora").await;
    deposit(env, "otto", "dep-otto").await;
    let ora_b = env.beneficiary("ora", ACCOUNTS[0]).await;
    let otto_b = env.beneficiary("otto", ACCOUNTS[0]).await;
    let paid = request_to(env, "ora", &ora_b).await;
    let cancelled = request_to(env, "otto", &otto_b).await;
    cancel(env, "otto", &cancelled).await;
    let removed = env
        .call(
            ApiRequest::new("DELETE", &format!("/beneficiaries/{otto_b}"))
                .user("otto")
                .build(),
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    p.run(PayoutEnv::config()).await;
    p.settle_from_status().await;

    let delivered = events.pump().await;
    assert!(delivered.given_up > 0, "{delivered:?}");
    assert!(events.received().await.is_empty(), "the outage lost them");

    let out = republish_since(&env.store, &events, since).await;
    assert_eq!(out.stopped_at, None);
    let received = events.received().await;
    let want: BTreeMap<String, usize> = [
        "credit.dep-ora".to_string(),
        "credit.dep-otto".to_string(),
        format!("{paid}.PENDING"),
        format!("{paid}.SUBMITTED"),
        format!("{paid}.SETTLED"),
        format!("{cancelled}.PENDING"),
        format!("{cancelled}.CANCELLED"),
        // The user's warning of a new destination is never lost for good either.
        format!("{ora_b}.added"),
        format!("{otto_b}.added"),
        format!("{otto_b}.removed"),
    ]
    .into_iter()
    .map(|id| (id, 1))
    .collect();
    assert_eq!(by_event_id(&received), want);
    assert_eq!(out.events, want.len());
    // The events read as the publisher's: detail-types, the change's actor and its order.
    let settled = received
        .iter()
        .find(|r| r.event_id() == format!("{paid}.SETTLED"))
        .unwrap();
    assert_eq!(settled.detail_type, "withdrawal.settled");
    assert_eq!(settled.detail["previous_status"], "SUBMITTED");
    assert_eq!(settled.detail["sequence"], 3);
    assert_eq!(settled.detail["withdrawal"]["status"], "SETTLED");
    let requested = received
        .iter()
        .find(|r| r.event_id() == format!("{paid}.PENDING"))
        .unwrap();
    assert_eq!(requested.detail_type, "withdrawal.requested");
    assert_eq!(requested.detail["withdrawal"]["status"], "PENDING");
    assert_eq!(requested.detail["actor"], "user");
    // As the publisher sent it: the beneficiary alone, the account only from the claim on.
    assert_eq!(
        requested.detail["withdrawal"]["beneficiary_id"],
        ora_b.as_str()
    );
    assert!(requested.detail["withdrawal"]["bank_account"].is_null());
    let added = received
        .iter()
        .find(|r| r.event_id() == format!("{otto_b}.added"))
        .unwrap();
    assert_eq!(added.detail_type, "beneficiary.added");
    assert!(added.detail["beneficiary"]["removed_at"].is_null());
    assert!(!added.detail.to_string().contains(ACCOUNTS[0]));
}

/// A record the publisher cannot read (a credit in a currency its configuration no longer
/// has) holds its shard: nothing after it is published, retry after retry, and it is named. An
/// operator's `skip-record` lets the shard move on; once the configuration is right again,
/// `republish` puts the skipped record's event under its own id.
#[tokio::test]
async fn an_unreadable_record_waits_for_an_operator_to_skip_it_then_is_republished() {
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let env = TestEnv::new().await;
    let events = EventsEnv::new(&env).await;
    let with_gbp = shared::domain::Currencies::parse_config(&format!(
        "{},GBP:2:1:1000",
        shared::domain::Currencies::DEFAULT_CONFIG
    ))
    .unwrap();
    let gbp_store = shared::store::DynamoStore::new(
        integration_tests::client_for(&integration_tests::endpoint()),
        env.store.table_name(),
        with_gbp.clone(),
    );
    let gbp = with_gbp.get("GBP").unwrap();
    gbp_store
        .credit(&integration_tests::credit_record(
            gbp, "gus", "25.00", "dep-gbp",
        ))
        .await
        .unwrap();
    deposit(&env, "eve", "dep-eve").await;

    let mut named = None;
    for _ in 0..5 {
        named = events.step().await.last_failed.or(named);
    }
    let sequence = named.expect("the unreadable record is named");
    assert!(events.received().await.is_empty(), "the shard waits on it");

    assert!(env
        .store
        .skip_stream_record(&sequence, "operator:ops-ann", "GBP dropped by mistake")
        .await
        .unwrap());
    events.pump().await;
    let received = events.received().await;
    assert_eq!(
        by_event_id(&received),
        BTreeMap::from([("credit.dep-eve".to_string(), 1)])
    );

    // Configuration fixed: the skipped change's event is rebuilt from the table.
    republish_since(&gbp_store, &events, since).await;
    let received = events.received().await;
    let ids: BTreeSet<String> = by_event_id(&received).into_keys().collect();
    assert_eq!(
        ids,
        BTreeSet::from(["credit.dep-eve".to_string(), "credit.dep-gbp".to_string()])
    );
}
