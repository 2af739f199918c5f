//! Test harness: a fresh table on DynamoDB Local per test, HTTP API v2 events with JWT claims,
//! and the conservation check.
//!
//! DynamoDB Local is started by `scripts/test.sh`, which exports `DYNAMODB_ENDPOINT`.

mod api;
mod clients;
pub mod conflicts;
pub mod events;
pub mod faults;
mod logs;
mod payouts;
pub mod sim;
mod tables;
mod webhook;

pub use api::{withdrawal_body, ApiRequest, BalanceView, TestEnv, TestResponse};
pub use clients::{
    client_for, counting_client, endpoint, function_client, put_secret, secrets_admin,
    secrets_client, BATCHER_FN, REQUEST_FN, WEBHOOK_FN,
};
pub use logs::LogCapture;
pub use payouts::{claiming_batch, PayoutEnv, ACCOUNTS, API_KEY, WEBHOOK_SECRET};
pub use tables::{credit_record, fresh_table, register_beneficiary, seed_pending, BENEFICIARY};
pub use webhook::{callback_body, deliver, now_secs, sign, spawn_webhook_server, webhook_request};

pub const IBAN: &str = "DE89370400440532013000";
/// The deposit service the tests' internal API admits, and one of its sessions as API Gateway's
/// IAM authorizer names it.
pub const DEPOSIT_ROLE: &str = "arn:aws:iam::123456789012:role/deposit-service";
pub const DEPOSIT_CALLER: &str =
    "arn:aws:sts::123456789012:assumed-role/deposit-service/deposits-1";
