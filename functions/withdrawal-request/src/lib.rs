//! `withdrawal-request`: the user API behind API Gateway's HTTP API (payload v2), and on the same
//! API the internal credit API for the platform's own services (`/internal/credits`, IAM).
//! Thin: authenticate, route, hand the parsed request to [`WithdrawalService`],
//! [`BeneficiaryService`] or [`CreditService`], map the result.

use lambda_http::{Body, Request, RequestExt, Response};
use shared::domain::{IdempotencyKey, UserId};
use shared::http::api::{json_response, ApiError};
use shared::http::auth::{AuthError, Authenticator, InternalAuth};
use shared::platform::config::RequestConfig;
use shared::requests::beneficiaries::{BeneficiaryRules, BeneficiaryService};
use shared::requests::credits::CreditService;
use shared::requests::withdrawals::WithdrawalService;
use std::sync::Arc;
use tracing::Instrument;

/// Larger bodies are refused before parsing.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Everything the handler needs, built once per cold start.
#[derive(Clone)]
pub struct App {
    pub service: WithdrawalService,
    pub beneficiaries: BeneficiaryService,
    pub auth: Authenticator,
    pub credits: CreditService,
    pub internal: InternalAuth,
}

impl App {
    /// The user API on `service`; the internal API on the same store and currencies, closed to
    /// everyone until [`App::with_internal`] names its callers.
    pub fn new(service: WithdrawalService, auth: Authenticator) -> Self {
        Self {
            credits: CreditService::new(service.store(), service.currencies().clone()),
            beneficiaries: BeneficiaryService::new(service.store(), BeneficiaryRules::default()),
            service,
            auth,
            internal: InternalAuth::closed(),
        }
    }

    pub fn with_internal(mut self, internal: InternalAuth) -> Self {
        self.internal = internal;
        self
    }

    /// Beneficiaries added under `rules` (cooling-off, maximum per user) instead of the defaults.
    pub fn with_beneficiary_rules(mut self, rules: BeneficiaryRules) -> Self {
        self.beneficiaries = BeneficiaryService::new(self.service.store(), rules);
        self
    }

    /// Configuration ([`RequestConfig`]) and the SDK client, once per cold start.
    pub async fn from_env() -> Result<Self, lambda_http::Error> {
        let config = RequestConfig::from_env()?;
        let store = config.store.store().await;
        // Before the first request writes into shard `n - 1` of the pending index: a batcher
        // configured with fewer shards then still reads it. Once per cold start, not per request
        // (a request stays one round trip); the cold start fails if it cannot be recorded.
        store.record_pending_shards().await?;
        let service = WithdrawalService::new(
            Arc::new(store),
            config.store.currencies,
            config.store.max_open_per_currency,
        );
        Ok(Self::new(service, config.users)
            .with_internal(config.internal)
            .with_beneficiary_rules(config.beneficiaries))
    }

    /// Handles one request. Never fails: every outcome is an HTTP response.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let app = self;
        let request_id = req
            .lambda_context_ref()
            .map(|c| c.request_id.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method(),
            route = tracing::field::Empty,
            user_id = tracing::field::Empty,
            withdrawal_id = tracing::field::Empty,
            beneficiary_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        async move {
            let response = match route(app, &req).await {
                Ok(r) => r,
                Err(e) => e.to_response(),
            };
            let span = tracing::Span::current();
            span.record("status", response.status().as_u16());
            if response.status().is_server_error() {
                tracing::error!("request failed");
            } else {
                tracing::info!("request done");
            }
            response
        }
        .instrument(span)
        .await
    }
}

