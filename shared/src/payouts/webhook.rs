//! Provider callbacks: verify the signature on the raw bytes, parse, and hand the event to
//! [`settlement::apply_event`] (which deduplicates and applies it).
//! Every delivery pattern — repeats, races, reordering, late arrival — changes money at most once.

use crate::domain::{BatchId, CallbackOutcome, WithdrawalId};
use crate::http::api::ApiError;
use crate::payouts::settlement::{self, EventRef, MemberEvent, ProviderWord};
use crate::payouts::signature::{self, WebhookSecret};
use crate::platform::metrics;
use crate::platform::secrets::SecretValue;
use crate::store::{PayoutStore, StoreError};
use serde::Deserialize;
use std::sync::Arc;

pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackKind {
    Paid,
    Failed,
    Returned,
}

impl CallbackKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "payout.paid" => Some(Self::Paid),
            "payout.failed" => Some(Self::Failed),
            "payout.returned" => Some(Self::Returned),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Paid => "payout.paid",
            Self::Failed => "payout.failed",
            Self::Returned => "payout.returned",
        }
    }
}

/// A parsed provider event.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEvent {
    pub id: String,
    pub kind: CallbackKind,
    pub batch_id: BatchId,
    pub reference: WithdrawalId,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub provider_reference: Option<String>,
    pub reason: Option<String>,
}

impl ProviderEvent {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            id: String,
            #[serde(rename = "type")]
            kind: String,
            data: serde_json::Value,
        }
        #[derive(Deserialize)]
        struct Data {
            batch_id: String,
            reference: String,
            amount: Option<String>,
            currency: Option<String>,
            provider_reference: Option<String>,
            reason: Option<String>,
        }
        let invalid = |m: &str| ApiError::InvalidJson(m.to_string());
        let raw: Raw =
            serde_json::from_slice(body).map_err(|_| invalid("event is not valid JSON"))?;
        let kind = CallbackKind::parse(&raw.kind).ok_or_else(|| {
            ApiError::UnknownEventType(format!(
                "unknown event type {:?}",
                raw.kind.chars().take(64).collect::<String>()
            ))
        })?;
        if !(1..=128).contains(&raw.id.len()) || !raw.id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("event id must be 1-128 printable characters"));
        }
        let data: Data =
            serde_json::from_value(raw.data).map_err(|_| invalid("event data is incomplete"))?;
        let short = |s: Option<String>| s.map(|s| s.chars().take(500).collect::<String>());
        Ok(Self {
            id: raw.id,
            kind,
            batch_id: BatchId::parse(&data.batch_id).map_err(|_| invalid("bad batch_id"))?,
            reference: WithdrawalId::parse(&data.reference)
                .map_err(|_| invalid("bad reference"))?,
            amount: data.amount,
            currency: data.currency,
            provider_reference: short(data.provider_reference),
            reason: short(data.reason),
        })
    }

    fn outcome(&self) -> ProviderWord {
        let reason = || self.reason.clone().unwrap_or_else(|| "not given".into());
        match self.kind {
            CallbackKind::Paid => ProviderWord::Paid {
                provider_reference: self.provider_reference.clone(),
            },
            CallbackKind::Failed => ProviderWord::Failed { reason: reason() },
            CallbackKind::Returned => ProviderWord::Returned { reason: reason() },
        }
    }
}

pub struct WebhookProcessor<S> {
    store: Arc<S>,
    secrets: SecretValue<Vec<WebhookSecret>>,
    tolerance_secs: i64,
}

impl<S: PayoutStore + 'static> WebhookProcessor<S> {
    /// With fixed secrets (tests, tools).
    pub fn new(store: Arc<S>, secrets: Vec<WebhookSecret>, tolerance_secs: i64) -> Self {
        Self::with_secrets(store, SecretValue::fixed(secrets), tolerance_secs)
    }

    /// With the secrets from Secrets Manager (the deployed webhook), refreshed after their TTL.
    pub fn with_secrets(
        store: Arc<S>,
        secrets: SecretValue<Vec<WebhookSecret>>,
        tolerance_secs: i64,
    ) -> Self {
        Self {
            store,
            secrets,
            tolerance_secs,
        }
    }

    /// Handles one delivery: `signature` is the `Payout-Signature` header, `body` the raw bytes.
    pub async fn handle(
        &self,
        signature_header: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(CallbackOutcome, ProviderEvent), ApiError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
        let secrets = self.secrets.get().await.map_err(|e| {
            // The provider retries a 503; the secret's name is logged, never a value.
            tracing::error!(error = %e, "webhook secrets unavailable");
            ApiError::TryAgain
        })?;
        signature::verify(
            signature_header,
            body,
            &secrets,
            now_secs,
            self.tolerance_secs,
        )
        .map_err(|e| {
            tracing::warn!(reason = %e, "webhook signature refused");
            ApiError::InvalidSignature
        })?;
        let event = ProviderEvent::parse(body)?;
        let handled = self.apply(&event).await.map_err(ApiError::from)?;
        let level_error = matches!(
            handled,
            CallbackOutcome::Conflict | CallbackOutcome::UnknownWithdrawal
        );
        if level_error {
            tracing::error!(event_id = %event.id, event_type = event.kind.as_str(), batch_id = %event.batch_id, withdrawal_id = %event.reference, outcome = handled.as_str(), "webhook event not applied");
        } else {
            tracing::info!(event_id = %event.id, event_type = event.kind.as_str(), batch_id = %event.batch_id, withdrawal_id = %event.reference, outcome = handled.as_str(), "webhook event");
        }
        Ok((handled, event))
    }

    async fn apply(&self, event: &ProviderEvent) -> Result<CallbackOutcome, StoreError> {
        let member_event = MemberEvent {
            event: EventRef {
                id: &event.id,
                event_type: event.kind.as_str(),
            },
            batch_id: event.batch_id,
            reference: event.reference,
            amount: event.amount.as_deref(),
            currency: event.currency.as_deref(),
            outcome: event.outcome(),
        };
        let result = settlement::apply_event(self.store.as_ref(), &member_event, "webhook").await?;
        let ccy = result.currency.as_deref().unwrap_or("-");
        match result.outcome {
            CallbackOutcome::Applied => {
                let name = match event.kind {
                    CallbackKind::Paid => "WithdrawalsSettled",
                    CallbackKind::Failed => "WithdrawalsRejected",
                    CallbackKind::Returned => "WithdrawalsReturned",
                };
                metrics::count(name, ccy);
            }
            CallbackOutcome::Conflict => metrics::count("WebhookConflicts", ccy),
            CallbackOutcome::UnknownWithdrawal => metrics::count("WebhookUnknownWithdrawal", "-"),
            CallbackOutcome::NoChange | CallbackOutcome::Duplicate => {}
        }
        Ok(result.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str) -> String {
        format!(
            r#"{{"id":"evt_1","type":"{kind}","data":{{"batch_id":"{}","reference":"{}"}}}}"#,
            BatchId::new(),
            WithdrawalId::new()
        )
    }

    #[test]
    fn events_parse_strictly() {
        assert_eq!(
            ProviderEvent::parse(body("payout.paid").as_bytes())
                .unwrap()
                .kind,
            CallbackKind::Paid
        );
        assert_eq!(
            ProviderEvent::parse(body("payout.refunded").as_bytes())
                .unwrap_err()
                .code(),
            "unknown_event_type"
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"id":"e","type":"payout.paid","data":{}}"#,
        ] {
            assert_eq!(
                ProviderEvent::parse(bad.as_bytes()).unwrap_err().code(),
                "invalid_json",
                "{bad}"
            );
        }
    }
}
