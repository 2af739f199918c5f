//! The public error vocabulary. Each error has one stable `code` and one HTTP status, mapped here
//! and nowhere else: `{"error":{"code":"...","message":"..."}}`.

use crate::domain::DomainError;
use crate::store::StoreError;
use crate::store::{Failure, Refusal};
use lambda_http::http::StatusCode;
use lambda_http::{Body, Response};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidCurrency(String),
    #[error("{0}")]
    InvalidAmount(String),
    #[error("{0}")]
    AmountBelowMinimum(String),
    #[error("{0}")]
    AmountAboveMaximum(String),
    #[error("{0}")]
    InvalidBankAccount(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    InvalidBeneficiary(String),
    /// A withdrawal names a registered beneficiary, never an account of its own.
    #[error("name a registered beneficiary (beneficiary_id); a bank_account is not accepted")]
    BeneficiaryRequired,
    #[error("no such beneficiary among yours")]
    UnknownBeneficiary,
    #[error("this beneficiary was removed")]
    BeneficiaryRemoved,
    /// Added too recently; the message says from when it can be used.
    #[error("{0}")]
    BeneficiaryCoolingOff(String),
    #[error("at most {0} beneficiaries; remove one first")]
    TooManyBeneficiaries(u32),
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error(
        "an Idempotency-Key header is required: without one a retried request could withdraw twice"
    )]
    MissingIdempotencyKey,
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("this caller may not use this resource")]
    Forbidden,
    #[error("the webhook signature is missing, invalid or outside the time tolerance")]
    InvalidSignature,
    #[error("{0}")]
    UnknownEventType(String),
    #[error("no such resource")]
    NotFound,
    /// With the methods the resource does allow (the `Allow` header).
    #[error("method not allowed on this resource")]
    MethodNotAllowed { allow: &'static str },
    #[error("available balance is lower than the requested amount")]
    InsufficientFunds,
    #[error("too many open withdrawals in this currency; wait for one to complete or cancel one")]
    TooManyPending,
    #[error("{0}")]
    DailyLimitExceeded(String),
    /// An operator blocked the caller's withdrawals; the reason stays with the operators.
    #[error("withdrawals are blocked for this account; contact support")]
    WithdrawalsBlocked,
    /// An operator paused the currency (a provider or bank incident); requests are taken again
    /// once it is resumed.
    #[error("withdrawals of this currency are paused; try again later")]
    CurrencyPaused,
    #[error("only a PENDING withdrawal can be cancelled; this one is {0}")]
    NotCancellable(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("this reference was used for another credit")]
    ReferenceReused,
    #[error("the service is busy; retry with the same Idempotency-Key")]
    TryAgain,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Every code the API can return, for documentation and tests.
    pub const CODES: [&'static str; 32] = [
        "invalid_json",
        "invalid_currency",
        "invalid_amount",
        "amount_below_minimum",
        "amount_above_maximum",
        "invalid_bank_account",
        "invalid_parameter",
        "invalid_beneficiary",
        "beneficiary_required",
        "unknown_beneficiary",
        "beneficiary_removed",
        "beneficiary_cooling_off",
        "too_many_beneficiaries",
        "invalid_idempotency_key",
        "missing_idempotency_key",
        "unauthorized",
        "forbidden",
        "invalid_signature",
        "unknown_event_type",
        "not_found",
        "method_not_allowed",
        "insufficient_funds",
        "too_many_pending",
        "daily_limit_exceeded",
        "withdrawals_blocked",
        "currency_paused",
        "not_cancellable",
        "payload_too_large",
        "idempotency_key_reused",
        "reference_reused",
        "try_again",
        "internal",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidCurrency(_) => "invalid_currency",
            Self::InvalidAmount(_) => "invalid_amount",
            Self::AmountBelowMinimum(_) => "amount_below_minimum",
            Self::AmountAboveMaximum(_) => "amount_above_maximum",
            Self::InvalidBankAccount(_) => "invalid_bank_account",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::InvalidBeneficiary(_) => "invalid_beneficiary",
            Self::BeneficiaryRequired => "beneficiary_required",
            Self::UnknownBeneficiary => "unknown_beneficiary",
            Self::BeneficiaryRemoved => "beneficiary_removed",
            Self::BeneficiaryCoolingOff(_) => "beneficiary_cooling_off",
            Self::TooManyBeneficiaries(_) => "too_many_beneficiaries",
            Self::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            Self::MissingIdempotencyKey => "missing_idempotency_key",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidSignature => "invalid_signature",
            Self::UnknownEventType(_) => "unknown_event_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::InsufficientFunds => "insufficient_funds",
            Self::TooManyPending => "too_many_pending",
            Self::DailyLimitExceeded(_) => "daily_limit_exceeded",
            Self::WithdrawalsBlocked => "withdrawals_blocked",
            Self::CurrencyPaused => "currency_paused",
            Self::NotCancellable(_) => "not_cancellable",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::ReferenceReused => "reference_reused",
            Self::TryAgain => "try_again",
            Self::Internal => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidCurrency(_)
            | Self::InvalidAmount(_)
            | Self::AmountBelowMinimum(_)
            | Self::AmountAboveMaximum(_)
            | Self::InvalidBankAccount(_)
            | Self::InvalidParameter(_)
            | Self::InvalidBeneficiary(_)
            | Self::BeneficiaryRequired
            | Self::InvalidIdempotencyKey(_)
            | Self::MissingIdempotencyKey
            | Self::UnknownEventType(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidSignature => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::WithdrawalsBlocked => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::InsufficientFunds
            | Self::TooManyPending
            | Self::DailyLimitExceeded(_)
            | Self::CurrencyPaused
            | Self::BeneficiaryCoolingOff(_)
            | Self::TooManyBeneficiaries(_)
            | Self::NotCancellable(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::IdempotencyKeyReused
            | Self::ReferenceReused
            | Self::UnknownBeneficiary
            | Self::BeneficiaryRemoved => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TryAgain => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn to_response(&self) -> Response<Body> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut builder = Response::builder()
            .status(self.status())
            .header("content-type", "application/json");
        if matches!(self, Self::TryAgain) {
            builder = builder.header("retry-after", "1");
        }
        if let Self::MethodNotAllowed { allow } = self {
            builder = builder.header("allow", *allow);
        }
        builder
            .body(Body::Text(body.to_string()))
            .expect("static response parts")
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let msg = e.to_string();
        match e {
            DomainError::InvalidCurrency(_) => Self::InvalidCurrency(msg),
            DomainError::InvalidAmount(_) => Self::InvalidAmount(msg),
            DomainError::AmountBelowMinimum { .. } => Self::AmountBelowMinimum(msg),
            DomainError::AmountAboveMaximum { .. } => Self::AmountAboveMaximum(msg),
            DomainError::InvalidBankAccount(_) => Self::InvalidBankAccount(msg),
            DomainError::InvalidId(_) => Self::InvalidParameter(msg),
            DomainError::InvalidBeneficiary(_) => Self::InvalidBeneficiary(msg),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(Refusal::InsufficientFunds) => Self::InsufficientFunds,
            StoreError::Refused(Refusal::TooManyPending) => Self::TooManyPending,
            StoreError::Refused(Refusal::DailyLimitExceeded(message)) => {
                Self::DailyLimitExceeded(message)
            }
            StoreError::Refused(Refusal::NotFound) => Self::NotFound,
            StoreError::Refused(Refusal::UserBlocked) => Self::WithdrawalsBlocked,
            StoreError::Refused(Refusal::CurrencyPaused) => Self::CurrencyPaused,
            StoreError::Refused(Refusal::UnknownBeneficiary) => Self::UnknownBeneficiary,
            StoreError::Refused(Refusal::BeneficiaryRemoved) => Self::BeneficiaryRemoved,
            StoreError::Refused(Refusal::BeneficiaryCoolingOff { usable_from }) => {
                Self::BeneficiaryCoolingOff(format!(
                    "this beneficiary was added recently: it can be used from {usable_from}"
                ))
            }
            StoreError::Refused(Refusal::TooManyBeneficiaries(max)) => {
                Self::TooManyBeneficiaries(max)
            }
            // The first credit's details stay in the log, not in the answer.
            StoreError::Refused(Refusal::ReferenceReused(first)) => {
                tracing::info!(%first, "credit reference reused");
                Self::ReferenceReused
            }
            StoreError::Refused(Refusal::StateChanged { current }) => {
                Self::NotCancellable(current.map_or("gone".into(), |s| s.to_string()))
            }
            StoreError::Failed(Failure::Unavailable(reason)) => {
                tracing::warn!(%reason, "store unavailable");
                Self::TryAgain
            }
            StoreError::Refused(Refusal::IdempotencyKeyTaken(_))
            | StoreError::Refused(Refusal::DuplicateEvent)
            | StoreError::Refused(Refusal::LeaseLost)
            | StoreError::Refused(Refusal::BatchChanged(_))
            | StoreError::Refused(Refusal::ControlUnchanged(_))
            | StoreError::Failed(Failure::Corrupt(_))
            | StoreError::Failed(Failure::Backend(_)) => {
                tracing::error!(error = %e, "store failure");
                Self::Internal
            }
        }
    }
}

/// A JSON success response.
pub fn json_response(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_listed() {
        let mut codes = ApiError::CODES.to_vec();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ApiError::CODES.len());
        let resp = ApiError::Internal.to_response();
        assert_eq!(resp.status(), 500);
        let Body::Text(t) = resp.body() else { panic!() };
        assert_eq!(
            t,
            r#"{"error":{"code":"internal","message":"internal error"}}"#
        );
    }
}
