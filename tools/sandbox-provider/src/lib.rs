//! A sandbox payment provider that runs on this machine: it implements the payout API of
//! docs/provider-api.md, deduplicates batches by idempotency key, keeps a ledger of what it paid,
//! and calls the webhook back with correctly signed events. Faults can be injected per call, and
//! it can forget like a real provider (see [`Memory`]): idempotency keys that expire, batches
//! whose status it no longer knows, items that never reach a final state.

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::payouts::provider::{ItemState, ItemStatus, PayoutBatchRequest};
use shared::payouts::signature::WebhookSecret;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod routes;
use routes::{add_faults, change_memory, events, ledger, memory, status, submit};

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub api_key: String,
    /// Where callbacks go; none means the sandbox only answers the status endpoint.
    pub webhook_url: Option<String>,
    pub webhook_secret: WebhookSecret,
    pub callback_delay: Duration,
    /// Between one item's callback and the next (zero: a batch's callbacks leave together, the
    /// way most providers answer a batch; a spacing answers item by item).
    pub callback_spacing: Duration,
    /// Share of items that fail, chosen deterministically from the reference.
    pub failure_rate: f64,
    pub fail_accounts: HashSet<String>,
    /// Paid, then sent back by the bank after `return_delay`.
    pub return_accounts: HashSet<String>,
    pub return_delay: Duration,
    /// Never reach a final state (for stale-batch handling).
    pub pending_accounts: HashSet<String>,
    /// What the sandbox forgets or never finishes (initial values; changeable at runtime with
    /// `POST /sandbox/memory`). The default forgets nothing.
    pub memory: Memory,
    /// How long an injected timeout hangs (longer than the client's timeout).
    pub hang: Duration,
    /// Callback retries: the first waits `retry_base`, each next one twice as long up to
    /// `retry_max_delay`; a delivery is given up `retry_for` after its first attempt. Real
    /// providers keep retrying for hours to days, so the defaults do too.
    pub retry_base: Duration,
    pub retry_max_delay: Duration,
    pub retry_for: Duration,
}

impl SandboxConfig {
    pub fn new(api_key: &str, webhook_secret: WebhookSecret) -> Self {
        Self {
            api_key: api_key.to_string(),
            webhook_url: None,
            webhook_secret,
            callback_delay: Duration::from_millis(200),
            callback_spacing: Duration::ZERO,
            failure_rate: 0.0,
            fail_accounts: HashSet::new(),
            return_accounts: HashSet::new(),
            return_delay: Duration::from_millis(500),
            pending_accounts: HashSet::new(),
            memory: Memory::default(),
            hang: Duration::from_secs(30),
            retry_base: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(60),
            retry_for: Duration::from_secs(24 * 3600),
        }
    }

    /// The wait before retry number `attempt` (1 = the first retry).
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        self.retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.retry_max_delay)
    }
}

/// A fault applied to the next payout call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Hang without recording anything (the client times out; nothing was paid).
    TimeoutBeforeRecord,
    /// Record and pay, then hang (the client times out; everything was paid).
    TimeoutAfterRecord,
    /// 500 without recording.
    ErrorBeforeRecord,
    /// Record and pay, then 500.
    ErrorAfterRecord,
    /// 422 `batch_rejected`: definitely not processed.
    Reject,
}

/// How a real provider forgets. Its idempotency keys live for a limited time (commonly about
/// 24 hours): after that the same key and body are a new batch and are paid again. It may
/// answer 404 for a batch it accepted (a lost record, a migration), and it may leave items
/// `pending` for ever without a callback.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// How long an `Idempotency-Key` is remembered after the batch was recorded; `None` for
    /// ever (the default). After it the same key with the same body records a NEW batch and
    /// pays every item again: the ledger shows the second payment.
    #[serde(
        default,
        rename = "idempotency_key_ttl_ms",
        with = "ttl_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub idempotency_key_ttl: Option<Duration>,
    /// The next this many newly accepted batches are lost: their status answers 404. The key
    /// is still remembered (a re-send within its lifetime is not paid again).
    #[serde(default)]
    pub lose_next_batches: u32,
    /// Batch ids whose status answers 404 once accepted (or already, if they were).
    #[serde(default)]
    pub lost_batches: BTreeSet<String>,
    /// Every item of the next this many newly accepted batches stays `pending` for ever: no
    /// callback, and the status endpoint keeps reporting `pending`.
    #[serde(default)]
    pub pending_next_batches: u32,
    /// The next this many batches with pending items its status endpoint answers `found` for
    /// are lost right after that answer (404 from then on), those items paid all the same: a
    /// provider that showed it holds a batch, then forgot it.
    #[serde(default)]
    pub lose_next_found: u32,
    /// Batches lost after a `found` answer (also in `lost_batches`): unlike a batch lost before
    /// anyone heard of it, a client can tell these from "never recorded".
    #[serde(default)]
    pub lost_after_found: BTreeSet<String>,
}

