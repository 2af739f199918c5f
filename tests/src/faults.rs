//! A fault-injection seam: a `Store + BatchStore` that wraps the DynamoDB store and fails a
//! chosen call — before it reaches DynamoDB (nothing written), or after it succeeded (written,
//! but the caller sees an error, as when a run dies right after a write).

use async_trait::async_trait;
use shared::domain::{
    Balance, BankAccount, Batch, BatchId, BatchStatus, Beneficiary, BeneficiaryId, CreditReference,
    Currency, CurrencyCode, IdempotencyKey, Subject, Transition, UserId, Withdrawal, WithdrawalId,
};
use shared::store::Failure;
use shared::store::{
    AttemptResult, BatchStore, ClaimResult, CreditOutcome, CreditRecord, DynamoStore, EventRecord,
    IdempotencyRecord, ListQuery, Page, Store, StoreError, TransitionDetails, Written,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Fail instead of calling DynamoDB.
    Before,
    /// Call DynamoDB, then fail.
    After,
    /// Never return, without calling DynamoDB: the process dies here (the caller's future is
    /// dropped by a timeout).
    HangBefore,
    /// Call DynamoDB, then never return: the process dies right after the write.
    HangAfter,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    /// 1-based: the nth call of `method` fails.
    pub nth: u32,
    pub when: When,
    pub error: StoreError,
}

impl Fault {
    pub fn new(method: &'static str, nth: u32, when: When) -> Self {
        Self {
            method,
            nth,
            when,
            error: StoreError::Failed(Failure::Unavailable("injected fault".into())),
        }
    }
}

pub struct FaultyStore {
    pub inner: Arc<DynamoStore>,
    faults: Mutex<Vec<Fault>>,
    calls: Mutex<HashMap<&'static str, u32>>,
    fired: Mutex<Vec<String>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<DynamoStore>, faults: Vec<Fault>) -> Self {
        Self {
            inner,
            faults: Mutex::new(faults),
            calls: Mutex::default(),
            fired: Mutex::default(),
        }
    }

    /// Which faults fired, e.g. `claim#2:After`.
    pub fn fired(&self) -> Vec<String> {
        self.fired.lock().unwrap().clone()
    }

    fn check(&self, method: &'static str) -> Option<(When, StoreError)> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(method).or_insert(0);
            *c += 1;
            *c
        };
        let faults = self.faults.lock().unwrap();
        let f = faults.iter().find(|f| f.method == method && f.nth == n)?;
        self.fired
            .lock()
            .unwrap()
            .push(format!("{method}#{n}:{:?}", f.when));
        Some((f.when, f.error.clone()))
    }
}

macro_rules! faulty {
    ($self:ident, $name:literal, $call:expr) => {{
        match $self.check($name) {
            Some((When::Before, e)) => Err(e),
            Some((When::After, e)) => {
                let _ = $call.await;
                Err(e)
            }
            Some((When::HangBefore, _)) => futures::future::pending().await,
            Some((When::HangAfter, _)) => {
                let _ = $call.await;
                futures::future::pending().await
            }
            None => $call.await,
        }
    }};
}

