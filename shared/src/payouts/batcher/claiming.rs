//! Claiming: pending withdrawals of one currency into batches, a chunk per transaction.

use crate::domain::{Batch, BatchStatus, Destination, Member, Withdrawal};
use crate::payouts::provider::PayoutProvider;
use crate::store::Refusal;
use crate::store::{Failure, PayoutStore, StoreError};

use super::{Batcher, Run, BATCHES_PER_READ};

impl<S, P> Batcher<S, P>
where
    S: PayoutStore + 'static,
    P: PayoutProvider + ?Sized + 'static,
{
    pub(super) async fn batch_currency(
        &self,
        run: &mut Run,
        currency: &crate::domain::Currency,
    ) -> Result<(), StoreError> {
        // Several batches' worth per index read: a read's cost is mostly per page and per
        // shard, and what a page reads past the last batch it fills would be read again.
        let page = self.config.max_batch_size * BATCHES_PER_READ;
        let mut after = None;
        loop {
            if run.out_of_time(&self.config) {
                return Ok(());
            }
            let candidates = self.store.pending(currency, page, after).await?;
            let Some(last) = candidates.last() else {
                return Ok(());
            };
            after = Some(last.id);
            let more = candidates.len() == page;
            let candidates = self.with_accounts(run, currency, candidates).await?;
            for members in candidates.chunks(self.config.max_batch_size) {
                if run.out_of_time(&self.config) {
                    return Ok(());
                }
                self.claim_batch(run, currency, members).await?;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// The page's withdrawals to beneficiaries with each beneficiary's account, from one bulk
    /// read of the page's distinct beneficiaries (100 a read), so the claim can copy it onto the
    /// withdrawal. A beneficiary is never deleted (a removal only marks it), so one not found
    /// is a damaged table: that withdrawal stays pending, unpaid, logged for an operator (its
    /// owner can still cancel it, an operator reject it).
    async fn with_accounts(
        &self,
        run: &mut Run,
        currency: &crate::domain::Currency,
        candidates: Vec<Withdrawal>,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        let keys: Vec<_> = candidates
            .iter()
            .filter_map(|w| w.destination.unresolved().map(|id| (w.user_id.clone(), id)))
            .collect();
        if keys.is_empty() {
            return Ok(candidates);
        }
        let accounts = self.store.beneficiary_accounts(&keys).await?;
        let mut out = Vec::with_capacity(candidates.len());
        for mut w in candidates {
            if let Some(id) = w.destination.unresolved() {
                let Some(account) = accounts.get(&(w.user_id.clone(), id)) else {
                    // Counted, and a run error too: `BatchErrors` is alarmed, and these funds
                    // stay locked until an operator or the user acts.
                    let ccy = currency.code().to_string();
                    run.counts(&ccy).unresolved += 1;
                    run.failed(
                        Some(&ccy),
                        None,
                        &StoreError::Failed(Failure::Corrupt(format!(
                            "withdrawal {} names beneficiary {id}, not found or unreadable: not claimed",
                            w.id
                        ))),
                    );
                    continue;
                };
                w.destination = Destination::Beneficiary {
                    id,
                    account: Some(account.clone()),
                };
            }
            out.push(w);
        }
        Ok(out)
    }

    /// Claims `candidates` into a new batch, chunk by chunk, and sends what it claimed.
    pub(super) async fn claim_batch(
        &self,
        run: &mut Run,
        currency: &crate::domain::Currency,
        candidates: &[crate::domain::Withdrawal],
    ) -> Result<(), StoreError> {
        let ccy = currency.code().to_string();
        let mut batch = Batch::claiming(currency.clone(), &run.owner, self.lease_until_ms(run));
        let mut members = Vec::new();
        for chunk in candidates.chunks(self.store.claim_chunk()) {
            if run.out_of_time(&self.config) {
                run.summary.stopped_early = true;
                break;
            }
            let create = members.is_empty();
            let result = match self.store.claim(&batch, &run.owner, chunk, create).await {
                Ok(r) => r,
                Err(StoreError::Refused(Refusal::LeaseLost)) => {
                    tracing::warn!(batch_id = %batch.id, "lost the claiming lease");
                    break;
                }
                Err(e) => return Err(e),
            };
            run.counts(&ccy).skipped += result.lost.len() as u32;
            run.counts(&ccy).claimed += result.claimed.len() as u32;
            members.extend(result.claimed);
        }
        if members.is_empty() {
            return Ok(());
        }
        for w in &members {
            batch.members.insert(w.id, Member::of(w));
            batch.total += w.amount.value();
        }
        match self.store.close_claiming(batch.id, &run.owner).await {
            Ok(()) => {
                batch.status = BatchStatus::Open;
                if let Err(e) = self.send(run, &batch, &members).await {
                    // The batch is recorded OPEN: the next run asks the provider about it.
                    // This currency's other pending withdrawals go on.
                    run.failed(Some(&ccy), Some(batch.id), &e);
                }
                Ok(())
            }
            // Taken over after our lease ran out: the other run sends it.
            Err(StoreError::Refused(Refusal::LeaseLost)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
