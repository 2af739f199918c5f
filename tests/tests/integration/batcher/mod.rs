//! The payout batcher against DynamoDB Local and the sandbox provider over HTTP.

mod answers;
mod claiming;

use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}
