//! The provider webhook: signed events from tests and real callbacks from the sandbox provider,
//! against DynamoDB Local.

mod delivery;
mod settlement;

use integration_tests::{
    deliver, now_secs, sign, webhook_request, PayoutEnv, TestResponse, ACCOUNTS, WEBHOOK_SECRET,
};
use shared::domain::{Withdrawal, WithdrawalStatus};

/// `n` withdrawals of `amount` USD claimed and accepted by the provider (no callbacks).
async fn submitted(p: &PayoutEnv, prefix: &str, amount: &str, n: usize) -> Vec<Withdrawal> {
    let seeded = p.seed(prefix, "USD", amount, n, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let mut out = Vec::new();
    for w in &seeded {
        let w = p.reload(w).await;
        assert_eq!(w.status, WithdrawalStatus::Submitted);
        out.push(w);
    }
    out
}

async fn send(app: &provider_webhook::App, body: &str) -> TestResponse {
    deliver(
        app,
        webhook_request(body, Some(sign(body, WEBHOOK_SECRET, now_secs()))),
    )
    .await
}
