//! Webhook attacks: forged, replayed, tampered and out-of-window callbacks.

use super::{audit, scale, scenario, Row};
use futures::future::join_all;
use integration_tests::{
    callback_body, deliver, now_secs, sign, webhook_request, PayoutEnv, ACCOUNTS, WEBHOOK_SECRET,
};
use shared::domain::{Withdrawal, WithdrawalStatus};

#[test]
fn s6_webhook_attacks() {
    scenario(|rt| vec![rt.block_on(webhook_attacks())]);
}

// 6 ------------------------------------------------------------------------------------------
async fn webhook_attacks() -> Row {
    let p = PayoutEnv::new(|_| {}).await;
    let app = p.webhook_app(&[WEBHOOK_SECRET]);
    let n = scale(20);
    let seeded = p.seed("atk", "USD", "4.00", n, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let mut ws: Vec<Withdrawal> = Vec::new();
    for w in &seeded {
        ws.push(p.reload(w).await);
    }
    let mut ops = 0;
    let mut wrong = 0;
    for (i, w) in ws.iter().enumerate() {
        let (good, bad) = if i % 2 == 0 {
            ("payout.paid", "payout.failed")
        } else {
            ("payout.failed", "payout.paid")
        };
        let body = callback_body(&format!("evt-{i}"), good, w, Some("closed"));
        let contra = callback_body(&format!("evt-{i}-contra"), bad, w, Some("late"));
        let mut expect_401 = vec![
            webhook_request(
                &contra,
                Some(sign(&contra, "whsec_attacker_guess_000", now_secs())),
            ),
            webhook_request(&contra, Some(sign(&body, WEBHOOK_SECRET, now_secs()))), // signature of another body
            webhook_request(&contra, None),
            webhook_request(
                &contra,
                Some(sign(&contra, WEBHOOK_SECRET, now_secs() - 3600)),
            ), // replay outside tolerance
            webhook_request(
                &contra,
                Some(sign(&contra, WEBHOOK_SECRET, now_secs() + 3600)),
            ),
        ];
        for req in expect_401.drain(..) {
            ops += 1;
            if deliver(&app, req).await.status != 401 {
                wrong += 1;
            }
        }
        // The genuine event, delivered 5 times concurrently, then replayed inside the tolerance.
        let results = join_all((0..5).map(|_| {
            deliver(
                &app,
                webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs()))),
            )
        }))
        .await;
        ops += 5;
        wrong += results.iter().filter(|r| r.status != 200).count();
        wrong += results
            .iter()
            .filter(|r| r.json()["status"] == "applied")
            .count()
            .abs_diff(1);
        ops += 1;
        let replay = deliver(
            &app,
            webhook_request(&body, Some(sign(&body, WEBHOOK_SECRET, now_secs() - 200))),
        )
        .await;
        if replay.json()["status"] != "duplicate" {
            wrong += 1;
        }
        // A validly signed contradiction is acknowledged and never applied.
        ops += 1;
        let c = deliver(
            &app,
            webhook_request(&contra, Some(sign(&contra, WEBHOOK_SECRET, now_secs()))),
        )
        .await;
        if c.json()["status"] != "conflict" {
            wrong += 1;
        }
        ops += 2;
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
        if deliver(
            &app,
            webhook_request(&huge, Some(sign(&huge, WEBHOOK_SECRET, now_secs()))),
        )
        .await
        .status
            != 413
        {
            wrong += 1;
        }
        let junk = "{\"id\":1}";
        if deliver(
            &app,
            webhook_request(junk, Some(sign(junk, WEBHOOK_SECRET, now_secs()))),
        )
        .await
        .status
            != 400
        {
            wrong += 1;
        }
        let expected = if i % 2 == 0 {
            WithdrawalStatus::Settled
        } else {
            WithdrawalStatus::Rejected
        };
        if p.reload(w).await.status != expected {
            wrong += 1;
        }
    }
    let (violations, lost) = audit(&p.env, None).await;
    Row {
        scenario: "6. webhook attacks",
        operations: ops,
        failures: wrong + violations,
        money_lost: lost,
        note: format!("{n} withdrawals: forged, stale, future, unsigned, replayed, concurrent, contradicting, oversized and malformed deliveries → 0 wrong transitions"),
    }
}
