//! `payout-batcher`: runs on an EventBridge schedule. Thin: builds the batcher once per cold
//! start, turns the invocation's deadline into a time budget, returns the run's summary.

use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;
use shared::batcher::{run_budget, Batcher, BatcherConfig, RunSummary};
use shared::config::Config;
use shared::provider::{HttpProvider, PayoutProvider};
use shared::store::{BatchStore, DynamoStore, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type App = Batcher<DynamoStore, HttpProvider>;

/// Time budget when the invocation carries no deadline (local runtimes without a timeout).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

pub async fn app_from_env() -> Result<App, Error> {
    let config = Config::from_env()?;
    let batcher_config = BatcherConfig::from_env()?;
    let url = std::env::var("PROVIDER_URL").map_err(|_| "PROVIDER_URL is not set")?;
    // The key lives in Secrets Manager (refreshed after its TTL: a rotation needs no deploy).
    let key = shared::secrets::from_env(
        "PROVIDER_API_KEY_SECRET_ARN",
        shared::secrets::parse_api_key,
    )
    .await?;
    let provider = HttpProvider::with_key(&url, key, batcher_config.provider_timeout)?;
    let store: DynamoStore = config.store().await;
    Ok(Batcher::new(
        Arc::new(store),
        Arc::new(provider),
        config.currencies,
        batcher_config,
    ))
}

/// The event's content is not used: the schedule's EventBridge event, an operator's hand-made
/// `{}` invoke and a console test event all mean "run now". The run must end before Lambda's
/// deadline; what does not fit waits for the next schedule. Generic over the store and the
/// provider so tests can put a fault-injecting store behind the same handler.
pub async fn handle<S, P>(
    app: &Batcher<S, P>,
    event: LambdaEvent<Value>,
) -> Result<RunSummary, Error>
where
    S: Store + BatchStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    let deadline_ms = event.context.deadline as i64;
    let budget = run_budget(
        deadline_ms,
        chrono::Utc::now().timestamp_millis(),
        DEFAULT_BUDGET,
    );
    tracing::info!(request_id = %event.context.request_id, budget_ms = budget.as_millis() as u64, "batcher invoked");
    Ok(app.run(Instant::now() + budget).await?)
}
