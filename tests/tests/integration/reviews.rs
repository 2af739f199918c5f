//! The review hold: a withdrawal above its currency's review threshold is accepted with its
//! funds locked but waits in REVIEW, where the batcher never claims it, until an operator
//! approves (→ PENDING, then paid as usual) or rejects it, or its user cancels it. Each decision
//! is conditional on REVIEW in its own write, so only one of them ever happens.

use integration_tests::events::EventsEnv;
use integration_tests::{withdrawal_body, ApiRequest, BalanceView, PayoutEnv, TestEnv};
use shared::domain::{Currencies, Transition, UserId, Withdrawal, WithdrawalId, WithdrawalStatus};
use shared::operator::operations::{self, OperationError};
use shared::store::{AdminStore, Refusal, Store, StoreError, TransitionDetails};
use std::time::Duration;

const OPERATOR: &str = "operator:ops-ann";

/// USD holds what is above 1000 (1000.00 itself goes straight through); EUR and JPY hold
/// nothing. USD has a daily limit, so a decision's give-back shows.
fn currencies() -> Currencies {
    Currencies::parse_config("USD:2:1:50000:3000,EUR:2:1:50000,JPY:0:100:5000000")
        .unwrap()
        .with_review_thresholds("USD:1000")
        .unwrap()
}

async fn reviewed_env() -> PayoutEnv {
    PayoutEnv::with_currencies(currencies(), |_| {}).await
}

/// Requests through the API; returns the new withdrawal's id and status.
async fn request(env: &TestEnv, user: &str, currency: &str, amount: &str) -> (String, String) {
    let r = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user(user)
                .fresh_key()
                .body(withdrawal_body(currency, amount))
                .build(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let body = r.json();
    (
        body["id"].as_str().unwrap().to_string(),
        body["status"].as_str().unwrap().to_string(),
    )
}

async fn stored(env: &TestEnv, user: &str, id: &str) -> Withdrawal {
    env.store
        .withdrawal(
            &UserId::parse(user).unwrap(),
            WithdrawalId::parse(id).unwrap(),
        )
        .await
        .unwrap()
        .expect("exists")
}

async fn approve(env: &TestEnv, id: &str) -> Result<Withdrawal, String> {
    operations::approve_withdrawal(
        env.store.as_ref(),
        WithdrawalId::parse(id).unwrap(),
        OPERATOR,
    )
    .await
    .map_err(refusal)
}

async fn reject(p: &PayoutEnv, id: &str, reason: &str) -> Result<Withdrawal, String> {
    operations::reject_withdrawal(
        p.env.store.as_ref(),
        &p.provider(),
        WithdrawalId::parse(id).unwrap(),
        reason,
        Duration::ZERO,
    )
    .await
    .map_err(refusal)
}

async fn cancel(env: &TestEnv, user: &str, id: &str) -> u16 {
    env.call(
        ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
            .user(user)
            .build(),
    )
    .await
    .status
}

fn refusal(e: OperationError) -> String {
    match e {
        OperationError::Refused(why) => why,
        other => panic!("not a refusal: {other}"),
    }
}

async fn held_ids(env: &TestEnv) -> Vec<String> {
    env.store
        .in_review(env.currencies.get("USD").unwrap(), 100)
        .await
        .unwrap()
        .iter()
        .map(|w| w.id.to_string())
        .collect()
}

fn balance(available: &str, locked: &str, paid_out: &str, credited: &str) -> BalanceView {
    BalanceView {
        available: available.into(),
        locked: locked.into(),
        paid_out: paid_out.into(),
        credited: credited.into(),
    }
}

#[tokio::test]
async fn a_withdrawal_above_the_threshold_waits_for_approval_then_is_paid_once() {
    let p = reviewed_env().await;
    let env = &p.env;
    env.credit("hal", "USD", "5000").await;
    let (at_threshold, status) = request(env, "hal", "USD", "1000.00").await;
    assert_eq!(status, "PENDING", "the threshold itself is not held");
    let (held, status) = request(env, "hal", "USD", "1000.01").await;
    assert_eq!(status, "REVIEW");
    assert_eq!(
        env.balance("hal", "USD").await,
        balance("2999.99", "2000.01", "0.00", "5000.00"),
        "a held withdrawal's funds are locked like any other's"
    );
    assert_eq!(held_ids(env).await, vec![held.clone()]);

    // The batcher never sees it: only the pending one is claimed and sent.
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["USD"].claimed, 1);
    assert_eq!(
        stored(env, "hal", &held).await.status,
        WithdrawalStatus::Review
    );
    assert_eq!(
        stored(env, "hal", &at_threshold).await.status,
        WithdrawalStatus::Submitted
    );

    let approved = approve(env, &held).await.unwrap();
    assert_eq!(approved.status, WithdrawalStatus::Pending);
    let last = approved.audit.last().unwrap();
    assert_eq!(
        (last.from, last.to, last.by.as_str()),
        (
            Some(WithdrawalStatus::Review),
            WithdrawalStatus::Pending,
            OPERATOR
        )
    );
    assert!(
        held_ids(env).await.is_empty(),
        "approved: no longer waiting"
    );
    let again = approve(env, &held).await.unwrap_err();
    assert!(again.contains("only REVIEW"), "{again}");

    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["USD"].claimed, 1);
    p.settle_from_status().await;
    for id in [&at_threshold, &held] {
        assert_eq!(
            stored(env, "hal", id).await.status,
            WithdrawalStatus::Settled
        );
    }
    assert_eq!(
        env.balance("hal", "USD").await,
        balance("2999.99", "0.00", "2000.01", "5000.00")
    );
    let paid = p.sandbox.payouts_by_reference();
    assert_eq!(paid.len(), 2, "{paid:?}");
    assert!(paid.values().all(|n| *n == 1), "{paid:?}");
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_held_withdrawal_rejected_by_an_operator_gives_back_its_funds_and_daily_limit() {
    let p = reviewed_env().await;
    let env = &p.env;
    env.credit("ria", "USD", "5000").await;
    let (held, status) = request(env, "ria", "USD", "2500").await;
    assert_eq!(status, "REVIEW");
    // 2500 of the 3000 daily limit is taken while it waits.
    let over = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("ria")
                .fresh_key()
                .body(withdrawal_body("USD", "600"))
                .build(),
        )
        .await;
    assert_eq!(
        (over.status, over.error_code().as_str()),
        (409, "daily_limit_exceeded"),
        "{}",
        over.body
    );

    let rejected = reject(&p, &held, "source of funds not shown")
        .await
        .unwrap();
    assert_eq!(rejected.status, WithdrawalStatus::Rejected);
    assert_eq!(
        rejected.failure_reason.as_deref(),
        Some("source of funds not shown")
    );
    assert_eq!(
        env.balance("ria", "USD").await,
        balance("5000.00", "0.00", "0.00", "5000.00")
    );
    assert!(held_ids(env).await.is_empty());
    // The day's limit is back: the same 600 now fits.
    let (_, status) = request(env, "ria", "USD", "600").await;
    assert_eq!(status, "PENDING");
    let late = approve(env, &held).await.unwrap_err();
    assert!(late.contains("REJECTED"), "{late}");
    env.assert_conserved().await;
}

