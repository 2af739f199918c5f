//! Test harness: a fresh table on DynamoDB Local per test, HTTP API v2 events with JWT claims,
//! and the conservation check.
//!
//! DynamoDB Local is started by `scripts/test.sh`, which exports `DYNAMODB_ENDPOINT`.

pub mod conflicts;
pub mod events;
pub mod faults;
pub mod sim;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use shared::domain::{Amount, CreditReference, Currencies, UserId};
use shared::http::auth::{AllowedCallers, Authenticator, CallerSource, InternalAuth};
use shared::requests::withdrawals::WithdrawalService;
use shared::store::{CreditOutcome, CreditRecord, DynamoStore, Store, StoreError, TableSchema};
use std::sync::Arc;
use withdrawal_request::App;

pub const IBAN: &str = "DE89370400440532013000";
/// The deposit service the tests' internal API admits, and one of its sessions as API Gateway's
/// IAM authorizer names it.
pub const DEPOSIT_ROLE: &str = "arn:aws:iam::123456789012:role/deposit-service";
pub const DEPOSIT_CALLER: &str =
    "arn:aws:sts::123456789012:assumed-role/deposit-service/deposits-1";

/// The same dummy credentials and region everywhere: DynamoDB Local keeps tables per key+region.
pub fn client_for(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// A DynamoDB Local client whose requests `counter` counts per operation (round-trip floors).
pub fn counting_client(
    counter: &shared::platform::calls::CallRecorder,
) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        client_for(&endpoint())
            .config()
            .to_builder()
            .interceptor(counter.clone())
            .build(),
    )
}

/// The deployed functions, by the binary names template.yaml builds.
pub const REQUEST_FN: &str = "withdrawal-request";
pub const BATCHER_FN: &str = "payout-batcher";
pub const WEBHOOK_FN: &str = "provider-webhook";

/// The client one function's code runs with: with `CALL_LOG_DIR` set (scripts/test.sh), every
/// call it makes is recorded under the function's name for the IAM check (tests/tests/iam.rs).
/// Setup and assertions use [`client_for`], which records nothing.
pub fn function_client(function: &str) -> aws_sdk_dynamodb::Client {
    let mut conf = client_for(&endpoint()).config().to_builder();
    if let Ok(dir) = std::env::var(shared::platform::calls::CALL_LOG_DIR_ENV) {
        conf = conf.interceptor(shared::platform::calls::CallRecorder::new(dir, function));
    }
    aws_sdk_dynamodb::Client::from_conf(conf.build())
}

/// Secrets Manager as a function sees it: moto's server (started by `scripts/test.sh`, which
/// exports `SECRETS_ENDPOINT`), through a client that records calls like [`function_client`].
pub fn secrets_client(function: &str) -> aws_sdk_secretsmanager::Client {
    let mut conf = secrets_admin().config().to_builder();
    if let Ok(dir) = std::env::var(shared::platform::calls::CALL_LOG_DIR_ENV) {
        conf = conf.interceptor(shared::platform::calls::CallRecorder::new(dir, function));
    }
    aws_sdk_secretsmanager::Client::from_conf(conf.build())
}

/// The emulator for setup (records nothing).
pub fn secrets_admin() -> aws_sdk_secretsmanager::Client {
    let endpoint = std::env::var("SECRETS_ENDPOINT").expect(
        "SECRETS_ENDPOINT is not set: run the integration tests with ./scripts/test.sh, \
         which starts the Secrets Manager emulator (moto)",
    );
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .endpoint_url(endpoint);
    aws_sdk_secretsmanager::Client::from_conf(conf.build())
}

/// Creates or replaces a secret in the emulator (as an operator's `put-secret-value` would);
/// returns its ARN. Names are unique per call so tests never share one.
pub async fn put_secret(name: &str, value: &str) -> String {
    let admin = secrets_admin();
    match admin
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
    {
        Ok(out) => out.arn().expect("arn").to_string(),
        Err(_) => admin
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .expect("put secret value")
            .arn()
            .expect("arn")
            .to_string(),
    }
}

pub fn endpoint() -> String {
    std::env::var("DYNAMODB_ENDPOINT").expect(
        "DYNAMODB_ENDPOINT is not set: run the integration tests with ./scripts/test.sh, \
         which starts DynamoDB Local",
    )
}

