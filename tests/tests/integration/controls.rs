//! The operator's switches: a paused currency and a blocked user are refused new withdrawals
//! inside the request's one transaction (no read first, no delay); the batcher claims nothing
//! of a paused currency; money already on its way goes on; each change is heard as an event.

use integration_tests::events::EventsEnv;
use integration_tests::{
    withdrawal_body, ApiRequest, BalanceView, PayoutEnv, TestEnv, TestResponse,
};
use shared::domain::{WithdrawalId, WithdrawalStatus};
use shared::operator::controls::{self, Target};
use shared::operator::operations::OperationError;
use shared::store::Store;

const OPERATOR: &str = "operator:ops-ann";

async fn request(env: &TestEnv, user: &str, currency: &str, amount: &str) -> TestResponse {
    env.call(
        ApiRequest::new("POST", "/withdrawals")
            .user(user)
            .fresh_key()
            .body(withdrawal_body(currency, amount))
            .build(),
    )
    .await
}

async fn switch(
    env: &TestEnv,
    target: Target<'_>,
    on: bool,
    reason: Option<&str>,
) -> Result<(), String> {
    controls::switch(
        env.store.as_ref(),
        &env.currencies,
        target,
        on,
        reason,
        OPERATOR,
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        OperationError::Refused(why) => why,
        other => panic!("not a refusal: {other}"),
    })
}

async fn status(env: &TestEnv, user: &str, id: &str) -> WithdrawalStatus {
    env.store
        .withdrawal(
            &shared::domain::UserId::parse(user).unwrap(),
            WithdrawalId::parse(id).unwrap(),
        )
        .await
        .unwrap()
        .expect("exists")
        .status
}

