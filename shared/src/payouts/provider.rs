//! The payment provider port, its wire format, and the HTTP client that speaks it.
//! The API is documented in docs/provider-api.md; the sandbox provider implements the same.

use crate::domain::{Batch, BatchId, Withdrawal};
use crate::platform::secrets::SecretValue;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// `POST /v1/payout-batches` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PayoutBatchRequest {
    pub batch_id: String,
    pub currency: String,
    pub items: Vec<PayoutItem>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct PayoutItem {
    /// Our withdrawal id.
    pub reference: String,
    /// Decimal string in the currency's scale.
    pub amount: String,
    pub bank_account: String,
}

/// Without the account: a request or item printed in a log or a panic names none.
impl std::fmt::Debug for PayoutItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayoutItem")
            .field("reference", &self.reference)
            .field("amount", &self.amount)
            .field("bank_account", &"<redacted>")
            .finish()
    }
}

impl PayoutBatchRequest {
    /// The same batch always produces the same request (members sorted by id), so a re-send
    /// under the same idempotency key is byte-for-byte the first one. Each member's account is
    /// the one on the withdrawal (a beneficiary's, copied there by the claim); a member without
    /// one is named in the error and nothing is sent.
    pub fn new(batch: &Batch, members: &[Withdrawal]) -> Result<Self, String> {
        let mut items: Vec<PayoutItem> = members
            .iter()
            .map(|w| {
                let account = w
                    .destination
                    .account()
                    .ok_or_else(|| format!("member {} has no account recorded", w.id))?;
                Ok(PayoutItem {
                    reference: w.id.to_string(),
                    amount: w.amount.to_string(),
                    bank_account: account.expose().to_string(),
                })
            })
            .collect::<Result<_, String>>()?;
        items.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(Self {
            batch_id: batch.id.to_string(),
            currency: batch.currency.code().to_string(),
            items,
        })
    }
}

/// What a payout call ended as, seen from our side.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// 202: the provider owns the batch and will call the webhook per item.
    Accepted { provider_batch_id: String },
    /// 422 `batch_rejected`: definitely not processed; nothing was or will be paid.
    Rejected { reason: String },
    /// Anything else (timeout, reset, 5xx, 429, an unexpected answer): it may or may not have
    /// been recorded. Never a reason to return funds.
    Ambiguous { error: String },
}

/// Per-item state reported by `GET /v1/payout-batches/{id}` and by the webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Pending,
    Paid,
    Failed,
    Returned,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemState {
    pub reference: String,
    pub status: ItemStatus,
    /// What the provider holds for the item, as a plain decimal: compared with ours before
    /// anything is applied, exactly as a webhook's amount is.
    pub amount: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchState {
    pub batch_id: String,
    pub provider_batch_id: String,
    pub currency: String,
    pub items: Vec<ItemState>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StatusOutcome {
    Found(BatchState),
    /// 404 with code `not_found`: the provider has no record of this batch.
    NotFound,
    Ambiguous {
        error: String,
    },
}

#[async_trait]
pub trait PayoutProvider: Send + Sync {
    /// Sends one batch; `idempotency_key` is the batch id, so a re-send is never paid twice.
    async fn submit_batch(&self, request: &PayoutBatchRequest) -> SubmitOutcome;
    async fn batch_status(&self, batch_id: BatchId) -> StatusOutcome;
}

/// JSON over HTTPS (rustls), bounded timeouts, idempotency key as a header.
#[derive(Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
    base_url: String,
    api_key: Arc<SecretValue<String>>,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Accepted {
    provider_batch_id: String,
}

impl HttpProvider {
    /// With a fixed key (tests, tools).
    pub fn new(base_url: &str, api_key: &str, timeout: Duration) -> Result<Self, String> {
        Self::with_key(base_url, SecretValue::fixed(api_key.to_string()), timeout)
    }

    /// With the key from Secrets Manager (the deployed batcher), refreshed after its TTL.
    pub fn with_key(
        base_url: &str,
        api_key: SecretValue<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3).min(timeout))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("provider client: {e}"))?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: Arc::new(api_key),
        })
    }
}

#[async_trait]
impl PayoutProvider for HttpProvider {
    async fn submit_batch(&self, request: &PayoutBatchRequest) -> SubmitOutcome {
        // Without a key nothing is sent; still "ambiguous", never a reason to return funds.
        let key = match self.api_key.get().await {
            Ok(k) => k,
            Err(e) => {
                return SubmitOutcome::Ambiguous {
                    error: e.to_string(),
                }
            }
        };
        let result = self
            .client
            .post(format!("{}/v1/payout-batches", self.base_url))
            .bearer_auth(key.as_str())
            .header("idempotency-key", &request.batch_id)
            .json(request)
            .send()
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                return SubmitOutcome::Ambiguous {
                    error: describe(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        match status {
            200 | 202 => match serde_json::from_slice::<Accepted>(&body) {
                Ok(a) => SubmitOutcome::Accepted {
                    provider_batch_id: a.provider_batch_id,
                },
                Err(_) => SubmitOutcome::Ambiguous {
                    error: format!("HTTP {status} with an unreadable body"),
                },
            },
            422 => match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) if e.error.code == "batch_rejected" => SubmitOutcome::Rejected {
                    reason: truncate(&e.error.message, 200),
                },
                _ => SubmitOutcome::Ambiguous {
                    error: "HTTP 422 without code batch_rejected".into(),
                },
            },
            _ => SubmitOutcome::Ambiguous {
                error: format!("HTTP {status}"),
            },
        }
    }

    async fn batch_status(&self, batch_id: BatchId) -> StatusOutcome {
        let key = match self.api_key.get().await {
            Ok(k) => k,
            Err(e) => {
                return StatusOutcome::Ambiguous {
                    error: e.to_string(),
                }
            }
        };
        let result = self
            .client
            .get(format!("{}/v1/payout-batches/{batch_id}", self.base_url))
            .bearer_auth(key.as_str())
            .send()
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                return StatusOutcome::Ambiguous {
                    error: describe(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        match status {
            // The answer must be about the batch we asked for.
            200 => match serde_json::from_slice::<BatchState>(&body) {
                Ok(state) if state.batch_id == batch_id.to_string() => StatusOutcome::Found(state),
                Ok(_) => StatusOutcome::Ambiguous {
                    error: "status answer for another batch".into(),
                },
                Err(_) => StatusOutcome::Ambiguous {
                    error: "unreadable status body".into(),
                },
            },
            // "Never recorded" allows a re-send and an operator's reject, so only the provider's
            // own coded answer counts: a 404 from a gateway, a wrong base URL or path is not it.
            404 => match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) if e.error.code == "not_found" => StatusOutcome::NotFound,
                _ => StatusOutcome::Ambiguous {
                    error: "HTTP 404 without code not_found".into(),
                },
            },
            s => StatusOutcome::Ambiguous {
                error: format!("HTTP {s}"),
            },
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "transport error".into()
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
