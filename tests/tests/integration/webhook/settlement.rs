//! Settlement under the callbacks: the full loop with the sandbox, two requests per settlement, closing the batch, records and member entries that disagree.

use super::{send, submitted};
use futures::future::join_all;
use integration_tests::{
    callback_body, counting_client, deliver, now_secs, sign, webhook_request, ApiRequest,
    BalanceView, PayoutEnv, ACCOUNTS, WEBHOOK_FN, WEBHOOK_SECRET,
};
use shared::domain::{BatchStatus, Withdrawal, WithdrawalStatus};
use shared::store::{BatchStore, Store, TableSchema};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn the_full_loop_settles_rejects_and_returns_with_real_sandbox_callbacks() {
    let p = PayoutEnv::with_callbacks(shared::domain::Currencies::default()).await;

    // Through the user API: three users, three outcomes.
    let env = &p.env;
    for (user, account) in [
        ("paid", ACCOUNTS[0]),
        ("failed", ACCOUNTS[1]),
        ("returned", ACCOUNTS[2]),
    ] {
        env.credit(user, "EUR", "100").await;
        let beneficiary = env.beneficiary(user, account).await;
        let body =
            serde_json::json!({"currency": "EUR", "amount": "60.00", "beneficiary_id": beneficiary})
                .to_string();
        let r = env
            .call(
                ApiRequest::new("POST", "/withdrawals")
                    .user(user)
                    .fresh_key()
                    .body(body)
                    .build(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["EUR"].submitted, 3);
    assert_eq!(p.sandbox.submit_calls(), 1);

    let expect = [
        (
            "paid",
            WithdrawalStatus::Settled,
            ("40.00", "0.00", "60.00"),
        ),
        (
            "failed",
            WithdrawalStatus::Rejected,
            ("100.00", "0.00", "0.00"),
        ),
        (
            "returned",
            WithdrawalStatus::Returned,
            ("100.00", "0.00", "0.00"),
        ),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut done = true;
        for (user, status, _) in &expect {
            let list = env
                .call(ApiRequest::new("GET", "/withdrawals").user(user).build())
                .await
                .json();
            if list["items"][0]["status"] != status.as_str() {
                done = false;
            }
        }
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks did not finish: {:?}",
            p.sandbox.sent_events()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (user, _, (available, locked, paid_out)) in expect {
        assert_eq!(
            env.balance(user, "EUR").await,
            BalanceView {
                available: available.into(),
                locked: locked.into(),
                paid_out: paid_out.into(),
                credited: "100.00".into()
            },
            "{user}"
        );
    }
    let events = p.sandbox.sent_events();
    assert_eq!(events.len(), 4, "paid, failed, paid + returned");
    assert!(
        events
            .iter()
            .all(|e| e.delivered_status == 200 && e.attempts == 1),
        "{events:?}"
    );
    // The three callbacks arrived together, each reading the counters before the others
    // committed: the batcher's next run closes the batch none of them saw itself last in.
    p.run(PayoutEnv::config()).await;
    assert_eq!(
        env.store.all_batches().await.unwrap()[0].status,
        BatchStatus::Completed
    );
    let ledger = p.sandbox.ledger();
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger.iter().filter(|e| e.returned).count(), 1);
    env.assert_conserved().await;
}

/// An event whose record exists when its change is written: another delivery of it recorded it
/// (with its change, or alone) in between. The transaction is cancelled on the event's record
/// and changes nothing; the answer is `duplicate` — it once surfaced as a store error, a 500
/// the provider would retry for a day. Both ways in: the webhook's (the record refuses the
/// change written without a read) and the re-evaluation's (`apply`, from a withdrawal read).
#[tokio::test]
async fn an_event_recorded_before_its_change_is_a_duplicate_not_an_error() {
    use shared::domain::CallbackOutcome;
    use shared::payouts::settlement::{
        apply, apply_event, Applied, EventRef, MemberEvent, ProviderWord,
    };
    use shared::store::EventRecord;
    let p = PayoutEnv::new(|_| {}).await;
    let w = submitted(&p, "late", "10.00", 1).await.remove(0);
    let paid = ProviderWord::Paid {
        provider_reference: None,
    };
    let event = EventRef {
        id: "evt_late",
        event_type: "payout.paid",
    };
    p.env
        .store
        .record_event(&EventRecord {
            event_id: "evt_late".into(),
            event_type: "payout.paid".into(),
            reference: w.id.to_string(),
            outcome: CallbackOutcome::NoChange,
        })
        .await
        .unwrap();
    let member_event = MemberEvent {
        event,
        batch_id: w.batch_id.expect("submitted in a batch"),
        reference: w.id,
        amount: Some("10.00"),
        currency: Some("USD"),
        outcome: paid.clone(),
    };
    let result = apply_event(p.env.store.as_ref(), &member_event, "webhook").await;
    assert_eq!(
        result.map(|r| r.outcome),
        Ok(CallbackOutcome::Duplicate),
        "the webhook's way"
    );
    assert_eq!(p.reload(&w).await.status, WithdrawalStatus::Submitted);
    let applied = apply(p.env.store.as_ref(), &w, &paid, "webhook", Some(event)).await;
    assert!(matches!(applied, Ok(Applied::Duplicate)), "{applied:?}");
    assert_eq!(p.reload(&w).await.status, WithdrawalStatus::Submitted);
    p.env.assert_conserved().await;
}

/// The webhook's floor: a settlement, a rejection and a return are each one read of the batch's
/// partition and one transaction; a repeat is the same two (the transaction is refused on the
/// event's record). Only the batch's last member adds the requests that close it.
#[tokio::test]
async fn each_settlement_is_two_requests_and_only_the_last_member_closes_the_batch() {
    use shared::domain::CallbackOutcome;
    use shared::payouts::settlement::{apply_event, EventRef, MemberEvent, ProviderWord};
    let p = PayoutEnv::new(|_| {}).await;
    let ws = submitted(&p, "rt", "10.00", 3).await;
    let batch_id = ws[0].batch_id.expect("in a batch");
    assert!(ws.iter().all(|w| w.batch_id == Some(batch_id)));
    let counter = shared::platform::calls::CallRecorder::counting();
    let store = shared::store::DynamoStore::new(
        counting_client(&counter),
        p.env.store.table_name(),
        p.env.currencies.clone(),
    );
    let deliver = |id: &'static str, w: &Withdrawal, outcome: ProviderWord| {
        let store = store.clone();
        let (reference, event_type) = (
            w.id,
            match outcome {
                ProviderWord::Paid { .. } => "payout.paid",
                ProviderWord::Failed { .. } => "payout.failed",
                ProviderWord::Returned { .. } => "payout.returned",
            },
        );
        async move {
            let e = MemberEvent {
                event: EventRef { id, event_type },
                batch_id,
                reference,
                amount: Some("10.00"),
                currency: Some("USD"),
                outcome,
            };
            apply_event(&store, &e, "webhook").await.unwrap().outcome
        }
    };
    let paid = || ProviderWord::Paid {
        provider_reference: Some("p".into()),
    };
    let two = || {
        vec![
            ("Query".to_string(), 1),
            ("TransactWriteItems".to_string(), 1),
        ]
    };
    let steps = [
        ("evt_rt_paid", 0, paid(), CallbackOutcome::Applied),
        (
            "evt_rt_failed",
            1,
            ProviderWord::Failed {
                reason: "closed".into(),
            },
            CallbackOutcome::Applied,
        ),
        (
            "evt_rt_returned",
            0,
            ProviderWord::Returned {
                reason: "R01".into(),
            },
            CallbackOutcome::Applied,
        ),
        ("evt_rt_paid", 0, paid(), CallbackOutcome::Duplicate),
    ];
    for (id, i, outcome, want) in steps {
        counter.take_counts();
        assert_eq!(deliver(id, &ws[i], outcome).await, want, "{id}");
        let counts: Vec<_> = counter.take_counts().into_iter().collect();
        assert_eq!(counts, two(), "{id}");
    }
    let after: Vec<_> = [0, 1].iter().map(|&i| p.reload(&ws[i])).collect();
    let after = join_all(after).await;
    assert_eq!(
        (after[0].status, after[1].status),
        (WithdrawalStatus::Returned, WithdrawalStatus::Rejected)
    );
    let open = p.env.store.batch(batch_id).await.unwrap().unwrap();
    assert_eq!(open.status, BatchStatus::Accepted, "two of three final");
    // The last member: its transaction, then the batch is closed.
    counter.take_counts();
    assert_eq!(
        deliver("evt_rt_last", &ws[2], paid()).await,
        CallbackOutcome::Applied
    );
    assert!(counter.take_counts().values().sum::<u64>() > 2);
    let closed = p.env.store.batch(batch_id).await.unwrap().unwrap();
    assert_eq!(closed.status, BatchStatus::Completed);
    p.env.assert_conserved().await;
}

/// A repeat needs nothing but its record: when reading the batch fails (throttled, or a record
/// that no longer decodes), a delivery whose event is recorded is still answered `duplicate`,
/// not a 5xx the provider would retry for days.
#[tokio::test]
async fn a_repeat_is_a_duplicate_even_when_its_batch_cannot_be_read() {
    use integration_tests::faults::{Fault, FaultyStore, When};
    use shared::payouts::webhook::WebhookProcessor;
    let p = PayoutEnv::new(|_| {}).await;
    let w = submitted(&p, "unread", "10.00", 1).await.remove(0);
    let faulty = Arc::new(FaultyStore::new(
        p.env.store_for(WEBHOOK_FN),
        vec![Fault::new("batch_with_final_count", 2, When::Before)],
    ));
    let app = provider_webhook::App::from(WebhookProcessor::new(
        faulty.clone(),
        vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
        300,
    ));
    let body = callback_body("evt_unread", "payout.paid", &w, None);
    let first = deliver(
        &app,
        webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
    )
    .await;
    assert_eq!(first.json()["status"], "applied");
    let again = deliver(
        &app,
        webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
    )
    .await;
    assert_eq!(
        (again.status, again.json()["status"].clone()),
        (200, "duplicate".into()),
        "{}",
        again.body
    );
    assert!(!faulty.fired().is_empty(), "the batch read failed");
    // A first delivery whose batch cannot be read is still refused (retried), never guessed.
    let other = submitted(&p, "unread2", "10.00", 1).await.remove(0);
    let faulty = Arc::new(FaultyStore::new(
        p.env.store_for(WEBHOOK_FN),
        vec![Fault::new("batch_with_final_count", 1, When::Before)],
    ));
    let app = provider_webhook::App::from(WebhookProcessor::new(
        faulty,
        vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
        300,
    ));
    let body = callback_body("evt_unread2", "payout.paid", &other, None);
    let r = deliver(
        &app,
        webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(p.reload(&other).await.status, WithdrawalStatus::Submitted);
    p.env.assert_conserved().await;
}

/// A settlement is written from the batch's member entry, not from the withdrawal: should the
/// entry ever disagree with the withdrawal (amount), the write is refused by its condition and
/// the event is a conflict — the entry's amount never moves money.
#[tokio::test]
async fn a_member_entry_that_disagrees_with_its_withdrawal_moves_no_money() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let w = submitted(&p, "tampered", "10.00", 1).await.remove(0);
    let batch = w.batch_id.expect("in a batch");
    // The entry claims 12.00 where the withdrawal locked 10.00.
    p.env
        .store
        .client()
        .update_item()
        .table_name(p.env.store.table_name())
        .key("PK", AttributeValue::S(TableSchema::batch_pk(batch)))
        .key("SK", AttributeValue::S(TableSchema::SINGLETON_SK.into()))
        .update_expression("SET members.#m = :entry")
        .expression_attribute_names("#m", w.id.to_string())
        .expression_attribute_values(
            ":entry",
            AttributeValue::S(format!("12.00 - {}", w.user_id)),
        )
        .send()
        .await
        .unwrap();
    let mut tampered = w.clone();
    tampered.amount = shared::domain::Amount::parse("12.00", &w.currency).unwrap();
    let body = callback_body("evt_tampered", "payout.paid", &tampered, None);
    let r = send(&app, &body).await;
    assert_eq!(r.json()["status"], "conflict", "{}", r.body);
    assert_eq!(p.reload(&w).await.status, WithdrawalStatus::Submitted);
    assert_eq!(
        p.env.balance("tampered-0", "USD").await,
        BalanceView {
            available: "90.00".into(),
            locked: "10.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    p.env.assert_conserved().await;
}

/// Closing the batch is a shortcut taken after the change is committed: when it fails, the
/// delivery is still answered `applied` (not a 5xx for a change that happened), and the
/// batcher's next run closes the batch.
#[tokio::test]
async fn a_failure_to_close_the_batch_does_not_fail_an_applied_event() {
    use integration_tests::faults::{Fault, FaultyStore, When};
    use shared::payouts::webhook::WebhookProcessor;
    let p = PayoutEnv::new(|_| {}).await;
    let w = submitted(&p, "unclosed", "10.00", 1).await.remove(0);
    let faulty = Arc::new(FaultyStore::new(
        p.env.store_for(WEBHOOK_FN),
        vec![Fault::new("complete_if_final", 1, When::Before)],
    ));
    let app = provider_webhook::App::from(WebhookProcessor::new(
        faulty.clone(),
        vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
        300,
    ));
    let body = callback_body("evt_unclosed", "payout.paid", &w, None);
    let r = deliver(
        &app,
        webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, "applied".into()),
        "{}",
        r.body
    );
    assert!(!faulty.fired().is_empty(), "closing the batch failed");
    assert_eq!(p.reload(&w).await.status, WithdrawalStatus::Settled);
    let batch = w.batch_id.expect("in a batch");
    assert_eq!(
        p.env.store.batch(batch).await.unwrap().unwrap().status,
        BatchStatus::Accepted
    );
    p.run(PayoutEnv::config()).await;
    assert_eq!(
        p.env.store.batch(batch).await.unwrap().unwrap().status,
        BatchStatus::Completed
    );
    p.env.assert_conserved().await;
}