/// `idempotency_key_ttl_ms` as milliseconds; absent means "remember for ever".
mod ttl_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// A change to [`Memory`] (`POST /sandbox/memory`): only the fields given change.
/// `"idempotency_key_ttl_ms": null` remembers keys for ever again.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryChange {
    #[serde(default, deserialize_with = "present")]
    pub idempotency_key_ttl_ms: Option<Option<u64>>,
    pub lose_next_batches: Option<u32>,
    #[serde(default)]
    pub lose_batches: Vec<String>,
    pub pending_next_batches: Option<u32>,
    pub lose_next_found: Option<u32>,
    /// Accounts whose items stay pending from now on.
    #[serde(default)]
    pub pending_accounts: Vec<String>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Ok(Some(Option::<u64>::deserialize(d)?))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LedgerEntry {
    pub batch_id: String,
    /// Which recording of the batch paid it: two ids for one `batch_id` mean the provider
    /// forgot the key and paid the batch again.
    pub provider_batch_id: String,
    pub reference: String,
    pub amount: String,
    pub currency: String,
    pub provider_reference: String,
    /// The account the item was paid to, as sent.
    pub bank_account: String,
    pub returned: bool,
}

impl LedgerEntry {
    /// The payment of `item` of `request`, by the recording `provider_batch_id`.
    fn paid(request: &PayoutBatchRequest, provider_batch_id: &str, item: &ItemState) -> Self {
        Self {
            batch_id: request.batch_id.clone(),
            provider_batch_id: provider_batch_id.to_string(),
            reference: item.reference.clone(),
            amount: item.amount.clone(),
            currency: request.currency.clone(),
            provider_reference: item.provider_reference.clone().unwrap_or_default(),
            bank_account: request
                .items
                .iter()
                .find(|i| i.reference == item.reference)
                .map(|i| i.bank_account.clone())
                .unwrap_or_default(),
            returned: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SentEvent {
    pub id: String,
    pub event_type: String,
    pub reference: String,
    /// HTTP status of the last delivery attempt (0 = not reached).
    pub delivered_status: u16,
    pub attempts: u32,
    pub state: DeliveryState,
    /// Why the last attempt failed, while retrying or after giving up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not acknowledged yet; retries continue.
    Retrying,
    Delivered,
    /// No 2xx within `retry_for`.
    GaveUp,
}

struct StoredBatch {
    fingerprint: String,
    provider_batch_id: String,
    /// When the key was recorded: it is forgotten `idempotency_key_ttl` after.
    recorded_at: tokio::time::Instant,
    request: PayoutBatchRequest,
    items: BTreeMap<String, ItemState>,
}

#[derive(Default)]
struct Inner {
    batches: HashMap<String, StoredBatch>,
    rejected: HashSet<String>,
    ledger: Vec<LedgerEntry>,
    faults: VecDeque<Fault>,
    webhook_url: Option<String>,
    submit_calls: u64,
    events: Vec<SentEvent>,
    memory: Memory,
    pending_accounts: HashSet<String>,
    /// Submissions whose key had expired and were recorded (and paid) as new batches.
    expired_keys: u64,
}

#[derive(Clone)]
pub struct Sandbox {
    config: Arc<SandboxConfig>,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    /// Callback tasks not finished yet (a test waits for 0 before it looks at what arrived).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a callback task as in flight until it ends (or is dropped).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let inner = Inner {
            webhook_url: config.webhook_url.clone(),
            memory: config.memory.clone(),
            pending_accounts: config.pending_accounts.clone(),
            ..Inner::default()
        };
        Self {
            config: Arc::new(config),
            inner: Arc::new(Mutex::new(inner)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            in_flight: Arc::default(),
        }
    }

    /// Callbacks being delivered (or waiting for a retry or a return) right now.
    pub fn callbacks_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/payout-batches", post(submit))
            .route("/v1/payout-batches/{id}", get(status))
            .route("/sandbox/ledger", get(ledger))
            .route("/sandbox/faults", post(add_faults))
            .route("/sandbox/memory", get(memory).post(change_memory))
            .route("/sandbox/events", get(events))
            .route("/health", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks a free one) in the background; returns the bound address.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(local)
    }

    /// Points callbacks at `url` from now on.
    pub fn set_webhook_url(&self, url: &str) {
        self.inner.lock().unwrap().webhook_url = Some(url.to_string());
    }

    pub fn inject(&self, faults: &[Fault]) {
        self.inner
            .lock()
            .unwrap()
            .faults
            .extend(faults.iter().copied());
    }

    /// Applies a change to what the sandbox forgets; returns the resulting settings.
    pub fn change_memory(&self, change: MemoryChange) -> Memory {
        let mut inner = self.inner.lock().unwrap();
        if let Some(ttl) = change.idempotency_key_ttl_ms {
            inner.memory.idempotency_key_ttl = ttl.map(Duration::from_millis);
        }
        if let Some(n) = change.lose_next_batches {
            inner.memory.lose_next_batches = n;
        }
        inner.memory.lost_batches.extend(change.lose_batches);
        if let Some(n) = change.pending_next_batches {
            inner.memory.pending_next_batches = n;
        }
        if let Some(n) = change.lose_next_found {
            inner.memory.lose_next_found = n;
        }
        inner.pending_accounts.extend(change.pending_accounts);
        inner.memory.clone()
    }

    pub fn memory(&self) -> Memory {
        self.inner.lock().unwrap().memory.clone()
    }

    /// How many submissions came after their key was forgotten and were paid as new batches.
    pub fn expired_keys(&self) -> u64 {
        self.inner.lock().unwrap().expired_keys
    }

    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.inner.lock().unwrap().ledger.clone()
    }

