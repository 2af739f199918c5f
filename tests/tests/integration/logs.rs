//! What the functions log: JSON lines that carry the request, user, withdrawal and batch ids,
//! and never a bank account number, a token, an API key or a webhook secret.

use integration_tests::{
    deliver, now_secs, sign, spawn_webhook_server, webhook_request, ApiRequest, LogCapture,
    PayoutEnv, ACCOUNTS, API_KEY, WEBHOOK_SECRET,
};
use shared::domain::UserId;
use shared::http::auth::{Authenticator, LocalTokenKey};
use std::sync::Arc;

#[tokio::test(flavor = "current_thread")]
async fn logs_carry_ids_and_never_secrets_or_account_numbers() {
    let (capture, _guard) = LogCapture::on_this_thread();

    let mut p = PayoutEnv::new(|c| {
        c.callback_delay = std::time::Duration::from_millis(10);
        c.fail_accounts.insert(ACCOUNTS[1].to_string());
    })
    .await;
    let token_key = LocalTokenKey::new(b"log-test-secret-log-test-secret-x").unwrap();
    p.env.app.auth = Authenticator::LocalToken(token_key.clone());
    let token = token_key.mint(&UserId::parse("logger").unwrap(), now_secs(), 600);
    let app = Arc::new(p.webhook_app(&[WEBHOOK_SECRET]));
    p.sandbox
        .set_webhook_url(&spawn_webhook_server(app.clone()).await);

    p.env.credit("logger", "EUR", "500").await;
    let mut ids = Vec::new();
    for account in [ACCOUNTS[0], ACCOUNTS[1], ACCOUNTS[4]] {
        let beneficiary = p.env.beneficiary("logger", account).await;
        let body =
            serde_json::json!({"currency":"EUR","amount":"50.00","beneficiary_id": beneficiary})
                .to_string();
        let r = p
            .env
            .call(
                ApiRequest::new("POST", "/withdrawals")
                    .header("authorization", &format!("Bearer {token}"))
                    .fresh_key()
                    .body(body)
                    .build(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // Refused requests log too: a bad account number must not appear either.
    let bad =
        serde_json::json!({"currency":"EUR","amount":"5","bank_account":"DE89370400440532013001"})
            .to_string();
    p.env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .header("authorization", &format!("Bearer {token}"))
                .fresh_key()
                .body(bad)
                .build(),
        )
        .await;
    p.run(PayoutEnv::config()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.sandbox.sent_events().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks did not arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A forged webhook is logged as refused, without echoing anything secret.
    deliver(
        &app,
        webhook_request(
            "{}",
            Some(sign("{}", "whsec_wrong_secret_0000", now_secs())),
        ),
    )
    .await;

    let logs = capture.text();
    assert!(
        logs.lines().count() > 10,
        "too few log lines captured:\n{logs}"
    );
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    let secrets = [
        ACCOUNTS[0],
        ACCOUNTS[1],
        "021000021:123456789",
        "123456789",
        "DE89370400440532013001",
        "370400440532013",
        WEBHOOK_SECRET,
        API_KEY,
        &token,
        "log-test-secret",
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "log output contains {secret}");
    }
    let request_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request done"))
        .collect();
    assert!(request_lines.len() >= 4, "{logs}");
    assert!(
        request_lines
            .iter()
            .all(|l| l.contains("\"user_id\":\"logger\"")),
        "{request_lines:?}"
    );
    assert!(
        request_lines
            .iter()
            .filter(|l| l.contains("withdrawal_id"))
            .count()
            >= 3
    );
    assert!(logs.contains("\"batch_id\""), "batch ids are logged");
    for id in &ids {
        assert!(
            logs.contains(id.as_str()),
            "withdrawal {id} is traceable in the logs"
        );
    }
    assert!(logs.contains("webhook signature refused"));
}
