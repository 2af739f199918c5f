//! An operator's reject: only on the provider's word, never racing a retry, never against evidence the provider holds the batch.

use super::{flagged_recorded, flagged_unrecorded, provider_forgets, refused, reject_refused};
use integration_tests::BalanceView;
use integration_tests::{PayoutEnv, ACCOUNTS};
use sandbox_provider::Fault;
use shared::domain::WithdrawalStatus;
use shared::operator::operations::{self, RejectGround};
use shared::payouts::batcher::BatcherConfig;
use shared::payouts::provider::HttpProvider;
use shared::payouts::settlement::{self, ProviderWord};
use shared::store::BatchStore;
use std::time::Duration;

#[tokio::test]
async fn a_reject_planned_before_a_retry_cannot_commit_after_it() {
    // The interleaving that paid a rejected withdrawal: A's reject passes its checks, B's
    // retry-batch succeeds, A's reject commits, the next run re-sends the whole batch.
    let p = PayoutEnv::new(|_| {}).await;
    let (seeded, batch) = flagged_unrecorded(&p, "race", "40.00", 2).await;
    let plan = operations::plan_reject(&*p.env.store, &p.provider(), seeded[0].id, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(plan.ground, RejectGround::NeverRecorded { .. }));
    operations::retry_batch(&*p.env.store, batch).await.unwrap();
    let why = refused(operations::commit_reject(&*p.env.store, &plan, "A").await);
    assert!(why.contains("batch changed"), "{why}");

    // Nothing moved: the batch is the batcher's again and pays both, once each.
    assert_eq!(
        p.reload(&seeded[0]).await.status,
        WithdrawalStatus::Submitted
    );
    p.run(PayoutEnv::config()).await;
    p.settle_from_status().await;
    let paid = p.sandbox.payouts_by_reference();
    assert_eq!(paid.len(), 2);
    assert!(paid.values().all(|n| *n == 1));
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Settled);
    }
    p.env.assert_conserved().await;
}