fn id_of(r: &TestResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_paused_currency_takes_no_request_and_no_batch_until_resumed() {
    let p = PayoutEnv::new(|_| {}).await;
    let env = &p.env;
    env.credit("pia", "USD", "100").await;
    env.credit("pia", "EUR", "100").await;
    let before_pause = id_of(&request(env, "pia", "USD", "10").await);

    switch(
        env,
        Target::Currency("USD"),
        true,
        Some("provider incident INC-7"),
    )
    .await
    .unwrap();
    // At once: the very next request is refused, and writes nothing.
    let r = request(env, "pia", "USD", "10").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "currency_paused"),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("INC-7"),
        "the operator's reason stays with the operators"
    );
    let locked = BalanceView {
        available: "90.00".into(),
        locked: "10.00".into(),
        paid_out: "0.00".into(),
        credited: "100.00".into(),
    };
    assert_eq!(env.balance("pia", "USD").await, locked);
    // Other currencies go on.
    let eur = id_of(&request(env, "pia", "EUR", "5").await);

    let summary = p.run(PayoutEnv::config()).await;
    assert!(summary.currencies["USD"].paused);
    assert_eq!(summary.currencies["USD"].claimed, 0);
    assert_eq!(summary.currencies["EUR"].claimed, 1);
    assert_eq!(
        status(env, "pia", &before_pause).await,
        WithdrawalStatus::Pending
    );
    assert_eq!(status(env, "pia", &eur).await, WithdrawalStatus::Submitted);
    // Its user may still take a pending one back.
    let cancelled = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{before_pause}"))
                .user("pia")
                .build(),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(env.balance("pia", "USD").await.available, "100.00");

    // Pausing twice, or resuming what is not paused, changes nothing and says so.
    let again = switch(env, Target::Currency("USD"), true, Some("again")).await;
    assert!(again.unwrap_err().contains("already paused"));
    switch(env, Target::Currency("USD"), false, None)
        .await
        .unwrap();
    let twice = switch(env, Target::Currency("USD"), false, None).await;
    assert!(twice.unwrap_err().contains("not paused"));

    let after = id_of(&request(env, "pia", "USD", "10").await);
    let summary = p.run(PayoutEnv::config()).await;
    assert!(!summary.currencies["USD"].paused);
    assert_eq!(summary.currencies["USD"].claimed, 1);
    assert_eq!(
        status(env, "pia", &after).await,
        WithdrawalStatus::Submitted
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_blocked_user_is_refused_and_their_open_withdrawals_go_on() {
    let p = PayoutEnv::new(|_| {}).await;
    let env = &p.env;
    for user in ["bo", "cy"] {
        env.credit(user, "USD", "100").await;
    }
    let open = id_of(&request(env, "bo", "USD", "20").await);
    switch(env, Target::User("bo"), true, Some("suspected takeover"))
        .await
        .unwrap();

    for currency in ["USD", "EUR"] {
        let r = request(env, "bo", currency, "1").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "withdrawals_blocked"),
            "{}",
            r.body
        );
    }
    assert_eq!(env.balance("bo", "USD").await.available, "80.00");
    // Someone else is not blocked; the blocked user's reads still answer.
    id_of(&request(env, "cy", "USD", "1").await);
    let list = env
        .call(ApiRequest::new("GET", "/withdrawals").user("bo").build())
        .await;
    assert_eq!(list.status, 200);

    // Their open withdrawal is untouched by the block: it is paid as asked.
    p.run(PayoutEnv::config()).await;
    assert_eq!(status(env, "bo", &open).await, WithdrawalStatus::Submitted);

    switch(env, Target::User("bo"), false, Some("confirmed by phone"))
        .await
        .unwrap();
    id_of(&request(env, "bo", "USD", "1").await);
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_replay_during_a_pause_gets_its_first_answer() {
    let env = TestEnv::new().await;
    env.credit("rae", "EUR", "50").await;
    let keyed = || {
        ApiRequest::new("POST", "/withdrawals")
            .user("rae")
            .header("Idempotency-Key", "rae-1")
            .body(withdrawal_body("EUR", "7"))
            .build()
    };
    let first = env.call(keyed()).await;
    switch(&env, Target::Currency("EUR"), true, Some("bank holiday"))
        .await
        .unwrap();
    switch(&env, Target::User("rae"), true, Some("review"))
        .await
        .unwrap();
    let again = env.call(keyed()).await;
    assert_eq!((first.status, again.status), (201, 201), "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(env.balance("rae", "EUR").await.locked, "7.00");
}

#[tokio::test]
async fn switches_refuse_what_cannot_be_and_write_nothing() {
    let env = TestEnv::new().await;
    let unknown = switch(&env, Target::Currency("XYZ"), true, Some("x")).await;
    assert!(unknown.unwrap_err().contains("XYZ"));
    let no_reason = switch(&env, Target::Currency("USD"), true, Some("  ")).await;
    assert!(no_reason.unwrap_err().contains("reason is required"));
    let long = "x".repeat(controls::MAX_REASON_LEN + 1);
    let too_long = switch(&env, Target::User("al"), true, Some(&long)).await;
    assert!(too_long.unwrap_err().contains("longer than"));
    let bad_user = switch(&env, Target::User("no#such"), true, Some("x")).await;
    assert!(bad_user.is_err());
    // None of those wrote a switch: requests go through.
    env.credit("al", "USD", "10").await;
    id_of(&request(&env, "al", "USD", "1").await);
}

#[tokio::test]
async fn each_change_of_a_switch_is_heard_once_with_its_actor_and_reason() {
    let env = TestEnv::new().await;
    let events = EventsEnv::new(&env).await;
    switch(&env, Target::Currency("JPY"), true, Some("bank outage"))
        .await
        .unwrap();
    switch(&env, Target::Currency("JPY"), false, None)
        .await
        .unwrap();
    switch(&env, Target::User("dee"), true, Some("chargebacks"))
        .await
        .unwrap();
    // A refused change writes nothing, so it tells nobody anything.
    let _ = switch(&env, Target::User("dee"), true, Some("again")).await;
    let delivered = events.pump().await;
    assert_eq!(delivered.retried, 0, "{delivered:?}");
    let received = events.received().await;
    let mut seen: Vec<(String, String, String, Option<String>, u64)> = received
        .iter()
        .map(|r| {
            (
                r.detail_type.clone(),
                r.detail["currency"]
                    .as_str()
                    .or(r.detail["user_id"].as_str())
                    .unwrap()
                    .to_string(),
                r.detail["actor"].as_str().unwrap().to_string(),
                r.detail["reason"].as_str().map(str::to_string),
                r.detail["sequence"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let want = vec![
        (
            "currency.paused".into(),
            "JPY".into(),
            OPERATOR.into(),
            Some("bank outage".into()),
            1,
        ),
        (
            "currency.resumed".into(),
            "JPY".into(),
            OPERATOR.into(),
            None,
            2,
        ),
        (
            "user.blocked".into(),
            "dee".into(),
            OPERATOR.into(),
            Some("chargebacks".into()),
            1,
        ),
    ];
    assert_eq!(
        seen, want,
        "one event per change, none for the pause's other shards"
    );
}

#[tokio::test]
async fn the_switches_add_no_round_trip_to_a_request_accepted_or_refused() {
    let env = TestEnv::new().await;
    env.credit("ida", "USD", "100").await;
    env.credit("ida", "EUR", "100").await;
    switch(&env, Target::Currency("EUR"), true, Some("incident"))
        .await
        .unwrap();
    let (counter, service) = env.counted_service();
    let user = shared::domain::UserId::parse("ida").unwrap();
    let key = |k: &str| shared::domain::IdempotencyKey::parse(k).unwrap();
    let one_transaction = || vec![("TransactWriteItems".to_string(), 1)];

    counter.take_counts();
    let accepted = service
        .request(&user, withdrawal_body("USD", "10").as_bytes(), key("k1"))
        .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    assert_eq!(
        counter.take_counts().into_iter().collect::<Vec<_>>(),
        one_transaction()
    );

    let paused = service
        .request(&user, withdrawal_body("EUR", "10").as_bytes(), key("k2"))
        .await;
    assert!(
        matches!(paused, Err(shared::http::api::ApiError::CurrencyPaused)),
        "{paused:?}"
    );
    assert_eq!(
        counter.take_counts().into_iter().collect::<Vec<_>>(),
        one_transaction()
    );

    switch(&env, Target::User("ida"), true, Some("takeover"))
        .await
        .unwrap();
    counter.take_counts();
    let blocked = service
        .request(&user, withdrawal_body("USD", "10").as_bytes(), key("k3"))
        .await;
    assert!(
        matches!(
            blocked,
            Err(shared::http::api::ApiError::WithdrawalsBlocked)
        ),
        "{blocked:?}"
    );
    assert_eq!(
        counter.take_counts().into_iter().collect::<Vec<_>>(),
        one_transaction()
    );
    assert_eq!(env.balance("ida", "USD").await.locked, "10.00");
    assert_eq!(env.balance("ida", "EUR").await.locked, "0.00");
}

#[tokio::test]
async fn a_pause_the_batcher_cannot_read_pauses_every_currency_for_that_run() {
    use integration_tests::faults::{Fault, FaultyStore, When};
    let p = PayoutEnv::new(|_| {}).await;
    let env = &p.env;
    env.credit("uma", "USD", "100").await;
    let pending = id_of(&request(env, "uma", "USD", "10").await);
    let faulty = std::sync::Arc::new(FaultyStore::new(
        env.store_for(integration_tests::BATCHER_FN),
        vec![Fault::new("paused_currencies", 1, When::Before)],
    ));
    let batcher = shared::payouts::batcher::Batcher::new(
        faulty.clone(),
        std::sync::Arc::new(p.provider()),
        env.currencies.clone(),
        PayoutEnv::config(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let summary = batcher.run(deadline).await.unwrap();
    assert_eq!(
        faulty.fired(),
        vec!["paused_currencies#1:Before".to_string()]
    );
    assert!(
        summary
            .currencies
            .values()
            .all(|c| c.paused && c.claimed == 0),
        "{summary:?}"
    );
    assert_eq!(summary.errors.len(), 1, "the unread pause is reported");
    assert_eq!(
        status(env, "uma", &pending).await,
        WithdrawalStatus::Pending
    );
    // The next run reads it (nothing is paused) and claims as usual.
    let summary = batcher.run(deadline).await.unwrap();
    assert_eq!(summary.currencies["USD"].claimed, 1);
    assert_eq!(
        status(env, "uma", &pending).await,
        WithdrawalStatus::Submitted
    );
}
