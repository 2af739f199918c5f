//! The model: plain Rust, in memory, of what must be true whatever the interleaving. It learns
//! from what each operation was answered (credits, 201s, idempotency keys) and checks the table
//! and the provider's ledger after every step, and once more at quiescence.

use rust_decimal::Decimal;
use sandbox_provider::LedgerEntry;
use shared::domain::{WithdrawalStatus, WithdrawalStatus as S};
use shared::store::ScanReport;
use std::collections::{BTreeMap, BTreeSet};

/// What an operation was answered, as the model needs it.
#[derive(Clone, Debug)]
pub enum Fact {
    /// A credit under `reference`: `Some(true)` recorded or replayed (funds in, once),
    /// `Some(false)` refused (another credit under that reference), `None` no answer.
    Credit {
        reference: String,
        user: String,
        ccy: String,
        amount: Decimal,
        landed: Option<bool>,
    },
    /// A create request and its answer (`status` 0: no answer, the client gave up).
    Request {
        user: String,
        key: Option<String>,
        /// The normalised request ("USD|12.50|account"), for replay expectations.
        body: String,
        ccy: String,
        amount: Decimal,
        status: u16,
        id: Option<String>,
        replayed: bool,
    },
    /// A withdrawal the user was shown (get or list), with its status.
    Seen {
        user: String,
        id: String,
        status: String,
    },
    /// A withdrawal an operator rejected.
    OperatorRejected { id: String },
    /// Something the operation itself found wrong.
    Violation(String),
}

#[derive(Default, Debug)]
struct KeyState {
    body: String,
    ids: BTreeSet<String>,
    /// Bodies sent without an answer: each may or may not have been recorded.
    unanswered: BTreeSet<String>,
}

#[derive(Default)]
pub struct Model {
    /// reference → (user, ccy, amount, certainly landed)
    credits: BTreeMap<String, (String, String, Decimal, bool)>,
    keys: BTreeMap<(String, String), KeyState>,
    /// Every withdrawal answered 201: id → (user, ccy, amount).
    accepted: BTreeMap<String, (String, String, Decimal)>,
    /// Last status seen in the table, and batch.
    last: BTreeMap<String, (WithdrawalStatus, Option<String>)>,
    pub operator_rejected: BTreeSet<String>,
    /// Paid by the provider, rejected here, because the provider answered 404 for a batch it
    /// had recorded and lost before its acceptance reached us: outside its contract (404 =
    /// never recorded), not a defect here; counted and excluded from the money equality.
    pub contract_broken: BTreeSet<String>,
}

/// Whether `to` can follow `from` after any number of allowed transitions.
fn reachable(from: WithdrawalStatus, to: WithdrawalStatus) -> bool {
    if from == to {
        return true;
    }
    match from {
        S::Review => true,
        S::Pending => to != S::Review,
        S::Submitted => matches!(to, S::Settled | S::Rejected | S::Returned),
        S::Settled => to == S::Returned,
        S::Rejected | S::Cancelled | S::Returned => false,
    }
}

