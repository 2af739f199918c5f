//! `provider-webhook`: the payment provider's callbacks (public route, no JWT; the HMAC signature
//! is the authentication). Thin: take the raw body and signature header, hand them to the
//! processor, map the result.

use lambda_http::{Body, Request, RequestExt, Response};
use shared::api::{json_response, ApiError};
use shared::config::Config;
use shared::store::{BatchStore, DynamoStore, Store};
use shared::webhook::WebhookProcessor;
use std::sync::Arc;
use tracing::Instrument;

pub type App = WebhookProcessor<DynamoStore>;

pub async fn app_from_env() -> Result<App, lambda_http::Error> {
    let config = Config::from_env()?;
    let (secrets, tolerance) = WebhookProcessor::<DynamoStore>::secrets_from_env().await?;
    let store = config.store().await;
    Ok(WebhookProcessor::with_secrets(
        Arc::new(store),
        secrets,
        tolerance,
    ))
}

/// Generic over the store so tests can put a fault-injecting store behind the same handler.
pub async fn handle<S: Store + BatchStore + 'static>(
    app: &WebhookProcessor<S>,
    req: Request,
) -> Response<Body> {
    let request_id = req
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("webhook", request_id = %request_id);
    async move {
        let response = match route(app, &req).await {
            Ok(r) => r,
            Err(e) => e.to_response(),
        };
        let status = response.status();
        if status.is_client_error() {
            shared::metrics::emit("Webhook4xx", 1.0, shared::metrics::Unit::Count, &[]);
        } else if status.is_server_error() {
            shared::metrics::emit("Webhook5xx", 1.0, shared::metrics::Unit::Count, &[]);
        }
        tracing::info!(status = status.as_u16(), "webhook done");
        response
    }
    .instrument(span)
    .await
}

async fn route<S: Store + BatchStore + 'static>(
    app: &WebhookProcessor<S>,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    if req.uri().path().trim_end_matches('/') != "/webhooks/provider" {
        return Err(ApiError::NotFound);
    }
    if req.method() != "POST" {
        return Err(ApiError::MethodNotAllowed { allow: "POST" });
    }
    let body: &[u8] = match req.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    };
    let signature = req
        .headers()
        .get(shared::signature::HEADER)
        .and_then(|v| v.to_str().ok());
    let (handled, event) = app
        .handle(signature, body, chrono::Utc::now().timestamp())
        .await?;
    let out = serde_json::json!({"event_id": event.id, "status": handled.as_str()});
    Ok(json_response(200, out.to_string()))
}
