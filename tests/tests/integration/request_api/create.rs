//! Creating a withdrawal: funds locked, amounts read exactly, what is refused and what a refusal writes (nothing).

use super::create;
use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::{withdrawal_body, ApiRequest, TestEnv, BENEFICIARY, IBAN};
use serde_json::json;
use shared::requests::withdrawals::WithdrawalService;
use shared::store::DynamoStore;
use std::sync::Arc;

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
    // The request names the beneficiary; its account (masked) shows once the batcher claims it.
    assert_eq!(w["beneficiary_id"], BENEFICIARY);
    assert!(w.get("bank_account").is_none(), "{w}");
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
    let body = format!(r#"{{"currency":"JPY","amount":12345,"beneficiary_id":"{BENEFICIARY}"}}"#);
    let r = env.call(create("bob", body).build()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["amount"], "12345");
    let frac = format!(r#"{{"currency":"JPY","amount":"100.5","beneficiary_id":"{BENEFICIARY}"}}"#);
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
    integration_tests::register_beneficiary(env.store.as_ref(), "nobody", IBAN, BENEFICIARY).await;
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
        r#"{{"currency":"USD","amount":"10","beneficiary_id":"{BENEFICIARY}","pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_json"),
        ("".into(), 400, "invalid_json"),
        (
            json!({"currency":"USD","amount":"10","beneficiary_id":BENEFICIARY,"user_id":"mallory"})
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
            json!({"currency":"USD","amount":"10","bank_account":IBAN}).to_string(),
            400,
            "beneficiary_required",
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
        let body =
            format!(r#"{{"currency":"USD","amount":{amount},"beneficiary_id":"{BENEFICIARY}"}}"#);
        let r = env.call(create("alice", body).build()).await;
        assert_eq!(r.status, 400, "{amount}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_amount", "{amount}");
    }
    // A bare NaN or Infinity is not JSON at all: refused before any amount is read.
    for amount in ["NaN", "Infinity", "-Infinity"] {
        let body =
            format!(r#"{{"currency":"USD","amount":{amount},"beneficiary_id":"{BENEFICIARY}"}}"#);
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
                format!(r#"{{"currency":"USD","amount":12.5,"beneficiary_id":"{BENEFICIARY}"}}"#),
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
