//! `stream-relay --table T --invoke-url URL`: follows the table's stream on DynamoDB Local and
//! hands the records to event-publisher under `cargo lambda watch` (scripts/dev.sh starts it).

use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// The table whose stream is followed.
    #[arg(long, env = "TABLE_NAME")]
    table: String,
    /// DynamoDB Local (it serves the streams API on the same port).
    #[arg(long, env = "AWS_ENDPOINT_URL_DYNAMODB")]
    endpoint: String,
    /// The function's invoke URL, e.g. http://127.0.0.1:9000/2015-03-31/functions/event-publisher/invocations
    #[arg(long)]
    invoke_url: String,
    /// How often the stream is read when it had nothing new.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Invocations of one batch before its first record is given up (the mapping deployed: 10
    /// retries, then the on-failure queue). Higher here: a second apart, they outlast a rebuild.
    #[arg(long, default_value_t = 60)]
    max_attempts: u32,
    /// The mapping's batching window (template.yaml: 1 s).
    #[arg(long, default_value_t = 1000)]
    batching_window_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let conf = aws_sdk_dynamodbstreams::config::Builder::from(&config)
        .endpoint_url(&args.endpoint)
        .build();
    let client = aws_sdk_dynamodbstreams::Client::from_conf(conf);
    let mut relay = stream_relay::Relay::for_table(client, &args.table).await?;
    relay.max_attempts = args.max_attempts;
    relay.batching_window = Duration::from_millis(args.batching_window_ms);
    let invoke = stream_relay::http_invoke(args.invoke_url);
    eprintln!("stream-relay: following the stream of {}", args.table);
    loop {
        match relay.step(&invoke).await {
            Ok(d) if d.invocations > 0 => {
                eprintln!(
                    "stream-relay: {} record(s) in {} invocation(s), {} retried, {} given up",
                    d.records, d.invocations, d.retried, d.given_up
                );
                if d.retried > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(args.poll_ms)).await,
            Err(e) => {
                eprintln!("stream-relay: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
