//! Payouts: the batcher against the sandbox provider over real HTTP (PayoutEnv).

use crate::{seed_pending, TestEnv, BATCHER_FN};
use sandbox_provider::{Sandbox, SandboxConfig};
use shared::domain::Withdrawal;
use shared::payouts::batcher::{Batcher, BatcherConfig};
use shared::payouts::provider::HttpProvider;
use shared::payouts::signature::WebhookSecret;
use shared::store::{DynamoStore, Store};
use std::sync::Arc;
use std::time::Duration;

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
pub const API_KEY: &str = "sandbox-test-key";
/// Valid accounts, so tests can make one of them fail or be returned.
pub const ACCOUNTS: [&str; 5] = [
    "DE89370400440532013000",
    "GB82WEST12345698765432",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "ABA:021000021:123456789",
];

pub struct PayoutEnv {
    pub env: TestEnv,
    pub sandbox: Sandbox,
    pub provider_url: String,
}

impl PayoutEnv {
    pub async fn new(configure: impl FnOnce(&mut SandboxConfig)) -> Self {
        Self::with_currencies(shared::domain::Currencies::default(), configure).await
    }

    /// With `currencies` configured as `CURRENCIES` and `REVIEW_THRESHOLDS` would.
    pub async fn with_currencies(
        currencies: shared::domain::Currencies,
        configure: impl FnOnce(&mut SandboxConfig),
    ) -> Self {
        let env = TestEnv::with_config(u32::MAX, currencies).await;
        let mut config = SandboxConfig::new(API_KEY, WebhookSecret::new(WEBHOOK_SECRET).unwrap());
        config.hang = Duration::from_millis(1500);
        configure(&mut config);
        let sandbox = Sandbox::new(config);
        let addr = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        Self {
            env,
            sandbox,
            provider_url: format!("http://{addr}"),
        }
    }

    pub fn config() -> BatcherConfig {
        BatcherConfig {
            provider_timeout: Duration::from_millis(500),
            safety_margin: Duration::from_millis(100),
            ..BatcherConfig::default()
        }
    }

    pub fn batcher(&self, config: BatcherConfig) -> Batcher<DynamoStore, HttpProvider> {
        self.batcher_on(self.env.store_for(BATCHER_FN), config)
    }

    /// A batcher over `store` (configured otherwise than the test's own, say).
    pub fn batcher_on(
        &self,
        store: Arc<DynamoStore>,
        config: BatcherConfig,
    ) -> Batcher<DynamoStore, HttpProvider> {
        let provider =
            HttpProvider::new(&self.provider_url, API_KEY, config.provider_timeout).unwrap();
        Batcher::new(
            store,
            Arc::new(provider),
            self.env.currencies.clone(),
            config,
        )
    }

    /// A batcher speaking to another provider (a second sandbox that never saw our batches, a
    /// wrapper that alters answers).
    pub fn batcher_with<P: shared::payouts::provider::PayoutProvider + ?Sized + 'static>(
        &self,
        provider: Arc<P>,
        config: BatcherConfig,
    ) -> Batcher<DynamoStore, P> {
        Batcher::new(
            self.env.store_for(BATCHER_FN),
            provider,
            self.env.currencies.clone(),
            config,
        )
    }

    /// A client of this env's sandbox, as the batcher and the operator commands use it.
    pub fn provider(&self) -> HttpProvider {
        HttpProvider::new(&self.provider_url, API_KEY, Duration::from_millis(500)).unwrap()
    }

    /// A fresh batch of `n` × `amount` USD flagged for an operator after one attempt the
    /// provider never recorded (it answers 404 for it). Returns the members and the batch id.
    pub async fn flagged_unrecorded(
        &self,
        prefix: &str,
        amount: &str,
        n: usize,
    ) -> (Vec<Withdrawal>, shared::domain::BatchId) {
        let seeded = self.seed(prefix, "USD", amount, n, ACCOUNTS[0]).await;
        self.sandbox
            .inject(&[sandbox_provider::Fault::ErrorBeforeRecord]);
        self.run(BatcherConfig {
            max_attempts: 1,
            ..Self::config()
        })
        .await;
        let batch = self.reload(&seeded[0]).await.batch_id.expect("claimed");
        (seeded, batch)
    }

    /// The tests' sandbox sends no callbacks: runs that ask the provider about every accepted
    /// batch (at most 10 per run) stand in for them.
    pub async fn settle_from_status(&self) {
        for _ in 0..3 {
            self.run(BatcherConfig {
                stale_after: Duration::ZERO,
                ..Self::config()
            })
            .await;
        }
    }

    /// Runs the batcher once with a generous time budget.
    pub async fn run(&self, config: BatcherConfig) -> shared::payouts::batcher::RunSummary {
        self.batcher(config)
            .run(std::time::Instant::now() + Duration::from_secs(60))
            .await
            .expect("batcher run")
    }

    /// `n` pending withdrawals of `amount`, spread over users of 10 each, all funded.
    pub async fn seed(
        &self,
        prefix: &str,
        currency: &str,
        amount: &str,
        n: usize,
        account: &str,
    ) -> Vec<Withdrawal> {
        self.seed_through(&self.env.store, prefix, currency, amount, n, account)
            .await
    }

    /// [`Self::seed`], the requests written through `store` (another shard count, say).
    pub async fn seed_through(
        &self,
        store: &Arc<DynamoStore>,
        prefix: &str,
        currency: &str,
        amount: &str,
        n: usize,
        account: &str,
    ) -> Vec<Withdrawal> {
        seed_pending(
            store,
            &self.env.currencies,
            prefix,
            currency,
            amount,
            n,
            10,
            account,
        )
        .await
    }

    pub async fn reload(&self, w: &Withdrawal) -> Withdrawal {
        self.env
            .store
            .withdrawal(&w.user_id, w.id)
            .await
            .unwrap()
            .expect("exists")
    }
}

/// A batch record as a run holds it while claiming (for tests that play a run by hand).
pub fn claiming_batch(
    currency: &shared::domain::Currency,
    owner: &str,
    lease_until_ms: i64,
) -> shared::domain::Batch {
    shared::domain::Batch::claiming(currency.clone(), owner, lease_until_ms)
}