#[tokio::test]
async fn its_user_may_cancel_a_held_withdrawal_and_then_nobody_can_approve_it() {
    let p = reviewed_env().await;
    let env = &p.env;
    env.credit("cal", "USD", "3000").await;
    let (held, _) = request(env, "cal", "USD", "2000").await;
    let before_cancel = stored(env, "cal", &held).await;
    assert_eq!(cancel(env, "cal", &held).await, 200);
    assert_eq!(
        env.balance("cal", "USD").await,
        balance("3000.00", "0.00", "0.00", "3000.00")
    );
    assert!(held_ids(env).await.is_empty());
    let refused = approve(env, &held).await.unwrap_err();
    assert!(refused.contains("CANCELLED"), "{refused}");
    // An approval planned on the REVIEW it saw before the cancel is refused by its own write's
    // condition, not only by the read in front of it.
    let stale = env
        .store
        .transition(
            &before_cancel,
            Transition::Approve,
            TransitionDetails::by(OPERATOR),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Refused(Refusal::StateChanged {
                current: Some(WithdrawalStatus::Cancelled)
            }))
        ),
        "{stale:?}"
    );
    assert_eq!(
        stored(env, "cal", &held).await.status,
        WithdrawalStatus::Cancelled
    );
    assert_eq!(
        p.run(PayoutEnv::config()).await.currencies["USD"].claimed,
        0
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn racing_operators_and_the_user_take_a_held_withdrawal_out_of_review_once() {
    let p = reviewed_env().await;
    let env = &p.env;
    env.credit("rex", "USD", "50000").await;
    let mut first_decisions = std::collections::BTreeMap::new();
    for round in 0..8 {
        let (held, _) = request(env, "rex", "USD", "1500").await;
        let (approved, rejected, cancelled) = tokio::join!(
            approve(env, &held),
            reject(&p, &held, "racing"),
            cancel(env, "rex", &held),
        );
        let now = stored(env, "rex", &held).await;
        let out_of_review: Vec<_> = now
            .audit
            .iter()
            .filter(|e| e.from == Some(WithdrawalStatus::Review))
            .collect();
        assert_eq!(
            out_of_review.len(),
            1,
            "round {round}: one decision left REVIEW: {:?}",
            now.audit
        );
        // Each accepted call wrote exactly one entry; a refused one wrote nothing. (An
        // approval may be followed by a reject or cancel of the then PENDING withdrawal.)
        let accepted = [approved.is_ok(), rejected.is_ok(), cancelled == 200]
            .iter()
            .filter(|ok| **ok)
            .count();
        assert_eq!(
            now.audit.len(),
            1 + accepted,
            "round {round}: {approved:?} {rejected:?} {cancelled} {:?}",
            now.audit
        );
        if out_of_review[0].to != WithdrawalStatus::Pending {
            assert!(
                approved.is_err(),
                "round {round}: approved after a decision"
            );
        }
        *first_decisions
            .entry(out_of_review[0].to.as_str())
            .or_insert(0) += 1;
        // What was approved and left PENDING goes back too, so every round ends unlocked.
        if now.status == WithdrawalStatus::Pending {
            assert_eq!(cancel(env, "rex", &held).await, 200);
        }
    }
    assert_eq!(
        env.balance("rex", "USD").await,
        balance("50000.00", "0.00", "0.00", "50000.00"),
        "{first_decisions:?}"
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_review_is_heard_as_held_then_approved_and_republished_alike() {
    let env = TestEnv::with_config(5, currencies()).await;
    let events = EventsEnv::new(&env).await;
    env.credit("eve", "USD", "2000").await;
    let (held, _) = request(&env, "eve", "USD", "1200").await;
    approve(&env, &held).await.unwrap();
    let delivered = events.pump().await;
    assert_eq!(delivered.retried, 0, "{delivered:?}");
    let mine: Vec<(String, String, Option<String>, String, u64)> = events
        .received()
        .await
        .iter()
        .filter(|r| r.detail["withdrawal"]["id"] == held.as_str())
        .map(|r| {
            (
                r.detail_type.clone(),
                r.detail["event_id"].as_str().unwrap().to_string(),
                r.detail["previous_status"].as_str().map(str::to_string),
                r.detail["actor"].as_str().unwrap().to_string(),
                r.detail["sequence"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = vec![
        (
            "withdrawal.held_for_review".to_string(),
            format!("{held}.REVIEW"),
            None,
            "user".to_string(),
            1,
        ),
        (
            "withdrawal.approved".to_string(),
            format!("{held}.PENDING"),
            Some("REVIEW".to_string()),
            OPERATOR.to_string(),
            2,
        ),
    ];
    let mut got = mine.clone();
    got.sort_by_key(|e| e.4);
    assert_eq!(got, want);

    // What `operator republish` rebuilds from the audit trail is the same two events.
    let w = stored(&env, "eve", &held).await;
    let window = shared::publishing::republish::Window {
        since: chrono::DateTime::<chrono::Utc>::MIN_UTC,
        until: None,
    };
    let rebuilt: Vec<(String, String)> =
        shared::publishing::republish::rebuilt(&[w], &[], &[], window)
            .iter()
            .map(|e| (e.kind.detail_type().to_string(), e.event_id.clone()))
            .collect();
    assert_eq!(
        rebuilt,
        want.iter()
            .map(|e| (e.0.clone(), e.1.clone()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_held_request_is_still_one_round_trip() {
    let env = TestEnv::with_config(5, currencies()).await;
    env.credit("ola", "USD", "3000").await;
    let (counter, service) = env.counted_service();
    counter.take_counts();
    let held = service
        .request(
            &UserId::parse("ola").unwrap(),
            withdrawal_body("USD", "2500").as_bytes(),
            shared::domain::IdempotencyKey::parse("big-1").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        counter.take_counts().into_iter().collect::<Vec<_>>(),
        vec![("TransactWriteItems".to_string(), 1)]
    );
    assert!(held.body.contains("\"REVIEW\""), "{}", held.body);
    assert_eq!(env.balance("ola", "USD").await.locked, "2500.00");
}

#[tokio::test]
async fn an_approval_lands_where_every_batcher_reads_whatever_the_operators_shard_setting() {
    use shared::store::DynamoStore;
    use std::sync::Arc;
    let p = reviewed_env().await;
    let env = &p.env;
    // One user each: three of them would pass one user's daily limit.
    let users = ["sam", "sal", "sia"];
    let mut held = Vec::new();
    for user in users {
        env.credit(user, "USD", "5000").await;
        let (id, status) = request(env, user, "USD", "1000.50").await;
        assert_eq!(status, "REVIEW");
        held.push(id);
    }
    // The operator's PENDING_SHARDS (64) is above what any request function recorded.
    let operator_store = DynamoStore::new(
        env.store.client().clone(),
        env.store.table_name(),
        env.currencies.clone(),
    )
    .with_pending_shards(64);
    for id in &held {
        operations::approve_withdrawal(&operator_store, WithdrawalId::parse(id).unwrap(), OPERATOR)
            .await
            .unwrap();
    }
    // A batcher that reads only what it knows of: its own setting (1) and the recorded mark.
    let batcher_store = Arc::new(
        DynamoStore::new(
            integration_tests::function_client(integration_tests::BATCHER_FN),
            env.store.table_name(),
            env.currencies.clone(),
        )
        .with_pending_shards(1),
    );
    let summary = p
        .batcher_on(batcher_store, PayoutEnv::config())
        .run(std::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(summary.currencies["USD"].claimed, 3, "{summary:?}");
    for (user, id) in users.iter().zip(&held) {
        assert_eq!(
            stored(env, user, id).await.status,
            WithdrawalStatus::Submitted
        );
    }
}
