//! The provider webhook: signed events from tests and real callbacks from the sandbox provider,
//! against DynamoDB Local.

use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::*;
use shared::domain::{BatchStatus, Withdrawal, WithdrawalStatus};
use shared::store::{BatchStore, Store, TableSchema};
use std::sync::Arc;
use std::time::Duration;

/// `n` withdrawals of `amount` USD claimed and accepted by the provider (no callbacks).
async fn submitted(p: &PayoutEnv, prefix: &str, amount: &str, n: usize) -> Vec<Withdrawal> {
    let seeded = p.seed(prefix, "USD", amount, n, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let mut out = Vec::new();
    for w in &seeded {
        let w = p.reload(w).await;
        assert_eq!(w.status, WithdrawalStatus::Submitted);
        out.push(w);
    }
    out
}

async fn send(app: &provider_webhook::App, body: &str) -> TestResponse {
    deliver(
        app,
        webhook_request(body, Some(sign(body, WEBHOOK_SECRET, now_secs()))),
    )
    .await
}

#[tokio::test]
async fn signed_paid_failed_and_returned_events_move_the_money() {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let ws = submitted(&p, "hp", "10.00", 3).await;
    // Balances of user hp-0: credited 100, three 10.00 locked.
    assert_eq!(
        p.env.balance("hp-0", "USD").await,
        BalanceView {
            available: "70.00".into(),
            locked: "30.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );

    let r = send(
        &app,
        &callback_body("evt_paid", "payout.paid", &ws[0], None),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str().unwrap()),
        (200, "applied"),
        "{}",
        r.body
    );
    let settled = p.reload(&ws[0]).await;
    assert_eq!(settled.status, WithdrawalStatus::Settled);
    assert_eq!(settled.provider_reference, Some(format!("po_{}", ws[0].id)));

    let r = send(
        &app,
        &callback_body("evt_fail", "payout.failed", &ws[1], Some("account closed")),
    )
    .await;
    assert_eq!(r.json()["status"], "applied");
    let rejected = p.reload(&ws[1]).await;
    assert_eq!(
        (rejected.status, rejected.failure_reason.as_deref()),
        (WithdrawalStatus::Rejected, Some("account closed"))
    );

    let r = send(
        &app,
        &callback_body("evt_paid2", "payout.paid", &ws[2], None),
    )
    .await;
    assert_eq!(r.json()["status"], "applied");
    let r = send(
        &app,
        &callback_body(
            "evt_ret",
            "payout.returned",
            &ws[2],
            Some("beneficiary unknown"),
        ),
    )
    .await;
    assert_eq!(r.json()["status"], "applied");
    assert_eq!(p.reload(&ws[2]).await.status, WithdrawalStatus::Returned);

    // 10 paid out for good; 10 rejected and 10 returned are available again.
    assert_eq!(
        p.env.balance("hp-0", "USD").await,
        BalanceView {
            available: "90.00".into(),
            locked: "0.00".into(),
            paid_out: "10.00".into(),
            credited: "100.00".into()
        }
    );
    let batch = p
        .env
        .store
        .batch(ws[0].batch_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            batch.status,
            p.env.store.final_count(batch.id).await.unwrap()
        ),
        (BatchStatus::Completed, 3)
    );
    let trail: Vec<String> = p
        .reload(&ws[2])
        .await
        .audit
        .iter()
        .map(|e| format!("{}:{}", e.to, e.by))
        .collect();
    assert_eq!(trail.len(), 4);
    assert!(trail[0].starts_with("PENDING:user") && trail[1].starts_with("SUBMITTED:batcher"));
    assert_eq!(&trail[2..], ["SETTLED:webhook", "RETURNED:webhook"]);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn bad_signatures_are_401_and_change_nothing() {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let ws = submitted(&p, "sig", "10.00", 1).await;
    let body = callback_body("evt_sig", "payout.paid", &ws[0], None);
    let tampered = body.replace("payout.paid", "payout.failed");
    let cases = vec![
        ("missing header", webhook_request(&body, None)),
        (
            "wrong secret",
            webhook_request(
                &body,
                Some(sign(&body, "whsec_someone_else_entirely", now_secs())),
            ),
        ),
        (
            "tampered body",
            webhook_request(&tampered, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
        ),
        (
            "stale",
            webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs() - 301))),
        ),
        (
            "future",
            webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs() + 301))),
        ),
        (
            "garbage",
            webhook_request(&body, Some("t=abc,v1=zz".into())),
        ),
    ];
    for (name, req) in cases {
        let r = deliver(&app, req).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "invalid_signature"),
            "{name}"
        );
    }
    assert_eq!(p.reload(&ws[0]).await.status, WithdrawalStatus::Submitted);
    assert!(
        p.env.event_record("evt_sig").await.is_none(),
        "nothing recorded"
    );

    // During a rotation both secrets are accepted.
    let rotated = p.webhook_app(&["whsec_new_secret_0123456789", WEBHOOK_SECRET]);
    let r = send(&rotated, &body).await;
    assert_eq!(r.json()["status"], "applied");
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn repeated_and_concurrent_deliveries_apply_once() {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let ws = submitted(&p, "dup", "10.00", 2).await;

    let body = callback_body("evt_dup", "payout.paid", &ws[0], None);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = send(&app, &body).await;
        assert_eq!(r.status, 200);
        statuses.push(r.json()["status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        statuses,
        [
            "applied",
            "duplicate",
            "duplicate",
            "duplicate",
            "duplicate"
        ]
    );

    // The same event delivered ten times at once.
    let body = callback_body("evt_race", "payout.paid", &ws[1], None);
    let results = join_all((0..10).map(|_| send(&app, &body))).await;
    assert!(results.iter().all(|r| r.status == 200), "{results:?}");
    let applied = results
        .iter()
        .filter(|r| r.json()["status"] == "applied")
        .count();
    assert_eq!(applied, 1, "{results:?}");
    // Another event id with the same meaning changes nothing either.
    let r = send(
        &app,
        &callback_body("evt_again", "payout.paid", &ws[1], None),
    )
    .await;
    assert_eq!(r.json()["status"], "no_change");

    assert_eq!(
        p.env.balance("dup-0", "USD").await,
        BalanceView {
            available: "80.00".into(),
            locked: "0.00".into(),
            paid_out: "20.00".into(),
            credited: "100.00".into()
        }
    );
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn contradicting_events_are_acknowledged_and_never_applied() {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let ws = submitted(&p, "ooo", "10.00", 2).await;

    // failed, then paid
    assert_eq!(
        send(
            &app,
            &callback_body("e1", "payout.failed", &ws[0], Some("closed"))
        )
        .await
        .json()["status"],
        "applied"
    );
    let r = send(&app, &callback_body("e2", "payout.paid", &ws[0], None)).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str().unwrap()),
        (200, "conflict")
    );
    assert_eq!(p.reload(&ws[0]).await.status, WithdrawalStatus::Rejected);

    // paid, then failed (a return must come as payout.returned)
    assert_eq!(
        send(&app, &callback_body("e3", "payout.paid", &ws[1], None))
            .await
            .json()["status"],
        "applied"
    );
    let r = send(
        &app,
        &callback_body("e4", "payout.failed", &ws[1], Some("late")),
    )
    .await;
    assert_eq!(r.json()["status"], "conflict");
    assert_eq!(p.reload(&ws[1]).await.status, WithdrawalStatus::Settled);

    // A returned that arrives before its paid settles, then returns — and the late paid is a no-op.
    let more = submitted(&p, "ooo2", "10.00", 1).await;
    assert_eq!(
        send(
            &app,
            &callback_body("e5", "payout.returned", &more[0], Some("bounced"))
        )
        .await
        .json()["status"],
        "applied"
    );
    assert_eq!(p.reload(&more[0]).await.status, WithdrawalStatus::Returned);
    assert_eq!(
        send(&app, &callback_body("e6", "payout.paid", &more[0], None))
            .await
            .json()["status"],
        "no_change"
    );
    assert_eq!(
        p.env.balance("ooo2-0", "USD").await,
        BalanceView {
            available: "100.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );

    // An amount that does not match ours is a conflict, not a settlement.
    let mut wrong = more[0].clone();
    wrong.amount = shared::domain::Amount::parse("11", &wrong.currency).unwrap();
    let other = submitted(&p, "ooo3", "10.00", 1).await;
    wrong.id = other[0].id;
    wrong.batch_id = other[0].batch_id;
    assert_eq!(
        send(&app, &callback_body("e7", "payout.paid", &wrong, None))
            .await
            .json()["status"],
        "conflict"
    );
    assert_eq!(
        p.reload(&other[0]).await.status,
        WithdrawalStatus::Submitted
    );
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn unknown_withdrawals_and_malformed_bodies_change_nothing() {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let ws = submitted(&p, "unk", "10.00", 1).await;

    let mut ghost = ws[0].clone();
    ghost.id = shared::domain::WithdrawalId::new();
    let r = send(
        &app,
        &callback_body("evt_ghost", "payout.paid", &ghost, None),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str().unwrap()),
        (200, "unknown_withdrawal")
    );
    ghost.batch_id = Some(shared::domain::BatchId::new());
    let r = send(
        &app,
        &callback_body("evt_ghost2", "payout.paid", &ghost, None),
    )
    .await;
    assert_eq!(r.json()["status"], "unknown_withdrawal");

    let cases = [
        ("{not json", 400, "invalid_json"),
        (
            r#"{"id":"x","type":"payout.refunded","data":{}}"#,
            400,
            "unknown_event_type",
        ),
        (
            r#"{"id":"x","type":"payout.paid","data":{"batch_id":"nope","reference":"nope"}}"#,
            400,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let r = send(&app, body).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{body}"
        );
    }
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300 * 1024));
    let r = send(&app, &huge).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    let r = deliver(
        &app,
        integration_tests::ApiRequest::new("GET", "/webhooks/provider").build(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(p.reload(&ws[0]).await.status, WithdrawalStatus::Submitted);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn the_full_loop_settles_rejects_and_returns_with_real_sandbox_callbacks() {
    let p = PayoutEnv::new(|c| {
        c.callback_delay = Duration::from_millis(50);
        c.return_delay = Duration::from_millis(100);
        c.fail_accounts.insert(ACCOUNTS[1].to_string());
        c.return_accounts.insert(ACCOUNTS[2].to_string());
    })
    .await;
    let app = Arc::new(p.webhook_app(&[WEBHOOK_SECRET]));
    let url = spawn_webhook_server(app).await;
    p.sandbox.set_webhook_url(&url);

    // Through the user API: three users, three outcomes.
    let env = &p.env;
    for (user, account) in [
        ("paid", ACCOUNTS[0]),
        ("failed", ACCOUNTS[1]),
        ("returned", ACCOUNTS[2]),
    ] {
        env.credit(user, "EUR", "100").await;
        let body =
            serde_json::json!({"currency": "EUR", "amount": "60.00", "bank_account": account})
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

#[tokio::test]
async fn a_webhook_body_that_is_not_utf8_is_refused_before_anything_is_read() {
    // As API Gateway delivers it: base64. Unsigned → 401; correctly signed bytes that are not
    // JSON → 400. Nothing is recorded either way.
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let bytes = [0xffu8, 0xfe, 0x81, b'{'];
    let unsigned = integration_tests::ApiRequest::new("POST", "/webhooks/provider")
        .base64_body(&bytes)
        .build();
    assert_eq!(deliver(&app, unsigned).await.status, 401);
    let signature = shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET)
        .unwrap()
        .sign(now_secs(), &bytes);
    let signed = integration_tests::ApiRequest::new("POST", "/webhooks/provider")
        .header("payout-signature", &signature)
        .base64_body(&bytes)
        .build();
    let r = deliver(&app, signed).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_json");
    p.env.assert_conserved().await;
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
        apply, apply_event, Applied, EventRef, MemberEvent, Outcome,
    };
    use shared::store::EventRecord;
    let p = PayoutEnv::new(|_| {}).await;
    let w = submitted(&p, "late", "10.00", 1).await.remove(0);
    let paid = Outcome::Paid {
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
    use shared::payouts::settlement::{apply_event, EventRef, MemberEvent, Outcome};
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
    let deliver = |id: &'static str, w: &Withdrawal, outcome: Outcome| {
        let store = store.clone();
        let (reference, event_type) = (
            w.id,
            match outcome {
                Outcome::Paid { .. } => "payout.paid",
                Outcome::Failed { .. } => "payout.failed",
                Outcome::Returned { .. } => "payout.returned",
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
    let paid = || Outcome::Paid {
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
            Outcome::Failed {
                reason: "closed".into(),
            },
            CallbackOutcome::Applied,
        ),
        (
            "evt_rt_returned",
            0,
            Outcome::Returned {
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
