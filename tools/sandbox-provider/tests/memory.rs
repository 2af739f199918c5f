//! The sandbox forgets the way real providers do, over its HTTP API: idempotency keys that
//! expire (and the batch is then paid again), accepted batches whose status answers 404, and
//! items that stay pending for ever. By default it forgets nothing.

use sandbox_provider::{Memory, Sandbox, SandboxConfig};
use serde_json::{json, Value};
use shared::payouts::signature::WebhookSecret;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "sandbox-memory-test-key";

struct Provider {
    url: String,
    http: reqwest::Client,
}

impl Provider {
    async fn start(configure: impl FnOnce(&mut SandboxConfig)) -> (Sandbox, Self) {
        let mut config =
            SandboxConfig::new(KEY, WebhookSecret::new("whsec_memory_test_0123").unwrap());
        config.callback_delay = Duration::from_millis(20);
        configure(&mut config);
        let sandbox = Sandbox::new(config);
        let addr = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let provider = Self {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
        };
        (sandbox, provider)
    }

    /// Submits a batch of two items; returns the status and the answer.
    async fn submit(&self, batch_id: &str) -> (u16, Value) {
        let body = json!({"batch_id": batch_id, "currency": "USD", "items": [
            {"reference": format!("{batch_id}-a"), "amount": "10.00", "bank_account": "DE89370400440532013000"},
            {"reference": format!("{batch_id}-b"), "amount": "20.00", "bank_account": "DE89370400440532013000"},
        ]});
        let r = self
            .http
            .post(format!("{}/v1/payout-batches", self.url))
            .bearer_auth(KEY)
            .header("idempotency-key", batch_id)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn status(&self, batch_id: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/payout-batches/{batch_id}", self.url))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn ledger(&self) -> Value {
        self.http
            .get(format!("{}/sandbox/ledger", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn change_memory(&self, change: Value) -> Memory {
        let r = self
            .http
            .post(format!("{}/sandbox/memory", self.url))
            .json(&change)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

#[tokio::test]
async fn an_expired_idempotency_key_makes_the_same_batch_a_new_one_paid_again() {
    let (sandbox, p) = Provider::start(|_| {}).await;
    // Default: keys are kept for ever.
    assert_eq!(sandbox.memory(), Memory::default());
    let (status, first) = p.submit("bt_keep").await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(p.submit("bt_keep").await, (202, first.clone()));
    assert_eq!(p.ledger().await["payouts_by_reference"]["bt_keep-a"], 1);

    // Keys now live 100 ms: within it a repeat is acknowledged, after it the batch is paid again.
    let memory = p
        .change_memory(json!({"idempotency_key_ttl_ms": 100}))
        .await;
    assert_eq!(memory.idempotency_key_ttl, Some(Duration::from_millis(100)));
    let (_, accepted) = p.submit("bt_forget").await;
    assert_eq!(p.submit("bt_forget").await, (202, accepted.clone()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, again) = p.submit("bt_forget").await;
    assert_eq!(status, 202);
    assert_ne!(
        again, accepted,
        "a new provider batch id: recorded as a new batch"
    );

    let ledger = p.ledger().await;
    assert_eq!(ledger["payouts_by_reference"]["bt_forget-a"], 2, "{ledger}");
    assert_eq!(ledger["payouts_by_reference"]["bt_forget-b"], 2, "{ledger}");
    assert_eq!(ledger["expired_keys"], 1);
    let paid_by: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reference"] == "bt_forget-a")
        .map(|e| e["provider_batch_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        paid_by,
        [
            accepted["provider_batch_id"].as_str().unwrap(),
            again["provider_batch_id"].as_str().unwrap()
        ]
    );
    // The older batch expired too, and `null` keeps keys for ever again.
    assert_eq!(p.submit("bt_keep").await.0, 202);
    assert_eq!(sandbox.payouts_by_reference()["bt_keep-a"], 2);
    let memory = p
        .change_memory(json!({"idempotency_key_ttl_ms": null}))
        .await;
    assert_eq!(memory.idempotency_key_ttl, None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    p.submit("bt_forget").await;
    assert_eq!(sandbox.payouts_by_reference()["bt_forget-a"], 2);
}

#[tokio::test]
async fn the_key_lifetime_can_be_set_at_start() {
    let (sandbox, p) = Provider::start(|c| {
        c.memory.idempotency_key_ttl = Some(Duration::ZERO);
    })
    .await;
    p.submit("bt_zero").await;
    p.submit("bt_zero").await;
    assert_eq!(sandbox.payouts_by_reference()["bt_zero-a"], 2);
    assert_eq!(sandbox.expired_keys(), 1);
}

#[tokio::test]
async fn a_lost_batch_answers_404_although_it_was_accepted_and_paid() {
    let (sandbox, p) = Provider::start(|c| c.memory.lose_next_batches = 1).await;
    assert_eq!(p.submit("bt_lost").await.0, 202);
    assert_eq!(p.submit("bt_kept").await.0, 202);
    assert_eq!(p.status("bt_lost").await.0, 404);
    let (status, kept) = p.status("bt_kept").await;
    assert_eq!(status, 200);
    assert_eq!(kept["items"].as_array().unwrap().len(), 2);
    // Paid all the same, and its key is still remembered: a re-send is not paid again.
    assert_eq!(sandbox.payouts_by_reference()["bt_lost-a"], 1);
    assert_eq!(p.submit("bt_lost").await.0, 202);
    assert_eq!(sandbox.payouts_by_reference()["bt_lost-a"], 1);

    // By id, after acceptance, and "the next N" at runtime.
    let memory = p
        .change_memory(json!({"lose_batches": ["bt_kept"], "lose_next_batches": 2}))
        .await;
    assert!(memory.lost_batches.contains("bt_kept"));
    assert_eq!(p.status("bt_kept").await.0, 404);
    for id in ["bt_n1", "bt_n2", "bt_n3"] {
        assert_eq!(p.submit(id).await.0, 202);
    }
    assert_eq!(p.status("bt_n1").await.0, 404);
    assert_eq!(p.status("bt_n2").await.0, 404);
    assert_eq!(p.status("bt_n3").await.0, 200);
    assert_eq!(sandbox.memory().lose_next_batches, 0);
}

#[tokio::test]
async fn items_of_a_stalled_batch_stay_pending_with_no_callback() {
    let received = Arc::new(AtomicUsize::new(0));
    let webhook = {
        let received = received.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                received.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/hook")
    };
    let (_sandbox, p) = Provider::start(|c| c.webhook_url = Some(webhook)).await;
    p.change_memory(json!({"pending_next_batches": 1})).await;
    assert_eq!(p.submit("bt_stalled").await.0, 202);
    assert_eq!(p.submit("bt_normal").await.0, 202);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        2,
        "only bt_normal's two items call back"
    );
    let (_, stalled) = p.status("bt_stalled").await;
    assert!(stalled["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "pending"));
    let (_, normal) = p.status("bt_normal").await;
    assert!(normal["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "paid"));
    let ledger = p.ledger().await;
    assert!(
        ledger["payouts_by_reference"]["bt_stalled-a"].is_null(),
        "{ledger}"
    );

    // Per account, from now on.
    p.change_memory(json!({"pending_accounts": ["DE89370400440532013000"]}))
        .await;
    p.submit("bt_account").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.load(Ordering::SeqCst), 2);
    assert_eq!(
        p.status("bt_account").await.1["items"][0]["status"],
        "pending"
    );
}

#[tokio::test]
async fn unknown_memory_settings_are_refused() {
    let (_sandbox, p) = Provider::start(|_| {}).await;
    let r = p
        .http
        .post(format!("{}/sandbox/memory", p.url))
        .json(&json!({"forget_everything": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}