async fn route(app: &App, req: &Request) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().as_str();
    // Routing first so unknown paths are 404 for everyone; identity before any work.
    if let ["internal", "credits", rest @ ..] = segments.as_slice() {
        return internal_credits(app, req, method, rest).await;
    }
    let known = matches!(
        segments.as_slice(),
        ["withdrawals"]
            | ["withdrawals", _]
            | ["balances"]
            | ["beneficiaries"]
            | ["beneficiaries", _]
    );
    if !known {
        return Err(ApiError::NotFound);
    }
    let user = authenticate(app, req)?;
    let span = tracing::Span::current();
    span.record("user_id", user.as_str());
    let service = &app.service;
    match (method, segments.as_slice()) {
        ("POST", ["withdrawals"]) => {
            span.record("route", "create");
            let key = idempotency_key(req)?;
            let body = body_bytes(req)?;
            let created = service.request(&user, body, key).await?;
            span.record("withdrawal_id", created.withdrawal_id.to_string());
            Ok(keyed_response(
                created.status_code,
                created.body,
                created.replayed,
            ))
        }
        ("GET", ["withdrawals"]) => {
            span.record("route", "list");
            let q = req.query_string_parameters();
            let page = service
                .list(
                    &user,
                    q.first("status"),
                    q.first("limit"),
                    q.first("cursor"),
                )
                .await?;
            Ok(json_response(200, to_json(&page)?))
        }
        ("GET", ["withdrawals", "quote"]) => {
            span.record("route", "quote");
            let q = req.query_string_parameters();
            let quote = service.quote(q.first("currency"), q.first("amount"))?;
            Ok(json_response(200, to_json(&quote)?))
        }
        (_, ["withdrawals", "quote"]) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        ("GET", ["withdrawals", id]) => {
            span.record("route", "get");
            span.record("withdrawal_id", *id);
            Ok(json_response(200, to_json(&service.get(&user, id).await?)?))
        }
        ("DELETE", ["withdrawals", id]) => {
            span.record("route", "cancel");
            span.record("withdrawal_id", *id);
            Ok(json_response(
                200,
                to_json(&service.cancel(&user, id).await?)?,
            ))
        }
        ("POST", ["beneficiaries"]) => {
            span.record("route", "add_beneficiary");
            let key = idempotency_key(req)?;
            let added = app.beneficiaries.add(&user, body_bytes(req)?, key).await?;
            span.record("beneficiary_id", added.beneficiary_id.to_string());
            Ok(keyed_response(
                added.status_code,
                added.body,
                added.replayed,
            ))
        }
        ("GET", ["beneficiaries"]) => {
            span.record("route", "list_beneficiaries");
            Ok(json_response(
                200,
                to_json(&app.beneficiaries.list(&user).await?)?,
            ))
        }
        ("DELETE", ["beneficiaries", id]) => {
            span.record("route", "remove_beneficiary");
            span.record("beneficiary_id", *id);
            Ok(json_response(
                200,
                to_json(&app.beneficiaries.remove(&user, id).await?)?,
            ))
        }
        ("GET", ["balances"]) => {
            span.record("route", "balances");
            Ok(json_response(
                200,
                to_json(&service.balances(&user).await?)?,
            ))
        }
        (_, ["withdrawals"]) => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
        (_, ["withdrawals", _]) => Err(ApiError::MethodNotAllowed {
            allow: "GET, DELETE",
        }),
        (_, ["beneficiaries"]) => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
        (_, ["beneficiaries", _]) => Err(ApiError::MethodNotAllowed { allow: "DELETE" }),
        _ => Err(ApiError::MethodNotAllowed { allow: "GET" }),
    }
}

/// `/internal/credits[/{reference}]`: the platform's services fund balances. Never a user's.
async fn internal_credits(
    app: &App,
    req: &Request,
    method: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    if rest.len() > 1 {
        return Err(ApiError::NotFound);
    }
    let caller = app.internal.authorize(req).map_err(|e| {
        tracing::info!(reason = %e, "internal API caller refused");
        match e {
            AuthError::NotAllowed(_) => ApiError::Forbidden,
            _ => ApiError::Unauthorized,
        }
    })?;
    let span = tracing::Span::current();
    match (method, rest) {
        ("POST", []) => {
            span.record("route", "credit");
            let answer = app.credits.credit(&caller, body_bytes(req)?).await?;
            tracing::info!(
                reference = %answer.view.reference,
                user_id = %answer.view.user_id,
                %caller,
                replayed = answer.replayed,
                "credit"
            );
            Ok(keyed_response(
                answer.status_code,
                to_json(&answer.view)?,
                answer.replayed,
            ))
        }
        ("GET", [reference]) => {
            span.record("route", "get_credit");
            // The segment may arrive decoded (API Gateway) or not (local stack); `get` reads both.
            Ok(json_response(
                200,
                to_json(&app.credits.get(reference).await?)?,
            ))
        }
        (_, []) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        _ => Err(ApiError::MethodNotAllowed { allow: "GET" }),
    }
}

fn authenticate(app: &App, req: &Request) -> Result<UserId, ApiError> {
    app.auth.authenticate(req).map_err(|e| {
        tracing::info!(reason = %e, "unauthenticated request");
        ApiError::Unauthorized
    })
}

fn body_bytes(req: &Request) -> Result<&[u8], ApiError> {
    let bytes: &[u8] = match req.body() {
        Body::Empty => &[],
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    Ok(bytes)
}

/// Required on every create: a client whose answer was lost can only retry safely with one.
fn idempotency_key(req: &Request) -> Result<IdempotencyKey, ApiError> {
    let v = req
        .headers()
        .get("idempotency-key")
        .ok_or(ApiError::MissingIdempotencyKey)?;
    let s = v.to_str().map_err(|_| {
        ApiError::InvalidIdempotencyKey("Idempotency-Key must be printable ASCII".into())
    })?;
    IdempotencyKey::parse(s).map_err(|e| ApiError::InvalidIdempotencyKey(e.to_string()))
}

/// The answer to a keyed create (withdrawal, beneficiary, credit): a replay of the first answer
/// says so in `Idempotent-Replayed: true`.
fn keyed_response(status: u16, body: String, replayed: bool) -> Response<Body> {
    let mut resp = json_response(status, body);
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    resp
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|_| ApiError::Internal)
}
