//! The Idempotency-Key: replays, parallel repeats, lost answers, keys refused.

use super::create;
use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::{withdrawal_body, ApiRequest, TestEnv};
use serde_json::json;
use shared::domain::UserId;
use shared::http::auth::Authenticator;
use shared::requests::withdrawals::WithdrawalService;
use std::sync::Arc;

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

    // Same request spelled differently (a number amount) is the same request.
    let same =
        json!({"currency":"USD","amount":40.00,"beneficiary_id":integration_tests::BENEFICIARY});
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

#[tokio::test]
async fn a_replayed_request_is_answered_in_one_round_trip() {
    // The idempotency put's cancellation reason (ALL_OLD) carries the first answer: the replay
    // needs no second read.
    let env = TestEnv::new().await;
    env.credit("rita", "USD", "100").await;
    let (counter, service) = env.counted_service();
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
