//! The integration tests, one binary with a module per area (each links the AWS SDK once, not
//! once per area), all against DynamoDB Local, moto and the sandbox provider that
//! `./scripts/test.sh` starts. `cargo test --test integration webhook::` runs one area.
//!
//! Four areas keep binaries of their own: `reliability` (its crash timings and load figures
//! assume no other test runs beside it), `hot_batch` (it counts transaction retries in the debug
//! log of a 500-callback burst), `simulation` (the long seeded run) and `iam` (run after the
//! suite, on the calls every binary recorded).

mod batcher;
mod beneficiaries;
mod contracts;
mod controls;
mod credits;
mod events;
mod fees;
mod fixtures;
mod logs;
mod payout_safety;
mod request_api;
mod reviews;
mod secrets;
mod webhook;
