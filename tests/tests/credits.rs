//! Credits are idempotent by reference: the only way funds enter cannot add the same funds twice.

use futures::future::join_all;
use integration_tests::{credit_record, TestEnv};
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
        (
            "250.00".into(),
            "0.00".into(),
            "0.00".into(),
            "250.00".into()
        )
    );
    // Another reference is another credit.
    env.credit_ref("cleo", "USD", "250.00", "wire-0002")
        .await
        .unwrap();
    assert_eq!(env.balance("cleo", "USD").await.3, "500.00");
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
            matches!(r, Err(StoreError::ReferenceReused(_))),
            "{user} {currency} {amount}: {r:?}"
        );
    }
    assert_eq!(
        env.balance("dora", "EUR").await,
        (
            "100.00".into(),
            "0.00".into(),
            "0.00".into(),
            "100.00".into()
        )
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
        ("75.25".into(), "0.00".into(), "0.00".into(), "75.25".into())
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
    let problems = shared::check::violations(&env.store.scan_all().await.unwrap());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("gus USD: credited 15")
            && problems[0].contains("credit records 10"),
        "{problems:?}"
    );
}
