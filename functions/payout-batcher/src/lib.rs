//! `payout-batcher`: runs on an EventBridge schedule. Thin: builds the batcher once per cold
//! start, turns the invocation's deadline into a time budget, returns the run's summary.

use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;
use shared::payouts::batcher::{run_budget, Batcher, RunSummary};
use shared::payouts::provider::{HttpProvider, PayoutProvider};
use shared::platform::config::{ConfigError, PayoutConfig};
use shared::store::{DynamoStore, PayoutStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time budget when the invocation carries no deadline (local runtimes without a timeout).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// Everything the handler needs, built once per cold start. Generic over the store and the
/// provider so tests can put a fault-injecting store behind the same handler.
pub struct App<S = DynamoStore, P: ?Sized = HttpProvider> {
    batcher: Batcher<S, P>,
}

impl App {
    /// Configuration ([`PayoutConfig`]), the provider's API key from Secrets Manager (refreshed
    /// after its TTL: a rotation needs no deploy) and the clients, once per cold start.
    pub async fn from_env() -> Result<Self, Error> {
        let config = PayoutConfig::from_env()?;
        let key = shared::platform::secrets::load(
            &config.api_key_secret,
            config.secrets_ttl,
            shared::platform::secrets::parse_api_key,
        )
        .await
        .map_err(|e| ConfigError::new("PROVIDER_API_KEY_SECRET_ARN", e))?;
        let provider =
            HttpProvider::with_key(&config.provider_url, key, config.batcher.provider_timeout)?;
        let store: DynamoStore = config.store.store().await;
        Ok(Self::new(Batcher::new(
            Arc::new(store),
            Arc::new(provider),
            config.store.currencies,
            config.batcher,
        )))
    }
}

impl<S, P> App<S, P>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    pub fn new(batcher: Batcher<S, P>) -> Self {
        Self { batcher }
    }

    /// The batcher itself, for the operator tools that run its steps by hand.
    pub fn batcher(&self) -> &Batcher<S, P> {
        &self.batcher
    }

    /// The event's content is not used: the schedule's EventBridge event, an operator's
    /// hand-made `{}` invoke and a console test event all mean "run now". The run must end
    /// before Lambda's deadline; what does not fit waits for the next schedule.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<RunSummary, Error> {
        let deadline_ms = event.context.deadline as i64;
        let budget = run_budget(
            deadline_ms,
            chrono::Utc::now().timestamp_millis(),
            DEFAULT_BUDGET,
        );
        tracing::info!(request_id = %event.context.request_id, budget_ms = budget.as_millis() as u64, "batcher invoked");
        Ok(self.batcher.run(Instant::now() + budget).await?)
    }
}
