//! Evidence is monotonic: once the provider has shown it holds a batch, no later 404 re-sends or returns it; status answers that disagree are conflicts.

use super::{
    amnesiac, batch_of, flagged_recorded, flagged_unrecorded, provider_forgets, reject_refused,
    FoundMeanwhile, MisreportedAmounts,
};
use integration_tests::BalanceView;
use integration_tests::{PayoutEnv, ACCOUNTS};
use sandbox_provider::{Fault, MemoryChange};
use shared::domain::{BatchStatus, Currencies, WithdrawalStatus};
use shared::operator::operations::{self};
use shared::payouts::batcher::BatcherConfig;
use shared::payouts::provider::HttpProvider;
use shared::payouts::settlement::{self, ProviderWord};
use shared::store::{BatchStore, DynamoStore, Store};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn an_accepted_batch_the_provider_no_longer_knows_is_escalated_never_returned_or_resent() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("lost", "EUR", "15.00", 2, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    assert_eq!(batch.status, BatchStatus::Accepted);

    // The provider loses the batch (no callbacks came): the stale check escalates, audited.
    let forgetful = Arc::new(amnesiac().await);
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    let run_with = |provider: Arc<HttpProvider>| {
        let batcher = p.batcher_with(provider, stale.clone());
        async move {
            batcher
                .run(std::time::Instant::now() + Duration::from_secs(60))
                .await
                .unwrap()
        }
    };
    let run = run_with(forgetful.clone()).await;
    assert_eq!(run.currencies["EUR"].escalated, 1);
    let flagged = p.env.store.batch(batch.id).await.unwrap().unwrap();
    assert_eq!(flagged.status, BatchStatus::NeedsOperator);
    let note = flagged.history.last().unwrap();
    assert_eq!(
        (note.from.as_str(), note.to.as_str()),
        ("ACCEPTED", "NEEDS_OPERATOR")
    );
    assert!(note.reason.contains("404"), "{note:?}");

    // A 404 contradicting an acceptance returns nothing (the provider may well have paid)…
    let why = reject_refused(&p, forgetful.as_ref(), &seeded[0]).await;
    assert!(why.contains("contradicts"), "{why}");
    // …and a retry puts it back to ACCEPTED, to be looked up again, never sent again.
    operations::retry_batch(&*p.env.store, batch.id)
        .await
        .unwrap();
    assert_eq!(
        p.env.store.batch(batch.id).await.unwrap().unwrap().status,
        BatchStatus::Accepted
    );
    assert_eq!(
        run_with(forgetful.clone()).await.currencies["EUR"].escalated,
        1
    );
    assert_eq!(p.sandbox.submit_calls(), 1, "never re-sent");

    // The way out: the provider's answer, applied even while the batch waits for an operator.
    let run = run_with(Arc::new(p.provider())).await;
    assert_eq!(run.currencies["EUR"].resolved_from_status, 2);
    assert_eq!(
        p.env.store.batch(batch.id).await.unwrap().unwrap().status,
        BatchStatus::Completed
    );
    let BalanceView {
        available,
        locked,
        paid_out,
        ..
    } = p.env.balance("lost-0", "EUR").await;
    assert_eq!(
        (available.as_str(), locked.as_str(), paid_out.as_str()),
        ("120.00", "0.00", "30.00")
    );
    p.env.assert_conserved().await;
}

