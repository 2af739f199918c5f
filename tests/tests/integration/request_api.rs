//! The withdrawal-request API end to end: real HTTP API v2 events through the handler, against
//! DynamoDB Local.

use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::{withdrawal_body, ApiRequest, TestEnv, IBAN};
use serde_json::json;
use shared::domain::UserId;
use shared::http::auth::{Authenticator, LocalTokenKey};
use shared::requests::withdrawals::WithdrawalService;
use shared::store::DynamoStore;
use std::sync::Arc;

/// A new request, with a key of its own (a test that reuses a key sets it again).
fn create(user: &str, body: impl Into<String>) -> ApiRequest {
    ApiRequest::new("POST", "/withdrawals")
        .user(user)
        .fresh_key()
        .body(body)
}

#[tokio::test]
async fn request_locks_funds_and_records_a_pending_withdrawal() {
    let env = TestEnv::new().await;
    env.credit("alice", "USD", "1000").await;

    let r = env
        .call(create("alice", withdrawal_body("USD", "125.50")).build())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let w = r.json();
    assert_eq!(w["status"], "PENDING");
    assert_eq!(w["amount"], "125.50");
    assert_eq!(w["currency"], "USD");
    assert_eq!(w["bank_account"], "DE89…3000");
    assert!(!r.body.contains(IBAN), "full account number leaked");
    assert_eq!(
        env.balance("alice", "USD").await,
        BalanceView {
            available: "874.50".into(),
            locked: "125.50".into(),
            paid_out: "0.00".into(),
            credited: "1000.00".into()
        }
    );

    let id = w["id"].as_str().unwrap();
    let got = env
        .call(
            ApiRequest::new("GET", &format!("/withdrawals/{id}"))
                .user("alice")
                .build(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), w);

    let balances = env
        .call(ApiRequest::new("GET", "/balances").user("alice").build())
        .await;
    assert_eq!(
        balances.json(),
        json!([{"currency": "USD", "available": "874.50", "locked": "125.50"}])
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_json_number_amount_is_read_exactly_and_jpy_has_no_decimals() {
    let env = TestEnv::new().await;
    env.credit("bob", "JPY", "100000").await;
    let body = format!(r#"{{"currency":"JPY","amount":12345,"bank_account":"{IBAN}"}}"#);
    let r = env.call(create("bob", body).build()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["amount"], "12345");
    let frac = format!(r#"{{"currency":"JPY","amount":"100.5","bank_account":"{IBAN}"}}"#);
    assert_eq!(
        env.call(create("bob", frac).build()).await.error_code(),
        "invalid_amount"
    );
    assert_eq!(env.balance("bob", "JPY").await.available, "87655");
    env.assert_conserved().await;
}

#[tokio::test]
async fn insufficient_funds_changes_nothing() {
    let env = TestEnv::new().await;
    env.credit("carol", "EUR", "100").await;
    let r = env
        .call(create("carol", withdrawal_body("EUR", "100.01")).build())
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "insufficient_funds")
    );
    // A user who was never credited has nothing to withdraw either.
    let r = env
        .call(create("nobody", withdrawal_body("EUR", "5")).build())
        .await;
    assert_eq!(r.error_code(), "insufficient_funds");
    assert_eq!(env.balance("carol", "EUR").await.available, "100.00");
    let list = env
        .call(ApiRequest::new("GET", "/withdrawals").user("carol").build())
        .await;
    assert_eq!(list.json()["items"], json!([]));
    // Exactly the available amount is fine.
    let r = env
        .call(create("carol", withdrawal_body("EUR", "100")).build())
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(env.balance("carol", "EUR").await.available, "0.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn validation_errors_have_stable_codes_and_write_nothing() {
    let env = TestEnv::new().await;
    env.credit("dave", "USD", "100000").await;
    let big = format!(
        r#"{{"currency":"USD","amount":"10","bank_account":"{IBAN}","pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_json"),
        ("".into(), 400, "invalid_json"),
        (
            json!({"currency":"USD","amount":"10","bank_account":IBAN,"user_id":"mallory"})
                .to_string(),
            400,
            "invalid_json",
        ),
        (withdrawal_body("XYZ", "10"), 400, "invalid_currency"),
        (withdrawal_body("usd", "10"), 400, "invalid_currency"),
        (withdrawal_body("USD", "abc"), 400, "invalid_amount"),
        (withdrawal_body("USD", "-10"), 400, "invalid_amount"),
        (withdrawal_body("USD", "0"), 400, "invalid_amount"),
        (withdrawal_body("USD", "10.001"), 400, "invalid_amount"),
        (withdrawal_body("USD", "0.99"), 400, "amount_below_minimum"),
        (
            withdrawal_body("USD", "50000.01"),
            400,
            "amount_above_maximum",
        ),
        (
            json!({"currency":"USD","amount":"10","bank_account":"DE89370400440532013001"})
                .to_string(),
            400,
            "invalid_bank_account",
        ),
        (big, 413, "payload_too_large"),
    ];
    for (body, status, code) in cases {
        let r = env.call(create("dave", body.clone()).build()).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{}",
            &body[..body.len().min(120)]
        );
        assert!(r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        env.balance("dave", "USD").await.locked,
        "0.00",
        "nothing was locked"
    );
    env.assert_conserved().await;
}

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
async fn idempotency_key_replays_the_first_response_and_refuses_other_bodies() {
    let env = TestEnv::new().await;
    env.credit("gina", "USD", "1000").await;
    let first = env
        .call(
            create("gina", withdrawal_body("USD", "40"))
                .header("idempotency-key", "order-1")
                .build(),
        )
        .await;
    assert_eq!((first.status, first.replayed), (201, false));

    // Same request spelled differently (number amount, spaced IBAN) is the same request.
    let same =
        json!({"currency":"USD","amount":40.00,"bank_account":"DE89 3704 0044 0532 0130 00"});
    let again = env
        .call(
            create("gina", same.to_string())
                .header("idempotency-key", "order-1")
                .build(),
        )
        .await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body);

    let other = env
        .call(
            create("gina", withdrawal_body("USD", "41"))
                .header("idempotency-key", "order-1")
                .build(),
        )
        .await;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (422, "idempotency_key_reused")
    );

    // Keys are per user: another user's same key is a new request.
    env.credit("hank", "USD", "100").await;
    let hank = env
        .call(
            create("hank", withdrawal_body("USD", "40"))
                .header("idempotency-key", "order-1")
                .build(),
        )
        .await;
    assert_eq!((hank.status, hank.replayed), (201, false));

    let bad_key = env
        .call(
            create("gina", withdrawal_body("USD", "1"))
                .header("idempotency-key", &"k".repeat(256))
                .build(),
        )
        .await;
    assert_eq!(bad_key.error_code(), "invalid_idempotency_key");

    assert_eq!(
        env.balance("gina", "USD").await.locked,
        "40.00",
        "locked once"
    );
    let list = env
        .call(ApiRequest::new("GET", "/withdrawals").user("gina").build())
        .await;
    assert_eq!(list.json()["items"].as_array().unwrap().len(), 1);
    env.assert_conserved().await;
}

#[tokio::test]
async fn the_same_key_sent_in_parallel_creates_one_withdrawal() {
    let env = TestEnv::new().await;
    env.credit("ivy", "USD", "1000").await;
    let calls = (0..20).map(|_| {
        env.call(
            create("ivy", withdrawal_body("USD", "25"))
                .header("idempotency-key", "same-key")
                .build(),
        )
    });
    let responses = join_all(calls).await;
    for r in &responses {
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body, responses[0].body);
    }
    assert_eq!(responses.iter().filter(|r| !r.replayed).count(), 1);
    assert_eq!(env.balance("ivy", "USD").await.locked, "25.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn parallel_requests_on_one_balance_never_overdraw() {
    let env = TestEnv::with_max_open(1000).await;
    env.credit("jack", "USD", "250").await;
    // 60 requests of 10.00 against 250.00: exactly 25 can succeed. A 503 is retried with the
    // same key, as a client would, so the count is exact.
    let calls = (0..60).map(|i| {
        let env = &env;
        async move {
            let key = format!("req-{i}");
            for _ in 0..20 {
                let r = env
                    .call(
                        create("jack", withdrawal_body("USD", "10"))
                            .header("idempotency-key", &key)
                            .build(),
                    )
                    .await;
                if r.status != 503 {
                    return r;
                }
            }
            panic!("still 503 after 20 tries");
        }
    });
    let responses = join_all(calls).await;
    let ok = responses.iter().filter(|r| r.status == 201).count();
    let refused = responses
        .iter()
        .filter(|r| r.error_code() == "insufficient_funds")
        .count();
    assert_eq!((ok, refused), (25, 35));
    assert_eq!(
        env.balance("jack", "USD").await,
        BalanceView {
            available: "0.00".into(),
            locked: "250.00".into(),
            paid_out: "0.00".into(),
            credited: "250.00".into()
        }
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn open_withdrawals_per_currency_are_capped() {
    let env = TestEnv::with_max_open(3).await;
    env.credit("kate", "USD", "1000").await;
    env.credit("kate", "EUR", "1000").await;
    for _ in 0..3 {
        assert_eq!(
            env.call(create("kate", withdrawal_body("USD", "10")).build())
                .await
                .status,
            201
        );
    }
    let r = env
        .call(create("kate", withdrawal_body("USD", "10")).build())
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "too_many_pending")
    );
    // Another currency has its own cap; an empty balance still reports insufficient funds.
    assert_eq!(
        env.call(create("kate", withdrawal_body("EUR", "10")).build())
            .await
            .status,
        201
    );
    // Cancelling one frees a slot.
    let list = env
        .call(
            ApiRequest::new("GET", "/withdrawals?status=PENDING")
                .user("kate")
                .build(),
        )
        .await;
    let usd_id = list.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["currency"] == "USD")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{usd_id}"))
                .user("kate")
                .build(),
        )
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(
        env.call(create("kate", withdrawal_body("USD", "10")).build())
            .await
            .status,
        201
    );
    assert_eq!(env.balance("kate", "USD").await.locked, "30.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn cancel_returns_funds_once_and_only_while_pending() {
    let env = TestEnv::new().await;
    env.credit("liam", "EUR", "500").await;
    let w = env
        .call(create("liam", withdrawal_body("EUR", "200")).build())
        .await
        .json();
    let path = format!("/withdrawals/{}", w["id"].as_str().unwrap());

    let c = env
        .call(ApiRequest::new("DELETE", &path).user("liam").build())
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.json()["status"], "CANCELLED");
    assert_eq!(
        env.balance("liam", "EUR").await,
        BalanceView {
            available: "500.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "500.00".into()
        }
    );
    let again = env
        .call(ApiRequest::new("DELETE", &path).user("liam").build())
        .await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "not_cancellable")
    );
    assert_eq!(
        env.balance("liam", "EUR").await.available,
        "500.00",
        "funds returned once"
    );

    // Racing cancels: exactly one wins.
    let w = env
        .call(create("liam", withdrawal_body("EUR", "100")).build())
        .await
        .json();
    let path = format!("/withdrawals/{}", w["id"].as_str().unwrap());
    let results =
        join_all((0..8).map(|_| env.call(ApiRequest::new("DELETE", &path).user("liam").build())))
            .await;
    assert_eq!(results.iter().filter(|r| r.status == 200).count(), 1);
    assert!(results
        .iter()
        .all(|r| r.status == 200 || r.error_code() == "not_cancellable"));
    assert_eq!(env.balance("liam", "EUR").await.available, "500.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn listing_is_newest_first_paginated_and_filterable() {
    let env = TestEnv::new().await;
    env.credit("mia", "USD", "1000").await;
    let mut ids = Vec::new();
    for amount in ["1", "2", "3", "4", "5"] {
        let r = env
            .call(create("mia", withdrawal_body("USD", amount)).build())
            .await;
        ids.push(r.json()["id"].as_str().unwrap().to_string());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let cancel = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{}", ids[1]))
                .user("mia")
                .build(),
        )
        .await;
    assert_eq!(cancel.status, 200);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/withdrawals?limit=2&cursor={c}"),
            None => "/withdrawals?limit=2".to_string(),
        };
        let page = env
            .call(ApiRequest::new("GET", &q).user("mia").build())
            .await
            .json();
        for w in page["items"].as_array().unwrap() {
            seen.push(w["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let cancelled = env
        .call(
            ApiRequest::new("GET", "/withdrawals?status=CANCELLED")
                .user("mia")
                .build(),
        )
        .await
        .json();
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["items"][0]["id"], ids[1].as_str());
    let pending = env
        .call(
            ApiRequest::new("GET", "/withdrawals?status=PENDING&limit=3")
                .user("mia")
                .build(),
        )
        .await
        .json();
    assert_eq!(pending["items"].as_array().unwrap().len(), 3);
    assert!(pending["next_cursor"].is_string());

    for bad in [
        "/withdrawals?status=nope",
        "/withdrawals?limit=0",
        "/withdrawals?limit=101",
        "/withdrawals?cursor=xyz",
    ] {
        let r = env
            .call(ApiRequest::new("GET", bad).user("mia").build())
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_parameter"),
            "{bad}"
        );
    }
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

#[tokio::test]
async fn an_unreachable_store_is_a_503_with_no_internals() {
    let store = Arc::new(DynamoStore::new(
        integration_tests::client_for("http://127.0.0.1:9"),
        "unreachable",
        shared::domain::Currencies::default(),
    ));
    let env = TestEnv::new().await;
    let mut app = env.app.clone();
    app.service = WithdrawalService::new(store, shared::domain::Currencies::default(), 5);
    let r: integration_tests::TestResponse = app
        .handle(create("olga", withdrawal_body("USD", "10")).build())
        .await
        .into();
    assert_eq!((r.status, r.error_code().as_str()), (503, "try_again"));
    assert!(!r.body.contains("127.0.0.1"));
}

#[tokio::test]
async fn bodies_api_gateway_hands_over_base64_are_read_and_bytes_that_are_not_json_are_400() {
    // Behind `cargo lambda watch` a body that is not UTF-8 gets a 500 from watch itself before
    // the function runs; API Gateway instead hands the function the bytes base64-encoded. This
    // is that event: the function answers it like any other bad body.
    let env = TestEnv::new().await;
    env.credit("alice", "USD", "100").await;
    let r = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("alice")
                .fresh_key()
                .base64_body(&[0xff, 0xfe, 0x00, 0x81, b'{'])
                .build(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_json");
    // A valid body sent base64-encoded is the same request as the plain one.
    let r = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("alice")
                .header("idempotency-key", "b64-1")
                .base64_body(withdrawal_body("USD", "10.00").as_bytes())
                .build(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        env.balance("alice", "USD").await,
        BalanceView {
            available: "90.00".into(),
            locked: "10.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn an_unsupported_method_is_405_with_the_allowed_ones() {
    let env = TestEnv::new().await;
    for (method, path, allow) in [
        ("PATCH", "/withdrawals", "GET, POST"),
        (
            "PUT",
            "/withdrawals/wd_01JB8ZK3V7Q5G4W0N6T1R2M9XY",
            "GET, DELETE",
        ),
        ("POST", "/balances", "GET"),
    ] {
        let resp = env
            .app
            .handle(ApiRequest::new(method, path).user("alice").build())
            .await;
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
    }
}

#[tokio::test]
async fn only_plain_decimals_are_amounts_whatever_the_json_type() {
    // "1e2" once passed as 100.00 and shared an idempotency fingerprint with "100".
    let env = TestEnv::new().await;
    env.credit("alice", "USD", "1000").await;
    for amount in [
        r#""1e2""#,
        "1e2",
        r#""9.99999999999999999999999999999e0""#,
        "9.99999999999999999999999999999e0",
        r#""+5""#,
        r#"" 5""#,
        "-5",
        "-1",
        r#""-1""#,
        "1.0E2",
        r#""1.0E2""#,
        "1E2",
        "-0",
        r#""NaN""#,
        r#""nan""#,
        r#""Infinity""#,
        r#""-Infinity""#,
        r#""0x10""#,
        r#""5.""#,
    ] {
        let body = format!(r#"{{"currency":"USD","amount":{amount},"bank_account":"{IBAN}"}}"#);
        let r = env.call(create("alice", body).build()).await;
        assert_eq!(r.status, 400, "{amount}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_amount", "{amount}");
    }
    // A bare NaN or Infinity is not JSON at all: refused before any amount is read.
    for amount in ["NaN", "Infinity", "-Infinity"] {
        let body = format!(r#"{{"currency":"USD","amount":{amount},"bank_account":"{IBAN}"}}"#);
        let r = env.call(create("alice", body).build()).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_json"),
            "{amount}"
        );
    }
    assert_eq!(
        env.balance("alice", "USD").await.available,
        "1000.00",
        "refused amounts changed nothing"
    );
    let r = env
        .call(
            create(
                "alice",
                format!(r#"{{"currency":"USD","amount":12.5,"bank_account":"{IBAN}"}}"#),
            )
            .build(),
        )
        .await;
    assert_eq!(
        r.status, 201,
        "a plain JSON number is an amount: {}",
        r.body
    );
    assert_eq!(r.json()["amount"], "12.50");
    env.assert_conserved().await;
}

#[tokio::test]
async fn idempotency_keys_that_are_not_ascii_are_400_and_create_nothing() {
    // API Gateway hands a header with bytes beyond ASCII to the function as text; watch cannot
    // (it answers 500 itself), so this is the event as deployed.
    let env = TestEnv::new().await;
    env.credit("alice", "USD", "100").await;
    let r = env
        .call(
            create("alice", withdrawal_body("USD", "10.00"))
                .header("idempotency-key", "×ø key")
                .build(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_idempotency_key");
    assert_eq!(
        env.balance("alice", "USD").await,
        BalanceView {
            available: "100.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_create_without_an_idempotency_key_is_400_and_writes_nothing() {
    let env = TestEnv::new().await;
    env.credit("olga", "USD", "100").await;
    let r = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("olga")
                .body(withdrawal_body("USD", "10"))
                .build(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "missing_idempotency_key"),
        "{}",
        r.body
    );
    assert_eq!(
        env.balance("olga", "USD").await,
        BalanceView {
            available: "100.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    let list = env
        .call(ApiRequest::new("GET", "/withdrawals").user("olga").build())
        .await;
    assert_eq!(list.json()["items"], json!([]));
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_with_the_same_key_creates_one_withdrawal() {
    use integration_tests::faults::{Fault, FaultyStore, When};
    let env = TestEnv::new().await;
    env.credit("pete", "USD", "100").await;
    // The first request is written, then its answer is lost (the client sees a 503).
    let faulty = Arc::new(FaultyStore::new(
        env.store_for(integration_tests::REQUEST_FN),
        vec![Fault::new("request_withdrawal", 1, When::After)],
    ));
    let app = withdrawal_request::App::new(
        WithdrawalService::new(faulty.clone(), env.currencies.clone(), 5),
        Authenticator::ApiGatewayJwt,
    );
    let send = || async {
        integration_tests::TestResponse::from(
            app.handle(
                create("pete", withdrawal_body("USD", "30"))
                    .header("idempotency-key", "pay-rent-november")
                    .build(),
            )
            .await,
        )
    };
    let lost = send().await;
    assert_eq!(
        (lost.status, lost.error_code().as_str()),
        (503, "try_again")
    );
    let retry = send().await;
    assert_eq!(
        (retry.status, retry.replayed),
        (201, true),
        "{}",
        retry.body
    );
    assert_eq!(
        faulty.fired(),
        vec!["request_withdrawal#1:After".to_string()]
    );
    assert_eq!(
        env.balance("pete", "USD").await,
        BalanceView {
            available: "70.00".into(),
            locked: "30.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    let list = env
        .call(ApiRequest::new("GET", "/withdrawals").user("pete").build())
        .await;
    let items = list.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["id"], retry.json()["id"]);
    env.assert_conserved().await;
}

/// USD limited to 100.00 per user and UTC day; EUR and JPY as by default (no limit).
async fn limited_env() -> TestEnv {
    let currencies = shared::domain::Currencies::parse_config(
        "USD:2:1:50000:100,EUR:2:1:50000,JPY:0:100:5000000",
    )
    .unwrap();
    TestEnv::with_config(u32::MAX, currencies).await
}

/// The counter's `used` for today, as stored.
async fn used_today(env: &TestEnv, user: &str) -> Option<rust_decimal::Decimal> {
    let day = chrono::Utc::now().format("%Y-%m-%d");
    env.store
        .client()
        .get_item()
        .table_name(env.store.table_name())
        .key("PK", AttributeValue::S(format!("USER#{user}")))
        .key("SK", AttributeValue::S(format!("DAY#USD#{day}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .and_then(|i| i.get("used").cloned())
        .map(|v| v.as_n().unwrap().parse().unwrap())
}

#[tokio::test]
async fn the_daily_limit_refuses_what_would_pass_it_and_says_what_is_left() {
    let env = limited_env().await;
    env.credit("quin", "USD", "1000").await;
    env.credit("quin", "EUR", "1000").await;
    let ok = env
        .call(create("quin", withdrawal_body("USD", "70")).build())
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let over = env
        .call(create("quin", withdrawal_body("USD", "30.01")).build())
        .await;
    assert_eq!(
        (over.status, over.error_code().as_str()),
        (409, "daily_limit_exceeded"),
        "{}",
        over.body
    );
    assert!(
        over.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("30.00 USD left today"),
        "{}",
        over.body
    );
    // More than the whole limit is refused before any write.
    let huge = env
        .call(create("quin", withdrawal_body("USD", "100.01")).build())
        .await;
    assert_eq!(huge.error_code(), "daily_limit_exceeded", "{}", huge.body);
    // Exactly what is left fits; then nothing does.
    let rest = env
        .call(create("quin", withdrawal_body("USD", "30")).build())
        .await;
    assert_eq!(rest.status, 201, "{}", rest.body);
    let none = env
        .call(create("quin", withdrawal_body("USD", "1")).build())
        .await;
    assert_eq!(none.error_code(), "daily_limit_exceeded");
    assert!(none.body.contains("0.00 USD left today"), "{}", none.body);
    // Refusals changed nothing; a currency without a limit is not limited.
    assert_eq!(
        env.balance("quin", "USD").await,
        BalanceView {
            available: "900.00".into(),
            locked: "100.00".into(),
            paid_out: "0.00".into(),
            credited: "1000.00".into()
        }
    );
    assert_eq!(used_today(&env, "quin").await, Some(100.into()));
    let eur = env
        .call(create("quin", withdrawal_body("EUR", "500")).build())
        .await;
    assert_eq!(eur.status, 201, "{}", eur.body);
    // Another user has their own allowance; on a fresh day (no counter yet) an amount above
    // the whole limit is still refused.
    env.credit("rita", "USD", "1000").await;
    let above = env
        .call(create("rita", withdrawal_body("USD", "100.01")).build())
        .await;
    assert_eq!(
        (above.status, above.error_code().as_str()),
        (409, "daily_limit_exceeded"),
        "{}",
        above.body
    );
    assert_eq!(used_today(&env, "rita").await, None);
    assert_eq!(env.balance("rita", "USD").await.available, "1000.00");
    let other = env
        .call(create("rita", withdrawal_body("USD", "100")).build())
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
    env.assert_conserved().await;
}

#[tokio::test]
async fn thirty_parallel_requests_against_the_daily_limit_accept_exactly_ten() {
    let env = limited_env().await;
    env.credit("sam", "USD", "10000").await;
    let calls = (0..30).map(|i| {
        let env = &env;
        async move {
            let key = format!("limit-{i}");
            // A request that lost its transaction race after our retries is a 503: the
            // client retries with its key, as documented.
            loop {
                let r = env
                    .call(
                        create("sam", withdrawal_body("USD", "10.00"))
                            .header("idempotency-key", &key)
                            .build(),
                    )
                    .await;
                if r.status != 503 {
                    return r;
                }
            }
        }
    });
    let responses = join_all(calls).await;
    let accepted = responses.iter().filter(|r| r.status == 201).count();
    let limited = responses
        .iter()
        .filter(|r| r.error_code() == "daily_limit_exceeded")
        .count();
    assert_eq!((accepted, limited), (10, 20), "{responses:?}");
    assert_eq!(
        env.balance("sam", "USD").await,
        BalanceView {
            available: "9900.00".into(),
            locked: "100.00".into(),
            paid_out: "0.00".into(),
            credited: "10000.00".into()
        }
    );
    assert_eq!(used_today(&env, "sam").await, Some(100.into()));
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_cancel_or_a_rejection_gives_the_allowance_back() {
    use shared::domain::{Transition, WithdrawalId};
    use shared::store::{Store, TransitionDetails};
    let env = limited_env().await;
    env.credit("tina", "USD", "1000").await;
    let first = env
        .call(create("tina", withdrawal_body("USD", "60")).build())
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_string();
    let refused = env
        .call(create("tina", withdrawal_body("USD", "50")).build())
        .await;
    assert_eq!(refused.error_code(), "daily_limit_exceeded");

    let cancelled = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
                .user("tina")
                .build(),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(used_today(&env, "tina").await, Some(0.into()));
    let fits = env
        .call(create("tina", withdrawal_body("USD", "50")).build())
        .await;
    assert_eq!(fits.status, 201, "{}", fits.body);

    // An operator's rejection gives it back too.
    let user = UserId::parse("tina").unwrap();
    let w = env
        .store
        .withdrawal(
            &user,
            WithdrawalId::parse(fits.json()["id"].as_str().unwrap()).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    env.store
        .transition(&w, Transition::Reject, TransitionDetails::by("operator"))
        .await
        .unwrap();
    assert_eq!(used_today(&env, "tina").await, Some(0.into()));
    let full = env
        .call(create("tina", withdrawal_body("USD", "100")).build())
        .await;
    assert_eq!(full.status, 201, "{}", full.body);
    assert_eq!(
        env.balance("tina", "USD").await,
        BalanceView {
            available: "900.00".into(),
            locked: "100.00".into(),
            paid_out: "0.00".into(),
            credited: "1000.00".into()
        }
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn an_expired_day_counter_never_blocks_a_cancel() {
    let env = limited_env().await;
    env.credit("uma", "USD", "1000").await;
    let r = env
        .call(create("uma", withdrawal_body("USD", "40")).build())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // DynamoDB's TTL removed the counter (its day is long past).
    let day = chrono::Utc::now().format("%Y-%m-%d");
    env.store
        .client()
        .delete_item()
        .table_name(env.store.table_name())
        .key("PK", AttributeValue::S("USER#uma".into()))
        .key("SK", AttributeValue::S(format!("DAY#USD#{day}")))
        .send()
        .await
        .unwrap();
    let id = r.json()["id"].as_str().unwrap().to_string();
    let cancelled = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
                .user("uma")
                .build(),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(env.balance("uma", "USD").await.available, "1000.00");
    // Recreated at zero, never negative: the day's allowance is not inflated.
    assert_eq!(used_today(&env, "uma").await, Some(0.into()));
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_replayed_request_is_answered_in_one_round_trip() {
    // The idempotency put's cancellation reason (ALL_OLD) carries the first answer: the replay
    // needs no second read.
    let env = TestEnv::new().await;
    env.credit("rita", "USD", "100").await;
    let counter = shared::platform::calls::CallRecorder::counting();
    let client = integration_tests::counting_client(&counter);
    let store = DynamoStore::new(client, env.store.table_name(), env.currencies.clone())
        .with_pending_shards(env.store.pending_shards());
    let service = WithdrawalService::new(Arc::new(store), env.currencies.clone(), 5);
    let user = UserId::parse("rita").unwrap();
    let key = || shared::domain::IdempotencyKey::parse("once").unwrap();
    let body = withdrawal_body("USD", "10.00");
    let first = service
        .request(&user, body.as_bytes(), key())
        .await
        .unwrap();
    counter.take_counts();
    let again = service
        .request(&user, body.as_bytes(), key())
        .await
        .unwrap();
    let counts = counter.take_counts();
    assert!(again.replayed && !first.replayed);
    assert_eq!(
        (again.withdrawal_id, again.body),
        (first.withdrawal_id, first.body)
    );
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![("TransactWriteItems".to_string(), 1)]
    );
    // Another body under the same key: refused from the same single answer.
    counter.take_counts();
    let other = withdrawal_body("USD", "11.00");
    let reused = service.request(&user, other.as_bytes(), key()).await;
    assert!(
        matches!(
            reused,
            Err(shared::http::api::ApiError::IdempotencyKeyReused)
        ),
        "{reused:?}"
    );
    assert_eq!(counter.take_counts().values().sum::<u64>(), 1);
    assert_eq!(env.balance("rita", "USD").await.locked, "10.00");
    env.assert_conserved().await;
}

/// The key wins over today's settings: after a 201, an operator lowers the currency's bound and
/// its daily limit (or lowers its scale, or removes it); the client's retry under the same key
/// still gets its first 201, never a refusal for a withdrawal that goes ahead. Before the fix
/// the retry was refused (400 `amount_above_maximum`, 409 `daily_limit_exceeded`) while its
/// funds stayed locked. A new key is refused as today's settings say; another body under the
/// key is 422, as always.
#[tokio::test]
async fn a_retry_under_its_key_gets_its_first_answer_whatever_the_settings_say_now() {
    let env = TestEnv::new().await;
    env.credit("kim", "USD", "1000").await;
    let user = UserId::parse("kim").unwrap();
    let key = || shared::domain::IdempotencyKey::parse("first-answer").unwrap();
    let body = withdrawal_body("USD", "500.00");
    let first = env
        .app
        .service
        .request(&user, body.as_bytes(), key())
        .await
        .unwrap();
    assert_eq!(first.status_code, 201);
    let settings = [
        (
            "max lowered",
            "USD:2:1:100,EUR:2:1:50000",
            "amount_above_maximum",
        ),
        (
            "daily limit lowered",
            "USD:2:1:50000:50,EUR:2:1:50000",
            "daily_limit_exceeded",
        ),
        ("scale lowered", "USD:0:1:50000,EUR:2:1:50000", ""),
        ("currency removed", "EUR:2:1:50000", "invalid_currency"),
    ];
    for (what, config, refused_as) in settings {
        let currencies = shared::domain::Currencies::parse_config(config).unwrap();
        let service = WithdrawalService::new(env.store.clone(), currencies, 5);
        let again = service
            .request(&user, body.as_bytes(), key())
            .await
            .unwrap_or_else(|e| panic!("{what}: the retry was refused: {e:?}"));
        assert!(again.replayed, "{what}");
        assert_eq!(
            (again.status_code, &again.body, again.withdrawal_id),
            (201, &first.body, first.withdrawal_id),
            "{what}"
        );
        // Another body under the key: 422, whatever else today's settings would say.
        let other = withdrawal_body("USD", "600.00");
        let reused = service.request(&user, other.as_bytes(), key()).await;
        assert!(
            matches!(
                reused,
                Err(shared::http::api::ApiError::IdempotencyKeyReused)
            ),
            "{what}: {reused:?}"
        );
        // A new key: today's settings decide.
        if !refused_as.is_empty() {
            let fresh =
                shared::domain::IdempotencyKey::parse(&format!("new-{}", what.replace(' ', "-")))
                    .unwrap();
            let refused = service.request(&user, body.as_bytes(), fresh).await;
            assert_eq!(
                refused.map(|c| c.status_code).map_err(|e| e.code()),
                Err(refused_as),
                "{what}"
            );
        }
    }
    // One withdrawal, one lock: nothing the retries did moved money.
    assert_eq!(env.balance("kim", "USD").await.locked, "500.00");
    env.assert_conserved().await;
}