impl Model {
    /// The key a replay or reuse of the `pick`th earlier key of `user` refers to.
    pub fn earlier_key(&self, user: &str, pick: u64) -> Option<(String, String)> {
        let keys: Vec<_> = self
            .keys
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|((_, k), st)| (k.clone(), st.body.clone()))
            .collect();
        (!keys.is_empty()).then(|| keys[(pick % keys.len() as u64) as usize].clone())
    }

    /// Whether `key` of `user` has a record: `Some(true)` once a request under it was answered
    /// 201, `None` while one sent under it went unanswered (it may have landed), else
    /// `Some(false)`.
    pub fn key_recorded(&self, user: &str, key: &str) -> Option<bool> {
        match self.keys.get(&(user.to_string(), key.to_string())) {
            Some(k) if !k.ids.is_empty() => Some(true),
            Some(k) if !k.unanswered.is_empty() => None,
            _ => Some(false),
        }
    }

    /// A credit reference chosen by `pick`, with its credit.
    pub fn earlier_credit(&self, pick: u64) -> Option<(String, (String, String, Decimal))> {
        // Only credits known to have landed: an unanswered one may be free to take.
        let refs: Vec<_> = self.credits.iter().filter(|(_, c)| c.3).collect();
        (!refs.is_empty()).then(|| {
            let (r, (u, c, a, _)) = refs[(pick % refs.len() as u64) as usize];
            (r.clone(), (u.clone(), c.clone(), *a))
        })
    }

    /// Withdrawals of `user` answered 201, oldest first.
    pub fn accepted_of(&self, user: &str) -> Vec<String> {
        self.accepted
            .iter()
            .filter(|(_, (u, _, _))| u == user)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn keys_used(&self) -> Vec<(String, String)> {
        self.keys.keys().cloned().collect()
    }

    pub fn key_ids(&self, user: &str, key: &str) -> BTreeSet<String> {
        self.keys
            .get(&(user.to_string(), key.to_string()))
            .map(|k| k.ids.clone())
            .unwrap_or_default()
    }

    /// Learns from one answer; returns what it contradicts at once.
    pub fn learn(&mut self, fact: &Fact) -> Vec<String> {
        let mut bad = Vec::new();
        match fact {
            Fact::Credit {
                reference,
                user,
                ccy,
                amount,
                landed,
            } => match landed {
                Some(false) => {}
                Some(true) | None => {
                    let e = self.credits.entry(reference.clone()).or_insert((
                        user.clone(),
                        ccy.clone(),
                        *amount,
                        false,
                    ));
                    if (&e.0, &e.1, e.2) != (user, ccy, *amount) {
                        bad.push(format!(
                            "credit {reference} answered as recorded for another credit ({user} {ccy} {amount} vs {e:?})"
                        ));
                    }
                    e.3 |= landed.is_some();
                }
            },
            Fact::Request {
                user,
                key,
                body,
                ccy,
                amount,
                status,
                id,
                replayed,
            } => {
                let Some(key) = key else {
                    if *status == 201 {
                        bad.push(format!("{user}: a request without a key was answered 201"));
                    }
                    return bad;
                };
                let k = self
                    .keys
                    .entry((user.clone(), key.clone()))
                    .or_insert_with(|| KeyState {
                        body: body.clone(),
                        ..KeyState::default()
                    });
                match (status, id) {
                    (201, Some(id)) => {
                        if k.ids.is_empty() {
                            if *replayed && !k.unanswered.contains(body) {
                                bad.push(format!(
                                    "{user} key {key}: a replay of a request never sent under it"
                                ));
                            }
                            k.body = body.clone();
                        } else {
                            if !k.ids.contains(id) {
                                bad.push(format!(
                                    "{user} key {key}: a second withdrawal {id} (first {:?})",
                                    k.ids
                                ));
                            }
                            if !replayed {
                                bad.push(format!(
                                    "{user} key {key}: answered 201 again without Idempotent-Replayed"
                                ));
                            }
                            if &k.body != body {
                                bad.push(format!("{user} key {key}: another body answered 201"));
                            }
                        }
                        k.ids.insert(id.clone());
                        let prev = self
                            .accepted
                            .insert(id.clone(), (user.clone(), ccy.clone(), *amount));
                        if prev.is_some_and(|p| p != (user.clone(), ccy.clone(), *amount)) {
                            bad.push(format!("{id}: answered for another request"));
                        }
                    }
                    (0 | 500..=599, _) => {
                        k.unanswered.insert(body.clone());
                    }
                    (422, _) => {
                        let recorded_other = (!k.ids.is_empty() && &k.body != body)
                            || k.unanswered.iter().any(|b| b != body);
                        if !recorded_other {
                            bad.push(format!(
                                "{user} key {key}: refused as reused, but no other request is recorded under it"
                            ));
                        }
                    }
                    _ => {
                        if !k.ids.is_empty() {
                            bad.push(format!(
                                "{user} key {key}: a request under a recorded key answered {status}, not {}",
                                if &k.body == body { "its replay" } else { "422" }
                            ));
                        }
                    }
                }
            }
            Fact::Seen { user, id, status } => {
                if let Some((u, _, _)) = self.accepted.get(id) {
                    if u != user {
                        bad.push(format!("{user} was shown {id} of {u}"));
                    }
                }
                if WithdrawalStatus::parse(status).is_none() {
                    bad.push(format!("{id}: unknown status {status}"));
                }
            }
            Fact::OperatorRejected { id } => {
                self.operator_rejected.insert(id.clone());
            }
            Fact::Violation(v) => bad.push(v.clone()),
        }
        bad
    }

    /// Everything that must hold at any moment, over a full read of the table and the
    /// provider's ledger.
    pub fn check(
        &mut self,
        report: &ScanReport,
        ledger: &[LedgerEntry],
        lost_at_provider: &BTreeSet<String>,
    ) -> Vec<String> {
        let never_accepted_lost: BTreeSet<String> = report
            .batches
            .iter()
            .filter(|b| {
                b.provider_batch_id.is_none() && lost_at_provider.contains(&b.id.to_string())
            })
            .map(|b| b.id.to_string())
            .collect();
        let mut bad = shared::operator::check::violations(report);
        // Credits: every record is one we asked for; every certain one is there.
        let mut recorded = BTreeSet::new();
        for c in &report.credits {
            let r = c.reference.to_string();
            match self.credits.get(&r) {
                None => bad.push(format!("credit record {r} nobody made")),
                Some((u, ccy, a, _))
                    if (u.as_str(), ccy.as_str(), *a)
                        != (
                            c.user_id.as_str(),
                            c.currency.code().as_str(),
                            c.amount.value(),
                        ) =>
                {
                    bad.push(format!("credit record {r} differs from the credit made"))
                }
                Some(_) => {}
            }
            recorded.insert(r);
        }
        for (r, (_, _, _, certain)) in &self.credits {
            if *certain && !recorded.contains(r) {
                bad.push(format!("credit {r} answered as recorded is missing"));
            }
        }
        // The provider pays each withdrawal at most once.
        let mut paid: BTreeMap<&str, (u32, bool)> = BTreeMap::new();
        for e in ledger {
            let p = paid.entry(e.reference.as_str()).or_insert((0, false));
            p.0 += 1;
            p.1 |= e.returned;
        }
        for (r, (n, _)) in &paid {
            if *n > 1 {
                bad.push(format!("{r}: paid {n} times by the provider"));
            }
        }
        let mut settled: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        let mut present = BTreeSet::new();
        for w in &report.withdrawals {
            let id = w.id.to_string();
            present.insert(id.clone());
            let batch = w.batch_id.map(|b| b.to_string());
            if let Some((prev, prev_batch)) = self.last.get(&id) {
                if !reachable(*prev, w.status) {
                    bad.push(format!("{id}: went from {prev} to {}", w.status));
                }
                if prev_batch.is_some() && prev_batch != &batch {
                    bad.push(format!(
                        "{id}: moved from batch {prev_batch:?} to {batch:?}"
                    ));
                }
            }
            self.last.insert(id.clone(), (w.status, batch));
            let at_provider = paid.get(id.as_str());
            match (w.status, at_provider) {
                (S::Rejected, Some(_))
                    if w.batch_id
                        .is_some_and(|b| never_accepted_lost.contains(&b.to_string())) =>
                {
                    self.contract_broken.insert(id.clone());
                }
                (S::Rejected | S::Cancelled | S::Pending | S::Review, Some(_)) => {
                    bad.push(format!("{id}: paid by the provider but {} here", w.status))
                }
                (S::Settled | S::Returned, None) => bad.push(format!(
                    "{id}: {} here, never paid by the provider",
                    w.status
                )),
                (S::Returned, Some((_, false))) => {
                    bad.push(format!("{id}: RETURNED here, not returned by the provider"))
                }
                _ => {}
            }
            if w.status == S::Settled {
                *settled
                    .entry((w.user_id.to_string(), w.currency.code().to_string()))
                    .or_default() += w.amount.value();
            }
            if let Some((u, c, a)) = self.accepted.get(&id) {
                if (u.as_str(), c.as_str(), *a)
                    != (
                        w.user_id.as_str(),
                        w.currency.code().as_str(),
                        w.amount.value(),
                    )
                {
                    bad.push(format!("{id}: stored differently from its request"));
                }
            }
        }
        for id in self.accepted.keys() {
            if !present.contains(id) {
                bad.push(format!("{id}: answered 201, missing from the table"));
            }
        }
        for (user, b) in &report.balances {
            let s = settled
                .get(&(user.to_string(), b.currency.code().to_string()))
                .copied()
                .unwrap_or_default();
            if b.paid_out != s {
                bad.push(format!(
                    "{user} {}: paid_out {} != settled withdrawals {s}",
                    b.currency.code(),
                    b.paid_out
                ));
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        assert!(reachable(S::Pending, S::Returned));
        assert!(reachable(S::Review, S::Settled));
        assert!(!reachable(S::Pending, S::Review));
        assert!(reachable(S::Submitted, S::Rejected));
        assert!(!reachable(S::Submitted, S::Cancelled));
        assert!(!reachable(S::Settled, S::Rejected));
        assert!(!reachable(S::Rejected, S::Settled));
        assert!(reachable(S::Settled, S::Returned));
    }
}
