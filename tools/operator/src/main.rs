//! Operator CLI for the withdrawal pipeline. Works against the table named by `TABLE_NAME` on
//! the DynamoDB endpoint of the environment (`AWS_ENDPOINT_URL_DYNAMODB` for DynamoDB Local).

use clap::{Parser, Subcommand};
use shared::domain::{BatchId, UserId, WithdrawalId};
use shared::http::auth::{LocalTokenKey, LOCAL_AUTH_SECRET_ENV};
use shared::operator::controls::{self, Target};
use shared::operator::{check, operations};
use shared::payouts::reconcile;
use shared::platform::config::StoreConfig;
use shared::platform::metrics;
use shared::publishing::republish::{self, Window};
use shared::requests::credits::CreditService;
use shared::store::{AdminStore, BatchStore, DynamoStore, Store};
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    /// Credit a user's balance: the only way funds enter. A reference credits once: running
    /// the same credit again changes nothing, another credit under it is refused.
    Credit {
        #[arg(long)]
        user: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        amount: String,
        /// What this credit is (the incoming transfer's id, a ticket): 1-128 printable ASCII.
        #[arg(long)]
        reference: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show a user's balances.
    Balances {
        #[arg(long)]
        user: String,
    },
    /// Mint a signed token for local runs (secret from LOCAL_AUTH_SECRET): a user's for the
    /// user API, or with --service a calling service's (its ARN) for the internal API.
    Token {
        #[arg(long, required_unless_present = "service", conflicts_with = "service")]
        user: Option<String>,
        #[arg(long)]
        service: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
    /// Verify the money invariants over the whole table; exits 1 on any violation.
    Check,
    /// The house's fee revenue per currency: the sum of every user's `fees` (what settled
    /// withdrawals charged, less what bank returns gave back), read over the whole table.
    Fees,
    /// One batcher run against the configured table and provider (PROVIDER_URL,
    /// PROVIDER_API_KEY); prints the summary.
    RunBatcher {
        /// Time budget in seconds.
        #[arg(long, default_value_t = 60)]
        budget: u64,
    },
    /// List batches with their status.
    Batches,
    /// Hand a batch flagged for an operator back to the batcher: it asks the provider first and
    /// re-sends (same key) only one the provider never recorded; an accepted one is never sent.
    RetryBatch { id: String },
    /// Compare final batches with the provider's status endpoint (PROVIDER_URL,
    /// PROVIDER_API_KEY): paid there but rejected here, failed there but settled here, unknown
    /// to the provider, amount differs. Exits 1 on any mismatch.
    Reconcile {
        /// Only batches created at or after this time (RFC 3339, e.g. 2026-11-29T00:00:00Z).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Withdrawals held for review (above their currency's REVIEW_THRESHOLDS), oldest first.
    Reviews {
        /// Only this currency (default: every configured one).
        #[arg(long)]
        currency: Option<String>,
    },
    /// Release a withdrawal held for review to the batcher (REVIEW → PENDING); its funds stay
    /// locked until it is paid, rejected or cancelled.
    Approve {
        #[arg(long)]
        withdrawal: String,
    },
    /// Reject a withdrawal and return its funds: REVIEW or PENDING, or SUBMITTED when the provider says
    /// its batch was never recorded (and the batch needs an operator) or the item failed.
    Reject {
        #[arg(long)]
        withdrawal: String,
        #[arg(long)]
        reason: String,
    },
    /// Print a signed HTTP API event for the webhook (for `cargo lambda invoke provider-webhook`),
    /// signed now (or at --at) with PROVIDER_WEBHOOK_SECRET.
    SignWebhook {
        #[arg(long)]
        body_file: std::path::PathBuf,
        /// Unix seconds to sign at (default: now).
        #[arg(long)]
        at: Option<i64>,
    },
    /// A withdrawal's audit trail.
    History {
        #[arg(long)]
        withdrawal: String,
    },
    /// Put on the bus (EVENT_BUS_NAME) again every event of the changes committed in
    /// [--since, --until): each withdrawal's status changes (from its audit trail) and each
    /// credit, rebuilt from the table with the publisher's own event ids, so consumers'
    /// deduplication holds. For events that missed the bus (an outage, a skipped record).
    Republish {
        /// RFC 3339, e.g. 2026-12-07T00:00:00Z.
        #[arg(long)]
        since: chrono::DateTime<chrono::Utc>,
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// List what would be put, put nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Let event-publisher pass over one stream record it cannot read (its log names the
    /// sequence number): recorded with who and why; rebuild its event with `republish` once the
    /// cause is fixed.
    SkipRecord {
        #[arg(long)]
        sequence: String,
        #[arg(long)]
        reason: String,
    },
    /// Stop new withdrawals of a currency (a provider or bank incident): requests are refused
    /// (`currency_paused`) and the batcher claims nothing new; money already out is still
    /// tracked. Takes effect on the next request.
    Pause {
        #[arg(long)]
        currency: String,
        #[arg(long)]
        reason: String,
    },
    /// Take withdrawals of a paused currency again.
    Resume {
        #[arg(long)]
        currency: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse a user's new withdrawals (`withdrawals_blocked`); their open ones go on unless an
    /// operator acts on them.
    BlockUser {
        #[arg(long)]
        user: String,
        #[arg(long)]
        reason: String,
    },
    /// Take a blocked user's withdrawals again.
    UnblockUser {
        #[arg(long)]
        user: String,
        #[arg(long)]
        reason: Option<String>,
    },
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

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Local commands need no table; every other one runs against the configured store.
async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::SignWebhook { body_file, at } => return sign_webhook(&body_file, at),
        Command::Token { user, service, ttl } => return token(user, service, ttl),
        _ => {}
    }
    let config = StoreConfig::from_env()?;
    let store = config.store().await;
    match cli.command {
        Command::Token { .. } | Command::SignWebhook { .. } => unreachable!("handled above"),
        Command::CreateTable => {
            let created = store.create_table().await?;
            let what = if created { "created" } else { "already exists" };
            println!("table {} {what}", config.table_name);
        }
        Command::Credit {
            user,
            currency,
            amount,
            reference,
            description,
        } => {
            let credit = CreditArgs {
                user,
                currency,
                amount,
                reference,
                description,
            };
            credit_user(&config, &store, credit).await?;
        }
        Command::Balances { user } => balances(&store, &user).await?,
        Command::RunBatcher { budget } => {
            let app = batcher_app().await?;
            let batcher = app.batcher();
            let summary = batcher
                .run(Instant::now() + Duration::from_secs(budget))
                .await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Batches => batches(&store).await?,
        Command::RetryBatch { id } => {
            operations::retry_batch(&store, BatchId::parse(&id)?).await?;
            println!("batch {id} will be re-sent by the next batcher run");
        }
        Command::Reviews { currency } => reviews(&store, currency.as_deref()).await?,
        Command::Approve { withdrawal } => {
            let w = operations::approve_withdrawal(
                &store,
                WithdrawalId::parse(&withdrawal)?,
                &operator_name(),
            )
            .await?;
            println!("{} {} {} {}", w.id, w.status, w.currency, w.amount);
        }
        Command::Reject { withdrawal, reason } => {
            let app = batcher_app().await?;
            let batcher = app.batcher();
            let w = operations::reject_withdrawal(
                &store,
                batcher.provider().as_ref(),
                WithdrawalId::parse(&withdrawal)?,
                &reason,
                operations::SEND_QUIET_PERIOD,
            )
            .await?;
            println!("{} {} {} {}", w.id, w.status, w.currency, w.amount);
        }
        Command::Reconcile { since } => return reconcile(&store, since).await,
        Command::History { withdrawal } => {
            let w = store
                .find_withdrawal(WithdrawalId::parse(&withdrawal)?)
                .await?
                .ok_or("no such withdrawal")?;
            println!("{}", serde_json::to_string_pretty(&w.audit)?);
        }
        Command::Republish {
            since,
            until,
            dry_run,
        } => return republish_events(&store, Window { since, until }, dry_run).await,
        Command::SkipRecord { sequence, reason } => skip_record(&store, &sequence, &reason).await?,
        Command::Check => return check(&store).await,
        Command::Fees => return fees(&store).await,
        Command::Pause { currency, reason } => {
            switch(&store, Target::Currency(&currency), true, Some(&reason)).await?
        }
        Command::Resume { currency, reason } => {
            switch(
                &store,
                Target::Currency(&currency),
                false,
                reason.as_deref(),
            )
            .await?
        }
        Command::BlockUser { user, reason } => {
            switch(&store, Target::User(&user), true, Some(&reason)).await?
        }
        Command::UnblockUser { user, reason } => {
            switch(&store, Target::User(&user), false, reason.as_deref()).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A signed HTTP API event for the webhook route, for `cargo lambda invoke provider-webhook`.
fn sign_webhook(body_file: &std::path::Path, at: Option<i64>) -> CliResult {
    let secret = std::env::var("PROVIDER_WEBHOOK_SECRET")
        .map_err(|_| "PROVIDER_WEBHOOK_SECRET is not set")?;
    let secret = shared::payouts::signature::WebhookSecret::new(secret)?;
    // The body is sent exactly as it is in the file: the signature covers these bytes.
    let body = std::fs::read_to_string(body_file)?;
    let signature = secret.sign(at.unwrap_or_else(now_secs), body.as_bytes());
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/provider",
        "rawPath": "/webhooks/provider",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "payout-signature": signature},
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": "localhost",
            "domainPrefix": "localhost", "requestId": "signed-fixture",
            "routeKey": "POST /webhooks/provider", "stage": "$default",
            "time": "29/Nov/2026:12:00:00 +0000", "timeEpoch": 0,
            "http": {"method": "POST", "path": "/webhooks/provider", "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "provider"}
        },
        "body": body,
        "isBase64Encoded": false
    });
    println!("{}", serde_json::to_string_pretty(&event)?);
    Ok(ExitCode::SUCCESS)
}

/// A local token: a user's for the user API, or a calling service's for the internal API.
fn token(user: Option<String>, service: Option<String>, ttl_secs: i64) -> CliResult {
    let secret = std::env::var(LOCAL_AUTH_SECRET_ENV)
        .map_err(|_| format!("{LOCAL_AUTH_SECRET_ENV} is not set"))?;
    let key = LocalTokenKey::new(secret.as_bytes())?;
    let token = match (user, service) {
        (Some(user), _) => key.mint(&UserId::parse(&user)?, now_secs(), ttl_secs),
        (None, Some(caller)) => key.mint_service(&caller, now_secs(), ttl_secs),
        (None, None) => unreachable!("clap requires one"),
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

struct CreditArgs {
    user: String,
    currency: String,
    amount: String,
    reference: String,
    description: Option<String>,
}

/// Through the credit API's core: the same validation, the same idempotency by reference.
async fn credit_user(
    config: &StoreConfig,
    store: &DynamoStore,
    credit: CreditArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let CreditArgs {
        user,
        currency,
        amount,
        reference,
        description,
    } = credit;
    let body = serde_json::json!({"user_id": user, "currency": currency,
        "amount": amount, "reference": reference, "description": description});
    let credits = CreditService::new(
        std::sync::Arc::new(store.clone()),
        config.currencies.clone(),
    );
    let answer = credits
        .credit("operator", body.to_string().as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", e.code()))?;
    if answer.replayed {
        println!(
            "credit {reference} was already recorded at {}: nothing changed",
            answer.view.created_at
        );
    } else {
        println!("credit {reference} recorded");
    }
    let user = UserId::parse(&user)?;
    let currency = config.currencies.get(&currency)?.clone();
    let b = store
        .balances(&user)
        .await?
        .into_iter()
        .find(|b| b.currency == currency)
        .ok_or("credited balance not found")?;
    println!(
        "{user} {currency}: available {} locked {} credited {}",
        currency.format(b.available),
        currency.format(b.locked),
        currency.format(b.credited)
    );
    Ok(())
}

async fn balances(store: &DynamoStore, user: &str) -> Result<(), Box<dyn std::error::Error>> {
    let user = UserId::parse(user)?;
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
                "fees": b.currency.format(b.fees),
                "credited": b.currency.format(b.credited),
                "open": b.open_count,
            })
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&balances)?);
    Ok(())
}

async fn batches(store: &DynamoStore) -> Result<(), Box<dyn std::error::Error>> {
    for b in store.all_batches().await? {
        let final_count = store.final_count(b.id).await?;
        println!(
            "{} {} {:<14} members {:>4} final {:>4} total {} attempts {}{}",
            b.id,
            b.currency,
            b.status.as_str(),
            b.member_count(),
            final_count,
            b.currency.format(b.total),
            b.attempts,
            b.last_error
                .map(|e| format!(" last_error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// What waits for an operator's decision, per currency, oldest first.
async fn reviews(
    store: &DynamoStore,
    only: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let currencies: Vec<_> = match only {
        Some(code) => vec![store.currencies().get(code)?.clone()],
        None => store.currencies().iter().cloned().collect(),
    };
    for currency in &currencies {
        for w in store.in_review(currency, 1000).await? {
            println!(
                "{} {} {} {} user {} since {}",
                w.id,
                w.status,
                w.currency,
                w.amount,
                w.user_id.as_str(),
                shared::domain::timestamp(&w.created_at)
            );
        }
    }
    Ok(())
}

/// Every batch (created at or after `since`) against the provider; exits 1 on any mismatch.
async fn reconcile(store: &DynamoStore, since: Option<chrono::DateTime<chrono::Utc>>) -> CliResult {
    let app = batcher_app().await?;
    let batcher = app.batcher();
    let mut mismatches = 0;
    let mut checked = 0;
    for b in store.all_batches().await? {
        if since.is_some_and(|t| b.created_at < t) {
            continue;
        }
        let found = reconcile::batch(store, batcher.provider().as_ref(), &b).await?;
        checked += 1;
        for m in &found {
            println!("MISMATCH {m}");
        }
        mismatches += found.len();
    }
    metrics::emit(
        "ReconcileMismatches",
        mismatches as f64,
        metrics::Unit::Count,
        &[],
    );
    println!("reconciled {checked} batches: {mismatches} mismatch(es)");
    Ok(if mismatches > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Events of the window rebuilt from the table and put on the bus again (or listed).
async fn republish_events(store: &DynamoStore, window: Window, dry_run: bool) -> CliResult {
    let report = store.scan_all().await?;
    // What this configuration cannot read would be left out silently: say so, and fail once
    // the rest is out (fix `CURRENCIES`, then run it again).
    for u in &report.unreadable {
        eprintln!("UNREADABLE {u}: its events are not republished");
    }
    let events = republish::rebuilt(
        &report.withdrawals,
        &report.credits,
        &report.beneficiaries,
        window,
    );
    for e in &events {
        println!("{} {} {}", e.occurred_at, e.kind.detail_type(), e.event_id);
    }
    if dry_run {
        println!("{} event(s) would be republished", events.len());
        return Ok(ExitCode::SUCCESS);
    }
    let bus_name = std::env::var("EVENT_BUS_NAME").map_err(|_| "EVENT_BUS_NAME is not set")?;
    let bus = event_publisher::bus(bus_name).await;
    let out = republish::republish(&bus, &events).await;
    println!(
        "republished {} of {} event(s) in {} call(s)",
        out.events,
        events.len(),
        out.calls
    );
    if let Some(id) = out.stopped_at {
        println!("stopped at {id}: run the same command again (consumers deduplicate)");
        return Ok(ExitCode::FAILURE);
    }
    if !report.unreadable.is_empty() {
        println!(
            "{} item(s) could not be read with this configuration: not republished",
            report.unreadable.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn skip_record(
    store: &DynamoStore,
    sequence: &str,
    reason: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let by = operator_name();
    if store.skip_stream_record(sequence, &by, reason).await? {
        println!("stream record {sequence} will be passed over by event-publisher's next retry");
    } else {
        println!("stream record {sequence} was already skipped: nothing changed");
    }
    Ok(())
}

/// Who is acting, for the records: the login running the command.
fn operator_name() -> String {
    std::env::var("USER").map_or_else(|_| "operator".into(), |u| format!("operator:{u}"))
}

/// Pause, resume, block or unblock, and print the switch as written.
async fn switch(
    store: &DynamoStore,
    target: Target<'_>,
    on: bool,
    reason: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let by = operator_name();
    let control = controls::switch(store, store.currencies(), target, on, reason, &by).await?;
    println!(
        "{} {} by {} at {}{}",
        control.subject,
        control.change_name(),
        control.by,
        shared::domain::timestamp(&control.at),
        control.reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    Ok(())
}

/// The money invariants over a full read of the table; exits 1 on any violation.
async fn check(store: &DynamoStore) -> CliResult {
    let report = store.scan_all().await?;
    for line in check::summary(&report) {
        println!("{line}");
    }
    let problems = check::violations(&report);
    println!(
        "checked {} balances, {} withdrawals and {} credits: {} violation(s)",
        report.balances.len(),
        report.withdrawals.len(),
        report.credits.len(),
        problems.len()
    );
    for p in &problems {
        println!("VIOLATION {p}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fee revenue per currency, summed over users' balances (no single item holds it: no hot
/// key on the settle path); `check` proves each user's part against their withdrawals.
/// Exits 1 when an item could not be read: the sums would leave it out.
async fn fees(store: &DynamoStore) -> CliResult {
    let report = store.scan_all().await?;
    for line in check::fee_revenue(&report) {
        println!("{line}");
    }
    for u in &report.unreadable {
        eprintln!("UNREADABLE {u}: not counted");
    }
    Ok(if report.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The batcher's app, for the commands that talk to the provider (PROVIDER_URL,
/// PROVIDER_API_KEY).
async fn batcher_app() -> Result<payout_batcher::App, Box<dyn std::error::Error>> {
    payout_batcher::App::from_env()
        .await
        .map_err(|e| e.to_string().into())
}
