//! Limits: open withdrawals per currency, the daily limit and its allowance given back.

use super::create;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::{withdrawal_body, ApiRequest, TestEnv};
use shared::domain::UserId;

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
