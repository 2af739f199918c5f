//! The driver: one seed's world (its own table on the shared DynamoDB Local, its own sandbox
//! provider, a mailbox that catches the provider's signed callbacks), the execution of each
//! operation through the real handlers and operator commands, and the drive to quiescence.

use super::model::{Fact, Model};
use super::ops::*;
use super::rng::Rng;
use crate::faults::{Fault as StoreFault, FaultyStore, When};
use crate::*;
use futures::future::join_all;
use lambda_runtime::{Context, LambdaEvent};
use rust_decimal::Decimal;
use sandbox_provider::{Sandbox, SandboxConfig};
use serde_json::{json, Value};
use shared::domain::{BatchStatus, Currencies, WithdrawalStatus};
use shared::payouts::batcher::{Batcher, BatcherConfig, RunSummary};
use shared::payouts::provider::{HttpProvider, ItemStatus, PayoutProvider, StatusOutcome};
use shared::payouts::reconcile::MismatchKind;
use shared::payouts::webhook::WebhookProcessor;
use shared::requests::withdrawals::WithdrawalService;
use shared::store::Refusal;
use shared::store::{BatchStore, DynamoStore, PayoutStore, ScanReport, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The provider client's timeout; the sandbox's injected hang is longer.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_millis(400);
const PROVIDER_HANG: Duration = Duration::from_millis(500);
/// A crashing run's whole invocation: it is dropped at this point if it hangs.
const CRASH_BUDGET: Duration = Duration::from_millis(700);
/// A healthy run's invocation budget.
const RUN_BUDGET: Duration = Duration::from_secs(30);
/// A client or the provider gives up on a call whose store call was made to hang after this
/// long (long enough that a call that was not made to hang always answers first).
const CALL_TIMEOUT: Duration = Duration::from_millis(600);
/// `USD` has a daily limit per user, so `daily_limit_exceeded` is reachable.
pub const CURRENCIES: &str = "USD:2:1:50000:900,EUR:2:1:50000,JPY:0:100:5000000";
pub const MAX_OPEN: u32 = 4;

/// Counts for the report.
#[derive(Default, Clone, Debug)]
pub struct Stats {
    pub steps: u64,
    pub ops: BTreeMap<&'static str, u64>,
    /// Wall time per kind of step, and of the checks (ms).
    pub op_ms: BTreeMap<&'static str, u64>,
    pub requests: u64,
    pub valid_requests: u64,
    /// New withdrawals (201, not replayed).
    pub accepted: u64,
    pub replays: u64,
    pub store_faults: u64,
    pub crashes: u64,
    pub provider_faults: u64,
    pub memory_changes: u64,
    pub callbacks_delivered: u64,
    pub callbacks_duplicated: u64,
    pub callbacks_dropped: u64,
    pub webhook_5xx: u64,
    pub operator_rejects: u64,
    pub operator_refusals: u64,
    pub operator_retries: u64,
    pub run_errors: u64,
    /// At quiescence: withdrawals left waiting for the provider's answer (documented).
    pub waiting_lost: u64,
    pub waiting_pending: u64,
    pub returns_flagged_by_reconcile: u64,
    /// Paid there, rejected here: the provider's 404 for a batch it recorded and lost.
    pub provider_contract_broken: u64,
    pub settled: u64,
    pub returned: u64,
    pub rejected: u64,
    pub cancelled: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        for (k, v) in &o.ops {
            *self.ops.entry(*k).or_default() += v;
        }
        for (k, v) in &o.op_ms {
            *self.op_ms.entry(*k).or_default() += v;
        }
        macro_rules! sum { ($s:expr, $o:expr; $($f:ident),*) => { $( $s.$f += $o.$f; )* } }
        sum!(
            self, o;
            requests,
            valid_requests,
            accepted,
            replays,
            store_faults,
            crashes,
            provider_faults,
            memory_changes,
            callbacks_delivered,
            callbacks_duplicated,
            callbacks_dropped,
            webhook_5xx,
            operator_rejects,
            operator_refusals,
            operator_retries,
            run_errors,
            waiting_lost,
            waiting_pending,
            returns_flagged_by_reconcile,
            provider_contract_broken,
            settled,
            returned,
            rejected,
            cancelled
        );
    }
}

#[derive(Clone, Debug)]
struct Callback {
    /// The provider's event id (a retry of one event keeps it).
    id: String,
    body: String,
    kind: String,
    reference: String,
}

pub struct World {
    seed: u64,
    p: PayoutEnv,
    provider: Arc<HttpProvider>,
    webhook: provider_webhook::App,
    /// Each function's store, built once (as a cold start would).
    request_store: Arc<DynamoStore>,
    batcher_store: Arc<DynamoStore>,
    webhook_store: Arc<DynamoStore>,
    inbox: Arc<Mutex<Vec<Callback>>>,
    queue: Mutex<Vec<Callback>>,
    dropped: Mutex<Vec<Callback>>,
    /// References whose `payout.returned` our webhook acknowledged.
    returned_delivered: Mutex<BTreeSet<String>>,
    lease_horizon: Mutex<Instant>,
    pub stats: Mutex<Stats>,
    credit_seq: Mutex<u64>,
}

fn user(n: usize) -> String {
    format!("u{n}")
}

fn ulid_text() -> String {
    ulid::Ulid::new().to_string()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn batcher_config(cfg: BatcherCfg) -> BatcherConfig {
    let mut c = BatcherConfig {
        provider_timeout: PROVIDER_TIMEOUT,
        safety_margin: Duration::from_millis(100),
        lease_margin: Duration::ZERO,
        ..BatcherConfig::default()
    };
    match cfg {
        BatcherCfg::Normal => {}
        BatcherCfg::Stale => c.stale_after = Duration::ZERO,
        BatcherCfg::Escalate => {
            c.stale_after = Duration::ZERO;
            c.escalate_after = Duration::ZERO;
        }
        BatcherCfg::Reconcile => {
            c.reconcile_after = Duration::ZERO;
            c.reconcile_again_after = Duration::ZERO;
        }
        BatcherCfg::OneAttempt => c.max_attempts = 1,
    }
    c
}

/// An invocation of the `payout-batcher` function through its handler, with the scheduled
/// event and a deadline `budget` from now.
async fn invoke<S, P>(
    app: &payout_batcher::App<S, P>,
    budget: Duration,
) -> Result<RunSummary, String>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    let event: Value =
        serde_json::from_str(include_str!("../../payloads/scheduled-event.json")).unwrap();
    let mut ctx = Context::default();
    ctx.request_id = format!("sim-{}", ulid_text());
    ctx.deadline = (chrono::Utc::now().timestamp_millis() as u64) + ms(budget);
    app.handle(LambdaEvent::new(event, ctx))
        .await
        .map_err(|e| e.to_string())
}

