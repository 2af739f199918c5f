//! The committed `cargo lambda invoke` fixtures stay valid: they parse as the events Lambda
//! delivers, their tokens verify with the local secret the scripts use, and each answers as the
//! README says.

use integration_tests::TestEnv;
use shared::auth::{Authenticator, LocalTokenKey};
use std::path::PathBuf;

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("events")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(events_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The local token secret as scripts/lib.sh exports it.
fn local_secret() -> String {
    let lib = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib.sh"),
    )
    .unwrap();
    let line = lib
        .lines()
        .find(|l| l.contains("LOCAL_AUTH_SECRET:-"))
        .expect("scripts/lib.sh sets LOCAL_AUTH_SECRET");
    line.split(":-")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn http_fixtures_answer_as_documented_with_the_local_token() {
    let mut env = TestEnv::new().await;
    env.credit("alice", "USD", "100").await;
    env.app.auth =
        Authenticator::LocalToken(LocalTokenKey::new(local_secret().as_bytes()).unwrap());
    for (file, status) in [
        ("create-withdrawal.json", 201),
        ("create-withdrawal.json", 201),
        ("list-withdrawals.json", 200),
        ("get-withdrawal.json", 404),
        ("cancel-withdrawal.json", 404),
        ("get-balances.json", 200),
    ] {
        let req =
            lambda_http::request::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let r = env.call(req).await;
        assert_eq!(r.status, status, "{file}: {}", r.body);
    }
    // The create fixture carries an Idempotency-Key: invoking it twice creates one withdrawal.
    assert_eq!(env.balance("alice", "USD").await.1, "25.00");
    env.assert_conserved().await;
}

#[test]
fn fixture_tokens_are_long_lived_and_signed_with_the_local_secret() {
    let key = LocalTokenKey::new(local_secret().as_bytes()).unwrap();
    for file in [
        "create-withdrawal.json",
        "list-withdrawals.json",
        "get-balances.json",
    ] {
        let event: serde_json::Value = serde_json::from_str(&read(file)).unwrap();
        let auth = event["headers"]["authorization"].as_str().unwrap();
        let claims = key
            .verify(
                auth.strip_prefix("Bearer ").unwrap(),
                chrono::Utc::now().timestamp(),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(claims.sub, "alice");
        // Also carries the claims API Gateway's authorizer would add, for deployed-mode runs.
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
            "alice"
        );
    }
}

#[test]
fn the_schedule_and_webhook_fixtures_parse() {
    let _: aws_lambda_events::eventbridge::EventBridgeEvent<serde_json::Value> =
        serde_json::from_str(&read("scheduled-event.json")).unwrap();
    let event =
        shared::webhook::ProviderEvent::parse(read("webhook-paid.body.json").as_bytes()).unwrap();
    assert_eq!(event.kind, shared::webhook::EventKind::Paid);
}
