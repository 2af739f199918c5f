//! The driver: one seed's world (its own table on the shared DynamoDB Local, its own sandbox
//! provider, a mailbox that catches the provider's signed callbacks), the execution of each
//! operation through the real handlers and operator commands, and the drive to quiescence.

mod operator;
mod payouts;
mod quiesce;
mod requests;

use crate::faults::{Fault as StoreFault, FaultyStore};
use crate::sim::model::{Fact, Model};
use crate::sim::ops::{MemoryChange, Op, StoreFaultSpec, FAILING_ACCOUNT, RETURNED_ACCOUNT};
use crate::{
    PayoutEnv, TestEnv, TestResponse, ACCOUNTS, API_KEY, BATCHER_FN, REQUEST_FN, WEBHOOK_FN,
    WEBHOOK_SECRET,
};
use futures::future::join_all;
use sandbox_provider::{Sandbox, SandboxConfig};
use serde_json::Value;
use shared::domain::Currencies;
use shared::payouts::provider::HttpProvider;
use shared::requests::withdrawals::WithdrawalService;
use shared::store::{DynamoStore, ScanReport};
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
/// EUR requests above 70 (about one in nine) wait in REVIEW for an operator's decision.
pub const REVIEW_THRESHOLDS: &str = "EUR:70";
/// EUR charges 0.10 + 0.2 % (0.50 to 5.00), given back on a bank return; USD a flat 0.25, kept
/// on a return; JPY is free: `operator check` after every step holds each user's `fees` to what
/// their settled and returned withdrawals kept.
pub const WITHDRAWAL_FEES: &str = "EUR:0.10:0.002:0.50:5.00,USD:0.25:0:0:0:keep";
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
    pub operator_approvals: u64,
    pub operator_refusals: u64,
    /// Withdrawals that started in REVIEW (above the review threshold).
    pub held_for_review: u64,
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
            operator_approvals,
            operator_refusals,
            held_for_review,
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

/// The beneficiary every simulated user has registered for `ACCOUNTS[account]` (usable at once).
fn beneficiary(account: usize) -> String {
    format!("bn_01J{account:0>23}")
}

fn ulid_text() -> String {
    ulid::Ulid::new().to_string()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
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
        let currencies = Currencies::parse_config(CURRENCIES)
            .unwrap()
            .with_review_thresholds(REVIEW_THRESHOLDS)
            .unwrap()
            .with_fees(WITHDRAWAL_FEES)
            .unwrap();
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
        for u in 0..crate::sim::ops::USERS {
            for (i, account) in ACCOUNTS.iter().enumerate() {
                crate::register_beneficiary(
                    p.env.store.as_ref(),
                    &user(u),
                    account,
                    &beneficiary(i),
                )
                .await;
            }
        }
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
                Op::OperatorDecision { pick } => self.operator_decision(*pick).await,
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
}
