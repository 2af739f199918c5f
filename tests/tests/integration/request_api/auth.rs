//! Who is calling: no identity is 401, users see only their own, local tokens are verified.

use super::create;
use integration_tests::{withdrawal_body, ApiRequest, TestEnv};
use serde_json::json;
use shared::domain::UserId;
use shared::http::auth::{Authenticator, LocalTokenKey};

#[tokio::test]
async fn requests_without_identity_are_401_and_users_only_see_their_own() {
    let env = TestEnv::new().await;
    env.credit("erin", "USD", "100").await;
    for req in [
        ApiRequest::new("POST", "/withdrawals").body(withdrawal_body("USD", "10")),
        ApiRequest::new("GET", "/balances"),
        ApiRequest::new("GET", "/withdrawals"),
    ] {
        let r = env.call(req.build()).await;
        assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    }
    let created = env
        .call(create("erin", withdrawal_body("USD", "10")).build())
        .await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    let path = format!("/withdrawals/{id}");
    for req in [
        ApiRequest::new("GET", &path),
        ApiRequest::new("DELETE", &path),
    ] {
        let r = env.call(req.user("frank").build()).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    }
    let r = env
        .call(ApiRequest::new("GET", "/withdrawals").user("frank").build())
        .await;
    assert_eq!(r.json()["items"], json!([]));
    let r = env
        .call(
            ApiRequest::new("GET", "/withdrawals/wd_bogus")
                .user("erin")
                .build(),
        )
        .await;
    assert_eq!(r.error_code(), "not_found");
    let r = env
        .call(ApiRequest::new("GET", "/nowhere").user("erin").build())
        .await;
    assert_eq!(r.error_code(), "not_found");
    let r = env
        .call(ApiRequest::new("PUT", "/withdrawals").user("erin").build())
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(env.balance("erin", "USD").await.locked, "10.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn local_runs_verify_a_minted_token_instead_of_trusting_claims() {
    let mut env = TestEnv::new().await;
    env.credit("nina", "USD", "100").await;
    let key = LocalTokenKey::new(b"test-secret-test-secret-test-sec").unwrap();
    env.app.auth = Authenticator::LocalToken(key.clone());
    let now = chrono::Utc::now().timestamp();
    let token = key.mint(&UserId::parse("nina").unwrap(), now, 300);

    let ok = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .header("authorization", &format!("Bearer {token}"))
                .fresh_key()
                .body(withdrawal_body("USD", "10"))
                .build(),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);

    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let expired = key.mint(&UserId::parse("nina").unwrap(), now - 1000, 300);
    for auth in [
        format!("Bearer {tampered}"),
        format!("Bearer {expired}"),
        token.clone(),
    ] {
        let r = env
            .call(
                ApiRequest::new("GET", "/balances")
                    .header("authorization", &auth)
                    .build(),
            )
            .await;
        assert_eq!(r.status, 401, "{auth}");
    }
    // Claims alone (as an unverified local proxy might add them) are not enough here.
    let r = env
        .call(ApiRequest::new("GET", "/balances").user("nina").build())
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(env.balance("nina", "USD").await.locked, "10.00");
}
