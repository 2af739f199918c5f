//! The money domain: values that cannot be invalid once built, and the withdrawal state machine.

mod amount;
mod balance;
mod bank_account;
mod batch;
mod beneficiary;
mod callback;
mod control;
mod currency;
mod fee;
mod ids;
mod withdrawal;

pub use amount::Amount;
pub use balance::{Balance, BalanceEffect};
pub use bank_account::BankAccount;
pub use batch::{
    provider_evidence, Batch, BatchNote, BatchStatus, Member, MemberTerms, OPERATOR_ACTOR,
    PROVIDER_STATUS_ACTOR,
};
pub use beneficiary::{Beneficiary, BeneficiaryDetails, Destination};
pub use callback::CallbackOutcome;
pub use control::{Control, ControlChange, ControlSubject};
pub use currency::{Currencies, Currency, CurrencyCode};
pub use fee::{FeeOnReturn, FeeSchedule};
pub use ids::{BatchId, BeneficiaryId, CreditReference, IdempotencyKey, UserId, WithdrawalId};
pub use withdrawal::{
    AuditEntry, InvalidTransition, Subject, Transition, Withdrawal, WithdrawalStatus,
};

/// The one text form of an instant, wherever one is shown or kept (API, events, the table):
/// RFC 3339 in UTC to the millisecond, so stored times sort as text.
pub fn timestamp(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Why a value offered to the domain was refused. Each variant maps to one stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("currency {0:?} is not supported")]
    InvalidCurrency(String),
    #[error("{0}")]
    InvalidAmount(String),
    #[error("amount is below the minimum withdrawal of {min} {currency}")]
    AmountBelowMinimum { min: String, currency: String },
    #[error("amount is above the maximum withdrawal of {max} {currency}")]
    AmountAboveMaximum { max: String, currency: String },
    #[error("{0}")]
    InvalidBankAccount(String),
    #[error("{0}")]
    InvalidId(String),
    /// A beneficiary's holder name or label that cannot be shown or sent as it is.
    #[error("{0}")]
    InvalidBeneficiary(String),
}
