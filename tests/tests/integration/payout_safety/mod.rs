//! Payout safety where operators race and providers forget: every check an operator action
//! relies on is a condition of its write, the provider is asked before money goes out again or
//! comes back, every batch has a way out, and one bad batch never stops the others.

mod evidence;
mod operator_reject;
mod reconcile;

use async_trait::async_trait;
use integration_tests::PayoutEnv;
use sandbox_provider::{Fault, MemoryChange, Sandbox, SandboxConfig};
use shared::domain::{BatchId, BatchStatus};
use shared::operator::operations::{self, OperationError};
use shared::payouts::batcher::BatcherConfig;
use shared::payouts::provider::{
    HttpProvider, PayoutBatchRequest, PayoutProvider, StatusOutcome, SubmitOutcome,
};
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
