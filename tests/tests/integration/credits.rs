//! Credits are idempotent by reference: the only way funds enter cannot add the same funds twice.

use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::{credit_record, TestEnv};
use shared::store::Refusal;
use shared::store::{CreditOutcome, Store, StoreError};

#[tokio::test]
async fn replaying_a_credit_credits_once_and_returns_the_first_record() {
    let env = TestEnv::new().await;
    let first = env
        .credit_ref("cleo", "USD", "250.00", "wire-0001")
        .await
        .unwrap();
    let CreditOutcome::Recorded(recorded) = first else {
        panic!("first credit not recorded: {first:?}");
    };
    // Same reference, same credit (another spelling of the amount): a no-op that answers with
    // the first record.
    let again = env
        .credit_ref("cleo", "USD", "250", "wire-0001")
        .await
        .unwrap();
    assert_eq!(again, CreditOutcome::Replayed(recorded));
    assert_eq!(
        env.balance("cleo", "USD").await,
        BalanceView {
            available: "250.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "250.00".into()
        }
    );
    // Another reference is another credit.
    env.credit_ref("cleo", "USD", "250.00", "wire-0002")
        .await
        .unwrap();
    assert_eq!(env.balance("cleo", "USD").await.credited, "500.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_reference_used_for_another_credit_is_refused_and_changes_nothing() {
    let env = TestEnv::new().await;
    env.credit_ref("dora", "EUR", "100", "ticket-7")
        .await
        .unwrap();
    for (user, currency, amount) in [
        ("dora", "EUR", "100.01"),
        ("dora", "USD", "100"),
        ("eve", "EUR", "100"),
    ] {
        let r = env.credit_ref(user, currency, amount, "ticket-7").await;
        assert!(
            matches!(r, Err(StoreError::Refused(Refusal::ReferenceReused(_)))),
            "{user} {currency} {amount}: {r:?}"
        );
    }
    assert_eq!(
        env.balance("dora", "EUR").await,
        BalanceView {
            available: "100.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    let balances = env
        .store
        .balances(&shared::domain::UserId::parse("eve").unwrap())
        .await
        .unwrap();
    assert!(balances.is_empty(), "{balances:?}");
    env.assert_conserved().await;
}

#[tokio::test]
async fn ten_concurrent_identical_credits_credit_once() {
    let env = TestEnv::new().await;
    let usd = env.currencies.get("USD").unwrap().clone();
    let outcomes = join_all((0..10).map(|_| {
        let store = env.store.clone();
        let credit = credit_record(&usd, "finn", "75.25", "wire-concurrent");
        async move { store.credit(&credit).await }
    }))
    .await;
    let recorded = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(CreditOutcome::Recorded(_))))
        .count();
    let replayed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(CreditOutcome::Replayed(_))))
        .count();
    assert_eq!((recorded, replayed), (1, 9), "{outcomes:?}");
    assert_eq!(
        env.balance("finn", "USD").await,
        BalanceView {
            available: "75.25".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "75.25".into()
        }
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn check_finds_funds_that_entered_without_a_credit_record() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = TestEnv::new().await;
    env.credit("gus", "USD", "10").await;
    env.assert_conserved().await;
    // Funds written straight into the balance (as the old unrecorded credit did): the books
    // still balance, but `credited` no longer matches the recorded credits.
    env.store
        .client()
        .update_item()
        .table_name(env.store.table_name())
        .key("PK", AttributeValue::S("USER#gus".into()))
        .key("SK", AttributeValue::S("BAL#USD".into()))
        .update_expression("SET available = available + :a, credited = credited + :a")
        .expression_attribute_values(":a", AttributeValue::N("5".into()))
        .send()
        .await
        .unwrap();
    let problems = shared::operator::check::violations(&env.store.scan_all().await.unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("gus USD: credited 15")
            && problems[0].contains("credit records 10"),
        "{problems:?}"
    );
}

// The credit API (`/internal/credits`): the platform's deposit service funds balances over
// the HTTP API, authorized by IAM; the same core as `operator credit`.

