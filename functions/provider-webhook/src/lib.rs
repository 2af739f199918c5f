//! `provider-webhook`: the payment provider's callbacks (public route, no JWT; the HMAC signature
//! is the authentication). Thin: take the raw body and signature header, hand them to the
//! processor, map the result.

use lambda_http::{Body, Request, RequestExt, Response};
use shared::http::api::{json_response, ApiError};
use shared::payouts::webhook::WebhookProcessor;
use shared::platform::config::{ConfigError, WebhookConfig};
use shared::store::{DynamoStore, PayoutStore};
use std::sync::Arc;
use tracing::Instrument;

/// Everything the handler needs, built once per cold start. Generic over the store so tests can
/// put a fault-injecting store behind the same handler.
pub struct App<S = DynamoStore> {
    processor: WebhookProcessor<S>,
}

impl App {
    /// Configuration ([`WebhookConfig`]), the signing secrets from Secrets Manager (refreshed
    /// after their TTL) and the SDK client, once per cold start.
    pub async fn from_env() -> Result<Self, lambda_http::Error> {
        let config = WebhookConfig::from_env()?;
        let secrets = shared::platform::secrets::load(
            &config.secrets_arn,
            config.secrets_ttl,
            shared::platform::secrets::parse_webhook_secrets,
        )
        .await
        .map_err(|e| ConfigError::new("PROVIDER_WEBHOOK_SECRETS_ARN", e))?;
        let store = config.store.store().await;
        Ok(Self::new(WebhookProcessor::with_secrets(
            Arc::new(store),
            secrets,
            config.tolerance_secs,
        )))
    }
}

impl<S: PayoutStore + 'static> App<S> {
    pub fn new(processor: WebhookProcessor<S>) -> Self {
        Self { processor }
    }

    /// Handles one delivery. Never fails: every outcome is an HTTP response.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let request_id = req
            .lambda_context_ref()
            .map(|c| c.request_id.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("webhook", request_id = %request_id);
        async move {
            let response = match self.route(&req).await {
                Ok(r) => r,
                Err(e) => e.to_response(),
            };
            let status = response.status();
            if status.is_client_error() {
                shared::platform::metrics::emit(
                    "Webhook4xx",
                    1.0,
                    shared::platform::metrics::Unit::Count,
                    &[],
                );
            } else if status.is_server_error() {
                shared::platform::metrics::emit(
                    "Webhook5xx",
                    1.0,
                    shared::platform::metrics::Unit::Count,
                    &[],
                );
            }
            tracing::info!(status = status.as_u16(), "webhook done");
            response
        }
        .instrument(span)
        .await
    }

    async fn route(&self, req: &Request) -> Result<Response<Body>, ApiError> {
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
            .get(shared::payouts::signature::HEADER)
            .and_then(|v| v.to_str().ok());
        let (outcome, event) = self
            .processor
            .handle(signature, body, chrono::Utc::now().timestamp())
            .await?;
        let out = serde_json::json!({"event_id": event.id, "status": outcome.as_str()});
        Ok(json_response(200, out.to_string()))
    }
}

impl<S> From<WebhookProcessor<S>> for App<S> {
    fn from(processor: WebhookProcessor<S>) -> Self {
        Self { processor }
    }
}