#[async_trait]
impl Store for FaultyStore {
    async fn credit(&self, c: &CreditRecord) -> Result<CreditOutcome, StoreError> {
        faulty!(self, "credit", self.inner.credit(c))
    }
    async fn credit_record(&self, r: &CreditReference) -> Result<Option<CreditRecord>, StoreError> {
        faulty!(self, "credit_record", self.inner.credit_record(r))
    }
    async fn request_withdrawal(
        &self,
        w: &Withdrawal,
        i: Option<&IdempotencyRecord>,
        m: u32,
    ) -> Result<(), StoreError> {
        faulty!(
            self,
            "request_withdrawal",
            self.inner.request_withdrawal(w, i, m)
        )
    }
    async fn idempotency_record(
        &self,
        u: &UserId,
        k: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        faulty!(
            self,
            "idempotency_record",
            self.inner.idempotency_record(u, k)
        )
    }
    async fn withdrawal(
        &self,
        u: &UserId,
        id: WithdrawalId,
    ) -> Result<Option<Withdrawal>, StoreError> {
        faulty!(self, "withdrawal", self.inner.withdrawal(u, id))
    }
    async fn list_withdrawals(&self, u: &UserId, q: &ListQuery) -> Result<Page, StoreError> {
        faulty!(self, "list_withdrawals", self.inner.list_withdrawals(u, q))
    }
    async fn transition(
        &self,
        w: &Withdrawal,
        t: Transition,
        d: TransitionDetails,
    ) -> Result<Withdrawal, StoreError> {
        faulty!(self, "transition", self.inner.transition(w, t, d.clone()))
    }
    async fn balances(&self, u: &UserId) -> Result<Vec<Balance>, StoreError> {
        faulty!(self, "balances", self.inner.balances(u))
    }
    async fn event_recorded(&self, id: &str) -> Result<bool, StoreError> {
        faulty!(self, "event_recorded", self.inner.event_recorded(id))
    }
    async fn write_transition(
        &self,
        s: &Subject,
        t: Transition,
        d: TransitionDetails,
    ) -> Result<Written, StoreError> {
        faulty!(
            self,
            "write_transition",
            self.inner.write_transition(s, t, d.clone())
        )
    }
    async fn record_event(&self, e: &EventRecord) -> Result<(), StoreError> {
        faulty!(self, "record_event", self.inner.record_event(e))
    }
    async fn add_beneficiary(
        &self,
        b: &Beneficiary,
        i: &IdempotencyRecord,
        max: u32,
    ) -> Result<(), StoreError> {
        faulty!(
            self,
            "add_beneficiary",
            self.inner.add_beneficiary(b, i, max)
        )
    }
    async fn beneficiary(
        &self,
        u: &UserId,
        id: BeneficiaryId,
    ) -> Result<Option<Beneficiary>, StoreError> {
        faulty!(self, "beneficiary", self.inner.beneficiary(u, id))
    }
    async fn beneficiaries(&self, u: &UserId) -> Result<Vec<Beneficiary>, StoreError> {
        faulty!(self, "beneficiaries", self.inner.beneficiaries(u))
    }
    async fn remove_beneficiary(
        &self,
        u: &UserId,
        id: BeneficiaryId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Beneficiary, StoreError> {
        faulty!(
            self,
            "remove_beneficiary",
            self.inner.remove_beneficiary(u, id, at)
        )
    }
}

#[async_trait]
impl BatchStore for FaultyStore {
    fn claim_chunk(&self) -> usize {
        self.inner.claim_chunk()
    }
    async fn beneficiary_accounts(
        &self,
        keys: &[(UserId, BeneficiaryId)],
    ) -> Result<std::collections::HashMap<(UserId, BeneficiaryId), BankAccount>, StoreError> {
        faulty!(
            self,
            "beneficiary_accounts",
            self.inner.beneficiary_accounts(keys)
        )
    }
    async fn pending(
        &self,
        c: &Currency,
        limit: usize,
        after: Option<WithdrawalId>,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        faulty!(self, "pending", self.inner.pending(c, limit, after))
    }
    async fn claim(
        &self,
        b: &Batch,
        owner: &str,
        chunk: &[Withdrawal],
        create: bool,
    ) -> Result<ClaimResult, StoreError> {
        faulty!(self, "claim", self.inner.claim(b, owner, chunk, create))
    }
    async fn open_batches(&self) -> Result<Vec<Result<Batch, StoreError>>, StoreError> {
        faulty!(self, "open_batches", self.inner.open_batches())
    }
    async fn batch(&self, id: BatchId) -> Result<Option<Batch>, StoreError> {
        faulty!(self, "batch", self.inner.batch(id))
    }
    async fn take_lease(
        &self,
        id: BatchId,
        owner: &str,
        until: i64,
        now: i64,
        states: &[BatchStatus],
    ) -> Result<Option<Batch>, StoreError> {
        faulty!(
            self,
            "take_lease",
            self.inner.take_lease(id, owner, until, now, states)
        )
    }
    async fn close_claiming(&self, id: BatchId, owner: &str) -> Result<(), StoreError> {
        faulty!(self, "close_claiming", self.inner.close_claiming(id, owner))
    }
    async fn record_attempt(
        &self,
        id: BatchId,
        owner: &str,
        r: &AttemptResult,
    ) -> Result<Batch, StoreError> {
        faulty!(
            self,
            "record_attempt",
            self.inner.record_attempt(id, owner, r)
        )
    }
    async fn finish_rejecting(&self, id: BatchId) -> Result<(), StoreError> {
        faulty!(self, "finish_rejecting", self.inner.finish_rejecting(id))
    }
    async fn complete_if_final(&self, id: BatchId) -> Result<bool, StoreError> {
        faulty!(self, "complete_if_final", self.inner.complete_if_final(id))
    }
    async fn final_count(&self, id: BatchId) -> Result<u32, StoreError> {
        faulty!(self, "final_count", self.inner.final_count(id))
    }
    async fn batch_with_final_count(
        &self,
        id: BatchId,
    ) -> Result<Option<(Batch, u32)>, StoreError> {
        faulty!(
            self,
            "batch_with_final_count",
            self.inner.batch_with_final_count(id)
        )
    }
    async fn reset_attempts(&self, b: &Batch, by: &str) -> Result<(), StoreError> {
        faulty!(self, "reset_attempts", self.inner.reset_attempts(b, by))
    }
    async fn mark_checked(&self, id: BatchId) -> Result<(), StoreError> {
        faulty!(self, "mark_checked", self.inner.mark_checked(id))
    }
    async fn record_found(&self, b: &Batch, pb: &str, by: &str) -> Result<bool, StoreError> {
        faulty!(self, "record_found", self.inner.record_found(b, pb, by))
    }
    async fn requeue_reconcile(&self, id: BatchId) -> Result<(), StoreError> {
        faulty!(self, "requeue_reconcile", self.inner.requeue_reconcile(id))
    }
    async fn escalate(
        &self,
        id: BatchId,
        from: BatchStatus,
        owner: Option<&str>,
        by: &str,
        reason: &str,
    ) -> Result<Option<Batch>, StoreError> {
        faulty!(
            self,
            "escalate",
            self.inner.escalate(id, from, owner, by, reason)
        )
    }
    async fn reject_flagged_member(
        &self,
        w: &Withdrawal,
        d: TransitionDetails,
        quiet_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Withdrawal, StoreError> {
        faulty!(
            self,
            "reject_flagged_member",
            self.inner.reject_flagged_member(w, d.clone(), quiet_before)
        )
    }
    async fn unreconciled(
        &self,
        due: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Batch>, StoreError> {
        faulty!(self, "unreconciled", self.inner.unreconciled(due, limit))
    }
    async fn mark_reconciled(
        &self,
        id: BatchId,
        m: u32,
        again_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        faulty!(
            self,
            "mark_reconciled",
            self.inner.mark_reconciled(id, m, again_at)
        )
    }
    async fn members(&self, b: &Batch) -> Result<Vec<Withdrawal>, StoreError> {
        faulty!(self, "members", self.inner.members(b))
    }
    async fn all_batches(&self) -> Result<Vec<Batch>, StoreError> {
        faulty!(self, "all_batches", self.inner.all_batches())
    }
    async fn paused_currencies(
        &self,
        currencies: &[CurrencyCode],
    ) -> Result<std::collections::BTreeSet<CurrencyCode>, StoreError> {
        faulty!(
            self,
            "paused_currencies",
            self.inner.paused_currencies(currencies)
        )
    }
}