/// The review's interleaving (issue "What the provider once said is never forgotten"): a send
/// times out after the provider recorded it, the batch is flagged, an hour later the stale
/// check finds it (items pending), then the provider loses it. Its 404 now contradicts what it
/// said: no operator reject returns the funds, no retry re-sends it. Before the fix the found
/// answer was dropped, the reject returned both members' funds while the provider still held
/// their payouts, and a retry re-sent the batch after its key was forgotten.
#[tokio::test]
async fn a_flagged_batch_the_provider_once_found_is_never_returned_or_resent_on_a_later_404() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("found", "USD", "12.00", 2, ACCOUNTS[0]).await;
    p.sandbox.change_memory(MemoryChange {
        pending_next_batches: Some(1),
        ..MemoryChange::default()
    });
    let batch = flagged_recorded(&p, &seeded, Fault::TimeoutAfterRecord).await;
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    p.run(stale.clone()).await;
    provider_forgets(&p, batch);
    for w in &seeded {
        let why = reject_refused(&p, &p.provider(), w).await;
        assert!(why.contains("contradicts"), "{why}");
    }
    // Because the found answer was kept, audited once.
    let found = p.env.store.batch(batch).await.unwrap().unwrap();
    assert!(found.provider_has_it(), "the found answer is kept");
    assert_eq!(found.status, BatchStatus::NeedsOperator);
    assert!(
        found
            .history
            .iter()
            .any(|n| n.reason.contains("found at the provider")),
        "{:?}",
        found.history
    );

    operations::retry_batch(&*p.env.store, batch).await.unwrap();
    assert_eq!(
        p.env.store.batch(batch).await.unwrap().unwrap().status,
        BatchStatus::Accepted,
        "looked up again, never sent"
    );
    let run = p.run(stale).await;
    assert_eq!(
        run.currencies["USD"].escalated, 1,
        "the 404 goes to a person"
    );
    assert_eq!(p.sandbox.submit_calls(), 1, "never re-sent");
    assert_eq!(p.sandbox.expired_keys(), 0);
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }
    let BalanceView {
        available, locked, ..
    } = p.env.balance("found-0", "USD").await;
    assert_eq!((available.as_str(), locked.as_str()), ("96.00", "24.00"));
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn items_that_stay_pending_past_the_limit_are_escalated_and_not_rejectable() {
    let p = PayoutEnv::new(|c| {
        c.pending_accounts.insert(ACCOUNTS[2].to_string());
    })
    .await;
    let seeded = p.seed("stuck", "USD", "3.00", 2, ACCOUNTS[2]).await;
    p.run(PayoutEnv::config()).await;
    let config = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    // Within the limit: counted, left alone.
    let quiet = p.run(config.clone()).await;
    assert_eq!(quiet.currencies["USD"].stale_unknown, 1);
    assert_eq!(quiet.currencies["USD"].escalated, 0);
    // Past it: handed to an operator, who may not reject what the provider still holds.
    let run = p
        .run(BatcherConfig {
            escalate_after: Duration::ZERO,
            ..config
        })
        .await;
    assert_eq!(run.currencies["USD"].escalated, 1);
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    assert_eq!(batch.status, BatchStatus::NeedsOperator);
    let why = reject_refused(&p, &p.provider(), &seeded[0]).await;
    assert!(why.contains("Pending"), "{why}");
    // The batch stays reported every run until the provider answers.
    assert_eq!(
        p.run(PayoutEnv::config()).await.currencies["USD"].flagged,
        1
    );
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_batch_with_a_final_member_is_never_resent_even_on_a_404() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("final", "USD", "8.00", 2, ACCOUNTS[0]).await;
    p.sandbox.inject(&[Fault::ErrorBeforeRecord]);
    p.run(PayoutEnv::config()).await;
    // A callback for one member reached us (the provider has the batch, whatever its status
    // endpoint says).
    let member = p.reload(&seeded[0]).await;
    let paid = ProviderWord::Paid {
        provider_reference: Some("po_1".into()),
    };
    settlement::apply(p.env.store.as_ref(), &member, &paid, "webhook", None)
        .await
        .unwrap();

    let run = p.run(PayoutEnv::config()).await;
    assert_eq!(run.currencies["USD"].escalated, 1);
    assert_eq!(p.sandbox.submit_calls(), 1, "not sent again");
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    assert_eq!(batch.status, BatchStatus::NeedsOperator);
    assert!(batch.last_error.unwrap().contains("already SETTLED"));
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn status_answers_with_another_amount_are_conflicts_never_settled() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("amt", "USD", "12.00", 2, ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let tampered = Arc::new(MisreportedAmounts(p.provider()));
    let run = p
        .batcher_with(
            tampered,
            BatcherConfig {
                stale_after: Duration::ZERO,
                ..PayoutEnv::config()
            },
        )
        .run(std::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(run.currencies["USD"].conflicts, 2);
    assert_eq!(run.currencies["USD"].resolved_from_status, 0);
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }
    // The honest answer settles them.
    let run = p
        .run(BatcherConfig {
            stale_after: Duration::ZERO,
            ..PayoutEnv::config()
        })
        .await;
    assert_eq!(run.currencies["USD"].resolved_from_status, 2);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn one_unreadable_batch_does_not_stop_the_other_currencies() {
    let p = PayoutEnv::new(|_| {}).await;
    // A GBP batch left open by a deployment that had GBP configured.
    let with_gbp =
        Currencies::parse_config(&format!("{},GBP:2:1:1000", Currencies::DEFAULT_CONFIG))
            .expect("currencies");
    let wide = DynamoStore::new(
        p.env.store.client().clone(),
        p.env.store.table_name(),
        with_gbp.clone(),
    );
    let gbp = with_gbp.get("GBP").unwrap().clone();
    let orphan = shared::domain::Batch::claiming(gbp, "dead-run", 0);
    let w = shared::domain::Withdrawal::new(
        shared::domain::UserId::parse("gbp-user").unwrap(),
        orphan.currency.clone(),
        shared::domain::Amount::parse("5.00", &orphan.currency).unwrap(),
        // Recorded with its account inline (as before beneficiaries): claimed here directly.
        shared::domain::Destination::Account(
            shared::domain::BankAccount::parse(ACCOUNTS[0]).unwrap(),
        ),
        chrono::Utc::now(),
    );
    wide.credit(&integration_tests::credit_record(
        &w.currency,
        w.user_id.as_str(),
        "5.00",
        "gbp-credit",
    ))
    .await
    .unwrap();
    wide.request_withdrawal(&w, None, 10).await.unwrap();
    wide.claim(&orphan, "dead-run", &[w], true).await.unwrap();

    let seeded = p.seed("iso", "USD", "2.00", 3, ACCOUNTS[0]).await;
    let run = p.run(PayoutEnv::config()).await;
    assert_eq!(run.errors.len(), 1, "{:?}", run.errors);
    assert!(run.errors[0].error.contains("GBP"), "{:?}", run.errors);
    assert_eq!(run.currencies["USD"].batches, 1, "USD went on");
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }
}

/// The re-send decides on the batch as it is after the 404, not on the copy its lease handed
/// it: evidence recorded in between (here by the status call itself) means it is not sent
/// again. Before the fix the run's older copy had no provider id and the batch was re-sent.
#[tokio::test]
async fn a_found_recorded_while_a_resend_asks_stops_the_resend() {
    let p = PayoutEnv::new(|_| {}).await;
    let (_, batch) = flagged_unrecorded(&p, "meanwhile", "6.00", 2).await;
    operations::retry_batch(&*p.env.store, batch).await.unwrap();
    let provider = Arc::new(FoundMeanwhile {
        inner: p.provider(),
        store: p.env.store.clone(),
    });
    let run = p
        .batcher_with(provider, PayoutEnv::config())
        .run(std::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(p.sandbox.submit_calls(), 1, "not sent again");
    assert_eq!(run.currencies["USD"].escalated, 1);
    let b = p.env.store.batch(batch).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::NeedsOperator);
    assert!(b
        .last_error
        .unwrap()
        .contains("recorded it as pb_meanwhile"));
    p.env.assert_conserved().await;
}
