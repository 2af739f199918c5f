//! Clients for the emulators: DynamoDB Local, moto's Secrets Manager, each function's recording client for the IAM check.

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// The same dummy credentials and region everywhere: DynamoDB Local keeps tables per key+region.
pub fn client_for(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// A DynamoDB Local client whose requests `counter` counts per operation (round-trip floors).
pub fn counting_client(
    counter: &shared::platform::calls::CallRecorder,
) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        client_for(&endpoint())
            .config()
            .to_builder()
            .interceptor(counter.clone())
            .build(),
    )
}

/// The deployed functions, by the binary names template.yaml builds.
pub const REQUEST_FN: &str = "withdrawal-request";
pub const BATCHER_FN: &str = "payout-batcher";
pub const WEBHOOK_FN: &str = "provider-webhook";

/// The client one function's code runs with: with `CALL_LOG_DIR` set (scripts/test.sh), every
/// call it makes is recorded under the function's name for the IAM check (tests/tests/iam.rs).
/// Setup and assertions use [`client_for`], which records nothing.
pub fn function_client(function: &str) -> aws_sdk_dynamodb::Client {
    let mut conf = client_for(&endpoint()).config().to_builder();
    if let Ok(dir) = std::env::var(shared::platform::calls::CALL_LOG_DIR_ENV) {
        conf = conf.interceptor(shared::platform::calls::CallRecorder::new(dir, function));
    }
    aws_sdk_dynamodb::Client::from_conf(conf.build())
}

/// Secrets Manager as a function sees it: moto's server (started by `scripts/test.sh`, which
/// exports `SECRETS_ENDPOINT`), through a client that records calls like [`function_client`].
pub fn secrets_client(function: &str) -> aws_sdk_secretsmanager::Client {
    let mut conf = secrets_admin().config().to_builder();
    if let Ok(dir) = std::env::var(shared::platform::calls::CALL_LOG_DIR_ENV) {
        conf = conf.interceptor(shared::platform::calls::CallRecorder::new(dir, function));
    }
    aws_sdk_secretsmanager::Client::from_conf(conf.build())
}

/// The emulator for setup (records nothing).
pub fn secrets_admin() -> aws_sdk_secretsmanager::Client {
    let endpoint = std::env::var("SECRETS_ENDPOINT").expect(
        "SECRETS_ENDPOINT is not set: run the integration tests with ./scripts/test.sh, \
         which starts the Secrets Manager emulator (moto)",
    );
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .endpoint_url(endpoint);
    aws_sdk_secretsmanager::Client::from_conf(conf.build())
}

/// Creates or replaces a secret in the emulator (as an operator's `put-secret-value` would);
/// returns its ARN. Names are unique per call so tests never share one.
pub async fn put_secret(name: &str, value: &str) -> String {
    let admin = secrets_admin();
    match admin
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
    {
        Ok(out) => out.arn().expect("arn").to_string(),
        Err(_) => admin
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .expect("put secret value")
            .arn()
            .expect("arn")
            .to_string(),
    }
}

pub fn endpoint() -> String {
    std::env::var("DYNAMODB_ENDPOINT").expect(
        "DYNAMODB_ENDPOINT is not set: run the integration tests with ./scripts/test.sh, \
         which starts DynamoDB Local",
    )
}
