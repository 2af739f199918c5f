use super::{
    Amount, BatchId, Currency, Subject, UserId, Withdrawal, WithdrawalId, WithdrawalStatus,
};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::fmt;

/// Life of a provider batch.
///
/// `Claiming` (a run is claiming members under a lease) → `Open` (membership fixed, not yet
/// accepted by the provider; re-sent with the same idempotency key after an ambiguous failure)
/// → `Accepted` (the provider will call back) → `Completed` (every member final).
/// A definite rejection goes `Open → Rejecting → Rejected` (members rejected one by one, so a crash
/// half way resumes). Too many ambiguous attempts → `NeedsOperator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    Claiming,
    Open,
    Accepted,
    Rejecting,
    Rejected,
    NeedsOperator,
    Completed,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 7] = [
        Self::Claiming,
        Self::Open,
        Self::Accepted,
        Self::Rejecting,
        Self::Rejected,
        Self::NeedsOperator,
        Self::Completed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Claiming => "CLAIMING",
            Self::Open => "OPEN",
            Self::Accepted => "ACCEPTED",
            Self::Rejecting => "REJECTING",
            Self::Rejected => "REJECTED",
            Self::NeedsOperator => "NEEDS_OPERATOR",
            Self::Completed => "COMPLETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Terminal batches leave the open-batch index.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Rejected | Self::Completed)
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider batch as stored: the record of which withdrawals belong to it, even after a crash.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub id: BatchId,
    pub currency: Currency,
    pub status: BatchStatus,
    /// Member withdrawal → its entry (the webhook finds a withdrawal's key, and what settling
    /// it writes, through this).
    pub members: BTreeMap<WithdrawalId, Member>,
    pub total: Decimal,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub provider_batch_id: Option<String>,
    pub reason: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    /// When a send's outcome was last recorded: a provider may still be working through a
    /// queued request for a while after, so its 404 is not yet definite.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When its status was last asked of the provider (stale and flagged batches are asked
    /// once per `BATCH_STALE_AFTER_SECS`, not every run).
    pub checked_at: Option<DateTime<Utc>>,
    /// When reconciliation first compared it with the provider (it is compared once more after
    /// the return window).
    pub reconciled_at: Option<DateTime<Utc>>,
    /// An operator rejected one of its members: the batch must never be sent again (the same
    /// request would pay a withdrawal whose funds were returned).
    pub operator_rejected: bool,
    /// Escalations and operator actions, oldest first, each written with the change it records.
    pub history: Vec<BatchNote>,
}

/// A member's entry on its batch: whose withdrawal it is and, for members claimed since entries
/// carried them, the terms a settlement writes (so it needs no read of the withdrawal).
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub user_id: UserId,
    /// `None` on entries written before the terms were kept: such a member is read first.
    pub terms: Option<MemberTerms>,
}

/// What a member's entry records of its withdrawal at claim time; none of it changes after.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberTerms {
    pub amount: Amount,
    /// Its fee (zero on entries written before fees: no withdrawal had one then).
    pub fee: rust_decimal::Decimal,
    pub fee_on_return: super::FeeOnReturn,
    pub limit_day: Option<NaiveDate>,
}

impl Member {
    /// The entry of a withdrawal being claimed.
    pub fn of(w: &Withdrawal) -> Self {
        Self {
            user_id: w.user_id.clone(),
            terms: Some(MemberTerms {
                amount: w.amount,
                fee: w.fee,
                fee_on_return: w.fee_on_return,
                limit_day: w.limit_day,
            }),
        }
    }
}

/// One line of a batch's history.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BatchNote {
    pub at: String,
    pub from: String,
    pub to: String,
    /// `batcher:<run>`, `operator`, …
    pub by: String,
    pub reason: String,
}

impl Batch {
    /// A new batch as a run holds it while claiming its members under a lease.
    pub fn claiming(currency: Currency, owner: &str, lease_until_ms: i64) -> Self {
        let now = Utc::now();
        Self {
            id: BatchId::new(),
            currency,
            status: BatchStatus::Claiming,
            members: BTreeMap::new(),
            total: Decimal::ZERO,
            attempts: 0,
            last_error: None,
            provider_batch_id: None,
            reason: None,
            lease_owner: Some(owner.to_string()),
            lease_until_ms,
            created_at: now,
            updated_at: now,
            accepted_at: None,
            last_attempt_at: None,
            checked_at: None,
            reconciled_at: None,
            operator_rejected: false,
            history: Vec::new(),
        }
    }

    /// Member `id` as a state change expects to find it (`status`), built from its entry alone;
    /// `None` when it is not a member, or its entry predates the terms.
    pub fn subject(&self, id: WithdrawalId, status: WithdrawalStatus) -> Option<Subject> {
        let member = self.members.get(&id)?;
        let terms = member.terms.as_ref()?;
        Some(Subject {
            id,
            user_id: member.user_id.clone(),
            currency: self.currency.clone(),
            amount: terms.amount,
            fee: terms.fee,
            fee_on_return: terms.fee_on_return,
            status,
            batch_id: Some(self.id),
            limit_day: terms.limit_day,
        })
    }

    pub fn member_count(&self) -> u32 {
        self.members.len() as u32
    }

    /// Whether the provider has shown, in its own words, that it holds this batch: it accepted
    /// a send, or a status answer found it (each records `provider_batch_id`, never removed).
    /// From then on a 404 contradicts the provider's own word: never a re-send, never a return
    /// of funds on it. The members' side of the same rule is [`provider_evidence`].
    pub fn provider_has_it(&self) -> bool {
        self.provider_batch_id.is_some()
    }

    pub fn lease_alive(&self, now_ms: i64) -> bool {
        self.lease_until_ms > now_ms
    }
}

/// Who speaks for the provider in an audit entry: a callback (`webhook`), a batcher run, or a
/// status answer an operator command read (`provider-status`) — anyone but an operator acting on
/// a 404. An operator's "never recorded" reject is the one entry that is no evidence.
pub const OPERATOR_ACTOR: &str = "operator";
/// The actor of a change applied from the provider's status answer read by an operator command:
/// the provider's word, not the operator's.
pub const PROVIDER_STATUS_ACTOR: &str = "provider-status";

/// Why a 404 from the provider cannot mean "never recorded" for `batch`: the one rule
/// (docs/provider-api.md, "Evidence is monotonic"). Evidence only accumulates: the batch's
/// recorded provider id (an acceptance, or a status answer that found it), or the provider's
/// answer for any member (a callback, a status answer), whoever asked for it.
pub fn provider_evidence(batch: &Batch, members: &[Withdrawal]) -> Option<String> {
    if let Some(id) = &batch.provider_batch_id {
        return Some(format!("the provider recorded it as {id}"));
    }
    members.iter().find(|m| m.provider_answered()).map(|m| {
        format!(
            "the provider answered for member {}: it is already {}",
            m.id, m.status
        )
    })
}
