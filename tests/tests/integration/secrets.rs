//! Secrets come from Secrets Manager (here moto's server, a real HTTP emulator), are refreshed
//! after their TTL so a rotation needs no deploy, keep working through a failed refresh, fail a
//! cold start with the secret's name (never its value), and never reach a log line.

use integration_tests::{
    deliver, now_secs, put_secret, secrets_admin, secrets_client, sign, webhook_request,
    LogCapture, PayoutEnv, API_KEY, BATCHER_FN, WEBHOOK_FN,
};
use shared::payouts::provider::{HttpProvider, PayoutBatchRequest, PayoutProvider, SubmitOutcome};
use shared::platform::secrets::{
    parse_api_key, parse_webhook_secrets, ManagedSecret, SecretError, SecretValue,
};
use std::time::Duration;

const TTL: Duration = Duration::from_millis(300);

fn unique(name: &str) -> String {
    format!("{name}-{}", ulid::Ulid::new())
}

async fn managed<T: Send + Sync>(
    function: &str,
    arn: &str,
    parse: shared::platform::secrets::Parse<T>,
) -> SecretValue<T> {
    SecretValue::Managed(
        ManagedSecret::load(secrets_client(function), arn, TTL, parse)
            .await
            .expect("secret loads"),
    )
}

#[tokio::test]
async fn a_rotated_api_key_reaches_the_provider_after_the_ttl_without_a_restart() {
    let p = PayoutEnv::new(|_| {}).await;
    let name = unique("provider-api-key");
    let arn = put_secret(&name, "stale-key-the-provider-revoked").await;
    let provider = HttpProvider::with_key(
        &p.provider_url,
        managed(BATCHER_FN, &arn, parse_api_key).await,
        Duration::from_secs(2),
    )
    .unwrap();
    let request = PayoutBatchRequest {
        batch_id: shared::domain::BatchId::new().to_string(),
        currency: "USD".into(),
        items: vec![],
    };
    // The provider refuses the old key: not a rejection, nothing is returned to anyone.
    assert!(matches!(
        provider.submit_batch(&request).await,
        SubmitOutcome::Ambiguous { .. }
    ));
    put_secret(&name, API_KEY).await;
    // Within the TTL the cached key is still used…
    assert!(matches!(
        provider.submit_batch(&request).await,
        SubmitOutcome::Ambiguous { .. }
    ));
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    // …after it, the rotated one, with no restart and no deploy.
    assert!(matches!(
        provider.submit_batch(&request).await,
        SubmitOutcome::Accepted { .. }
    ));
}

#[tokio::test]
async fn the_webhook_accepts_both_secrets_during_a_rotation_and_only_the_new_one_after() {
    let p = PayoutEnv::new(|_| {}).await;
    let (new, old) = ("whsec_new_secret_0123456789", "whsec_old_secret_0123456789");
    let name = unique("provider-webhook-secrets");
    let arn = put_secret(&name, &format!("{new},{old}")).await;
    let app =
        provider_webhook::App::from(shared::payouts::webhook::WebhookProcessor::with_secrets(
            p.env.store_for(WEBHOOK_FN),
            managed(WEBHOOK_FN, &arn, parse_webhook_secrets).await,
            300,
        ));
    let body = r#"{"id":"evt_rot","type":"payout.paid","created_at":"2026-11-30T00:00:00Z","data":{"batch_id":"bt_01JB8ZK3V7Q5G4W0N6T1R2M9XY","reference":"wd_01JB8ZK3V7Q5G4W0N6T1R2M9XY"}}"#;
    let status = |secret: &'static str| {
        let app = &app;
        async move {
            deliver(
                app,
                webhook_request(body, Some(sign(body, secret, now_secs()))),
            )
            .await
            .status
        }
    };
    assert_eq!(status(old).await, 200, "the old secret still verifies");
    assert_eq!(status(new).await, 200, "the new secret verifies");
    put_secret(&name, new).await;
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(
        status(old).await,
        401,
        "the retired secret is refused after the TTL"
    );
    assert_eq!(status(new).await, 200);
    p.env.assert_conserved().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_refresh_keeps_the_last_value_and_logs_the_name_never_the_value() {
    let (capture, _guard) = LogCapture::on_this_thread();

    let value = "api-key-value-that-must-never-be-logged";
    let name = unique("refresh-blip");
    let arn = put_secret(&name, value).await;
    let secret = managed(BATCHER_FN, &arn, parse_api_key).await;
    // Secrets Manager loses the secret (or is unreachable): the running function keeps going.
    secrets_admin()
        .delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(secret.get().await.unwrap().as_str(), value);
    // …but not forever: past two TTLs without a successful refresh the value is retired, so a
    // rotated-out webhook secret cannot live on behind a failing Secrets Manager.
    tokio::time::sleep(TTL * 2).await;
    let err = secret
        .get()
        .await
        .expect_err("a value past two TTLs is not used");
    assert!(matches!(err, SecretError::Stale { .. }), "{err}");
    assert!(!err.to_string().contains(value));

    let logs = capture.text();
    assert!(logs.contains("could not refresh a secret"), "{logs}");
    assert!(logs.contains(&name), "the log names the secret: {logs}");
    assert!(!logs.contains(value), "the log contains the secret's value");
}

#[tokio::test]
async fn a_missing_or_malformed_secret_fails_the_cold_start_with_its_name() {
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:no-such-secret";
    let err = ManagedSecret::load(secrets_client(BATCHER_FN), missing, TTL, parse_api_key)
        .await
        .err()
        .expect("a missing secret fails");
    assert!(
        matches!(&err, SecretError::Unreadable { id, .. } if id == missing),
        "{err}"
    );
    let blank = put_secret(&unique("blank"), "   ").await;
    let err = ManagedSecret::load(secrets_client(BATCHER_FN), &blank, TTL, parse_api_key)
        .await
        .err()
        .expect("a blank key fails");
    assert!(
        matches!(&err, SecretError::Invalid { id, .. } if *id == blank),
        "{err}"
    );
    let bad = put_secret(&unique("short-webhook"), "too-short").await;
    let err = ManagedSecret::load(secrets_client(WEBHOOK_FN), &bad, TTL, parse_webhook_secrets)
        .await
        .err()
        .expect("a short webhook secret fails");
    assert!(!err.to_string().contains("too-short"), "{err}");
}