/// A provider that paid one member of a batch and then lost the batch (404) has recorded it: the
/// other members may be paid too, so the 404 does not let an operator return their funds.
#[tokio::test]
async fn a_404_for_a_batch_whose_sibling_the_provider_paid_rejects_nothing() {
    let p = PayoutEnv::new(|_| {}).await;
    let (seeded, _) = flagged_unrecorded(&p, "lost", "40.00", 2).await;
    let paid = p.reload(&seeded[1]).await;
    let applied = settlement::apply(
        p.env.store.as_ref(),
        &paid,
        &ProviderWord::Paid {
            provider_reference: Some("po_lost".into()),
        },
        "webhook",
        None,
    )
    .await
    .unwrap();
    assert!(matches!(applied, settlement::Applied::Changed(_)));
    let why = reject_refused(&p, &p.provider(), &seeded[0]).await;
    assert!(why.contains("answered for") && why.contains("404"), "{why}");
    assert_eq!(
        p.reload(&seeded[0]).await.status,
        WithdrawalStatus::Submitted
    );
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn racing_reject_and_retry_never_pay_a_rejected_withdrawal() {
    let p = PayoutEnv::new(|_| {}).await;
    let provider = p.provider();
    let mut outcomes = (0, 0);
    for round in 0..12 {
        let (seeded, batch) = flagged_unrecorded(&p, &format!("r{round}"), "40.00", 2).await;
        let (rejected, retried) = tokio::join!(
            operations::reject_withdrawal(
                &*p.env.store,
                &provider,
                seeded[0].id,
                "A",
                Duration::ZERO
            ),
            async {
                // Spread the start so either side can win: the reject asks the provider first.
                tokio::time::sleep(Duration::from_millis((round % 6) as u64 * 8)).await;
                operations::retry_batch(&*p.env.store, batch).await
            },
        );
        assert!(
            !(rejected.is_ok() && retried.is_ok()),
            "round {round}: both a reject and a retry of the same flagged batch succeeded"
        );
        outcomes.0 += rejected.is_ok() as u32;
        outcomes.1 += retried.is_ok() as u32;
        p.run(PayoutEnv::config()).await;
    }
    // Whatever won, nothing the provider paid is rejected here, and nothing is paid twice.
    p.settle_from_status().await;
    let paid = p.sandbox.payouts_by_reference();
    assert!(paid.values().all(|n| *n == 1), "paid twice: {paid:?}");
    for w in p.env.store.scan_all().await.unwrap().withdrawals {
        let at_provider = paid.contains_key(&w.id.to_string());
        assert_eq!(
            at_provider,
            w.status == WithdrawalStatus::Settled,
            "{} is {} here, paid there: {at_provider}",
            w.id,
            w.status
        );
    }
    assert!(outcomes.0 + outcomes.1 >= 12, "{outcomes:?}");
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_submitted_withdrawal_is_rejected_only_on_the_providers_word() {
    let p = PayoutEnv::new(|_| {}).await;
    // The provider recorded and paid the batch, but its answer was lost: flagged after one
    // attempt. A sibling's payout may even have been confirmed already.
    let seeded = p.seed("word", "USD", "25.00", 2, ACCOUNTS[0]).await;
    flagged_recorded(&p, &seeded, Fault::ErrorAfterRecord).await;
    let why = reject_refused(&p, &p.provider(), &seeded[0]).await;
    assert!(why.contains("Paid"), "{why}");
    assert_eq!(
        p.reload(&seeded[0]).await.status,
        WithdrawalStatus::Submitted
    );

    // An unreachable provider refuses too: nothing is concluded from silence.
    let down = HttpProvider::new("http://127.0.0.1:9", "k", Duration::from_millis(300)).unwrap();
    let why = reject_refused(&p, &down, &seeded[1]).await;
    assert!(why.contains("could not be asked"), "{why}");
    assert_eq!(p.env.balance("word-0", "USD").await.locked, "50.00");
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn an_item_the_provider_reports_failed_is_rejected_as_that_failure() {
    let p = PayoutEnv::new(|c| {
        c.fail_accounts.insert(ACCOUNTS[1].to_string());
    })
    .await;
    let seeded = p.seed("failed", "USD", "9.00", 1, ACCOUNTS[1]).await;
    p.sandbox.inject(&[Fault::ErrorAfterRecord]);
    p.run(BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let w = operations::reject_withdrawal(
        &*p.env.store,
        &p.provider(),
        seeded[0].id,
        "checked",
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(w.status, WithdrawalStatus::Rejected);
    assert!(w.failure_reason.unwrap().contains("account closed"));
    assert_eq!(p.env.balance("failed-0", "USD").await.available, "90.00");
    p.env.assert_conserved().await;
}

/// The second route: an operator rejects the member the provider reports failed (its word, read
/// by the operator command), then the provider loses the batch. The failed member's reject is
/// the provider's answer and the status answer found the batch: the sibling's funds stay locked
/// while the provider may still pay it. Before the fix the reject was written as `operator`
/// (no evidence) and the found answer dropped, so the sibling's reject returned its funds.
#[tokio::test]
async fn the_providers_failed_item_read_by_an_operator_is_evidence_for_its_siblings() {
    let p = PayoutEnv::new(|c| {
        c.fail_accounts.insert(ACCOUNTS[1].to_string());
        c.pending_accounts.insert(ACCOUNTS[0].to_string());
    })
    .await;
    let mut seeded = p.seed("sib", "USD", "9.00", 1, ACCOUNTS[0]).await;
    seeded.extend(p.seed("sibfail", "USD", "9.00", 1, ACCOUNTS[1]).await);
    let batch = flagged_recorded(&p, &seeded, Fault::TimeoutAfterRecord).await;

    let failed = operations::reject_withdrawal(
        &*p.env.store,
        &p.provider(),
        seeded[1].id,
        "provider says failed",
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(failed.status, WithdrawalStatus::Rejected);
    provider_forgets(&p, batch);
    let why = reject_refused(&p, &p.provider(), &seeded[0]).await;
    assert!(why.contains("contradicts"), "{why}");
    assert_eq!(
        p.reload(&seeded[0]).await.status,
        WithdrawalStatus::Submitted
    );
    let BalanceView {
        available, locked, ..
    } = p.env.balance("sib-0", "USD").await;
    assert_eq!((available.as_str(), locked.as_str()), ("81.00", "9.00"));
    // The two pieces of evidence: the failed member's entry speaks for the provider, and the
    // status answer that reported it is kept on the batch.
    let entry = failed.audit.last().unwrap();
    assert_eq!(entry.by, shared::domain::PROVIDER_STATUS_ACTOR);
    assert!(failed.provider_answered());
    assert!(p
        .env
        .store
        .batch(batch)
        .await
        .unwrap()
        .unwrap()
        .provider_has_it());
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_404_is_definite_only_from_the_provider_and_only_after_a_quiet_period() {
    let p = PayoutEnv::new(|_| {}).await;
    let (seeded, _) = flagged_unrecorded(&p, "quiet", "7.00", 1).await;
    // Just sent: a queued request may still be recorded.
    let why = refused(
        operations::reject_withdrawal(
            &*p.env.store,
            &p.provider(),
            seeded[0].id,
            "unpaid?",
            operations::SEND_QUIET_PERIOD,
        )
        .await,
    );
    assert!(why.contains("queued request"), "{why}");
    // A 404 that is not the provider's coded answer (a gateway, a wrong base URL) is no answer.
    let wrong_path = HttpProvider::new(
        &format!("{}/not-the-api", p.provider_url),
        integration_tests::API_KEY,
        Duration::from_millis(500),
    )
    .unwrap();
    let why = reject_refused(&p, &wrong_path, &seeded[0]).await;
    assert!(why.contains("could not be asked"), "{why}");
    assert_eq!(
        p.reload(&seeded[0]).await.status,
        WithdrawalStatus::Submitted
    );
    p.env.assert_conserved().await;
}
