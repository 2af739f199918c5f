//! Reconciliation: our final states against the provider's status endpoint, batch by batch.
//! Catches what no single callback can show: a payout the provider made that we returned, a
//! failure there that we settled, a batch or item it does not know, an amount that differs.

use crate::domain::{Batch, Withdrawal, WithdrawalStatus};
use crate::payouts::provider::{BatchState, ItemStatus, PayoutProvider, StatusOutcome};
use crate::payouts::settlement;
use crate::store::{BatchStore, StoreError};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MismatchKind {
    /// Paid (or returned) there, but REJECTED or CANCELLED here: paid while the funds came back.
    PaidButNotHere,
    /// Failed there, but SETTLED or RETURNED here.
    FailedButSettledHere,
    /// Final here, but the provider does not know the batch or the item.
    UnknownToProvider,
    /// Final here, still pending there.
    PendingThere,
    /// Returned there (the user's money came back to the provider), still SETTLED here: the
    /// user was never credited back.
    ReturnNotApplied,
    /// RETURNED here (funds credited back), paid and not returned there.
    ReturnedOnlyHere,
    /// The provider lists the item more than once: a payout made twice.
    DuplicateAtProvider,
    /// The provider holds another amount or currency.
    AmountDiffers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub batch_id: String,
    pub withdrawal_id: String,
    pub ours: WithdrawalStatus,
    /// What the provider said of the item (`paid`, `failed`, `not found`, …).
    pub theirs: String,
    pub kind: MismatchKind,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: batch {} withdrawal {} is {} here, {} at the provider",
            self.kind, self.batch_id, self.withdrawal_id, self.ours, self.theirs
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The provider could not be asked; nothing can be concluded.
    #[error("provider status unknown: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compares every final member of `batch` with what the provider reports. Members still open
/// here (PENDING, SUBMITTED) are not compared: their answer is still coming.
pub async fn batch<S, P>(
    store: &S,
    provider: &P,
    batch: &Batch,
) -> Result<Vec<Mismatch>, ReconcileError>
where
    S: BatchStore + ?Sized,
    P: PayoutProvider + ?Sized,
{
    let members = store.members(batch).await?;
    let state = match provider.batch_status(batch.id).await {
        StatusOutcome::Found(state) => {
            // The provider's word that it holds the batch, kept like every other (a later 404
            // is then a contradiction, never "never recorded").
            if !batch.provider_has_it() {
                store
                    .record_found(batch, &state.provider_batch_id, "reconcile")
                    .await?;
            }
            Some(state)
        }
        StatusOutcome::NotFound => None,
        StatusOutcome::Ambiguous { error } => return Err(ReconcileError::Provider(error)),
    };
    Ok(members
        .iter()
        .filter(|w| !w.status.is_open())
        .filter_map(|w| compare(batch, w, state.as_ref()))
        .collect())
}

/// One final member against the provider's report of its batch (`None`: never recorded there).
fn compare(batch: &Batch, w: &Withdrawal, state: Option<&BatchState>) -> Option<Mismatch> {
    let mismatch = |kind: MismatchKind, theirs: &str| Mismatch {
        batch_id: batch.id.to_string(),
        withdrawal_id: w.id.to_string(),
        ours: w.status,
        theirs: theirs.to_string(),
        kind,
    };
    let reference = w.id.to_string();
    let listed = state.map_or(0, |s| {
        s.items.iter().filter(|i| i.reference == reference).count()
    });
    if listed > 1 {
        return Some(mismatch(
            MismatchKind::DuplicateAtProvider,
            &format!("listed {listed} times"),
        ));
    }
    let item = state.and_then(|s| {
        s.items
            .iter()
            .find(|i| i.reference == reference)
            .map(|i| (i, s.currency.as_str()))
    });
    use WithdrawalStatus::*;
    let Some((item, currency)) = item else {
        // Never recorded there: right for a rejected or cancelled withdrawal, wrong for one
        // we consider paid.
        return matches!(w.status, Settled | Returned)
            .then(|| mismatch(MismatchKind::UnknownToProvider, "not found"));
    };
    let theirs = format!("{:?}", item.status).to_lowercase();
    if settlement::reported_mismatch(w.amount, &w.currency, Some(&item.amount), Some(currency)) {
        return Some(mismatch(
            MismatchKind::AmountDiffers,
            &format!("{theirs} {} {currency}", item.amount),
        ));
    }
    let kind = match (&item.status, w.status) {
        (ItemStatus::Paid | ItemStatus::Returned, Rejected | Cancelled) => {
            Some(MismatchKind::PaidButNotHere)
        }
        (ItemStatus::Failed, Settled | Returned) => Some(MismatchKind::FailedButSettledHere),
        (ItemStatus::Returned, Settled) => Some(MismatchKind::ReturnNotApplied),
        (ItemStatus::Paid, Returned) => Some(MismatchKind::ReturnedOnlyHere),
        (ItemStatus::Pending, _) => Some(MismatchKind::PendingThere),
        _ => None,
    };
    kind.map(|kind| mismatch(kind, &theirs))
}
