//! Reconciliation and the invariant check: what the provider says differently is named.

use super::{amnesiac, batch_of, flagged_unrecorded, MisreportedAmounts};
use integration_tests::{PayoutEnv, ACCOUNTS};
use sandbox_provider::Fault;
use shared::domain::{BatchStatus, WithdrawalStatus};
use shared::operator::operations::{self};
use shared::payouts::batcher::BatcherConfig;
use shared::payouts::reconcile::MismatchKind;
use shared::store::{BatchStore, Store};
use std::time::Duration;

#[tokio::test]
async fn reconcile_reports_what_the_provider_says_differently() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("rec", "USD", "4.00", 3, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    // Settled from the provider's own status: both sides agree.
    p.run(BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    })
    .await;
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    assert_eq!(batch.status, BatchStatus::Completed);
    let agree = shared::payouts::reconcile::batch(p.env.store.as_ref(), &p.provider(), &batch)
        .await
        .unwrap();
    assert_eq!(agree, vec![]);

    // A provider that does not know the batch, or reports other amounts, is reported per item.
    let unknown =
        shared::payouts::reconcile::batch(p.env.store.as_ref(), &amnesiac().await, &batch)
            .await
            .unwrap();
    assert_eq!(unknown.len(), 3);
    assert!(unknown
        .iter()
        .all(|m| m.kind == MismatchKind::UnknownToProvider));
    let amounts = shared::payouts::reconcile::batch(
        p.env.store.as_ref(),
        &MisreportedAmounts(p.provider()),
        &batch,
    )
    .await
    .unwrap();
    assert!(amounts
        .iter()
        .all(|m| m.kind == MismatchKind::AmountDiffers));

    // The batcher reconciles each final batch once, on its slow cadence.
    let run = p
        .run(BatcherConfig {
            reconcile_after: Duration::ZERO,
            ..PayoutEnv::config()
        })
        .await;
    assert_eq!(
        (
            run.currencies["USD"].reconciled,
            run.currencies["USD"].reconcile_mismatches
        ),
        (1, 0)
    );
    assert!(p
        .env
        .store
        .unreconciled(chrono::Utc::now(), 10)
        .await
        .unwrap()
        .is_empty());
    let again = p
        .run(BatcherConfig {
            reconcile_after: Duration::ZERO,
            ..PayoutEnv::config()
        })
        .await;
    assert_eq!(again.currencies["USD"].reconciled, 0);
}

#[tokio::test]
async fn reconcile_finds_a_payout_an_operator_forced_back() {
    // What the old reject allowed: a withdrawal paid by the provider, then returned here.
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("forced", "USD", "6.00", 1, ACCOUNTS[0]).await;
    p.sandbox.inject(&[Fault::ErrorAfterRecord]);
    p.run(PayoutEnv::config()).await;
    let w = p.reload(&seeded[0]).await;
    let mut details = shared::store::TransitionDetails::by("operator");
    details.failure_reason = Some("forced".into());
    p.env
        .store
        .transition(&w, shared::domain::Transition::Reject, details)
        .await
        .unwrap();
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    let found = shared::payouts::reconcile::batch(p.env.store.as_ref(), &p.provider(), &batch)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, MismatchKind::PaidButNotHere);
}

#[tokio::test]
async fn a_return_whose_callback_was_lost_is_found_by_the_second_reconcile_pass() {
    let p = PayoutEnv::new(|c| {
        c.return_accounts.insert(ACCOUNTS[3].to_string());
        c.return_delay = Duration::from_secs(4);
        // Callbacks go nowhere and are given up at once: the return's callback is lost.
        c.webhook_url = Some("http://127.0.0.1:9/webhooks/provider".into());
        c.retry_for = Duration::ZERO;
    })
    .await;
    let seeded = p.seed("ret", "USD", "20.00", 2, ACCOUNTS[3]).await;
    p.run(PayoutEnv::config()).await;
    p.settle_from_status().await;
    assert_eq!(p.reload(&seeded[0]).await.status, WithdrawalStatus::Settled);
    let reconcile = BatcherConfig {
        reconcile_after: Duration::ZERO,
        reconcile_again_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    // First pass, right after the batch ended: paid there, settled here.
    let first = p.run(reconcile.clone()).await;
    assert_eq!(
        (
            first.currencies["USD"].reconciled,
            first.currencies["USD"].reconcile_mismatches
        ),
        (1, 0)
    );
    // The bank sends the payouts back; nobody tells us. The second pass sees it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = p.run(reconcile.clone()).await;
    assert_eq!(
        (
            second.currencies["USD"].reconciled,
            second.currencies["USD"].reconcile_mismatches
        ),
        (1, 2)
    );
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    let found = shared::payouts::reconcile::batch(p.env.store.as_ref(), &p.provider(), &batch)
        .await
        .unwrap();
    assert!(found
        .iter()
        .all(|m| m.kind == MismatchKind::ReturnNotApplied));
    // Two passes, then off the list.
    assert_eq!(p.run(reconcile).await.currencies["USD"].reconciled, 0);
}

/// `operator check` names what no rule can undo: a member returned on a 404 in a batch the
/// provider later shows it holds (a provider breaking its own "404 = never recorded").
#[tokio::test]
async fn check_names_a_member_returned_on_a_404_the_provider_later_contradicts() {
    let p = PayoutEnv::new(|_| {}).await;
    let (seeded, batch) = flagged_unrecorded(&p, "later", "5.00", 2).await;
    operations::reject_withdrawal(
        &*p.env.store,
        &p.provider(),
        seeded[0].id,
        "404",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let before = shared::operator::check::violations(&p.env.store.scan_all().await.unwrap());
    assert!(before.is_empty(), "{before:?}");
    let b = p.env.store.batch(batch).await.unwrap().unwrap();
    assert!(p
        .env
        .store
        .record_found(&b, "pb_late", shared::domain::PROVIDER_STATUS_ACTOR)
        .await
        .unwrap());
    let after = shared::operator::check::violations(&p.env.store.scan_all().await.unwrap());
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains(&seeded[0].id.to_string()) && after[0].contains("pb_late"));
}
