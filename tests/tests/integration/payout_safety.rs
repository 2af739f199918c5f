//! Payout safety where operators race and providers forget: every check an operator action
//! relies on is a condition of its write, the provider is asked before money goes out again or
//! comes back, every batch has a way out, and one bad batch never stops the others.

use async_trait::async_trait;
use integration_tests::BalanceView;
use integration_tests::{PayoutEnv, ACCOUNTS};
use sandbox_provider::{Fault, MemoryChange, Sandbox, SandboxConfig};
use shared::domain::{BatchId, BatchStatus, Currencies, WithdrawalStatus};
use shared::operator::operations::{self, OperationError, RejectGround};
use shared::payouts::batcher::BatcherConfig;
use shared::payouts::provider::{
    HttpProvider, PayoutBatchRequest, PayoutProvider, StatusOutcome, SubmitOutcome,
};
use shared::payouts::reconcile::MismatchKind;
use shared::payouts::settlement::{self, Outcome};
use shared::payouts::signature::WebhookSecret;
use shared::store::{BatchStore, DynamoStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// A batch flagged for an operator after an unrecorded attempt (the provider answers 404).
async fn flagged_unrecorded(
    p: &PayoutEnv,
    prefix: &str,
    amount: &str,
    n: usize,
) -> (Vec<shared::domain::Withdrawal>, BatchId) {
    let (seeded, batch) = p.flagged_unrecorded(prefix, amount, n).await;
    let b = p.env.store.batch(batch).await.unwrap().unwrap();
    assert_eq!(b.status, BatchStatus::NeedsOperator);
    (seeded, batch)
}

async fn batch_of(store: &DynamoStore, w: &shared::domain::Withdrawal) -> shared::domain::Batch {
    let w = store.withdrawal(&w.user_id, w.id).await.unwrap().unwrap();
    store.batch(w.batch_id.unwrap()).await.unwrap().unwrap()
}

/// A second sandbox that never saw any of our batches: it answers 404 for all of them, as a
/// provider that lost a batch (or its records) does.
async fn amnesiac() -> HttpProvider {
    let sandbox = Sandbox::new(SandboxConfig::new(
        integration_tests::API_KEY,
        WebhookSecret::new(integration_tests::WEBHOOK_SECRET).unwrap(),
    ));
    let addr = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    HttpProvider::new(
        &format!("http://{addr}"),
        integration_tests::API_KEY,
        Duration::from_millis(500),
    )
    .unwrap()
}

/// A provider whose status answers report another amount for every item.
struct MisreportedAmounts(HttpProvider);

#[async_trait]
impl PayoutProvider for MisreportedAmounts {
    async fn submit_batch(&self, request: &PayoutBatchRequest) -> SubmitOutcome {
        self.0.submit_batch(request).await
    }
    async fn batch_status(&self, batch_id: BatchId) -> StatusOutcome {
        match self.0.batch_status(batch_id).await {
            StatusOutcome::Found(mut state) => {
                for item in &mut state.items {
                    item.amount = format!("{}1", item.amount);
                }
                StatusOutcome::Found(state)
            }
            other => other,
        }
    }
}

/// An operator reject (no quiet period) that must be refused; returns why.
async fn reject_refused<P: PayoutProvider + ?Sized>(
    p: &PayoutEnv,
    provider: &P,
    w: &shared::domain::Withdrawal,
) -> String {
    refused(
        operations::reject_withdrawal(&*p.env.store, provider, w.id, "operator", Duration::ZERO)
            .await,
    )
}

fn refused(r: Result<impl std::fmt::Debug, OperationError>) -> String {
    match r {
        Err(OperationError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

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
        &Outcome::Paid {
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

/// Sends the seeded withdrawals once, the provider recording the batch while its answer is lost
/// (`fault`, after recording; `max_attempts` 1: flagged, no provider id), its items left as
/// `pending` says.
async fn flagged_recorded(
    p: &PayoutEnv,
    seeded: &[shared::domain::Withdrawal],
    fault: Fault,
) -> BatchId {
    p.sandbox.inject(&[fault]);
    p.run(BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let batch = batch_of(&p.env.store, &seeded[0]).await;
    assert_eq!(batch.status, BatchStatus::NeedsOperator);
    assert!(!batch.provider_has_it(), "the acceptance never reached us");
    assert_eq!(p.sandbox.batch_count(), 1, "the provider recorded it");
    batch.id
}

/// The provider forgets the batch and its key: a re-send would now be paid again.
fn provider_forgets(p: &PayoutEnv, batch: BatchId) {
    p.sandbox.change_memory(MemoryChange {
        lose_batches: vec![batch.to_string()],
        idempotency_key_ttl_ms: Some(Some(0)),
        ..MemoryChange::default()
    });
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
    let paid = Outcome::Paid {
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
        shared::domain::BankAccount::parse(ACCOUNTS[0]).unwrap(),
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

/// A provider that answers 404 while, in the meantime, another reader (an operator's look-up,
/// a run holding an older copy of the batch) records the provider's `found` for it.
struct FoundMeanwhile {
    inner: HttpProvider,
    store: Arc<DynamoStore>,
}

#[async_trait]
impl PayoutProvider for FoundMeanwhile {
    async fn submit_batch(&self, request: &PayoutBatchRequest) -> SubmitOutcome {
        self.inner.submit_batch(request).await
    }
    async fn batch_status(&self, batch_id: BatchId) -> StatusOutcome {
        let b = self.store.batch(batch_id).await.unwrap().unwrap();
        self.store
            .record_found(&b, "pb_meanwhile", shared::domain::PROVIDER_STATUS_ACTOR)
            .await
            .unwrap();
        StatusOutcome::NotFound
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