/// A credit made now by the tests, as an operator would make it.
pub fn credit_record(
    currency: &shared::domain::Currency,
    user: &str,
    amount: &str,
    reference: &str,
) -> CreditRecord {
    CreditRecord::new(
        CreditReference::parse(reference).unwrap(),
        UserId::parse(user).unwrap(),
        currency.clone(),
        Amount::parse(amount, currency).unwrap(),
        "operator",
    )
}

/// A new table of its own on DynamoDB Local. Without the stream unless asked: on DynamoDB Local a
/// stream slows every write, and only the events tests and the bench's events section read it.
pub async fn fresh_table(
    client: aws_sdk_dynamodb::Client,
    currencies: &Currencies,
    stream: bool,
) -> Arc<DynamoStore> {
    let store = DynamoStore::new(
        client,
        format!("t_{}", ulid::Ulid::new()),
        currencies.clone(),
    );
    let created = if stream {
        store.create_table().await
    } else {
        store.create_table_without_stream().await
    };
    assert!(created.expect("create table"));
    Arc::new(store)
}

/// `n` pending withdrawals of `amount` written through `store`, by users of `per_user` each,
/// every user funded for exactly its withdrawals; 8 requests in flight.
#[allow(clippy::too_many_arguments)]
pub async fn seed_pending(
    store: &Arc<DynamoStore>,
    currencies: &Currencies,
    prefix: &str,
    currency: &str,
    amount: &str,
    n: usize,
    per_user: usize,
    account: &str,
) -> Vec<shared::domain::Withdrawal> {
    use futures::stream::{self, StreamExt};
    use shared::domain::{BankAccount, Withdrawal};
    let c = currencies.get(currency).unwrap().clone();
    let amt = Amount::parse(amount, &c).unwrap();
    let users: Vec<String> = (0..n.div_ceil(per_user))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    for u in &users {
        let total = amt.value() * rust_decimal::Decimal::from(per_user as u64);
        let reference = format!("seed-{}", ulid::Ulid::new());
        store
            .credit(&credit_record(&c, u, &total.to_string(), &reference))
            .await
            .expect("credit");
    }
    let account = BankAccount::parse(account).unwrap();
    stream::iter(0..n)
        .map(|i| {
            let w = Withdrawal::new(
                UserId::parse(&users[i / per_user]).unwrap(),
                c.clone(),
                amt,
                account.clone(),
                chrono::Utc::now(),
            );
            let store = store.clone();
            async move {
                store
                    .request_withdrawal(&w, None, u32::MAX)
                    .await
                    .expect("seed");
                w
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// A balance's buckets as the API shows them (strings in the currency's scale), so a test
/// compares them with the figures it expects, each by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceView {
    pub available: String,
    pub locked: String,
    pub paid_out: String,
    pub credited: String,
}

pub struct TestEnv {
    pub store: Arc<DynamoStore>,
    pub app: App,
    pub currencies: Currencies,
}

impl TestEnv {
    /// A new table on DynamoDB Local; nothing is shared between tests.
    pub async fn new() -> Self {
        Self::with_max_open(5).await
    }

    pub async fn with_max_open(max_open: u32) -> Self {
        Self::with_config(max_open, Currencies::default()).await
    }

    /// With `currencies` configured as `CURRENCIES` would (daily limits, other bounds).
    pub async fn with_config(max_open: u32, currencies: Currencies) -> Self {
        // Without the stream: only the events tests read it ([`events::EventsEnv`] makes its own).
        let store = fresh_table(client_for(&endpoint()), &currencies, false).await;
        let mut env = Self {
            app: App::new(
                WithdrawalService::new(store.clone(), currencies.clone(), max_open),
                Authenticator::ApiGatewayJwt,
            ),
            store,
            currencies,
        };
        // Through the request function's recorded client, so the IAM check sees its calls; the
        // internal API admits the test deposit service's role.
        env.app = App::new(
            WithdrawalService::new(env.store_for(REQUEST_FN), env.currencies.clone(), max_open),
            Authenticator::ApiGatewayJwt,
        )
        .with_internal(InternalAuth::new(
            CallerSource::ApiGatewayIam,
            AllowedCallers::parse(DEPOSIT_ROLE).expect("role ARN"),
        ));
        env
    }

    /// The same table, through the client `function`'s code would use (see [`function_client`]).
    pub fn store_for(&self, function: &str) -> Arc<DynamoStore> {
        Arc::new(
            DynamoStore::new(
                function_client(function),
                self.store.table_name(),
                self.currencies.clone(),
            )
            .with_pending_shards(self.store.pending_shards()),
        )
    }

    /// Credits under a reference of its own (every call is a new credit).
    pub async fn credit(&self, user: &str, currency: &str, amount: &str) {
        let reference = format!("test-{}", ulid::Ulid::new());
        let outcome = self
            .credit_ref(user, currency, amount, &reference)
            .await
            .expect("credit");
        assert!(matches!(outcome, CreditOutcome::Recorded(_)), "{outcome:?}");
    }

    /// Credits under `reference`, as `operator credit --reference` does.
    pub async fn credit_ref(
        &self,
        user: &str,
        currency: &str,
        amount: &str,
        reference: &str,
    ) -> Result<CreditOutcome, StoreError> {
        self.store
            .credit(&credit_record(
                self.currencies.get(currency).unwrap(),
                user,
                amount,
                reference,
            ))
            .await
    }

    /// The user's balance in `currency`, each bucket in the currency's scale.
    pub async fn balance(&self, user: &str, currency: &str) -> BalanceView {
        let balances = self
            .store
            .balances(&UserId::parse(user).unwrap())
            .await
            .unwrap();
        let b = balances
            .iter()
            .find(|b| b.currency.code().as_str() == currency)
            .expect("balance exists");
        let f = |d| b.currency.format(d);
        BalanceView {
            available: f(b.available),
            locked: f(b.locked),
            paid_out: f(b.paid_out),
            credited: f(b.credited),
        }
    }

    /// The outcome a provider event was recorded with, if it was (read straight from the table:
    /// the pipeline itself never reads an event record, it conditions writes on it).
    pub async fn event_record(&self, event_id: &str) -> Option<String> {
        let item = self
            .store
            .client()
            .get_item()
            .table_name(self.store.table_name())
            .key("PK", AttributeValue::S(TableSchema::event_pk(event_id)))
            .key("SK", AttributeValue::S(TableSchema::SINGLETON_SK.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get event record")
            .item?;
        item.get("outcome")?.as_s().ok().cloned()
    }

    /// Fails the test on any violated money invariant anywhere in the table.
    pub async fn assert_conserved(&self) {
        let report = self.store.scan_all().await.expect("scan");
        let problems = shared::operator::check::violations(&report);
        assert!(problems.is_empty(), "invariants violated: {problems:#?}");
    }

    pub async fn call(&self, req: Request) -> TestResponse {
        TestResponse::from(self.app.handle(req).await)
    }
}

/// Builds an API Gateway HTTP API (payload 2.0) event, as the JWT authorizer delivers it.
pub struct ApiRequest {
    value: Value,
}

impl ApiRequest {
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let params: serde_json::Map<String, Value> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let value = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": query,
            "headers": {"content-type": "application/json", "host": "api.example.com"},
            "queryStringParameters": params,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "api",
                "domainName": "api.example.com",
                "domainPrefix": "api",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": "tests"},
                "requestId": "test-request",
                "routeKey": "$default",
                "stage": "$default",
                "time": "29/Nov/2026:12:00:00 +0000",
                "timeEpoch": 1795953600000u64
            },
            "isBase64Encoded": false
        });
        Self { value }
    }

    /// What API Gateway's IAM authorizer puts on the request after verifying a SigV4 signature.
    pub fn iam_caller(mut self, arn: &str) -> Self {
        self.value["requestContext"]["authorizer"] = json!({"iam": {
            "accessKey": "ASIAEXAMPLE", "accountId": "123456789012", "callerId": "AROAEXAMPLE:deposits-1",
            "principalOrgId": null, "userArn": arn, "userId": "AROAEXAMPLE:deposits-1"}});
        self
    }

    /// The claims API Gateway puts on the request after verifying the JWT.
    pub fn user(mut self, sub: &str) -> Self {
        self.value["requestContext"]["authorizer"] = json!({"jwt": {"claims": {"sub": sub, "iss": "https://issuer.example.com"}, "scopes": null}});
        self
    }

    pub fn query(mut self, params: serde_json::Map<String, Value>) -> Self {
        self.value["queryStringParameters"] = Value::Object(params);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.value["headers"][name] = Value::String(value.to_string());
        self
    }

    /// A new `Idempotency-Key`, as a client sends with each new request (every POST needs one).
    pub fn fresh_key(self) -> Self {
        self.header("idempotency-key", &format!("key-{}", ulid::Ulid::new()))
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.value["body"] = Value::String(body.into());
        self
    }

    /// A body API Gateway hands over base64-encoded (it does so for bytes that are not text).
    pub fn base64_body(mut self, bytes: &[u8]) -> Self {
        use base64::Engine;
        self.value["body"] = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        self.value["isBase64Encoded"] = Value::Bool(true);
        self
    }

    pub fn build(self) -> Request {
        lambda_http::request::from_str(&self.value.to_string()).expect("valid HTTP API v2 event")
    }
}

pub fn withdrawal_body(currency: &str, amount: &str) -> String {
    json!({"currency": currency, "amount": amount, "bank_account": IBAN}).to_string()
}

#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl From<Response<Body>> for TestResponse {
    fn from(r: Response<Body>) -> Self {
        let body = match r.body() {
            Body::Text(t) => t.clone(),
            Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        Self {
            status: r.status().as_u16(),
            replayed: r.headers().get("idempotent-replayed").is_some(),
            body,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payouts: the batcher against the sandbox provider over real HTTP.

use sandbox_provider::{Sandbox, SandboxConfig};
use shared::domain::Withdrawal;
use shared::payouts::batcher::{Batcher, BatcherConfig};
use shared::payouts::provider::HttpProvider;
use shared::payouts::signature::WebhookSecret;
use std::time::Duration;

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
pub const API_KEY: &str = "sandbox-test-key";
/// Valid accounts, so tests can make one of them fail or be returned.
pub const ACCOUNTS: [&str; 5] = [
    "DE89370400440532013000",
    "GB82WEST12345698765432",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "ABA:021000021:123456789",
];

pub struct PayoutEnv {
    pub env: TestEnv,
    pub sandbox: Sandbox,
    pub provider_url: String,
}

impl PayoutEnv {
    pub async fn new(configure: impl FnOnce(&mut SandboxConfig)) -> Self {
        let env = TestEnv::with_max_open(u32::MAX).await;
        let mut config = SandboxConfig::new(API_KEY, WebhookSecret::new(WEBHOOK_SECRET).unwrap());
        config.hang = Duration::from_millis(1500);
        configure(&mut config);
        let sandbox = Sandbox::new(config);
        let addr = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        Self {
            env,
            sandbox,
            provider_url: format!("http://{addr}"),
        }
    }

    pub fn config() -> BatcherConfig {
        BatcherConfig {
            provider_timeout: Duration::from_millis(500),
            safety_margin: Duration::from_millis(100),
            ..BatcherConfig::default()
        }
    }

    pub fn batcher(&self, config: BatcherConfig) -> Batcher<DynamoStore, HttpProvider> {
        self.batcher_on(self.env.store_for(BATCHER_FN), config)
    }

    /// A batcher over `store` (configured otherwise than the test's own, say).
    pub fn batcher_on(
        &self,
        store: Arc<DynamoStore>,
        config: BatcherConfig,
    ) -> Batcher<DynamoStore, HttpProvider> {
        let provider =
            HttpProvider::new(&self.provider_url, API_KEY, config.provider_timeout).unwrap();
        Batcher::new(
            store,
            Arc::new(provider),
            self.env.currencies.clone(),
            config,
        )
    }

    /// A batcher speaking to another provider (a second sandbox that never saw our batches, a
    /// wrapper that alters answers).
    pub fn batcher_with<P: shared::payouts::provider::PayoutProvider + ?Sized + 'static>(
        &self,
        provider: Arc<P>,
        config: BatcherConfig,
    ) -> Batcher<DynamoStore, P> {
        Batcher::new(
            self.env.store_for(BATCHER_FN),
            provider,
            self.env.currencies.clone(),
            config,
        )
    }

    /// A client of this env's sandbox, as the batcher and the operator commands use it.
    pub fn provider(&self) -> HttpProvider {
        HttpProvider::new(&self.provider_url, API_KEY, Duration::from_millis(500)).unwrap()
    }

    /// A fresh batch of `n` × `amount` USD flagged for an operator after one attempt the
    /// provider never recorded (it answers 404 for it). Returns the members and the batch id.
    pub async fn flagged_unrecorded(
        &self,
        prefix: &str,
        amount: &str,
        n: usize,
    ) -> (Vec<Withdrawal>, shared::domain::BatchId) {
        let seeded = self.seed(prefix, "USD", amount, n, ACCOUNTS[0]).await;
        self.sandbox
            .inject(&[sandbox_provider::Fault::ErrorBeforeRecord]);
        self.run(BatcherConfig {
            max_attempts: 1,
            ..Self::config()
        })
        .await;
        let batch = self.reload(&seeded[0]).await.batch_id.expect("claimed");
        (seeded, batch)
    }

    /// The tests' sandbox sends no callbacks: runs that ask the provider about every accepted
    /// batch (at most 10 per run) stand in for them.
    pub async fn settle_from_status(&self) {
        for _ in 0..3 {
            self.run(BatcherConfig {
                stale_after: Duration::ZERO,
                ..Self::config()
            })
            .await;
        }
    }

    /// Runs the batcher once with a generous time budget.
    pub async fn run(&self, config: BatcherConfig) -> shared::payouts::batcher::RunSummary {
        self.batcher(config)
            .run(std::time::Instant::now() + Duration::from_secs(60))
            .await
            .expect("batcher run")
    }

    /// `n` pending withdrawals of `amount`, spread over users of 10 each, all funded.
    pub async fn seed(
        &self,
        prefix: &str,
        currency: &str,
        amount: &str,
        n: usize,
        account: &str,
    ) -> Vec<Withdrawal> {
        self.seed_through(&self.env.store, prefix, currency, amount, n, account)
            .await
    }

    /// [`Self::seed`], the requests written through `store` (another shard count, say).
    pub async fn seed_through(
        &self,
        store: &Arc<DynamoStore>,
        prefix: &str,
        currency: &str,
        amount: &str,
        n: usize,
        account: &str,
    ) -> Vec<Withdrawal> {
        seed_pending(
            store,
            &self.env.currencies,
            prefix,
            currency,
            amount,
            n,
            10,
            account,
        )
        .await
    }

    pub async fn reload(&self, w: &Withdrawal) -> Withdrawal {
        self.env
            .store
            .withdrawal(&w.user_id, w.id)
            .await
            .unwrap()
            .expect("exists")
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook: the provider-webhook handler, driven by signed events or by the sandbox's callbacks.

use shared::payouts::webhook::WebhookProcessor;

impl PayoutEnv {
    pub fn webhook_app(&self, secrets: &[&str]) -> provider_webhook::App {
        provider_webhook::App::from(WebhookProcessor::new(
            self.env.store_for(WEBHOOK_FN),
            secrets
                .iter()
                .map(|s| WebhookSecret::new(s).unwrap())
                .collect(),
            300,
        ))
    }
}

/// A signed HTTP API v2 event for the webhook route, as API Gateway delivers it.
pub fn webhook_request(body: &str, signature: Option<String>) -> Request {
    let mut e = ApiRequest::new("POST", "/webhooks/provider").body(body);
    if let Some(sig) = signature {
        e = e.header("payout-signature", &sig);
    }
    e.build()
}

pub fn sign(body: &str, secret: &str, at: i64) -> String {
    WebhookSecret::new(secret)
        .unwrap()
        .sign(at, body.as_bytes())
}

pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn callback_body(id: &str, kind: &str, w: &Withdrawal, reason: Option<&str>) -> String {
    json!({
        "id": id,
        "type": kind,
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {
            "batch_id": w.batch_id.expect("submitted").to_string(),
            "reference": w.id.to_string(),
            "amount": w.amount.to_string(),
            "currency": w.currency.code().as_str(),
            "provider_reference": format!("po_{}", w.id),
            "reason": reason,
        }
    })
    .to_string()
}

pub async fn deliver<S: shared::store::PayoutStore + 'static>(
    app: &provider_webhook::App<S>,
    req: Request,
) -> TestResponse {
    app.handle(req).await.into()
}

/// Serves the webhook handler over HTTP on a free port, the way `cargo lambda watch` or API
/// Gateway would put it in front of the function, so the sandbox can call it back.
pub async fn spawn_webhook_server<S: shared::store::PayoutStore + 'static>(
    app: Arc<provider_webhook::App<S>>,
) -> String {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let router = axum::Router::new().route(
        "/webhooks/provider",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let app = app.clone();
            async move {
                let sig = headers
                    .get("payout-signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let req = webhook_request(&String::from_utf8_lossy(&body), sig);
                let r = deliver(&app, req).await;
                (axum::http::StatusCode::from_u16(r.status).unwrap(), r.body)
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

/// A batch record as a run holds it while claiming (for tests that play a run by hand).
pub fn claiming_batch(
    currency: &shared::domain::Currency,
    owner: &str,
    lease_until_ms: i64,
) -> shared::domain::Batch {
    shared::domain::Batch::claiming(currency.clone(), owner, lease_until_ms)
}

/// Where a test's tracing subscriber writes, to read back what the code logged.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("logs are UTF-8")
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
