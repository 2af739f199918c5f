//! The user API under test: `TestEnv` (a table and the handler), the `ApiRequest` builder,
//! `TestResponse`, balances by name.

use crate::{
    client_for, credit_record, endpoint, fresh_table, function_client, DEPOSIT_ROLE, IBAN,
    REQUEST_FN,
};
use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use shared::domain::{Currencies, UserId};
use shared::http::auth::{AllowedCallers, Authenticator, CallerSource, InternalAuth};
use shared::requests::withdrawals::WithdrawalService;
use shared::store::{CreditOutcome, DynamoStore, Store, StoreError, TableSchema};
use std::sync::Arc;
use withdrawal_request::App;

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

    /// Registers `account` for `user` as a new beneficiary, usable at once; its id.
    pub async fn beneficiary(&self, user: &str, account: &str) -> String {
        let id = shared::domain::BeneficiaryId::new().to_string();
        crate::register_beneficiary(self.store.as_ref(), user, account, &id).await;
        id
    }

    /// Credits under a reference of its own (every call is a new credit), and registers the
    /// test beneficiary ([`crate::BENEFICIARY`], [`IBAN`]) for the user.
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
        crate::register_beneficiary(self.store.as_ref(), user, IBAN, crate::BENEFICIARY).await;
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
        let b = self.stored_balance(user, currency).await;
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

    /// The request use case over this env's table through a client whose DynamoDB requests
    /// the returned recorder counts per operation (the round-trip floors), `max_open` 5.
    pub fn counted_service(&self) -> (shared::platform::calls::CallRecorder, WithdrawalService) {
        let counter = shared::platform::calls::CallRecorder::counting();
        let store = DynamoStore::new(
            crate::counting_client(&counter),
            self.store.table_name(),
            self.currencies.clone(),
        )
        .with_pending_shards(self.store.pending_shards());
        let service = WithdrawalService::new(Arc::new(store), self.currencies.clone(), 5);
        (counter, service)
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

    /// `req` answered by the user API over the same table under other settings (`CURRENCIES`,
    /// `WITHDRAWAL_FEES`… as a later deploy would set them).
    pub async fn call_with(&self, currencies: &Currencies, req: Request) -> TestResponse {
        let store = Arc::new(
            DynamoStore::new(
                self.store.client().clone(),
                self.store.table_name(),
                currencies.clone(),
            )
            .with_pending_shards(self.store.pending_shards()),
        );
        let app = App::new(
            WithdrawalService::new(store, currencies.clone(), 5),
            Authenticator::ApiGatewayJwt,
        );
        TestResponse::from(app.handle(req).await)
    }

    /// The fees bucket of the user's balance in `currency`, in the currency's scale.
    pub async fn fees_paid(&self, user: &str, currency: &str) -> String {
        let b = self.stored_balance(user, currency).await;
        b.currency.format(b.fees)
    }

    async fn stored_balance(&self, user: &str, currency: &str) -> shared::domain::Balance {
        self.store
            .balances(&UserId::parse(user).unwrap())
            .await
            .unwrap()
            .into_iter()
            .find(|b| b.currency.code().as_str() == currency)
            .expect("balance exists")
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

/// A withdrawal to the test beneficiary ([`crate::BENEFICIARY`], the user's [`IBAN`]): every
/// user [`TestEnv::credit`] funds has it registered.
pub fn withdrawal_body(currency: &str, amount: &str) -> String {
    json!({"currency": currency, "amount": amount, "beneficiary_id": crate::BENEFICIARY})
        .to_string()
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