mod api {
    use integration_tests::{ApiRequest, BalanceView, TestEnv, TestResponse, DEPOSIT_CALLER};
    use serde_json::json;
    use shared::http::auth::{AllowedCallers, CallerSource, InternalAuth, LocalTokenKey};

    async fn post(env: &TestEnv, caller: &str, body: serde_json::Value) -> TestResponse {
        env.call(
            ApiRequest::new("POST", "/internal/credits")
                .iam_caller(caller)
                .body(body.to_string())
                .build(),
        )
        .await
    }

    fn deposit(reference: &str, amount: &str) -> serde_json::Value {
        json!({"user_id": "dora", "currency": "USD", "amount": amount,
               "reference": reference, "description": "SEPA in 17"})
    }

    /// Nothing entered: no credit record, no balance.
    async fn assert_untouched(env: &TestEnv) {
        let report = env.store.scan_all().await.unwrap();
        assert!(report.credits.is_empty(), "{:?}", report.credits);
        assert!(report.balances.is_empty(), "{:?}", report.balances);
    }

    #[tokio::test]
    async fn a_deposit_credits_once_and_its_replay_answers_the_first_record() {
        let env = TestEnv::new().await;
        let first = post(&env, DEPOSIT_CALLER, deposit("dep-0001", "120.5")).await;
        assert_eq!(first.status, 201, "{}", first.body);
        assert!(!first.replayed);
        let view = first.json();
        assert_eq!(view["amount"], "120.50");
        assert_eq!(view["actor"], DEPOSIT_CALLER);
        assert_eq!(view["description"], "SEPA in 17");
        // A retry (another spelling of the same amount) changes nothing and answers the first.
        let again = post(&env, DEPOSIT_CALLER, deposit("dep-0001", "120.50")).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert!(again.replayed, "Idempotent-Replayed missing");
        assert_eq!(again.json(), view);
        assert_eq!(
            env.balance("dora", "USD").await,
            BalanceView {
                available: "120.50".into(),
                locked: "0.00".into(),
                paid_out: "0.00".into(),
                credited: "120.50".into()
            }
        );
        // The recorded credit, read back.
        let got = env
            .call(
                ApiRequest::new("GET", "/internal/credits/dep-0001")
                    .iam_caller(DEPOSIT_CALLER)
                    .build(),
            )
            .await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.json(), view);
        let missing = env
            .call(
                ApiRequest::new("GET", "/internal/credits/dep-9999")
                    .iam_caller(DEPOSIT_CALLER)
                    .build(),
            )
            .await;
        assert_eq!(
            (missing.status, missing.error_code().as_str()),
            (404, "not_found")
        );
        // A reference that a path could not carry unchanged is refused up front (it could not
        // be read back), and a path that is not a reference is simply not found.
        let slashed = post(&env, DEPOSIT_CALLER, deposit("wire/2026/17", "1.00")).await;
        assert_eq!(
            (slashed.status, slashed.error_code().as_str()),
            (400, "invalid_parameter")
        );
        let got = env
            .call(
                ApiRequest::new("GET", "/internal/credits/wire%2F2026%2F17")
                    .iam_caller(DEPOSIT_CALLER)
                    .build(),
            )
            .await;
        assert_eq!(got.status, 404);
        // A path that arrives still encoded (the local stack; API Gateway decodes it first)
        // reads the same credit: Schemathesis found `@` sent as `%40` read back 404.
        let at = deposit("dep@2026:17", "1.00");
        assert_eq!(post(&env, DEPOSIT_CALLER, at).await.status, 201);
        for path in ["dep@2026:17", "dep%402026%3A17"] {
            let got = env
                .call(
                    ApiRequest::new("GET", &format!("/internal/credits/{path}"))
                        .iam_caller(DEPOSIT_CALLER)
                        .build(),
                )
                .await;
            assert_eq!(
                (got.status, got.json()["reference"].as_str()),
                (200, Some("dep@2026:17")),
                "{path}"
            );
        }
        env.assert_conserved().await;
    }

    #[tokio::test]
    async fn a_reference_reused_with_another_body_is_422_and_changes_nothing() {
        let env = TestEnv::new().await;
        assert_eq!(
            post(&env, DEPOSIT_CALLER, deposit("dep-7", "10.00"))
                .await
                .status,
            201
        );
        let mut others = vec![deposit("dep-7", "10.01")];
        for (field, value) in [
            ("user_id", json!("eve")),
            ("currency", json!("EUR")),
            ("description", json!("another transfer")),
        ] {
            let mut b = deposit("dep-7", "10.00");
            b[field] = value;
            others.push(b);
        }
        let mut no_description = deposit("dep-7", "10.00");
        no_description
            .as_object_mut()
            .unwrap()
            .remove("description");
        others.push(no_description);
        for body in others {
            let r = post(&env, DEPOSIT_CALLER, body.clone()).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (422, "reference_reused"),
                "{body}: {}",
                r.body
            );
        }
        assert_eq!(env.balance("dora", "USD").await.credited, "10.00");
        let report = env.store.scan_all().await.unwrap();
        assert_eq!(report.credits.len(), 1);
        assert_eq!(report.balances.len(), 1, "no EUR balance, nothing for eve");
        env.assert_conserved().await;
    }

    #[tokio::test]
    async fn only_the_named_services_verified_by_iam_may_credit() {
        let env = TestEnv::new().await;
        let body = deposit("dep-1", "10.00").to_string();
        let cases: Vec<(&str, ApiRequest, u16, &str)> = vec![
            // No identity at all, and a user's verified JWT: neither is a service.
            (
                "no authorizer context",
                ApiRequest::new("POST", "/internal/credits"),
                401,
                "unauthorized",
            ),
            (
                "a user's JWT",
                ApiRequest::new("POST", "/internal/credits").user("dora"),
                401,
                "unauthorized",
            ),
            // Verified by IAM but not named in the template's list.
            (
                "another role",
                ApiRequest::new("POST", "/internal/credits")
                    .iam_caller("arn:aws:sts::123456789012:assumed-role/support/s"),
                403,
                "forbidden",
            ),
            (
                "the same role name in another account",
                ApiRequest::new("POST", "/internal/credits")
                    .iam_caller("arn:aws:sts::999999999999:assumed-role/deposit-service/s"),
                403,
                "forbidden",
            ),
        ];
        for (what, event, status, code) in cases {
            let r = env.call(event.body(body.clone()).build()).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (status, code),
                "{what}"
            );
        }
        // Reading a credit needs the same.
        let r = env
            .call(
                ApiRequest::new("GET", "/internal/credits/dep-1")
                    .user("dora")
                    .build(),
            )
            .await;
        assert_eq!(r.status, 401);
        assert_untouched(&env).await;
        // A service's IAM identity is not a user either.
        let r = env
            .call(
                ApiRequest::new("GET", "/balances")
                    .iam_caller(DEPOSIT_CALLER)
                    .build(),
            )
            .await;
        assert_eq!(r.status, 401);
        // With no callers configured, nobody.
        let mut closed = TestEnv::new().await;
        closed.app = closed.app.clone().with_internal(InternalAuth::closed());
        let r = post(&closed, DEPOSIT_CALLER, deposit("dep-1", "10.00")).await;
        assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
        assert_untouched(&closed).await;
    }

    #[tokio::test]
    async fn every_bad_input_is_a_coded_4xx_that_changes_nothing() {
        let env = TestEnv::new().await;
        let mut cases: Vec<(serde_json::Value, &str)> = vec![
            (json!("not an object"), "invalid_json"),
            (
                json!({"user_id": "dora", "currency": "USD", "amount": "1"}),
                "invalid_json",
            ),
        ];
        for (field, value, code) in [
            ("currency", json!("XXX"), "invalid_currency"),
            ("currency", json!("usd"), "invalid_currency"),
            ("amount", json!("1e2"), "invalid_amount"),
            ("amount", json!(true), "invalid_amount"),
            ("amount", json!("10.001"), "invalid_amount"),
            ("amount", json!("-10"), "invalid_amount"),
            ("amount", json!("0"), "invalid_amount"),
            ("amount", json!("0.99"), "amount_below_minimum"),
            ("amount", json!("50000.01"), "amount_above_maximum"),
            ("amount", json!(null), "invalid_amount"),
            ("reference", json!(""), "invalid_parameter"),
            ("reference", json!("r".repeat(129)), "invalid_parameter"),
            ("reference", json!("dép-1"), "invalid_parameter"),
            ("user_id", json!("a b"), "invalid_parameter"),
            ("description", json!("x".repeat(257)), "invalid_parameter"),
            ("debit", json!(true), "invalid_json"),
        ] {
            let mut b = deposit("dep-1", "10.00");
            b[field] = value;
            cases.push((b, code));
        }
        for (body, code) in cases {
            let r = post(&env, DEPOSIT_CALLER, body.clone()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert_eq!(r.error_code(), code, "{body}");
        }
        // A JSON number with an exponent (serde_json would print `1e2` as `100.0`).
        let exponent = env
            .call(
                ApiRequest::new("POST", "/internal/credits")
                    .iam_caller(DEPOSIT_CALLER)
                    .body(r#"{"user_id":"dora","currency":"USD","amount":1e2,"reference":"dep-1"}"#)
                    .build(),
            )
            .await;
        assert_eq!(
            (exponent.status, exponent.error_code().as_str()),
            (400, "invalid_amount")
        );
        let oversized = env
            .call(
                ApiRequest::new("POST", "/internal/credits")
                    .iam_caller(DEPOSIT_CALLER)
                    .body("x".repeat(20_000))
                    .build(),
            )
            .await;
        assert_eq!(oversized.status, 413);
        let wrong_method = env
            .call(
                ApiRequest::new("PUT", "/internal/credits")
                    .iam_caller(DEPOSIT_CALLER)
                    .build(),
            )
            .await;
        assert_eq!(
            (wrong_method.status, wrong_method.error_code().as_str()),
            (405, "method_not_allowed")
        );
        assert_untouched(&env).await;
    }

    /// Locally there is no IAM authorizer: a service token with the internal audience stands in,
    /// and a user's local token does not.
    #[tokio::test]
    async fn locally_a_service_token_stands_in_for_iam_and_a_user_token_does_not() {
        let secret = b"local-secret-local-secret-local-secret";
        let key = LocalTokenKey::new(secret).unwrap();
        let mut env = TestEnv::new().await;
        env.app = env.app.clone().with_internal(InternalAuth::new(
            CallerSource::LocalToken(key.clone()),
            AllowedCallers::parse(integration_tests::DEPOSIT_ROLE).unwrap(),
        ));
        let now = chrono::Utc::now().timestamp();
        let with = |token: String| {
            ApiRequest::new("POST", "/internal/credits")
                .header("authorization", &format!("Bearer {token}"))
                .body(deposit("dep-local", "5.00").to_string())
                .build()
        };
        let user = key.mint(&shared::domain::UserId::parse("dora").unwrap(), now, 60);
        assert_eq!(env.call(with(user)).await.status, 401);
        let stranger = key.mint_service("arn:aws:sts::123456789012:assumed-role/x/s", now, 60);
        assert_eq!(env.call(with(stranger)).await.status, 403);
        let forged = LocalTokenKey::new(b"another-secret-another-secret-another")
            .unwrap()
            .mint_service(DEPOSIT_CALLER, now, 60);
        assert_eq!(env.call(with(forged)).await.status, 401);
        assert_untouched(&env).await;
        let service = key.mint_service(DEPOSIT_CALLER, now, 60);
        let r = env.call(with(service)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(env.balance("dora", "USD").await.credited, "5.00");
    }
}
