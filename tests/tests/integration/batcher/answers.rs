//! What the batcher does with the provider's answers: ambiguous, definite rejections, flagged batches, stale and lost ones, crashed and timed-out runs.

use super::d;
use integration_tests::BalanceView;
use integration_tests::{claiming_batch, PayoutEnv, ACCOUNTS};
use sandbox_provider::Fault;
use shared::domain::{BatchStatus, WithdrawalStatus};
use shared::payouts::batcher::BatcherConfig;
use shared::store::BatchStore;
use shared::store::Refusal;
use std::time::Duration;

#[tokio::test]
async fn after_an_ambiguous_answer_the_provider_is_asked_and_only_an_unrecorded_batch_is_resent() {
    for fault in [
        Fault::TimeoutBeforeRecord,
        Fault::TimeoutAfterRecord,
        Fault::ErrorBeforeRecord,
        Fault::ErrorAfterRecord,
    ] {
        let p = PayoutEnv::new(|_| {}).await;
        let seeded = p.seed("amb", "EUR", "12.34", 5, ACCOUNTS[0]).await;
        p.sandbox.inject(&[fault]);

        let first = p.run(PayoutEnv::config()).await;
        assert_eq!(first.currencies["EUR"].ambiguous, 1, "{fault:?}");
        assert_eq!(
            first.currencies["EUR"].rejected, 0,
            "{fault:?}: nothing rejected on doubt"
        );
        let batch = &p.env.store.all_batches().await.unwrap()[0];
        assert_eq!(
            (batch.status, batch.attempts),
            (BatchStatus::Open, 1),
            "{fault:?}"
        );
        for w in &seeded {
            assert_eq!(
                p.reload(w).await.status,
                WithdrawalStatus::Submitted,
                "{fault:?}"
            );
        }
        let recorded = matches!(fault, Fault::TimeoutAfterRecord | Fault::ErrorAfterRecord);
        assert_eq!(
            p.sandbox.ledger().len(),
            if recorded { 5 } else { 0 },
            "{fault:?}"
        );

        let second = p.run(PayoutEnv::config()).await;
        // Recorded there: the status answer is taken as the acceptance and nothing is sent
        // again (a provider that forgot the key would pay it twice). Never recorded (404): sent
        // again, once.
        let c = &second.currencies["EUR"];
        assert_eq!(
            (c.resent, c.batches, c.found_at_provider),
            if recorded { (0, 0, 1) } else { (1, 1, 0) },
            "{fault:?}"
        );
        assert_eq!(
            p.sandbox.submit_calls(),
            if recorded { 1 } else { 2 },
            "{fault:?}: a batch the provider has is never sent again"
        );
        // What the status answer said was paid is settled at once.
        let batch = &p.env.store.all_batches().await.unwrap()[0];
        assert_eq!(
            (batch.status, batch.attempts),
            if recorded {
                (BatchStatus::Completed, 2)
            } else {
                (BatchStatus::Accepted, 2)
            },
            "{fault:?}"
        );
        let paid = p.sandbox.payouts_by_reference();
        assert_eq!(paid.len(), 5, "{fault:?}");
        assert!(paid.values().all(|n| *n == 1), "{fault:?}: paid twice");
        assert_eq!(p.sandbox.batch_count(), 1, "{fault:?}");
        p.env.assert_conserved().await;
    }
}

