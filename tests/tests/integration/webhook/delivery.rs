//! Signed callbacks move the money once: paid, failed, returned; bad signatures, repeats, contradictions and unknown withdrawals change nothing.

use super::{send, submitted};
use futures::future::join_all;
use integration_tests::{
    callback_body, deliver, now_secs, sign, webhook_request, BalanceView, PayoutEnv, WEBHOOK_SECRET,
};
use shared::domain::{BatchStatus, WithdrawalStatus};
use shared::store::BatchStore;

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
