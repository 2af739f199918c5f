//! Step 1, money in and requests out: the user API's withdrawal and beneficiary use cases and
//! the internal credit API.

pub mod beneficiaries;
pub mod credits;
pub mod withdrawals;

use crate::domain::{IdempotencyKey, UserId};
use crate::http::api::ApiError;
use crate::store::{IdempotencyRecord, Store};

/// The first request's record behind an Idempotency-Key the write found taken. The write's
/// cancellation hands it back (one round trip); a read only when it did not (a store that does
/// not return old items).
async fn first_record(
    store: &dyn Store,
    user: &UserId,
    key: &IdempotencyKey,
    stored: Option<Box<IdempotencyRecord>>,
) -> Result<IdempotencyRecord, ApiError> {
    match stored {
        Some(first) => Ok(*first),
        None => store
            .idempotency_record(user, key)
            .await?
            // Expired between the write and this read: the client may retry.
            .ok_or(ApiError::TryAgain),
    }
}
