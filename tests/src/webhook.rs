//! The provider-webhook handler, driven by signed callbacks or by the sandbox's own.

use crate::{ApiRequest, PayoutEnv, TestResponse, WEBHOOK_FN};
use lambda_http::Request;
use serde_json::json;
use shared::domain::Withdrawal;
use shared::payouts::signature::WebhookSecret;
use shared::payouts::webhook::WebhookProcessor;
use std::sync::Arc;

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

    /// A sandbox with the three outcomes, `ACCOUNTS[1]` failing and `ACCOUNTS[2]` paid then
    /// returned (each account another, paid), whose signed callbacks reach the webhook handler
    /// over HTTP a moment after each payout.
    pub async fn with_callbacks(currencies: shared::domain::Currencies) -> Self {
        let p = Self::with_currencies(currencies, |c| {
            c.callback_delay = std::time::Duration::from_millis(50);
            c.return_delay = std::time::Duration::from_millis(100);
            c.fail_accounts.insert(crate::ACCOUNTS[1].to_string());
            c.return_accounts.insert(crate::ACCOUNTS[2].to_string());
        })
        .await;
        let app = Arc::new(p.webhook_app(&[crate::WEBHOOK_SECRET]));
        let url = spawn_webhook_server(app).await;
        p.sandbox.set_webhook_url(&url);
        p
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
