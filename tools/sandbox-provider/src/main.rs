//! `sandbox-provider`: the local payment provider as its own process.

use clap::Parser;
use sandbox_provider::{Sandbox, SandboxConfig};
use shared::payouts::signature::WebhookSecret;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Local payment provider for the withdrawal pipeline")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: std::net::SocketAddr,
    /// Bearer key the batcher must send.
    #[arg(long, env = "PROVIDER_API_KEY", default_value = "sandbox-key")]
    api_key: String,
    /// Webhook URL for callbacks.
    #[arg(long, env = "SANDBOX_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Shared secret for signing callbacks.
    #[arg(long, env = "PROVIDER_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: String,
    #[arg(long, default_value_t = 1000)]
    callback_delay_ms: u64,
    /// Share of items that fail (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Accounts whose payouts fail.
    #[arg(long)]
    fail_account: Vec<String>,
    /// Accounts whose payouts are paid, then returned by the bank.
    #[arg(long)]
    return_account: Vec<String>,
    #[arg(long, default_value_t = 3000)]
    return_delay_ms: u64,
    /// Accounts that never get a final answer.
    #[arg(long)]
    pending_account: Vec<String>,
    /// Forget an Idempotency-Key this long after its batch was recorded: the same key and body
    /// are then a new batch and are PAID AGAIN (real providers keep keys about 24 h). Unset:
    /// keys are kept for ever. Also `POST /sandbox/memory {"idempotency_key_ttl_ms": …}`.
    #[arg(long)]
    idempotency_key_ttl_secs: Option<u64>,
    /// Lose the next N accepted batches: their status endpoint answers 404.
    #[arg(long, default_value_t = 0)]
    lose_next_batches: u32,
    /// Leave every item of the next N accepted batches pending for ever (no callback).
    #[arg(long, default_value_t = 0)]
    pending_next_batches: u32,
    /// Longest wait between two delivery attempts of one callback.
    #[arg(long, default_value_t = 60_000)]
    retry_max_delay_ms: u64,
    /// How long a callback is retried before it is given up (real providers: hours to days).
    #[arg(long, default_value_t = 24 * 3600)]
    retry_for_secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let mut config = SandboxConfig::new(&args.api_key, WebhookSecret::new(&args.webhook_secret)?);
    config.webhook_url = args.webhook_url;
    config.callback_delay = Duration::from_millis(args.callback_delay_ms);
    config.failure_rate = args.failure_rate;
    config.fail_accounts = args.fail_account.into_iter().collect();
    config.return_accounts = args.return_account.into_iter().collect();
    config.return_delay = Duration::from_millis(args.return_delay_ms);
    config.pending_accounts = args.pending_account.into_iter().collect();
    config.memory.idempotency_key_ttl = args.idempotency_key_ttl_secs.map(Duration::from_secs);
    config.memory.lose_next_batches = args.lose_next_batches;
    config.memory.pending_next_batches = args.pending_next_batches;
    config.retry_max_delay = Duration::from_millis(args.retry_max_delay_ms);
    config.retry_for = Duration::from_secs(args.retry_for_secs);
    let sandbox = Sandbox::new(config);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "sandbox provider listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, sandbox.router()).await?;
    Ok(())
}
