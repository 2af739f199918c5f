//! Operator CLI for the withdrawal pipeline. Works against the table named by `TABLE_NAME` on
//! the DynamoDB endpoint of the environment (`AWS_ENDPOINT_URL_DYNAMODB` for DynamoDB Local).

use clap::{Parser, Subcommand};
use shared::auth::{LocalTokenKey, LOCAL_AUTH_SECRET_ENV};
use shared::config::Config;
use shared::domain::{Amount, UserId};
use shared::store::{DynamoStore, Store};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "operator", about = "Operate the withdrawal pipeline's table")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the table (with its pending index and TTL); does nothing if it exists.
    CreateTable,
    /// Credit a user's balance: the only way funds enter.
    Credit {
        #[arg(long)]
        user: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        amount: String,
    },
    /// Show a user's balances.
    Balances {
        #[arg(long)]
        user: String,
    },
    /// Mint a signed token for local runs (secret from LOCAL_AUTH_SECRET).
    Token {
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
    /// Verify the money invariants over the whole table; exits 1 on any violation.
    Check,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Command::Token { user, ttl } = &cli.command {
        let secret = std::env::var(LOCAL_AUTH_SECRET_ENV)
            .map_err(|_| format!("{LOCAL_AUTH_SECRET_ENV} is not set"))?;
        let key = LocalTokenKey::new(secret.as_bytes())?;
        let user = UserId::parse(user)?;
        println!("{}", key.mint(&user, chrono_now(), *ttl));
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::from_env()?;
    let store = DynamoStore::new(
        shared::config::dynamodb_client().await,
        &config.table_name,
        config.currencies.clone(),
    );
    match cli.command {
        Command::Token { .. } => unreachable!("handled above"),
        Command::CreateTable => {
            let created = store.create_table().await?;
            println!(
                "table {} {}",
                config.table_name,
                if created { "created" } else { "already exists" }
            );
        }
        Command::Credit {
            user,
            currency,
            amount,
        } => {
            let user = UserId::parse(&user)?;
            let currency = config.currencies.get(&currency)?.clone();
            let amount = Amount::parse(&amount, &currency)?;
            let b = store.credit(&user, &currency, amount).await?;
            println!(
                "{user} {currency}: available {} locked {} credited {}",
                currency.format(b.available),
                currency.format(b.locked),
                currency.format(b.credited)
            );
        }
        Command::Balances { user } => {
            let user = UserId::parse(&user)?;
            let balances: Vec<_> = store
                .balances(&user)
                .await?
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "currency": b.currency.code().as_str(),
                        "available": b.currency.format(b.available),
                        "locked": b.currency.format(b.locked),
                        "paid_out": b.currency.format(b.paid_out),
                        "credited": b.currency.format(b.credited),
                        "open": b.open_count,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&balances)?);
        }
        Command::Check => {
            let report = store.scan_all().await?;
            for line in shared::check::summary(&report) {
                println!("{line}");
            }
            let problems = shared::check::violations(&report);
            println!(
                "checked {} balances and {} withdrawals: {} violation(s)",
                report.balances.len(),
                report.withdrawals.len(),
                problems.len()
            );
            for p in &problems {
                println!("VIOLATION {p}");
            }
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