/// Serves a mailbox for the sandbox's callbacks: each signed event is kept (and acknowledged),
/// to be delivered to the webhook handler when the schedule says.
async fn spawn_mailbox(inbox: Arc<Mutex<Vec<Callback>>>) -> String {
    use axum::body::Bytes;
    let router = axum::Router::new().route(
        "/webhooks/provider",
        axum::routing::post(move |body: Bytes| {
            let inbox = inbox.clone();
            async move {
                let body = String::from_utf8_lossy(&body).into_owned();
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                inbox.lock().unwrap().push(Callback {
                    id: v["id"].as_str().unwrap_or("").to_string(),
                    kind: v["type"].as_str().unwrap_or("").to_string(),
                    reference: v["data"]["reference"].as_str().unwrap_or("").to_string(),
                    body,
                });
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}/webhooks/provider")
}

fn request_body(spec: &RequestSpec) -> String {
    let ccy = CCYS[spec.ccy];
    let yen = ccy == "JPY";
    let mut v =
        json!({"currency": ccy, "amount": spec.amount, "bank_account": ACCOUNTS[spec.account]});
    match spec.invalid {
        None => {}
        Some(Invalid::Currency) => v["currency"] = json!("GBP"),
        Some(Invalid::BelowMinimum) => v["amount"] = json!(if yen { "50" } else { "0.50" }),
        Some(Invalid::AboveMaximum) => {
            v["amount"] = json!(if yen { "5000001" } else { "50000.01" })
        }
        Some(Invalid::BankAccount) => v["bank_account"] = json!("DE89370400440532013001"),
        Some(Invalid::ExtraField) => v["user_id"] = json!("someone-else"),
        Some(Invalid::Json) => return r#"{"currency":"USD","amount":"#.to_string(),
        Some(Invalid::Amount) => v["amount"] = json!(if yen { "1.5" } else { "1.001" }),
    }
    v.to_string()
}

/// The model's form of a valid request: "USD|12.50|0".
fn normal_body(spec: &RequestSpec) -> String {
    format!("{}|{}|{}", CCYS[spec.ccy], spec.amount, spec.account)
}

fn spec_from_normal(user: usize, body: &str, key: KeyUse) -> RequestSpec {
    let parts: Vec<&str> = body.split('|').collect();
    RequestSpec {
        user,
        ccy: CCYS.iter().position(|c| *c == parts[0]).unwrap(),
        amount: parts[1].to_string(),
        account: parts[2].parse().unwrap(),
        key,
        invalid: None,
    }
}

/// What one operation did: facts for the model and a line for the step log.
#[derive(Default)]
pub struct Done {
    pub facts: Vec<Fact>,
    pub log: Vec<String>,
}

impl Done {
    fn line(&mut self, s: impl Into<String>) {
        self.log.push(s.into());
    }
    fn bad(&mut self, s: impl Into<String>) {
        let s = s.into();
        self.log.push(format!("VIOLATION {s}"));
        self.facts.push(Fact::Violation(s));
    }
    fn merge(&mut self, o: Done) {
        self.facts.extend(o.facts);
        self.log.extend(o.log);
    }
}

impl World {
    pub async fn new(seed: u64) -> Self {
        let currencies = Currencies::parse_config(CURRENCIES).unwrap();
        let env = TestEnv::with_config(MAX_OPEN, currencies).await;
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let mailbox = spawn_mailbox(inbox.clone()).await;
        let mut config = SandboxConfig::new(
            API_KEY,
            shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap(),
        );
        config.webhook_url = Some(mailbox);
        config.callback_delay = Duration::ZERO;
        config.return_delay = Duration::ZERO;
        config.hang = PROVIDER_HANG;
        config
            .fail_accounts
            .insert(ACCOUNTS[FAILING_ACCOUNT].to_string());
        config
            .return_accounts
            .insert(ACCOUNTS[RETURNED_ACCOUNT].to_string());
        let sandbox = Sandbox::new(config);
        let addr = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let p = PayoutEnv {
            env,
            sandbox,
            provider_url: format!("http://{addr}"),
        };
        let provider =
            Arc::new(HttpProvider::new(&p.provider_url, API_KEY, PROVIDER_TIMEOUT).unwrap());
        let webhook = p.webhook_app(&[WEBHOOK_SECRET]);
        Self {
            seed,
            request_store: p.env.store_for(REQUEST_FN),
            batcher_store: p.env.store_for(BATCHER_FN),
            webhook_store: p.env.store_for(WEBHOOK_FN),
            p,
            provider,
            webhook,
            inbox,
            queue: Mutex::default(),
            dropped: Mutex::default(),
            returned_delivered: Mutex::default(),
            lease_horizon: Mutex::new(Instant::now()),
            stats: Mutex::default(),
            credit_seq: Mutex::new(0),
        }
    }

    pub fn table(&self) -> &str {
        self.p.env.store.table_name()
    }

    /// Drops the seed's table (DynamoDB Local keeps every table in memory).
    pub async fn p_delete_table(&self) -> Result<(), String> {
        self.p
            .env
            .store
            .client()
            .delete_table()
            .table_name(self.table())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap())
    }

    /// Waits until the sandbox has handed every callback it is going to send to the mailbox,
    /// then moves them to the delivery queue.
    pub async fn sync_callbacks(&self) {
        let started = Instant::now();
        while self.p.sandbox.callbacks_in_flight() > 0
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let new: Vec<Callback> = std::mem::take(&mut *self.inbox.lock().unwrap());
        self.queue.lock().unwrap().extend(new);
    }

    pub async fn scan(&self) -> ScanReport {
        self.p.env.store.scan_all().await.expect("scan")
    }

    pub fn ledger(&self) -> Vec<sandbox_provider::LedgerEntry> {
        self.p.sandbox.ledger()
    }

    /// Batches the provider answers 404 for although it recorded them.
    pub fn lost_batches(&self) -> BTreeSet<String> {
        self.p.sandbox.memory().lost_batches
    }

    /// Batches the provider lost before anyone heard it had them: the only ones whose 404 no
    /// client can tell from "never recorded" (those it lost after a `found` answer are not).
    pub fn lost_unheard(&self) -> BTreeSet<String> {
        let memory = self.p.sandbox.memory();
        memory
            .lost_batches
            .difference(&memory.lost_after_found)
            .cloned()
            .collect()
    }

    fn request_app(
        &self,
        fault: Option<&StoreFaultSpec>,
    ) -> (withdrawal_request::App, Option<Arc<FaultyStore>>) {
        let store = self.request_store.clone();
        let currencies = self.p.env.currencies.clone();
        match fault {
            None => (
                withdrawal_request::App::new(
                    WithdrawalService::new(store, currencies, MAX_OPEN),
                    shared::http::auth::Authenticator::ApiGatewayJwt,
                ),
                None,
            ),
            Some(f) => {
                let faulty = Arc::new(FaultyStore::new(
                    store,
                    vec![StoreFault::new(f.method, f.nth, f.when)],
                ));
                (
                    withdrawal_request::App::new(
                        WithdrawalService::new(faulty.clone(), currencies, MAX_OPEN),
                        shared::http::auth::Authenticator::ApiGatewayJwt,
                    ),
                    Some(faulty),
                )
            }
        }
    }

    fn count_fired(&self, faulty: &Option<Arc<FaultyStore>>) -> Vec<String> {
        let fired = faulty.as_ref().map(|f| f.fired()).unwrap_or_default();
        let crashes = fired.iter().filter(|f| f.contains("Hang")).count() as u64;
        self.stat(|s| {
            s.store_faults += fired.len() as u64;
            s.crashes += crashes;
        });
        fired
    }

    /// A call through the user API; `None` when the client gave up (the call hung).
    async fn api(
        &self,
        app: &withdrawal_request::App,
        req: lambda_http::Request,
    ) -> Option<TestResponse> {
        tokio::time::timeout(CALL_TIMEOUT.max(Duration::from_secs(5)), async {
            TestResponse::from(app.handle(req).await)
        })
        .await
        .ok()
    }

    /// The same, but a hang injected by a fault gives up quickly.
    async fn api_maybe_hanging(
        &self,
        app: &withdrawal_request::App,
        req: lambda_http::Request,
        hangs: bool,
    ) -> Option<TestResponse> {
        if hangs {
            tokio::time::timeout(CALL_TIMEOUT, async {
                TestResponse::from(app.handle(req).await)
            })
            .await
            .ok()
        } else {
            self.api(app, req).await
        }
    }

    /// Runs one operation (a `Together` runs its operations at once).
    pub fn exec<'a>(
        &'a self,
        op: &'a Op,
        model: &'a Model,
        step: usize,
    ) -> futures::future::LocalBoxFuture<'a, Done> {
        Box::pin(async move {
            self.stat(|s| *s.ops.entry(op.kind()).or_default() += 1);
            match op {
                Op::Together(ops) => {
                    let all = join_all(ops.iter().map(|o| self.exec(o, model, step))).await;
                    let mut done = Done::default();
                    for (i, d) in all.into_iter().enumerate() {
                        done.line(format!("[{i}]"));
                        done.merge(d);
                    }
                    done
                }
                Op::Credit {
                    user: u,
                    ccy,
                    amount,
                    reference,
                    fault,
                } => {
                    self.credit(model, step, *u, *ccy, amount, reference, fault.as_ref())
                        .await
                }
                Op::Request { req, fault } => self.request(model, req, fault.as_ref(), None).await,
                Op::Burst { reqs } => {
                    // Copies of the first request share its key: a client retrying while its
                    // first attempt is still in flight.
                    let first_key = format!("k-{}", ulid_text());
                    let all = join_all(reqs.iter().map(|r| {
                        let key = (r == &reqs[0]).then(|| first_key.clone());
                        self.request(model, r, None, key)
                    }))
                    .await;
                    let mut done = Done::default();
                    for d in all {
                        done.merge(d);
                    }
                    done
                }
                Op::Cancel {
                    user: u,
                    pick,
                    fault,
                } => self.cancel(model, *u, *pick, fault.as_ref()).await,
                Op::Get { user: u, pick } => self.get(model, *u, *pick).await,
                Op::List { user: u, status } => self.list(model, *u, *status).await,
                Op::Balances { user: u } => self.balances(*u).await,
                Op::Batcher { runs, cfg } => self.batcher(*runs, *cfg).await,
                Op::CrashBatcher { cfg, fault } => self.crash_batcher(*cfg, fault).await,
                Op::ProviderFault(f) => {
                    self.p.sandbox.inject(&[*f]);
                    self.stat(|s| s.provider_faults += 1);
                    let mut d = Done::default();
                    d.line(format!("next payout call: {f:?}"));
                    d
                }
                Op::ProviderMemory(m) => {
                    use sandbox_provider::MemoryChange as M;
                    let change = match m {
                        MemoryChange::ForgetKeys => M {
                            idempotency_key_ttl_ms: Some(Some(0)),
                            ..M::default()
                        },
                        MemoryChange::KeepKeys => M {
                            idempotency_key_ttl_ms: Some(None),
                            ..M::default()
                        },
                        MemoryChange::LoseNext => M {
                            lose_next_batches: Some(1),
                            ..M::default()
                        },
                        MemoryChange::PendingNext => M {
                            pending_next_batches: Some(1),
                            ..M::default()
                        },
                        MemoryChange::LoseAfterFound => {
                            self.p
                                .sandbox
                                .inject(&[sandbox_provider::Fault::TimeoutAfterRecord]);
                            M {
                                pending_next_batches: Some(1),
                                lose_next_found: Some(1),
                                ..M::default()
                            }
                        }
                    };
                    let now = self.p.sandbox.change_memory(change);
                    self.stat(|s| s.memory_changes += 1);
                    let mut d = Done::default();
                    d.line(format!("provider memory: {now:?}"));
                    d
                }
                Op::Deliver {
                    picks,
                    duplicate,
                    concurrent,
                    fault,
                } => {
                    self.deliver(picks, *duplicate, *concurrent, fault.as_ref())
                        .await
                }
                Op::DropCallback { pick } => {
                    let mut d = Done::default();
                    let mut q = self.queue.lock().unwrap();
                    if !q.is_empty() {
                        let i = (*pick % q.len() as u64) as usize;
                        let cb = q.remove(i);
                        d.line(format!("provider gives up {} {}", cb.kind, cb.reference));
                        self.dropped.lock().unwrap().push(cb);
                        self.stat(|s| s.callbacks_dropped += 1);
                    }
                    d
                }
                Op::OperatorReject { pick } => self.operator_reject(*pick).await,
                Op::OperatorRetry { pick } => self.operator_retry(*pick).await,
                Op::Reconcile => self.reconcile().await.0,
                Op::TimePasses => {
                    let until = *self.lease_horizon.lock().unwrap();
                    tokio::time::sleep_until(until.into()).await;
                    let mut d = Done::default();
                    d.line("crashed runs' leases expired");
                    d
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn credit(
        &self,
        model: &Model,
        step: usize,
        u: usize,
        ccy: usize,
        amount: &str,
        reference: &RefUse,
        fault: Option<&StoreFaultSpec>,
    ) -> Done {
        let mut d = Done::default();
        let (reference, who, ccy_code, amount, conflict) = match reference {
            RefUse::New => {
                let n = {
                    let mut s = self.credit_seq.lock().unwrap();
                    *s += 1;
                    *s
                };
                (
                    format!("cr-{}-{step}-{n}", self.seed),
                    user(u),
                    CCYS[ccy].to_string(),
                    amount.to_string(),
                    false,
                )
            }
            RefUse::Replay(pick) | RefUse::Conflict(pick) => {
                let Some((r, (who, c, a))) = model.earlier_credit(*pick) else {
                    d.line("no credit to replay");
                    return d;
                };
                let conflict = matches!(reference, RefUse::Conflict(_));
                let a = if conflict { a + Decimal::ONE } else { a };
                (r, who, c, a.to_string(), conflict)
            }
        };
        let record = credit_record(
            self.p.env.currencies.get(&ccy_code).unwrap(),
            &who,
            &amount,
            &reference,
        );
        let value = record.amount.value();
        let attempt = |faulty: Option<Arc<FaultyStore>>, limit: Duration| {
            let store = self.p.env.store.clone();
            let record = record.clone();
            async move {
                let call = async {
                    match &faulty {
                        Some(f) => f.credit(&record).await,
                        None => store.credit(&record).await,
                    }
                };
                tokio::time::timeout(limit, call).await.ok()
            }
        };
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let faulty = fault.map(|f| {
            Arc::new(FaultyStore::new(
                self.p.env.store.clone(),
                vec![StoreFault::new(f.method, f.nth, f.when)],
            ))
        });
        let mut result = attempt(
            faulty.clone(),
            if hangs {
                CALL_TIMEOUT
            } else {
                Duration::from_secs(10)
            },
        )
        .await;
        let fired = self.count_fired(&faulty);
        let mut tries = 1;
        // An operator whose credit got no clear answer runs it again: a reference credits once.
        while !matches!(
            result,
            Some(Ok(_)) | Some(Err(StoreError::Refused(Refusal::ReferenceReused(_))))
        ) && tries < 3
        {
            result = attempt(None, Duration::from_secs(10)).await;
            tries += 1;
        }
        let landed = match &result {
            Some(Ok(_)) => Some(true),
            Some(Err(StoreError::Refused(Refusal::ReferenceReused(_)))) => Some(false),
            _ => None,
        };
        if conflict && landed == Some(true) {
            d.bad(format!(
                "credit {reference} reused for another amount was accepted"
            ));
        }
        if !conflict && landed == Some(false) {
            d.bad(format!(
                "credit {reference} replayed as the same credit was refused"
            ));
        }
        d.line(format!(
            "credit {reference} {who} {ccy_code} {amount}: {} (faults {fired:?}, tries {tries})",
            match &result {
                Some(Ok(o)) => format!("{o:?}").split('(').next().unwrap_or("").to_string(),
                Some(Err(e)) => format!("error {e}"),
                None => "no answer".into(),
            }
        ));
        d.facts.push(Fact::Credit {
            reference,
            user: who,
            ccy: ccy_code,
            amount: value,
            landed,
        });
        d
    }

    async fn request(
        &self,
        model: &Model,
        spec: &RequestSpec,
        fault: Option<&StoreFaultSpec>,
        shared_key: Option<String>,
    ) -> Done {
        let mut d = Done::default();
        let who = user(spec.user);
        // Resolve the key (and, for a replay, the earlier request's body).
        let (key, spec) = match &spec.key {
            KeyUse::Fresh => (
                Some(shared_key.unwrap_or_else(|| format!("k-{}", ulid_text()))),
                spec.clone(),
            ),
            KeyUse::Missing => (None, spec.clone()),
            KeyUse::Replay(pick) => match model.earlier_key(&who, *pick) {
                Some((k, body)) => (
                    Some(k),
                    spec_from_normal(spec.user, &body, spec.key.clone()),
                ),
                None => (Some(format!("k-{}", ulid_text())), spec.clone()),
            },
            KeyUse::Reuse(pick) => match model.earlier_key(&who, *pick) {
                Some((k, body)) => {
                    let mut s = spec.clone();
                    if normal_body(&s) == body {
                        s.account = (s.account + 1) % ACCOUNTS.len();
                    }
                    (Some(k), s)
                }
                None => (Some(format!("k-{}", ulid_text())), spec.clone()),
            },
        };
        let (app, faulty) = self.request_app(fault);
        let mut ev = ApiRequest::new("POST", "/withdrawals")
            .user(&who)
            .body(request_body(&spec));
        if let Some(k) = &key {
            ev = ev.header("idempotency-key", k);
        }
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let resp = self.api_maybe_hanging(&app, ev.build(), hangs).await;
        let fired = self.count_fired(&faulty);
        self.stat(|s| {
            s.requests += 1;
            if spec.invalid.is_none() && key.is_some() {
                s.valid_requests += 1;
            }
        });
        let (status, code, replayed, id) = match &resp {
            Some(r) => (
                r.status,
                r.error_code(),
                r.replayed,
                r.json()["id"].as_str().map(str::to_string),
            ),
            None => (0, String::new(), false, None),
        };
        d.line(format!(
            "POST {who} {} key={} → {status} {code}{}{} (faults {fired:?})",
            normal_body(&spec),
            key.as_deref().map(|k| &k[..k.len().min(10)]).unwrap_or("-"),
            id.as_deref().map(|i| format!(" {i}")).unwrap_or_default(),
            if replayed { " replayed" } else { "" },
        ));
        if status == 201 && !replayed {
            self.stat(|s| s.accepted += 1);
        }
        if replayed {
            self.stat(|s| s.replays += 1);
        }
        if key.is_none() {
            if status != 400 || code != "missing_idempotency_key" {
                d.bad(format!("a POST without a key answered {status} {code}"));
            }
            return d;
        }
        if let Some(invalid) = spec.invalid {
            // The key wins: under a recorded key the refused body is another request (422);
            // under any other, the refusal. The record is read only on this path, so a fault
            // there answers 503 (or hangs) like any.
            let refused = status == 400 && code == invalid.code();
            let reused = status == 422 && code == "idempotency_key_reused";
            let recorded = key.as_deref().and_then(|k| model.key_recorded(&who, k));
            let ok = match (status, recorded) {
                (0, _) => hangs,
                (500..=599, _) => !fired.is_empty(),
                (_, Some(true)) => reused,
                (_, Some(false)) => refused,
                (_, None) => refused || reused,
            };
            if !ok {
                d.bad(format!(
                    "invalid request ({invalid:?}) under a key recorded {recorded:?} answered {status} {code}"
                ));
            }
            return d;
        }
        let ok = match status {
            // The client stops waiting on a call armed to hang, whether or not the hang was
            // reached yet (a slow machine): the same ambiguous answer either way.
            0 => hangs,
            201 => id.is_some(),
            409 => [
                "insufficient_funds",
                "too_many_pending",
                "daily_limit_exceeded",
            ]
            .contains(&code.as_str()),
            422 => code == "idempotency_key_reused",
            500..=599 => !fired.is_empty(),
            _ => false,
        };
        if !ok {
            d.bad(format!("request answered {status} {code}"));
        }
        let amount = Decimal::from_str_exact(&spec.amount).unwrap_or_default();
        d.facts.push(Fact::Request {
            user: who,
            key,
            body: normal_body(&spec),
            ccy: CCYS[spec.ccy].to_string(),
            amount,
            status,
            id,
            replayed,
        });
        d
    }

    async fn cancel(
        &self,
        model: &Model,
        u: usize,
        pick: u64,
        fault: Option<&StoreFaultSpec>,
    ) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let mine = model.accepted_of(&who);
        let (id, known) = if mine.is_empty() {
            (shared::domain::WithdrawalId::new().to_string(), false)
        } else {
            (mine[(pick % mine.len() as u64) as usize].clone(), true)
        };
        let (app, faulty) = self.request_app(fault);
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let req = ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
            .user(&who)
            .build();
        let resp = self.api_maybe_hanging(&app, req, hangs).await;
        let fired = self.count_fired(&faulty);
        let (status, code) = resp
            .as_ref()
            .map(|r| (r.status, r.error_code()))
            .unwrap_or((0, String::new()));
        d.line(format!(
            "DELETE {who} {id} → {status} {code} (faults {fired:?})"
        ));
        let ok = match (status, known) {
            (200, true) => resp.as_ref().unwrap().json()["status"] == "CANCELLED",
            (409, true) => code == "not_cancellable",
            (404, false) => true,
            (0, _) => hangs,
            (500..=599, _) => !fired.is_empty(),
            _ => false,
        };
        if !ok {
            d.bad(format!("cancel of {id} answered {status} {code}"));
        }
        d
    }

    async fn get(&self, model: &Model, u: usize, pick: u64) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let mine = model.accepted_of(&who);
        if mine.is_empty() {
            return d;
        }
        let id = &mine[(pick % mine.len() as u64) as usize];
        let (app, _) = self.request_app(None);
        let req = ApiRequest::new("GET", &format!("/withdrawals/{id}"))
            .user(&who)
            .build();
        let Some(r) = self.api(&app, req).await else {
            d.bad("GET hung");
            return d;
        };
        let status = r.json()["status"].as_str().unwrap_or("").to_string();
        d.line(format!("GET {who} {id} → {} {status}", r.status));
        if r.status != 200 || r.json()["id"] != id.as_str() {
            d.bad(format!("GET of own {id} answered {}", r.status));
        }
        d.facts.push(Fact::Seen {
            user: who,
            id: id.clone(),
            status,
        });
        d
    }

    async fn list(&self, model: &Model, u: usize, status: Option<&'static str>) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let (app, _) = self.request_app(None);
        let mut cursor: Option<String> = None;
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let mut q = String::from("/withdrawals?limit=7");
            if let Some(s) = status {
                q.push_str(&format!("&status={s}"));
            }
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let Some(r) = self
                .api(&app, ApiRequest::new("GET", &q).user(&who).build())
                .await
            else {
                d.bad("list hung");
                return d;
            };
            if r.status != 200 {
                d.bad(format!("list answered {} {}", r.status, r.error_code()));
                return d;
            }
            let v = r.json();
            for item in v["items"].as_array().cloned().unwrap_or_default() {
                let id = item["id"].as_str().unwrap_or("").to_string();
                let st = item["status"].as_str().unwrap_or("").to_string();
                if status.is_some_and(|s| s != st) {
                    d.bad(format!("list filtered by {status:?} returned {id} {st}"));
                }
                if !seen.insert(id.clone()) {
                    d.bad(format!("list returned {id} twice"));
                }
                d.facts.push(Fact::Seen {
                    user: who.clone(),
                    id,
                    status: st,
                });
            }
            cursor = v["next_cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        if status.is_none() {
            for id in model.accepted_of(&who) {
                if !seen.contains(&id) {
                    d.bad(format!("{who}: {id} answered 201 but not listed"));
                }
            }
        }
        d.line(format!("list {who} {status:?} → {} items", seen.len()));
        d
    }

    async fn balances(&self, u: usize) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let (app, _) = self.request_app(None);
        let Some(r) = self
            .api(&app, ApiRequest::new("GET", "/balances").user(&who).build())
            .await
        else {
            d.bad("balances hung");
            return d;
        };
        if r.status != 200 {
            d.bad(format!("balances answered {}", r.status));
        }
        for b in r.json().as_array().cloned().unwrap_or_default() {
            for field in ["available", "locked"] {
                let v: Decimal = b[field].as_str().unwrap_or("0").parse().unwrap_or_default();
                if v < Decimal::ZERO {
                    d.bad(format!("{who} {}: {field} {v} < 0", b["currency"]));
                }
            }
        }
        d.line(format!("balances {who} → {}", r.body));
        d
    }

    async fn batcher(&self, runs: usize, cfg: BatcherCfg) -> Done {
        let mut d = Done::default();
        let batchers: Vec<_> = (0..runs)
            .map(|_| {
                payout_batcher::App::new(Batcher::new(
                    self.batcher_store.clone(),
                    self.provider.clone(),
                    self.p.env.currencies.clone(),
                    batcher_config(cfg),
                ))
            })
            .collect();
        let results = join_all(batchers.iter().map(|b| invoke(b, RUN_BUDGET))).await;
        for r in results {
            match r {
                Ok(s) => {
                    let errors = s.errors.len() as u64;
                    self.stat(|st| st.run_errors += errors);
                    d.line(format!("run {cfg:?}: {}", summary_line(&s)));
                }
                Err(e) => {
                    self.stat(|st| st.run_errors += 1);
                    d.line(format!("run {cfg:?} failed: {e}"));
                }
            }
        }
        d
    }

    async fn crash_batcher(&self, cfg: BatcherCfg, fault: &StoreFaultSpec) -> Done {
        let mut d = Done::default();
        let faulty = Arc::new(FaultyStore::new(
            self.batcher_store.clone(),
            vec![StoreFault::new(fault.method, fault.nth, fault.when)],
        ));
        let batcher = payout_batcher::App::new(Batcher::new(
            faulty.clone(),
            self.provider.clone(),
            self.p.env.currencies.clone(),
            batcher_config(cfg),
        ));
        let started = Instant::now();
        {
            // Every lease the run takes ends by its deadline + the provider timeout.
            let mut h = self.lease_horizon.lock().unwrap();
            *h = (*h).max(started + CRASH_BUDGET + PROVIDER_TIMEOUT + Duration::from_millis(50));
        }
        let r = tokio::time::timeout(CRASH_BUDGET, invoke(&batcher, CRASH_BUDGET)).await;
        let fired = self.count_fired(&Some(faulty));
        d.line(format!(
            "crash run {cfg:?} {fault:?}: {} (fired {fired:?})",
            match r {
                Err(_) => "killed".to_string(),
                Ok(Ok(s)) => summary_line(&s),
                Ok(Err(e)) => format!("failed: {e}"),
            }
        ));
        d
    }

    /// Delivers one callback (signed now_secs, as a provider's retry is) to the webhook handler.
    async fn deliver_one(
        &self,
        cb: &Callback,
        faulty: Option<&Arc<FaultyStore>>,
        hangs: bool,
    ) -> Option<TestResponse> {
        let sig = sign(&cb.body, WEBHOOK_SECRET, now_secs());
        let req = webhook_request(&cb.body, Some(sig));
        let limit = if hangs {
            CALL_TIMEOUT
        } else {
            Duration::from_secs(10)
        };
        match faulty {
            Some(f) => {
                let app = provider_webhook::App::from(WebhookProcessor::new(
                    f.clone(),
                    vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
                    300,
                ));
                tokio::time::timeout(limit, deliver(&app, req)).await.ok()
            }
            None => tokio::time::timeout(limit, deliver(&self.webhook, req))
                .await
                .ok(),
        }
    }

    async fn deliver(
        &self,
        picks: &[u64],
        duplicate: bool,
        concurrent: bool,
        fault: Option<&StoreFaultSpec>,
    ) -> Done {
        let mut d = Done::default();
        let chosen: Vec<(usize, Callback)> = {
            let q = self.queue.lock().unwrap();
            if q.is_empty() {
                return d;
            }
            let mut idx: Vec<usize> = picks
                .iter()
                .map(|p| (*p % q.len() as u64) as usize)
                .collect();
            let mut seen = BTreeSet::new();
            idx.retain(|i| seen.insert(*i));
            idx.into_iter().map(|i| (i, q[i].clone())).collect()
        };
        let faulty = fault.map(|f| {
            Arc::new(FaultyStore::new(
                self.webhook_store.clone(),
                vec![StoreFault::new(f.method, f.nth, f.when)],
            ))
        });
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let mut jobs = Vec::new();
        for (i, cb) in &chosen {
            for _ in 0..if duplicate { 2 } else { 1 } {
                jobs.push((*i, cb.clone()));
            }
        }
        if duplicate {
            self.stat(|s| s.callbacks_duplicated += chosen.len() as u64);
        }
        let answers: Vec<Option<TestResponse>> = if concurrent {
            join_all(
                jobs.iter()
                    .map(|(_, cb)| self.deliver_one(cb, faulty.as_ref(), hangs)),
            )
            .await
        } else {
            let mut out = Vec::new();
            for (_, cb) in &jobs {
                out.push(self.deliver_one(cb, faulty.as_ref(), hangs).await);
            }
            out
        };
        let fired = self.count_fired(&faulty);
        let mut acked = BTreeSet::new();
        for ((_, cb), answer) in jobs.iter().zip(&answers) {
            let (status, result) = match answer {
                Some(r) => (
                    r.status,
                    r.json()["status"].as_str().unwrap_or("").to_string(),
                ),
                None => (0, String::new()),
            };
            d.line(format!(
                "webhook {} {} → {status} {result}",
                cb.kind, cb.reference
            ));
            match status {
                200 => {
                    if ["conflict", "unknown_withdrawal"].contains(&result.as_str()) {
                        d.bad(format!(
                            "webhook {} {} answered {result}",
                            cb.kind, cb.reference
                        ));
                    }
                    acked.insert(cb.id.clone());
                    self.stat(|s| s.callbacks_delivered += 1);
                    if cb.kind == "payout.returned" {
                        self.returned_delivered
                            .lock()
                            .unwrap()
                            .insert(cb.reference.clone());
                    }
                }
                500..=599 if !fired.is_empty() => self.stat(|s| s.webhook_5xx += 1),
                // The provider stopped waiting on a delivery armed to hang (reached or not on
                // a slow machine); it retries, as it does after any unanswered callback.
                0 if hangs => self.stat(|s| s.webhook_5xx += 1),
                _ => d.bad(format!(
                    "webhook {} {} answered {status}",
                    cb.kind, cb.reference
                )),
            }
        }
        if !fired.is_empty() {
            d.line(format!("webhook faults fired {fired:?}"));
        }
        // The provider stops retrying what was acknowledged; the rest stays queued.
        self.queue
            .lock()
            .unwrap()
            .retain(|cb| !acked.contains(&cb.id));
        d
    }

    async fn operator_reject(&self, pick: u64) -> Done {
        let mut d = Done::default();
        let report = self.scan().await;
        let flagged: BTreeSet<_> = report
            .batches
            .iter()
            .filter(|b| b.status == BatchStatus::NeedsOperator)
            .map(|b| b.id)
            .collect();
        let mut open: Vec<_> = report
            .withdrawals
            .iter()
            .filter(|w| w.status.is_open())
            .collect();
        open.sort_by_key(|w| w.id);
        let in_flagged: Vec<_> = open
            .iter()
            .filter(|w| w.batch_id.is_some_and(|b| flagged.contains(&b)))
            .copied()
            .collect();
        let pool = if !in_flagged.is_empty() && pick % 10 < 7 {
            in_flagged
        } else {
            open
        };
        if pool.is_empty() {
            return d;
        }
        let w = pool[(pick / 10 % pool.len() as u64) as usize];
        d.merge(self.reject(w.id).await);
        d
    }

    async fn reject(&self, id: shared::domain::WithdrawalId) -> Done {
        let mut d = Done::default();
        let r = shared::operator::operations::reject_withdrawal(
            &*self.p.env.store,
            self.provider.as_ref(),
            id,
            "operator (simulation)",
            Duration::ZERO,
        )
        .await;
        match r {
            Ok(w) => {
                self.stat(|s| s.operator_rejects += 1);
                if w.status != WithdrawalStatus::Rejected {
                    d.bad(format!("operator reject of {id} left it {}", w.status));
                }
                d.facts.push(Fact::OperatorRejected { id: id.to_string() });
                d.line(format!("operator reject {id}: done"));
            }
            Err(e) => {
                self.stat(|s| s.operator_refusals += 1);
                d.line(format!("operator reject {id}: {e}"));
            }
        }
        d
    }

    async fn flagged_batches(&self) -> Vec<shared::domain::Batch> {
        let mut v: Vec<_> = self
            .p
            .env
            .store
            .all_batches()
            .await
            .expect("batches")
            .into_iter()
            .filter(|b| b.status == BatchStatus::NeedsOperator)
            .collect();
        v.sort_by_key(|b| b.id);
        v
    }

    async fn operator_retry(&self, pick: u64) -> Done {
        let mut d = Done::default();
        let flagged = self.flagged_batches().await;
        if flagged.is_empty() {
            return d;
        }
        let b = &flagged[(pick % flagged.len() as u64) as usize];
        let r = shared::operator::operations::retry_batch(&*self.p.env.store, b.id).await;
        if r.is_ok() {
            self.stat(|s| s.operator_retries += 1);
        }
        d.line(format!("operator retry-batch {}: {r:?}", b.id));
        d
    }

    /// `operator reconcile` over every final batch: only mismatches the scenario explains are
    /// allowed (a `payout.returned` not delivered yet, a batch the provider lost). Returns the
    /// withdrawals it reported to an operator (a return not applied here, or a member of a batch
    /// the provider lost).
    pub async fn reconcile(&self) -> (Done, BTreeSet<String>) {
        let mut d = Done::default();
        let mut return_not_applied = BTreeSet::new();
        let lost = self.p.sandbox.memory().lost_batches;
        let delivered = self.returned_delivered.lock().unwrap().clone();
        let batches = self.p.env.store.all_batches().await.expect("batches");
        let mut n = 0;
        for b in batches.iter().filter(|b| b.status.is_terminal()) {
            let found = match shared::payouts::reconcile::batch(
                self.p.env.store.as_ref(),
                self.provider.as_ref(),
                b,
            )
            .await
            {
                Ok(f) => f,
                Err(e) => {
                    d.line(format!("reconcile {}: {e}", b.id));
                    continue;
                }
            };
            n += 1;
            for m in found {
                let explained = match m.kind {
                    MismatchKind::ReturnNotApplied => !delivered.contains(&m.withdrawal_id),
                    MismatchKind::UnknownToProvider => lost.contains(&b.id.to_string()),
                    _ => false,
                };
                d.line(format!("reconcile mismatch: {m}"));
                // A return we never heard of is reported as not applied; if the provider has
                // since lost the batch too, as unknown to it: either way an operator is told
                // about that withdrawal (seed 44).
                if matches!(
                    m.kind,
                    MismatchKind::ReturnNotApplied | MismatchKind::UnknownToProvider
                ) && explained
                {
                    return_not_applied.insert(m.withdrawal_id.clone());
                }
                if !explained {
                    d.bad(format!("reconcile: {m}"));
                }
            }
        }
        d.line(format!("reconciled {n} final batches"));
        (d, return_not_applied)
    }

    /// Delivers every queued callback, in the seed's order, each once.
    async fn deliver_all(&self, rng: &mut Rng) -> Done {
        let mut d = Done::default();
        for _ in 0..1000 {
            self.sync_callbacks().await;
            if self.queue.lock().unwrap().is_empty() {
                break;
            }
            d.merge(self.deliver(&[rng.next_u64()], false, false, None).await);
        }
        d
    }

    fn state_fingerprint(report: &ScanReport) -> String {
        let mut s: Vec<String> = report
            .withdrawals
            .iter()
            .map(|w| format!("{}{}", w.id, w.status))
            .chain(
                report
                    .batches
                    .iter()
                    .map(|b| format!("{}{}{}", b.id, b.status, b.attempts)),
            )
            .collect();
        s.sort();
        s.join(",")
    }

    /// Drives the system to quiescence: leases expired, every callback delivered, runs (with
    /// the clock moved past every threshold) repeated and flagged batches handled by an operator
    /// until nothing changes. Then the end-of-run checks.
    pub async fn quiesce(&self, model: &mut Model, log: &mut Vec<String>) -> Vec<String> {
        let mut bad = Vec::new();
        let mut rng = Rng::new(self.seed ^ 0xD1CE);
        let given_up = self.dropped.lock().unwrap().len();
        log.push(format!("  callbacks the provider gave up on: {given_up}"));
        let until = *self.lease_horizon.lock().unwrap();
        tokio::time::sleep_until(until.into()).await;
        let mut last = String::new();
        for round in 0..12 {
            let mut d = self.deliver_all(&mut rng).await;
            for cfg in [BatcherCfg::Normal, BatcherCfg::Escalate] {
                d.merge(self.batcher(1, cfg).await);
                d.merge(self.deliver_all(&mut rng).await);
            }
            for b in self.flagged_batches().await {
                if !b.provider_has_it() && !b.operator_rejected && rng.percent(70) {
                    d.merge(self.operator_retry_id(b.id).await);
                } else {
                    let members = self.p.env.store.members(&b).await.expect("members");
                    for w in members.iter().filter(|w| w.status.is_open()) {
                        d.merge(self.reject(w.id).await);
                    }
                }
            }
            d.merge(self.deliver_all(&mut rng).await);
            for f in &d.facts {
                bad.extend(model.learn(f));
            }
            log.extend(d.log.iter().map(|l| format!("  quiesce {round}: {l}")));
            let report = self.scan().await;
            bad.extend(model.check(&report, &self.ledger(), &self.lost_unheard()));
            let fp = Self::state_fingerprint(&report);
            let busy = report
                .withdrawals
                .iter()
                .any(|w| w.status == WithdrawalStatus::Pending)
                || report.batches.iter().any(|b| {
                    matches!(
                        b.status,
                        BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Rejecting
                    )
                });
            if fp == last && !busy {
                break;
            }
            last = fp;
        }
        bad.extend(self.final_checks(model, log).await);
        bad
    }

    async fn operator_retry_id(&self, id: shared::domain::BatchId) -> Done {
        let mut d = Done::default();
        let r = shared::operator::operations::retry_batch(&*self.p.env.store, id).await;
        if r.is_ok() {
            self.stat(|s| s.operator_retries += 1);
        }
        d.line(format!("operator retry-batch {id}: {r:?}"));
        d
    }

    async fn final_checks(&self, model: &mut Model, log: &mut Vec<String>) -> Vec<String> {
        let mut bad = Vec::new();
        let report = self.scan().await;
        let ledger = self.ledger();
        let batches: BTreeMap<_, _> = report.batches.iter().map(|b| (b.id, b)).collect();
        // Liveness: nothing pending, no batch the batcher still owes a send or a reject, and
        // every submitted withdrawal waiting for an answer the provider has not given.
        let mut waiting = BTreeSet::new();
        for w in &report.withdrawals {
            match w.status {
                WithdrawalStatus::Pending => {
                    bad.push(format!("{}: still PENDING at quiescence", w.id))
                }
                WithdrawalStatus::Submitted => {
                    let Some(b) = w.batch_id.and_then(|b| batches.get(&b)) else {
                        bad.push(format!("{}: SUBMITTED without a batch", w.id));
                        continue;
                    };
                    let why = match self.provider.batch_status(b.id).await {
                        StatusOutcome::NotFound if b.provider_has_it() => {
                            self.stat(|s| s.waiting_lost += 1);
                            Some("accepted, then lost by the provider")
                        }
                        StatusOutcome::Found(state)
                            if state.items.iter().any(|i| {
                                i.reference == w.id.to_string() && i.status == ItemStatus::Pending
                            }) =>
                        {
                            self.stat(|s| s.waiting_pending += 1);
                            Some("the provider keeps the item pending")
                        }
                        _ => None,
                    };
                    match why {
                        Some(why) => {
                            log.push(format!(
                                "  waits for the provider: {} in {} {} ({why})",
                                w.id, b.status, b.id
                            ));
                            waiting.insert(w.id.to_string());
                        }
                        None => bad.push(format!(
                            "{}: SUBMITTED at quiescence in {} batch {} with no documented wait",
                            w.id, b.status, b.id
                        )),
                    }
                }
                WithdrawalStatus::Settled => self.stat(|s| s.settled += 1),
                WithdrawalStatus::Returned => self.stat(|s| s.returned += 1),
                WithdrawalStatus::Rejected => self.stat(|s| s.rejected += 1),
                WithdrawalStatus::Cancelled => self.stat(|s| s.cancelled += 1),
            }
        }
        for b in &report.batches {
            if matches!(
                b.status,
                BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Rejecting
            ) {
                bad.push(format!("batch {} still {} at quiescence", b.id, b.status));
            }
            if matches!(b.status, BatchStatus::Accepted | BatchStatus::NeedsOperator)
                && !b.members.keys().any(|m| waiting.contains(&m.to_string()))
            {
                bad.push(format!(
                    "batch {} still {} with nothing to wait for",
                    b.id, b.status
                ));
            }
        }
        // Reconcile: a return the provider made that never reached us must be reported.
        let (d, mut not_applied) = self.reconcile().await;
        // A batch the provider accepted and then lost stays with an operator (above, a documented
        // wait): a return for one of its settled members that the provider gave up on reaches no
        // one but that operator, and reconcile looks only at final batches (seed 229).
        let lost = self.p.sandbox.memory().lost_batches;
        for b in batches
            .values()
            .filter(|b| !b.status.is_terminal() && lost.contains(&b.id.to_string()))
        {
            not_applied.extend(b.members.keys().map(|m| m.to_string()));
        }
        for f in &d.facts {
            bad.extend(model.learn(f));
        }
        log.extend(d.log.iter().map(|l| format!("  final: {l}")));
        // Paid there ⇔ settled (or returned) here; per user and currency, paid_out here equals
        // what the provider paid minus what it returned.
        let by_id: BTreeMap<String, _> = report
            .withdrawals
            .iter()
            .map(|w| (w.id.to_string(), w))
            .collect();
        let mut expected: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        for e in &ledger {
            let Some(w) = by_id.get(&e.reference) else {
                bad.push(format!("the provider paid {}, unknown here", e.reference));
                continue;
            };
            let key = (w.user_id.to_string(), w.currency.code().to_string());
            let theirs: Decimal = e.amount.parse().unwrap_or_default();
            match (w.status, e.returned) {
                (WithdrawalStatus::Settled, false) | (WithdrawalStatus::Returned, true) => {}
                (WithdrawalStatus::Settled, true) if not_applied.contains(&e.reference) => {
                    self.stat(|s| s.returns_flagged_by_reconcile += 1);
                }
                (WithdrawalStatus::Submitted, _) if waiting.contains(&e.reference) => continue,
                (WithdrawalStatus::Rejected, _) if model.contract_broken.contains(&e.reference) => {
                    self.stat(|s| s.provider_contract_broken += 1);
                    continue;
                }
                (st, returned) => bad.push(format!(
                    "{}: paid by the provider (returned: {returned}) but {st} here at quiescence",
                    e.reference
                )),
            }
            // What the provider paid and kept (a return not applied here is still paid out
            // here, and reported by reconcile above).
            if !e.returned
                || (w.status == WithdrawalStatus::Settled && not_applied.contains(&e.reference))
            {
                *expected.entry(key).or_default() += theirs;
            }
        }
        for (user, b) in &report.balances {
            let key = (user.to_string(), b.currency.code().to_string());
            let want = expected.get(&key).copied().unwrap_or_default();
            if b.paid_out != want {
                bad.push(format!(
                    "{} {}: paid_out {} != provider paid minus returned {want}",
                    key.0, key.1, b.paid_out
                ));
            }
        }
        // Idempotency: each key made at most one withdrawal, the one its 201s named, and every
        // withdrawal in the table was made under exactly one key.
        let mut made = BTreeSet::new();
        for (u, k) in model.keys_used() {
            let rec = self
                .p
                .env
                .store
                .idempotency_record(
                    &shared::domain::UserId::parse(&u).unwrap(),
                    &shared::domain::IdempotencyKey::parse(&k).unwrap(),
                )
                .await
                .expect("idempotency record");
            let ids = model.key_ids(&u, &k);
            match rec {
                Some(r) => {
                    let id = r.withdrawal_id.to_string();
                    if !ids.is_empty() && ids != BTreeSet::from([id.clone()]) {
                        bad.push(format!("{u} key {k}: answered {ids:?}, recorded {id}"));
                    }
                    if !by_id.contains_key(&id) {
                        bad.push(format!("{u} key {k}: recorded {id}, not in the table"));
                    }
                    made.insert(id);
                }
                None if !ids.is_empty() => {
                    bad.push(format!("{u} key {k}: answered {ids:?}, no record"))
                }
                None => {}
            }
        }
        for id in by_id.keys() {
            if !made.contains(id) {
                bad.push(format!(
                    "{id}: in the table, made under no key the clients used"
                ));
            }
        }
        if made.len() != by_id.len() {
            bad.push(format!(
                "{} keys made {} withdrawals",
                made.len(),
                by_id.len()
            ));
        }
        bad
    }
}

fn summary_line(s: &RunSummary) -> String {
    let mut parts = Vec::new();
    for (c, x) in &s.currencies {
        let v = serde_json::to_value(x).unwrap_or_default();
        let nz: Vec<String> = v
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        if !nz.is_empty() {
            parts.push(format!("{c}[{}]", nz.join(" ")));
        }
    }
    if !s.errors.is_empty() {
        parts.push(format!(
            "errors={:?}",
            s.errors.iter().map(|e| &e.error).collect::<Vec<_>>()
        ));
    }
    if parts.is_empty() {
        "nothing to do".into()
    } else {
        parts.join(" ")
    }
}
