//! Secrets from AWS Secrets Manager, read at cold start and refreshed after a TTL, so that a
//! rotation (`put-secret-value`) takes effect without a deploy and no secret sits in the
//! function's configuration. Locally and in tests the same client talks to a Secrets Manager
//! emulator (moto server) through the SDK's own `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
//!
//! A value is never logged: errors name the secret (its ARN or name), never its content.

use crate::payouts::signature::WebhookSecret;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// How long a fetched value is used before it is fetched again (`SECRETS_TTL_SECS`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// After a failed refresh, the next try waits this long (at most the TTL): a failing Secrets
/// Manager is not asked again on every request.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A value this many TTLs old is no longer used: after a rotation's last step a retired secret
/// must stop working even while refreshes fail (the webhook then answers 503 and the provider
/// retries; a payout call is not made and stays retryable).
const MAX_STALE_TTLS: u32 = 2;
/// Secrets Manager must answer quickly: a stalled call must not eat a webhook's or a run's
/// whole time budget.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {id}: {reason}")]
    Unreadable { id: String, reason: String },
    #[error("secret {id} holds no usable value: {reason}")]
    Invalid { id: String, reason: String },
    #[error("secret {id} could not be refreshed for {age_secs} s; the last value is retired")]
    Stale { id: String, age_secs: u64 },
}

/// Turns a secret's string into the value the code uses (and refuses a malformed one).
pub type Parse<T> = fn(&str) -> Result<T, String>;

/// A value that is either fixed (tests, the sandbox) or kept fresh from Secrets Manager.
pub enum SecretValue<T> {
    Fixed(Arc<T>),
    Managed(ManagedSecret<T>),
}

impl<T> fmt::Debug for SecretValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("SecretValue::Fixed(<redacted>)"),
            Self::Managed(m) => write!(f, "SecretValue::Managed({})", m.id),
        }
    }
}

impl<T: Send + Sync> SecretValue<T> {
    pub fn fixed(value: T) -> Self {
        Self::Fixed(Arc::new(value))
    }

    /// The current value. A managed secret past its TTL is fetched again; when that fails the
    /// last good value is kept (a Secrets Manager blip must not stop payouts) and the failure is
    /// logged.
    pub async fn get(&self) -> Result<Arc<T>, SecretError> {
        match self {
            Self::Fixed(v) => Ok(v.clone()),
            Self::Managed(m) => m.get().await,
        }
    }
}

pub struct ManagedSecret<T> {
    client: aws_sdk_secretsmanager::Client,
    id: String,
    ttl: Duration,
    parse: Parse<T>,
    cached: RwLock<Option<Cached<T>>>,
}

struct Cached<T> {
    value: Arc<T>,
    /// When the value was read.
    fetched: Instant,
    /// When to ask Secrets Manager again (the TTL, or sooner after a failed refresh).
    next_try: Instant,
}

impl<T: Send + Sync> ManagedSecret<T> {
    /// Reads the secret once (a cold start fails here, with the secret's name, when it cannot).
    pub async fn load(
        client: aws_sdk_secretsmanager::Client,
        id: &str,
        ttl: Duration,
        parse: Parse<T>,
    ) -> Result<Self, SecretError> {
        let secret = Self {
            client,
            id: id.to_string(),
            ttl,
            parse,
            cached: RwLock::new(None),
        };
        let value = secret.fetch().await?;
        let now = Instant::now();
        *secret.cached.write().await = Some(Cached {
            value,
            fetched: now,
            next_try: now + ttl,
        });
        Ok(secret)
    }