#[tokio::test]
async fn a_definite_rejection_returns_the_funds() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("rej", "USD", "40.00", 3, ACCOUNTS[0]).await;
    p.sandbox.inject(&[Fault::Reject]);
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["USD"].rejected, 3);
    for w in &seeded {
        let w = p.reload(w).await;
        assert_eq!(w.status, WithdrawalStatus::Rejected);
        assert!(w.failure_reason.unwrap().contains("payout limit"));
    }
    assert_eq!(
        p.env.balance("rej-0", "USD").await,
        BalanceView {
            available: "400.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "400.00".into()
        }
    );
    let batch = &p.env.store.all_batches().await.unwrap()[0];
    assert_eq!(batch.status, BatchStatus::Rejected);
    assert!(p.sandbox.ledger().is_empty());
    assert!(p.env.store.open_batches().await.unwrap().is_empty());
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn too_many_ambiguous_attempts_flag_the_batch_until_an_operator_retries_it() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("flag", "JPY", "1000", 2, ACCOUNTS[0]).await;
    let config = BatcherConfig {
        max_attempts: 2,
        ..PayoutEnv::config()
    };
    p.sandbox
        .inject(&[Fault::ErrorBeforeRecord, Fault::ErrorBeforeRecord]);
    p.run(config.clone()).await;
    let second = p.run(config.clone()).await;
    assert_eq!(second.currencies["JPY"].flagged, 1);
    let batch = p.env.store.all_batches().await.unwrap()[0].clone();
    assert_eq!(batch.status, BatchStatus::NeedsOperator);
    // Flagged batches are reported, not re-sent, and never rejected on their own.
    let third = p.run(config.clone()).await;
    assert_eq!(third.currencies["JPY"].flagged, 1);
    assert_eq!(p.sandbox.submit_calls(), 2);
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }

    shared::operator::operations::retry_batch(&*p.env.store, batch.id)
        .await
        .unwrap();
    let after = p.run(config).await;
    assert_eq!(after.currencies["JPY"].batches, 1);
    assert!(p.sandbox.payouts_by_reference().values().all(|n| *n == 1));
    assert_eq!(p.sandbox.ledger().len(), 2);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn an_operator_rejection_in_a_flagged_batch_forbids_re_sending_it() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("op", "USD", "5.00", 2, ACCOUNTS[0]).await;
    let config = BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    };
    p.sandbox.inject(&[Fault::ErrorBeforeRecord]);
    p.run(config.clone()).await;
    let batch = p.env.store.all_batches().await.unwrap()[0].clone();
    assert_eq!(batch.status, BatchStatus::NeedsOperator);

    let rejected = shared::operator::operations::reject_withdrawal(
        &*p.env.store,
        &p.provider(),
        seeded[0].id,
        "confirmed unpaid with provider",
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(rejected.status, WithdrawalStatus::Rejected);
    assert_eq!(rejected.audit.last().unwrap().by, "operator");
    assert!(
        shared::operator::operations::retry_batch(&*p.env.store, batch.id)
            .await
            .is_err()
    );
    // A settled or already-final withdrawal cannot be rejected by an operator.
    assert!(shared::operator::operations::reject_withdrawal(
        &*p.env.store,
        &p.provider(),
        seeded[0].id,
        "again",
        Duration::ZERO
    )
    .await
    .is_err());
    assert_eq!(
        p.env.balance("op-0", "USD").await.locked,
        "5.00",
        "one still locked"
    );
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_run_that_died_while_claiming_or_before_sending_is_taken_over() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("crash", "USD", "3.00", 30, ACCOUNTS[0]).await;
    let mut pending = seeded.clone();
    pending.sort_by_key(|w| w.id);

    // A "dead" run claimed 10 into a batch and never finished: its lease has expired.
    let dead = claiming_batch(
        &pending[0].currency,
        "dead-run",
        chrono::Utc::now().timestamp_millis() - 1,
    );
    let r = p
        .env
        .store
        .claim(&dead, "dead-run", &pending[..10], true)
        .await
        .unwrap();
    assert_eq!(r.claimed.len(), 10);
    // Its claim of the next chunk is refused once another run took the lease.
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(
        summary.currencies["USD"].resent, 1,
        "the dead run's batch was taken over"
    );
    assert_eq!(
        summary.currencies["USD"].claimed, 20,
        "the rest in a new batch"
    );
    // If the dead run woke up, its next chunk would be refused: the lease is gone.
    let late = p.seed("crash-late", "USD", "3.00", 2, ACCOUNTS[0]).await;
    assert!(matches!(
        p.env.store.claim(&dead, "dead-run", &late, false).await,
        Err(shared::store::StoreError::Refused(Refusal::LeaseLost))
    ));
    for w in &late {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Pending);
    }
    let batches = p.env.store.all_batches().await.unwrap();
    assert_eq!(batches.len(), 2);
    let taken = batches.iter().find(|b| b.id == dead.id).unwrap();
    assert_eq!(taken.status, BatchStatus::Accepted);
    assert_eq!(taken.member_count(), 10);
    assert_eq!(taken.total, d("30.00"));
    let paid = p.sandbox.payouts_by_reference();
    assert_eq!(paid.len(), 30);
    assert!(paid.values().all(|n| *n == 1));
    assert!(seeded.iter().all(|w| paid.contains_key(&w.id.to_string())));
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_stale_accepted_batch_is_resolved_from_the_provider_status() {
    let p = PayoutEnv::new(|c| {
        c.fail_accounts.insert(ACCOUNTS[1].to_string());
        c.pending_accounts.insert(ACCOUNTS[2].to_string());
    })
    .await;
    let paid = p.seed("st-paid", "USD", "10.00", 2, ACCOUNTS[0]).await;
    let failed = p.seed("st-fail", "USD", "20.00", 1, ACCOUNTS[1]).await;
    p.run(PayoutEnv::config()).await;
    // No callbacks arrive (no webhook configured): after the stale age the batcher asks.
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    let summary = p.run(stale.clone()).await;
    assert_eq!(summary.currencies["USD"].resolved_from_status, 3);
    for w in &paid {
        let w = p.reload(w).await;
        assert_eq!(w.status, WithdrawalStatus::Settled);
        assert!(w.provider_reference.is_some());
    }
    assert_eq!(
        p.reload(&failed[0]).await.status,
        WithdrawalStatus::Rejected
    );
    assert_eq!(
        p.env.balance("st-paid-0", "USD").await,
        BalanceView {
            available: "80.00".into(),
            locked: "0.00".into(),
            paid_out: "20.00".into(),
            credited: "100.00".into()
        }
    );
    assert_eq!(
        p.env.balance("st-fail-0", "USD").await,
        BalanceView {
            available: "200.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "200.00".into()
        }
    );
    assert_eq!(
        p.env.store.all_batches().await.unwrap()[0].status,
        BatchStatus::Completed
    );

    // An item the provider keeps pending is counted and left alone.
    let stuck = p.seed("st-stuck", "EUR", "5.00", 1, ACCOUNTS[2]).await;
    p.run(PayoutEnv::config()).await;
    let summary = p.run(stale).await;
    assert_eq!(summary.currencies["EUR"].stale_unknown, 1);
    assert_eq!(
        p.reload(&stuck[0]).await.status,
        WithdrawalStatus::Submitted
    );
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_run_out_of_time_stops_cleanly_and_the_next_run_finishes() {
    let p = PayoutEnv::new(|_| {}).await;
    p.seed("budget", "USD", "1.00", 20, ACCOUNTS[0]).await;
    // A deadline already inside the safety margin: nothing is started.
    let summary = p
        .batcher(PayoutEnv::config())
        .run(std::time::Instant::now())
        .await
        .unwrap();
    assert!(summary.stopped_early);
    assert_eq!(summary.currencies["USD"].claimed, 0);
    let next = p.run(PayoutEnv::config()).await;
    assert_eq!(next.currencies["USD"].claimed, 20);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_batch_the_provider_lost_is_never_rejected_and_goes_to_an_operator() {
    let p = PayoutEnv::new(|c| c.memory.lose_next_batches = 1).await;
    let ws = p.seed("lost", "USD", "10.00", 3, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    // Accepted and paid, but the status endpoint answers 404 for it now.
    assert_eq!(p.sandbox.payouts_by_reference().len(), 3);
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    let summary = p.run(stale).await;
    let usd = &summary.currencies["USD"];
    assert_eq!(
        (
            usd.stale_unknown,
            usd.rejected,
            usd.resolved_from_status,
            usd.escalated
        ),
        (1, 0, 0, 1)
    );
    for w in &ws {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }
    assert_eq!(
        p.env.balance("lost-0", "USD").await,
        BalanceView {
            available: "70.00".into(),
            locked: "30.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into()
        }
    );
    assert_eq!(
        p.env.store.all_batches().await.unwrap()[0].status,
        BatchStatus::NeedsOperator
    );
    // An operator cannot return what the provider accepted and paid, on its 404.
    let refused = shared::operator::operations::reject_withdrawal(
        &*p.env.store,
        &p.provider(),
        ws[0].id,
        "lost?",
        Duration::ZERO,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    p.env.assert_conserved().await;
}

/// The danger the sandbox's key lifetime exposes: a batch whose first send was recorded (and
/// paid) but answered ambiguously was re-sent by the next run with the same key — after the
/// provider forgot the key, that re-send was a new batch and paid everyone again (each member
/// paid twice before the batcher asked the provider first).
#[tokio::test]
async fn a_re_send_after_the_provider_forgot_the_key_does_not_pay_twice() {
    let p = PayoutEnv::new(|c| c.memory.idempotency_key_ttl = Some(Duration::ZERO)).await;
    let ws = p.seed("forgot", "USD", "10.00", 3, ACCOUNTS[0]).await;
    p.sandbox.inject(&[Fault::ErrorAfterRecord]);
    p.run(PayoutEnv::config()).await;
    let second = p.run(PayoutEnv::config()).await;
    assert_eq!(second.currencies["USD"].found_at_provider, 1);
    let paid = p.sandbox.payouts_by_reference();
    for w in &ws {
        assert_eq!(paid.get(&w.id.to_string()), Some(&1), "{paid:?}");
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Settled);
    }
    assert_eq!(p.sandbox.expired_keys(), 0, "never sent again");
    p.env.assert_conserved().await;
}
