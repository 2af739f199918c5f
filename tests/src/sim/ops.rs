//! The operations the simulator can run, and the schedule: a list of steps generated from the
//! seed alone, before anything runs. Targets that only exist at run time (a withdrawal to
//! cancel, a callback to deliver, a flagged batch) are chosen by a number drawn here and taken
//! modulo what exists when the step runs, so the schedule itself never depends on outcomes.

use super::rng::Rng;
use crate::faults::When;
use sandbox_provider::Fault as ProviderFault;

pub const USERS: usize = 4;
pub const CCYS: [&str; 3] = ["USD", "EUR", "JPY"];
/// The sandbox pays accounts 0, 3 and 4; fails account 1; pays then returns account 2.
pub const FAILING_ACCOUNT: usize = 1;
pub const RETURNED_ACCOUNT: usize = 2;

#[derive(Clone, Debug, PartialEq)]
pub enum KeyUse {
    /// A new key.
    Fresh,
    /// An earlier key of this user (chosen by the number), with that request's own body: a
    /// client retrying.
    Replay(u64),
    /// An earlier key of this user with another body: must be refused once the key is recorded.
    Reuse(u64),
    /// No `Idempotency-Key` header: 400, nothing written.
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Invalid {
    Currency,
    BelowMinimum,
    AboveMaximum,
    BankAccount,
    ExtraField,
    Json,
    Amount,
}

impl Invalid {
    pub fn code(self) -> &'static str {
        match self {
            Self::Currency => "invalid_currency",
            Self::BelowMinimum => "amount_below_minimum",
            Self::AboveMaximum => "amount_above_maximum",
            // An account in the body is refused whatever it is: only beneficiaries are paid.
            Self::BankAccount => "beneficiary_required",
            Self::ExtraField | Self::Json => "invalid_json",
            Self::Amount => "invalid_amount",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpec {
    pub user: usize,
    pub ccy: usize,
    pub amount: String,
    pub account: usize,
    pub key: KeyUse,
    pub invalid: Option<Invalid>,
}

/// A store call that fails (see `crate::faults`): the `nth` call of `method` on the wrapped
/// store of this one operation.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreFaultSpec {
    pub method: &'static str,
    pub nth: u32,
    pub when: When,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatcherCfg {
    /// The deployed settings (stale after 1 h, escalate after 24 h, reconcile after 1 h).
    Normal,
    /// An hour has passed: accepted and flagged batches are asked at the status endpoint.
    Stale,
    /// A day has passed: what is still unfinished at the provider goes to an operator.
    Escalate,
    /// Final batches are due for reconciliation.
    Reconcile,
    /// `BATCH_MAX_ATTEMPTS=1`: one ambiguous send flags the batch.
    OneAttempt,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryChange {
    /// The provider forgets idempotency keys at once (a day has passed for every key).
    ForgetKeys,
    /// … and remembers them again.
    KeepKeys,
    /// The next accepted batch is lost (its status answers 404).
    LoseNext,
    /// Every item of the next accepted batch stays pending for ever.
    PendingNext,
    /// The next payout call is recorded but its answer lost (a timeout), the batch it records
    /// stays pending, and the first batch with pending items its status endpoint answers
    /// `found` for is lost right after that answer (and those items paid all the same): a
    /// provider that showed it holds a batch, then forgot it.
    LoseAfterFound,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RefUse {
    New,
    /// An earlier credit's reference, same credit: credits once.
    Replay(u64),
    /// An earlier reference for another amount: refused, changes nothing.
    Conflict(u64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Credit {
        user: usize,
        ccy: usize,
        amount: String,
        reference: RefUse,
        fault: Option<StoreFaultSpec>,
    },
    Request {
        req: RequestSpec,
        fault: Option<StoreFaultSpec>,
    },
    /// Several requests on one balance at once.
    Burst {
        reqs: Vec<RequestSpec>,
    },
    Cancel {
        user: usize,
        pick: u64,
        fault: Option<StoreFaultSpec>,
    },
    Get {
        user: usize,
        pick: u64,
    },
    List {
        user: usize,
        status: Option<&'static str>,
    },
    Balances {
        user: usize,
    },
    /// `runs` batcher invocations at once (overlapping when more than one).
    Batcher {
        runs: usize,
        cfg: BatcherCfg,
    },
    /// One invocation over a fault-injecting store; a hang is a crash (the run is dropped at its
    /// deadline and its leases expire later).
    CrashBatcher {
        cfg: BatcherCfg,
        fault: StoreFaultSpec,
    },
    ProviderFault(ProviderFault),
    ProviderMemory(MemoryChange),
    /// Delivers queued callbacks, chosen by the numbers (so out of order), each possibly twice,
    /// all at once when `concurrent`, through a failing store when `fault` is set.
    Deliver {
        picks: Vec<u64>,
        duplicate: bool,
        concurrent: bool,
        fault: Option<StoreFaultSpec>,
    },
    /// The provider gives up on a queued callback: it is never delivered.
    DropCallback {
        pick: u64,
    },
    /// An operator approves a withdrawal held in REVIEW (a third of the time, when one is) or
    /// rejects an open one.
    OperatorDecision {
        pick: u64,
    },
    OperatorRetry {
        pick: u64,
    },
    /// `operator reconcile` over every final batch.
    Reconcile,
    /// Wait until the leases of crashed runs have expired.
    TimePasses,
    /// Several operations in flight at once.
    Together(Vec<Op>),
}

impl Op {
    /// Whether the step can change the table (a read, a change at the provider, a callback the
    /// provider gives up, time passing, cannot: nothing is re-read after them).
    pub fn writes(&self) -> bool {
        match self {
            Op::Get { .. }
            | Op::List { .. }
            | Op::Balances { .. }
            | Op::ProviderFault(_)
            | Op::ProviderMemory(_)
            | Op::DropCallback { .. }
            | Op::TimePasses => false,
            Op::Together(ops) => ops.iter().any(Op::writes),
            _ => true,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Op::Credit { .. } => "credit",
            Op::Request { .. } => "request",
            Op::Burst { .. } => "burst",
            Op::Cancel { .. } => "cancel",
            Op::Get { .. } => "get",
            Op::List { .. } => "list",
            Op::Balances { .. } => "balances",
            Op::Batcher { .. } => "batcher",
            Op::CrashBatcher { .. } => "crash-batcher",
            Op::ProviderFault(_) => "provider-fault",
            Op::ProviderMemory(_) => "provider-memory",
            Op::Deliver { .. } => "deliver",
            Op::DropCallback { .. } => "drop-callback",
            Op::OperatorDecision { .. } => "operator-decision",
            Op::OperatorRetry { .. } => "operator-retry",
            Op::Reconcile => "reconcile",
            Op::TimePasses => "time-passes",
            Op::Together(_) => "together",
        }
    }
}

pub fn amount(rng: &mut Rng, ccy: usize) -> String {
    if CCYS[ccy] == "JPY" {
        (rng.range(1, 80) * 100 + rng.below(100)).to_string()
    } else {
        format!("{}.{:02}", rng.range(1, 79), rng.below(100))
    }
}

pub fn credit_amount(rng: &mut Rng, ccy: usize) -> String {
    if CCYS[ccy] == "JPY" {
        (rng.range(200, 1000) * 100).to_string()
    } else {
        format!("{}.00", rng.range(200, 1000))
    }
}

fn request_spec(rng: &mut Rng, user: usize, ccy: usize) -> RequestSpec {
    let key = match rng.weighted(&[70, 14, 6, 2]) {
        0 => KeyUse::Fresh,
        1 => KeyUse::Replay(rng.next_u64()),
        2 => KeyUse::Reuse(rng.next_u64()),
        _ => KeyUse::Missing,
    };
    let invalid = if rng.percent(12) {
        Some(*rng.pick(&[
            Invalid::Currency,
            Invalid::BelowMinimum,
            Invalid::AboveMaximum,
            Invalid::BankAccount,
            Invalid::ExtraField,
            Invalid::Json,
            Invalid::Amount,
        ]))
    } else {
        None
    };
    RequestSpec {
        user,
        ccy,
        amount: amount(rng, ccy),
        account: rng.weighted(&[50, 15, 15, 10, 10]),
        key,
        invalid,
    }
}

fn store_fault(rng: &mut Rng, methods: &[&'static str]) -> StoreFaultSpec {
    StoreFaultSpec {
        method: methods[rng.below(methods.len() as u64) as usize],
        nth: rng.range(1, 3) as u32,
        when: *rng.pick(&[When::Before, When::After, When::HangBefore, When::HangAfter]),
    }
}

pub const REQUEST_METHODS: [&str; 2] = ["request_withdrawal", "idempotency_record"];
pub const CANCEL_METHODS: [&str; 2] = ["withdrawal", "transition"];
pub const CREDIT_METHODS: [&str; 1] = ["credit"];
pub const WEBHOOK_METHODS: [&str; 6] = [
    "batch_with_final_count",
    "write_transition",
    "withdrawal",
    "transition",
    "record_event",
    "complete_if_final",
];
pub const BATCHER_METHODS: [&str; 14] = [
    "open_batches",
    "pending",
    "claim",
    "close_claiming",
    "take_lease",
    "members",
    "record_attempt",
    "transition",
    "complete_if_final",
    "escalate",
    "mark_checked",
    "finish_rejecting",
    "batch",
    "mark_reconciled",
];

/// A provider that loses batches after `found` answers is tried where it matters: batches
/// flagged after one lost answer (without the provider's id) are what a stale check then finds.
fn batcher_cfg(rng: &mut Rng, forgetting: Forgetting) -> BatcherCfg {
    let weights = if forgetting == Forgetting::FoundThenLost {
        [40, 18, 7, 8, 27]
    } else {
        [55, 18, 7, 8, 12]
    };
    match rng.weighted(&weights) {
        0 => BatcherCfg::Normal,
        1 => BatcherCfg::Stale,
        2 => BatcherCfg::Escalate,
        3 => BatcherCfg::Reconcile,
        _ => BatcherCfg::OneAttempt,
    }
}

/// How the seed's provider forgets (one way per seed). Its 404 is the only answer a re-send and
/// an operator's reject can rely on for a batch whose acceptance never reached us
/// (docs/provider-api.md: 404 = never recorded). A provider that loses such a batch after
/// paying it breaks that contract and no client can tell it from one that never received the
/// batch (seeds 56 and 165 showed the operator's reject returning funds it had paid), so a seed
/// that loses batches never also loses the answer to a recorded send, and none combines lost
/// batches with forgotten keys (a re-send would be paid again).
///
/// `FoundThenLost` loses a batch only after its status endpoint answered `found` for it: that
/// answer is the provider's word, so from then on its 404 is distinguishable from "never
/// recorded" and it may combine with lost answers (issue "What the provider once said is never
/// forgotten": a client that dropped the `found` returned funds the provider then paid).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Forgetting {
    Nothing,
    Keys,
    Batches,
    FoundThenLost,
}

/// One operation; `nested` ops (inside `Together`) are never `Together` themselves.
fn op(rng: &mut Rng, nested: bool, forgetting: Forgetting) -> Op {
    let user = rng.below(USERS as u64) as usize;
    let ccy = rng.weighted(&[50, 30, 20]);
    let weights: [u64; 18] = [
        30,                         // request
        5,                          // burst
        5,                          // credit
        7,                          // cancel
        3,                          // get
        3,                          // list
        2,                          // balances
        8,                          // batcher
        3,                          // crash batcher
        5,                          // provider fault
        2,                          // provider memory
        14,                         // deliver
        2,                          // drop callback
        3,                          // operator reject
        3,                          // operator retry
        1,                          // reconcile
        2,                          // time passes
        if nested { 0 } else { 7 }, // together
    ];
    let fault = |rng: &mut Rng, pct: u64, methods: &[&'static str]| {
        rng.percent(pct).then(|| store_fault(rng, methods))
    };
    match rng.weighted(&weights) {
        0 => {
            let req = request_spec(rng, user, ccy);
            Op::Request {
                req,
                fault: fault(rng, 10, &REQUEST_METHODS),
            }
        }
        1 => {
            let n = rng.range(2, 5) as usize;
            let mut reqs: Vec<RequestSpec> = Vec::new();
            for _ in 0..n {
                let mut r = request_spec(rng, user, ccy);
                r.invalid = None;
                // Some of a burst share a key and body: a client retrying while the first
                // attempt is still in flight.
                r.key = KeyUse::Fresh;
                if let (Some(first), true) = (reqs.first(), rng.percent(30)) {
                    r = first.clone();
                }
                reqs.push(r);
            }
            Op::Burst { reqs }
        }
        2 => Op::Credit {
            user,
            ccy,
            amount: credit_amount(rng, ccy),
            reference: match rng.weighted(&[70, 20, 10]) {
                0 => RefUse::New,
                1 => RefUse::Replay(rng.next_u64()),
                _ => RefUse::Conflict(rng.next_u64()),
            },
            fault: fault(rng, 20, &CREDIT_METHODS),
        },
        3 => Op::Cancel {
            user,
            pick: rng.next_u64(),
            fault: fault(rng, 10, &CANCEL_METHODS),
        },
        4 => Op::Get {
            user,
            pick: rng.next_u64(),
        },
        5 => Op::List {
            user,
            status: if rng.percent(50) {
                None
            } else {
                Some(*rng.pick(&[
                    "PENDING",
                    "SUBMITTED",
                    "SETTLED",
                    "REJECTED",
                    "CANCELLED",
                    "RETURNED",
                ]))
            },
        },
        6 => Op::Balances { user },
        7 => Op::Batcher {
            runs: if rng.percent(20) {
                rng.range(2, 3) as usize
            } else {
                1
            },
            cfg: batcher_cfg(rng, forgetting),
        },
        8 => Op::CrashBatcher {
            cfg: batcher_cfg(rng, forgetting),
            fault: store_fault(rng, &BATCHER_METHODS),
        },
        9 => Op::ProviderFault(if forgetting == Forgetting::Batches {
            // A batch it records while its answer is lost and then loses would answer 404 for a
            // batch it paid: see `Forgetting`.
            *rng.pick(&[
                ProviderFault::TimeoutBeforeRecord,
                ProviderFault::ErrorBeforeRecord,
                ProviderFault::Reject,
            ])
        } else {
            *rng.pick(&[
                ProviderFault::TimeoutBeforeRecord,
                ProviderFault::TimeoutAfterRecord,
                ProviderFault::ErrorBeforeRecord,
                ProviderFault::ErrorAfterRecord,
                ProviderFault::Reject,
            ])
        }),
        10 => Op::ProviderMemory(match forgetting {
            Forgetting::Nothing => MemoryChange::PendingNext,
            Forgetting::Keys => *rng.pick(&[
                MemoryChange::ForgetKeys,
                MemoryChange::ForgetKeys,
                MemoryChange::KeepKeys,
                MemoryChange::PendingNext,
            ]),
            Forgetting::Batches => *rng.pick(&[MemoryChange::LoseNext, MemoryChange::PendingNext]),
            Forgetting::FoundThenLost => *rng.pick(&[
                MemoryChange::LoseAfterFound,
                MemoryChange::LoseAfterFound,
                MemoryChange::PendingNext,
            ]),
        }),
        11 => {
            let n = rng.range(1, 6) as usize;
            Op::Deliver {
                picks: (0..n).map(|_| rng.next_u64()).collect(),
                duplicate: rng.percent(20),
                concurrent: rng.percent(40),
                fault: fault(rng, 12, &WEBHOOK_METHODS),
            }
        }
        12 => Op::DropCallback {
            pick: rng.next_u64(),
        },
        13 => Op::OperatorDecision {
            pick: rng.next_u64(),
        },
        14 => Op::OperatorRetry {
            pick: rng.next_u64(),
        },
        15 => Op::Reconcile,
        16 => Op::TimePasses,
        _ => {
            let n = rng.range(2, 3) as usize;
            Op::Together((0..n).map(|_| op(rng, true, forgetting)).collect())
        }
    }
}

/// The whole schedule of one seed: first every user is credited in every currency, then
/// `steps` operations.
pub fn schedule(seed: u64, steps: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let forgetting = forgetting(seed);
    let mut out = Vec::new();
    for user in 0..USERS {
        for ccy in 0..CCYS.len() {
            out.push(Op::Credit {
                user,
                ccy,
                amount: credit_amount(&mut rng, ccy),
                reference: RefUse::New,
                fault: None,
            });
        }
    }
    for _ in 0..steps {
        out.push(op(&mut rng, false, forgetting));
    }
    out
}

/// The seed's provider: a third forget nothing, a third forget keys, a sixth lose batches
/// before anyone heard of them, a sixth lose batches after answering `found` for them (half of
/// what were the batch-losing seeds; the others keep their schedules).
pub fn forgetting(seed: u64) -> Forgetting {
    let mut rng = Rng::new(seed ^ 0xF0F0);
    match rng.below(3) {
        0 => Forgetting::Nothing,
        1 => Forgetting::Keys,
        _ if Rng::new(seed ^ 0x0F0F).percent(50) => Forgetting::FoundThenLost,
        _ => Forgetting::Batches,
    }
}