    /// How many times each reference was paid: never more than 1 is the whole point.
    pub fn payouts_by_reference(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for e in self.inner.lock().unwrap().ledger.iter() {
            *m.entry(e.reference.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn submit_calls(&self) -> u64 {
        self.inner.lock().unwrap().submit_calls
    }

    pub fn batch_count(&self) -> usize {
        self.inner.lock().unwrap().batches.len()
    }

    pub fn sent_events(&self) -> Vec<SentEvent> {
        self.inner.lock().unwrap().events.clone()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.config.api_key))
    }

    fn decide(&self, reference: &str, account: &str, pending: &HashSet<String>) -> ItemStatus {
        if pending.contains(account) {
            return ItemStatus::Pending;
        }
        if self.config.fail_accounts.contains(account) {
            return ItemStatus::Failed;
        }
        let h = Sha256::digest(reference.as_bytes());
        let roll = u16::from_be_bytes([h[0], h[1]]) as f64 / 65536.0;
        if roll < self.config.failure_rate {
            ItemStatus::Failed
        } else {
            ItemStatus::Paid
        }
    }

    /// Records a new batch: pays what is paid, remembers the rest. Returns false if the same
    /// key came with another body. A key older than the configured lifetime is forgotten: the
    /// request is a new batch and is paid again, as a real provider would.
    fn record(&self, req: &PayoutBatchRequest, fingerprint: &str) -> Result<String, ()> {
        let mut inner = self.inner.lock().unwrap();
        let ttl = inner.memory.idempotency_key_ttl;
        if let Some(b) = inner.batches.get(&req.batch_id) {
            let forgotten = ttl.is_some_and(|ttl| b.recorded_at.elapsed() >= ttl);
            if !forgotten {
                return if b.fingerprint == fingerprint {
                    Ok(b.provider_batch_id.clone())
                } else {
                    Err(())
                };
            }
            tracing::warn!(batch_id = %req.batch_id, "idempotency key expired: recording the batch again and paying it again");
            inner.expired_keys += 1;
        }
        let provider_batch_id = format!("pb_{}", ulid::Ulid::new());
        let stalled = inner.memory.pending_next_batches > 0;
        if stalled {
            inner.memory.pending_next_batches -= 1;
        }
        if inner.memory.lose_next_batches > 0 {
            inner.memory.lose_next_batches -= 1;
            inner.memory.lost_batches.insert(req.batch_id.clone());
        }
        let mut items = BTreeMap::new();
        let mut paid = Vec::new();
        for item in &req.items {
            let status = if stalled {
                ItemStatus::Pending
            } else {
                self.decide(&item.reference, &item.bank_account, &inner.pending_accounts)
            };
            let state = ItemState {
                reference: item.reference.clone(),
                amount: item.amount.clone(),
                reason: (status == ItemStatus::Failed).then(|| "account closed".to_string()),
                provider_reference: Some(format!("po_{}", ulid::Ulid::new())),
                status,
            };
            if state.status == ItemStatus::Paid {
                paid.push(LedgerEntry::paid(req, &provider_batch_id, &state));
            }
            items.insert(item.reference.clone(), state);
        }
        inner.ledger.extend(paid);
        inner.batches.insert(
            req.batch_id.clone(),
            StoredBatch {
                fingerprint: fingerprint.to_string(),
                provider_batch_id: provider_batch_id.clone(),
                recorded_at: tokio::time::Instant::now(),
                request: req.clone(),
                items,
            },
        );
        drop(inner);
        self.schedule_callbacks(req.batch_id.clone());
        Ok(provider_batch_id)
    }

    /// Each item's callback is delivered on its own (a webhook that is down for one item does
    /// not hold back the others); a returned item's `payout.returned` follows its `payout.paid`.
    fn schedule_callbacks(&self, batch_id: String) {
        let Some(url) = self.inner.lock().unwrap().webhook_url.clone() else {
            return;
        };
        let (items, request) = {
            let inner = self.inner.lock().unwrap();
            let b = &inner.batches[&batch_id];
            (b.items.clone(), b.request.clone())
        };
        let mut delay = self.config.callback_delay;
        for (reference, state) in items {
            let event_type = match state.status {
                ItemStatus::Paid => "payout.paid",
                ItemStatus::Failed => "payout.failed",
                _ => continue,
            };
            let returns = state.status == ItemStatus::Paid
                && request.items.iter().any(|i| {
                    i.reference == reference
                        && self.config.return_accounts.contains(&i.bank_account)
                });
            let (sandbox, url, request, batch_id) =
                (self.clone(), url.clone(), request.clone(), batch_id.clone());
            let in_flight = InFlight::new(&self.in_flight);
            let wait = delay;
            delay += self.config.callback_spacing;
            tokio::spawn(async move {
                let _in_flight = in_flight;
                tokio::time::sleep(wait).await;
                sandbox.deliver(&url, event_type, &request, &state).await;
                if !returns {
                    return;
                }
                tokio::time::sleep(sandbox.config.return_delay).await;
                let mut state = state;
                state.status = ItemStatus::Returned;
                state.reason = Some("beneficiary account closed".into());
                {
                    let mut inner = sandbox.inner.lock().unwrap();
                    if let Some(b) = inner.batches.get_mut(&batch_id) {
                        b.items.insert(state.reference.clone(), state.clone());
                    }
                    for e in inner
                        .ledger
                        .iter_mut()
                        .filter(|e| e.reference == state.reference)
                    {
                        e.returned = true;
                    }
                }
                sandbox
                    .deliver(&url, "payout.returned", &request, &state)
                    .await;
            });
        }
    }

    /// Sends one signed event, retrying on failure like a real provider (same event id).
    async fn deliver(
        &self,
        url: &str,
        event_type: &str,
        request: &PayoutBatchRequest,
        state: &ItemState,
    ) {
        let event_id = format!("evt_{}", ulid::Ulid::new());
        let body = callback_body(&event_id, event_type, request, state);
        let index = {
            let mut inner = self.inner.lock().unwrap();
            inner.events.push(SentEvent {
                id: event_id.clone(),
                event_type: event_type.to_string(),
                reference: state.reference.clone(),
                delivered_status: 0,
                attempts: 0,
                state: DeliveryState::Retrying,
                last_error: None,
            });
            inner.events.len() - 1
        };
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let ts = chrono::Utc::now().timestamp();
            let result = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header(
                    shared::payouts::signature::HEADER,
                    self.config.webhook_secret.sign(ts, body.as_bytes()),
                )
                .body(body.clone())
                .send()
                .await;
            let (status, error) = match result {
                Ok(r) if r.status().is_success() => (r.status().as_u16(), None),
                Ok(r) => (r.status().as_u16(), Some(format!("HTTP {}", r.status()))),
                Err(e) => (0, Some(format!("not reached: {e}"))),
            };
            let wait = self.config.retry_delay(attempt);
            let give_up = error.is_some() && started.elapsed() + wait > self.config.retry_for;
            {
                let mut inner = self.inner.lock().unwrap();
                let sent = &mut inner.events[index];
                sent.attempts = attempt;
                sent.delivered_status = status;
                sent.last_error = error.clone();
                sent.state = match (&error, give_up) {
                    (None, _) => DeliveryState::Delivered,
                    (Some(_), true) => DeliveryState::GaveUp,
                    (Some(_), false) => DeliveryState::Retrying,
                };
            }
            let Some(error) = error else { return };
            if give_up {
                tracing::error!(%event_id, event_type, attempts = attempt, %error, "webhook delivery given up");
                return;
            }
            tracing::warn!(%event_id, event_type, attempt, %error, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The signed body of one callback: the item's news, as the provider API documents it.
fn callback_body(
    event_id: &str,
    event_type: &str,
    request: &PayoutBatchRequest,
    state: &ItemState,
) -> String {
    let item = request
        .items
        .iter()
        .find(|i| i.reference == state.reference);
    json!({
        "id": event_id,
        "type": event_type,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "batch_id": request.batch_id,
            "reference": state.reference,
            "amount": item.map(|i| i.amount.clone()),
            "currency": request.currency,
            "provider_reference": state.provider_reference,
            "reason": state.reason,
        }
    })
    .to_string()
}
