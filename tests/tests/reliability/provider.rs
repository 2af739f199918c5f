//! A provider that forgets: racing operators, expired keys, lost batches, a found batch later lost.

use super::{audit, scale, scenario, Row};
use integration_tests::{PayoutEnv, ACCOUNTS};
use rust_decimal::Decimal;
use sandbox_provider::Fault as ProviderFault;
use shared::domain::WithdrawalStatus;
use shared::payouts::batcher::BatcherConfig;
use std::time::Duration;

#[test]
fn s8_racing_operators() {
    scenario(|rt| vec![rt.block_on(racing_operators())]);
}

#[test]
fn s9_forgetful_provider() {
    scenario(|rt| vec![rt.block_on(forgetful_provider())]);
}

#[test]
fn s10_provider_loses_batches() {
    scenario(|rt| vec![rt.block_on(provider_loses_batches())]);
}

#[test]
fn s11_provider_found_then_lost() {
    scenario(|rt| vec![rt.block_on(provider_found_then_lost())]);
}

/// Withdrawals the provider paid that are REJECTED or CANCELLED here (paid and returned), and
/// their value.
async fn paid_and_returned(p: &PayoutEnv) -> (usize, Decimal) {
    let paid = p.sandbox.payouts_by_reference();
    let mut n = 0;
    let mut value = Decimal::new(0, 2);
    for w in p.env.store.scan_all().await.unwrap().withdrawals {
        if paid.contains_key(&w.id.to_string())
            && matches!(
                w.status,
                WithdrawalStatus::Rejected | WithdrawalStatus::Cancelled
            )
        {
            n += 1;
            value += w.amount.value();
        }
    }
    (n, value)
}

async fn racing_operators() -> Row {
    let p = PayoutEnv::new(|_| {}).await;
    let provider = p.provider();
    let rounds = scale(20);
    let (mut rejects, mut retries, mut both) = (0, 0, 0);
    for round in 0..rounds {
        let (seeded, batch) = p
            .flagged_unrecorded(&format!("race{round}"), "40.00", 2)
            .await;
        let (rejected, retried) = tokio::join!(
            shared::operator::operations::reject_withdrawal(
                &*p.env.store,
                &provider,
                seeded[0].id,
                "operator A",
                Duration::ZERO
            ),
            async {
                // Spread the start so either side can win: the reject asks the provider first.
                tokio::time::sleep(Duration::from_millis((round % 6) as u64 * 8)).await;
                shared::operator::operations::retry_batch(&*p.env.store, batch).await
            },
        );
        rejects += rejected.is_ok() as usize;
        retries += retried.is_ok() as usize;
        both += (rejected.is_ok() && retried.is_ok()) as usize;
        p.run(PayoutEnv::config()).await;
    }
    p.settle_from_status().await;
    let (returned, value) = paid_and_returned(&p).await;
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "8. racing operators (reject vs retry-batch)",
        operations: rounds * 2,
        failures: both + returned + violations,
        money_lost: lost + value,
        note: format!(
            "{rounds} flagged batches, a reject and a retry-batch at once on each: {rejects} rejects and {retries} retries won, {both} both; {returned} withdrawals paid and returned"
        ),
    }
}

async fn forgetful_provider() -> Row {
    // Keys forgotten at once: any re-send of a recorded batch would be paid again.
    let p = PayoutEnv::new(|c| c.memory.idempotency_key_ttl = Some(Duration::ZERO)).await;
    let mut seeded = Vec::new();
    let faults = [
        ProviderFault::ErrorAfterRecord,
        ProviderFault::TimeoutAfterRecord,
        ProviderFault::ErrorBeforeRecord,
        ProviderFault::TimeoutBeforeRecord,
    ];
    for (i, fault) in faults.iter().enumerate() {
        seeded.extend(
            p.seed(&format!("forget{i}"), "USD", "3.00", scale(25), ACCOUNTS[0])
                .await,
        );
        p.sandbox.inject(&[*fault]);
        p.run(PayoutEnv::config()).await;
    }
    // Every open batch resolved first, so the next fault hits the next batch.
    for _ in 0..2 {
        p.run(PayoutEnv::config()).await;
    }
    // A flagged batch the provider recorded, retried by an operator long after.
    let flagged = p
        .seed("forget-op", "USD", "3.00", scale(25), ACCOUNTS[0])
        .await;
    p.sandbox.inject(&[ProviderFault::ErrorAfterRecord]);
    p.run(BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let batch = p.reload(&flagged[0]).await.batch_id.unwrap();
    shared::operator::operations::retry_batch(&*p.env.store, batch)
        .await
        .unwrap();
    seeded.extend(flagged);
    for _ in 0..2 {
        p.run(PayoutEnv::config()).await;
    }
    p.settle_from_status().await;
    let paid = p.sandbox.payouts_by_reference();
    let mut failures = 0;
    for w in &seeded {
        let w = p.reload(w).await;
        if paid.get(&w.id.to_string()) != Some(&1) || w.status != WithdrawalStatus::Settled {
            failures += 1;
        }
    }
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "9. provider forgets its idempotency keys",
        operations: seeded.len(),
        failures: failures + violations,
        money_lost: lost,
        note: format!(
            "keys kept 0 s; timeouts and 5xx before and after recording, and an operator retry of a recorded batch: each paid exactly once and settled, {} re-sends under an expired key",
            p.sandbox.expired_keys()
        ),
    }
}