    async fn fetch(&self) -> Result<Arc<T>, SecretError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.id)
            .send()
            .await
            .map_err(|e| SecretError::Unreadable {
                id: self.id.clone(),
                reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                    .to_string()
                    .chars()
                    .take(300)
                    .collect(),
            })?;
        let text = out.secret_string().ok_or_else(|| SecretError::Invalid {
            id: self.id.clone(),
            reason: "no SecretString".into(),
        })?;
        (self.parse)(text)
            .map(Arc::new)
            .map_err(|reason| SecretError::Invalid {
                id: self.id.clone(),
                reason,
            })
    }

    async fn get(&self) -> Result<Arc<T>, SecretError> {
        if let Some(c) = self.cached.read().await.as_ref() {
            if Instant::now() < c.next_try {
                return self.usable(c);
            }
        }
        let mut cached = self.cached.write().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.next_try {
                return self.usable(c); // refreshed (or retried) by another request meanwhile
            }
        }
        match self.fetch().await {
            Ok(value) => {
                let now = Instant::now();
                *cached = Some(Cached {
                    value: value.clone(),
                    fetched: now,
                    next_try: now + self.ttl,
                });
                Ok(value)
            }
            Err(e) => match cached.as_mut() {
                Some(c) => {
                    tracing::warn!(error = %e, "could not refresh a secret; using the last value");
                    crate::platform::metrics::emit(
                        "SecretRefreshFailures",
                        1.0,
                        crate::platform::metrics::Unit::Count,
                        &[],
                    );
                    c.next_try = Instant::now() + RETRY_AFTER.min(self.ttl);
                    self.usable(c)
                }
                None => Err(e),
            },
        }
    }

    /// The cached value, unless it has outlived every refresh for too long.
    fn usable(&self, c: &Cached<T>) -> Result<Arc<T>, SecretError> {
        let age = c.fetched.elapsed();
        if age > self.ttl * MAX_STALE_TTLS {
            return Err(SecretError::Stale {
                id: self.id.clone(),
                age_secs: age.as_secs(),
            });
        }
        Ok(c.value.clone())
    }
}

/// Refuses what is certainly not a bare secret: the console's default JSON key/value form, or
/// anything that is not printable ASCII (an HTTP header cannot carry it).
fn bare_value(s: &str) -> Result<&str, String> {
    let v = s.trim();
    if v.starts_with('{') || v.contains('"') {
        return Err("store the plain value, not JSON".into());
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ' || b == b',')
    {
        return Err("the value must be printable ASCII".into());
    }
    Ok(v)
}

/// The provider's API key: one non-empty line.
pub fn parse_api_key(s: &str) -> Result<String, String> {
    let key = bare_value(s)?;
    if key.is_empty() || key.contains([' ', ',']) {
        return Err("the API key must be one non-empty word".into());
    }
    Ok(key.to_string())
}

/// The webhook signing secrets: comma separated, the new one first during a rotation.
pub fn parse_webhook_secrets(s: &str) -> Result<Vec<WebhookSecret>, String> {
    let secrets = bare_value(s)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(WebhookSecret::new)
        .collect::<Result<Vec<_>, _>>()?;
    if secrets.is_empty() {
        return Err("no webhook secret in it".into());
    }
    Ok(secrets)
}

/// The Secrets Manager client, built from the environment (region, credentials, and locally
/// `AWS_ENDPOINT_URL_SECRETS_MANAGER`), with the call recorder where `CALL_LOG_DIR` is set.
pub async fn client() -> aws_sdk_secretsmanager::Client {
    crate::sdk_client!(
        aws_sdk_secretsmanager,
        |b: aws_sdk_secretsmanager::config::Builder| b.timeout_config(
            aws_sdk_secretsmanager::config::timeout::TimeoutConfig::builder()
                .operation_timeout(CALL_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
    )
}

/// Reads the secret `id` (an ARN or name; at cold start), to be read again after `ttl`.
pub async fn load<T: Send + Sync>(
    id: &str,
    ttl: Duration,
    parse: Parse<T>,
) -> Result<SecretValue<T>, String> {
    ManagedSecret::load(client().await, id, ttl, parse)
        .await
        .map(SecretValue::Managed)
        .map_err(|e| format!("{id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_strictly() {
        assert_eq!(parse_api_key(" key-1 \n").unwrap(), "key-1");
        assert!(parse_api_key("").is_err());
        assert!(parse_api_key("a\nb").is_err());
        // The console's default key/value form is not a key, nor a list of secrets.
        assert!(parse_api_key(r#"{"api_key":"sk_live_0123456789"}"#).is_err());
        assert!(
            parse_webhook_secrets(r#"{"s":"whsec_new_0123456789,whsec_old_0123456789"}"#).is_err()
        );
        assert!(parse_api_key("kéy-0123456789").is_err());
        assert_eq!(
            parse_webhook_secrets("whsec_new_0123456789, whsec_old_0123456789")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_webhook_secrets(" , ").is_err());
    }

    #[test]
    fn a_fixed_value_never_prints() {
        let v = SecretValue::fixed("s3cr3t-value".to_string());
        assert!(!format!("{v:?}").contains("s3cr3t"));
    }
}
