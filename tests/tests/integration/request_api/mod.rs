//! The withdrawal-request API end to end: real HTTP API v2 events through the handler, against
//! DynamoDB Local.

mod auth;
mod create;
mod idempotency;
mod limits;
mod listing;

use integration_tests::ApiRequest;

/// A new request, with a key of its own (a test that reuses a key sets it again).
fn create(user: &str, body: impl Into<String>) -> ApiRequest {
    ApiRequest::new("POST", "/withdrawals")
        .user(user)
        .fresh_key()
        .body(body)
}