/// An operator's reject of every seeded withdrawal (no quiet period), then a retry-batch of
/// their batch and a run that asks the provider: how many rejects were refused.
async fn reject_all_then_retry(
    p: &PayoutEnv,
    seeded: &[shared::domain::Withdrawal],
    stale: BatcherConfig,
) -> usize {
    let provider = p.provider();
    let mut refused = 0;
    for w in seeded {
        let r = shared::operator::operations::reject_withdrawal(
            &*p.env.store,
            &provider,
            w.id,
            "lost?",
            Duration::ZERO,
        )
        .await;
        refused += r.is_err() as usize;
    }
    let batch = p.reload(&seeded[0]).await.batch_id.unwrap();
    shared::operator::operations::retry_batch(&*p.env.store, batch)
        .await
        .unwrap();
    p.run(stale).await;
    refused
}

async fn provider_loses_batches() -> Row {
    let p = PayoutEnv::new(|c| c.memory.lose_next_batches = 1).await;
    let seeded = p.seed("lost", "USD", "5.00", scale(50), ACCOUNTS[0]).await;
    p.run(PayoutEnv::config()).await;
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    let escalated = p.run(stale.clone()).await.currencies["USD"].escalated;
    let refused = reject_all_then_retry(&p, &seeded, stale).await;
    let (returned, value) = paid_and_returned(&p).await;
    let still_locked = p
        .env
        .store
        .scan_all()
        .await
        .unwrap()
        .withdrawals
        .iter()
        .filter(|w| w.status == WithdrawalStatus::Submitted)
        .count();
    let resent = p.sandbox.submit_calls() - 1;
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "10. provider loses an accepted batch",
        operations: seeded.len(),
        failures: returned + resent as usize + violations + (escalated != 1) as usize,
        money_lost: lost + value,
        note: format!(
            "paid, then its status answers 404: escalated to an operator ({escalated}), {refused} of {} operator rejects refused, retry-batch looked it up again and sent nothing ({resent} re-sends); {still_locked} stay locked until the provider answers",
            seeded.len()
        ),
    }
}

/// The provider records a batch while its answer is lost (the batch is flagged without its id),
/// a stale check finds it with its items pending, then the provider loses it and pays the items
/// all the same. Its later 404 contradicts the found answer, which was kept: every operator
/// reject is refused and a retry-batch looks it up again, never sends.
async fn provider_found_then_lost() -> Row {
    let p = PayoutEnv::new(|c| {
        c.memory.pending_next_batches = 1;
        c.memory.lose_next_found = 1;
    })
    .await;
    let seeded = p.seed("found", "USD", "5.00", scale(50), ACCOUNTS[0]).await;
    p.sandbox
        .inject(&[sandbox_provider::Fault::TimeoutAfterRecord]);
    p.run(BatcherConfig {
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let stale = BatcherConfig {
        stale_after: Duration::ZERO,
        ..PayoutEnv::config()
    };
    p.run(stale.clone()).await;
    let refused = reject_all_then_retry(&p, &seeded, stale).await;
    let (returned, value) = paid_and_returned(&p).await;
    let paid_there = p.sandbox.payouts_by_reference().len();
    let resent = p.sandbox.submit_calls() - 1;
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    Row {
        scenario: "11. provider finds a flagged batch, then loses it",
        operations: seeded.len(),
        failures: returned + resent as usize + violations + (refused != seeded.len()) as usize,
        money_lost: lost + value,
        note: format!(
            "recorded while its answer was lost, found once by the stale check (items pending), then lost and paid ({paid_there} paid there): {refused} of {} operator rejects refused, {resent} re-sends; they stay locked until the provider answers",
            seeded.len()
        ),
    }
}
