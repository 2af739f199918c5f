//! The committed `cargo lambda invoke` fixtures stay valid: they parse as the events Lambda
//! delivers, their tokens verify with the local secret the scripts use, and each answers as the
//! docs/local.md says.

use integration_tests::TestEnv;
use shared::http::auth::{Authenticator, LocalTokenKey};
use std::path::PathBuf;

fn payloads_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("payloads")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(payloads_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
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
    assert_eq!(env.balance("alice", "USD").await.locked, "25.00");
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
        shared::payouts::webhook::ProviderEvent::parse(read("webhook-paid.body.json").as_bytes())
            .unwrap();
    assert_eq!(event.kind, shared::payouts::webhook::CallbackKind::Paid);
}

mod stream {
    use super::read;
    use shared::domain::Currencies;
    use shared::publishing::events::{publish, Change, EventBus, NoneSkipped, PipelineEvent};
    use std::sync::Mutex;

    /// Takes every entry and keeps it.
    #[derive(Default)]
    struct Recording(Mutex<Vec<PipelineEvent>>);

    #[async_trait::async_trait]
    impl EventBus for Recording {
        async fn put(&self, events: &[PipelineEvent]) -> Result<Vec<bool>, String> {
            self.0.lock().unwrap().extend_from_slice(events);
            Ok(vec![true; events.len()])
        }
    }

    fn changes() -> Vec<Change> {
        let event: aws_lambda_events::event::dynamodb::Event =
            serde_json::from_str(&read("stream-event.json")).unwrap();
        event
            .records
            .into_iter()
            .map(event_publisher::change_of)
            .collect()
    }

    #[tokio::test]
    async fn the_stream_fixture_publishes_a_settlement_and_a_credit() {
        for c in changes() {
            shared::publishing::events::event_of(&Currencies::default(), &c)
                .expect("the fixture decodes");
        }
        let bus = Recording::default();
        let out = publish(&bus, &Currencies::default(), &NoneSkipped, &changes()).await;
        assert_eq!((out.events, out.calls, out.retry_from), (2, 1, None));
        let events = bus.0.into_inner().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.detail_type()).collect();
        assert_eq!(kinds, ["withdrawal.settled", "credit.recorded"]);
        let settled = &events[0].detail;
        assert_eq!(settled["previous_status"], "SUBMITTED");
        assert_eq!(settled["actor"], "webhook");
        assert_eq!(settled["sequence"], 3);
        assert_eq!(settled["withdrawal"]["amount"], "125.50");
        assert_eq!(events[0].event_id, "wd_01JDQ7Z8X9K2M3N4P5Q6R7S8T9.SETTLED");
        assert!(!settled.to_string().contains("DE89370400440532013000"));
        assert_eq!(events[1].detail["credit"]["amount"], "50.00");
    }

    #[tokio::test]
    async fn an_unreadable_record_stops_the_batch_there_and_is_named_for_a_retry() {
        let mut changes = changes();
        // The credit's image with an amount the codec refuses.
        changes[1].new.as_mut().unwrap().insert(
            "amount".into(),
            aws_sdk_dynamodb::types::AttributeValue::N("x".into()),
        );
        let bus = Recording::default();
        let out = publish(&bus, &Currencies::default(), &NoneSkipped, &changes).await;
        assert_eq!(out.events, 1, "what came before it is published");
        assert_eq!(out.retry_from.as_deref(), Some("000000000000000000102"));
        assert!(out.unreadable);
    }
}
