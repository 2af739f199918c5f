//! Configuration read once at cold start.

use crate::domain::Currencies;

#[derive(Clone, Debug)]
pub struct Config {
    pub table_name: String,
    pub currencies: Currencies,
    /// Open (pending or submitted) withdrawals a user may have per currency.
    pub max_open_per_currency: u32,
    /// Shards of each currency's pending index (`PENDING_SHARDS`). Lowering it is safe: the
    /// request function records the highest count at cold start and the batcher reads that many.
    pub pending_shards: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    pub const DEFAULT_MAX_OPEN: u32 = 5;

    /// `TABLE_NAME` (required), `CURRENCIES` (`CODE:scale:min:max,…`), `MAX_OPEN_WITHDRAWALS`.
    /// The DynamoDB endpoint is the SDK's own `AWS_ENDPOINT_URL_DYNAMODB`, set only locally.
    pub fn from_env() -> Result<Self, ConfigError> {
        let table_name =
            std::env::var("TABLE_NAME").map_err(|_| ConfigError("TABLE_NAME is not set".into()))?;
        if table_name.len() < 3 {
            return Err(ConfigError("TABLE_NAME needs at least 3 characters".into()));
        }
        let currencies = match std::env::var("CURRENCIES") {
            Ok(c) if !c.trim().is_empty() => Currencies::parse_config(&c).map_err(ConfigError)?,
            _ => Currencies::default(),
        };
        let max_open_per_currency = match std::env::var("MAX_OPEN_WITHDRAWALS") {
            Ok(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                ConfigError("MAX_OPEN_WITHDRAWALS must be a positive integer".into())
            })?,
            Err(_) => Self::DEFAULT_MAX_OPEN,
        };
        let pending_shards = match std::env::var("PENDING_SHARDS") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| ConfigError("PENDING_SHARDS must be 1 to 64".into()))?,
            Err(_) => crate::store::DynamoStore::DEFAULT_PENDING_SHARDS,
        };
        Ok(Self {
            table_name,
            currencies,
            max_open_per_currency,
            pending_shards,
        })
    }
}

impl Config {
    /// The store as configured, over a client built from the environment.
    pub async fn store(&self) -> crate::store::DynamoStore {
        crate::store::DynamoStore::new(
            dynamodb_client().await,
            &self.table_name,
            self.currencies.clone(),
        )
        .with_pending_shards(self.pending_shards)
    }
}

/// The SDK client, built from the environment's region, credentials and endpoint; with the call
/// recorder where `CALL_LOG_DIR` is set (local runs only).
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut builder = aws_sdk_dynamodb::config::Builder::from(&config);
    if let Some(recorder) = crate::calls::CallRecorder::from_env() {
        builder = builder.interceptor(recorder);
    }
    aws_sdk_dynamodb::Client::from_conf(builder.build())
}
