//! The user's registered destinations: add (idempotent, like a withdrawal), list, remove.
//! Transport-free: the HTTP handler parses the event and calls these.

use crate::domain::{
    timestamp, Beneficiary, BeneficiaryDetails, BeneficiaryId, IdempotencyKey, UserId,
};
use crate::http::api::ApiError;
use crate::store::{IdempotencyRecord, Refusal, Resource, Store, StoreError};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// How long a new beneficiary waits before a withdrawal may name it, by default: a day, for the
/// user to hear of it (`beneficiary.added`) and remove one they did not add.
pub const DEFAULT_COOLING_OFF_SECS: u64 = 24 * 3600;
/// How many beneficiaries (not removed) a user may have, by default.
pub const DEFAULT_MAX_BENEFICIARIES: u32 = 10;

/// The rules beneficiaries are added under (`BENEFICIARY_COOLING_OFF_SECS`,
/// `MAX_BENEFICIARIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeneficiaryRules {
    pub cooling_off: chrono::Duration,
    pub max_per_user: u32,
}

impl Default for BeneficiaryRules {
    fn default() -> Self {
        Self {
            cooling_off: chrono::Duration::seconds(DEFAULT_COOLING_OFF_SECS as i64),
            max_per_user: DEFAULT_MAX_BENEFICIARIES,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBeneficiary {
    bank_account: String,
    holder_name: String,
    label: Option<String>,
}

/// A parsed `POST /beneficiaries` body.
fn parse(body: &[u8]) -> Result<BeneficiaryDetails, ApiError> {
    let raw: RawBeneficiary = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("request body: {e}")))?;
    Ok(BeneficiaryDetails::parse(
        &raw.bank_account,
        &raw.holder_name,
        raw.label.as_deref(),
    )?)
}

/// Same beneficiary ⇔ same fingerprint, whatever the IBAN's spacing or the names' surrounding
/// blanks. Prefixed, so no withdrawal's fingerprint can equal it.
/// The fields are a JSON array, so no holder or label containing the separator can make two
/// bodies alike.
fn fingerprint(d: &BeneficiaryDetails) -> String {
    let fields = serde_json::json!([d.bank_account.expose(), d.holder_name, d.label]);
    let mut h = Sha256::new();
    h.update(b"beneficiary|");
    h.update(fields.to_string());
    hex::encode(h.finalize())
}

/// A beneficiary in every response and event: the account masked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BeneficiaryView {
    pub id: String,
    pub bank_account: String,
    pub holder_name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    pub created_at: String,
    /// From when a withdrawal may name it.
    pub usable_from: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub removed_at: Option<String>,
}

impl From<&Beneficiary> for BeneficiaryView {
    fn from(b: &Beneficiary) -> Self {
        Self {
            id: b.id.to_string(),
            bank_account: b.details.bank_account.masked(),
            holder_name: b.details.holder_name.clone(),
            label: b.details.label.clone(),
            created_at: timestamp(&b.created_at),
            usable_from: timestamp(&b.usable_from),
            removed_at: b.removed_at.as_ref().map(timestamp),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BeneficiaryList {
    pub items: Vec<BeneficiaryView>,
}

/// What an add answered: 201 with the new beneficiary, or the first answer for a used key.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    pub status_code: u16,
    pub body: String,
    pub replayed: bool,
    pub beneficiary_id: BeneficiaryId,
}

#[derive(Clone)]
pub struct BeneficiaryService {
    store: Arc<dyn Store>,
    rules: BeneficiaryRules,
}

impl BeneficiaryService {
    pub fn new(store: Arc<dyn Store>, rules: BeneficiaryRules) -> Self {
        Self { store, rules }
    }

    /// Adds a beneficiary, or replays the first answer for `key`: one write, with the key's
    /// record and the user's count in it.
    pub async fn add(
        &self,
        user: &UserId,
        body: &[u8],
        key: IdempotencyKey,
    ) -> Result<Added, ApiError> {
        let details = match parse(body) {
            Ok(d) => d,
            // A key already answered wins over a body refused now, as for withdrawals.
            Err(refusal) => {
                return match self.store.idempotency_record(user, &key).await? {
                    None => Err(refusal),
                    Some(_) => Err(ApiError::IdempotencyKeyReused),
                }
            }
        };
        let beneficiary =
            Beneficiary::new(user.clone(), details, Utc::now(), self.rules.cooling_off);
        let body = serde_json::to_string(&BeneficiaryView::from(&beneficiary))
            .map_err(|_| ApiError::Internal)?;
        let record = IdempotencyRecord {
            user_id: user.clone(),
            key: key.clone(),
            fingerprint: fingerprint(&beneficiary.details),
            resource: Resource::Beneficiary(beneficiary.id),
            status_code: 201,
            response_body: body.clone(),
            created_at: beneficiary.created_at,
        };
        match self
            .store
            .add_beneficiary(&beneficiary, &record, self.rules.max_per_user)
            .await
        {
            Ok(()) => Ok(Added {
                status_code: 201,
                body,
                replayed: false,
                beneficiary_id: beneficiary.id,
            }),
            Err(StoreError::Refused(Refusal::IdempotencyKeyTaken(stored))) => {
                let first = super::first_record(&*self.store, user, &key, stored).await?;
                match first.resource {
                    Resource::Beneficiary(id) if first.fingerprint == record.fingerprint => {
                        Ok(Added {
                            status_code: first.status_code,
                            body: first.response_body,
                            replayed: true,
                            beneficiary_id: id,
                        })
                    }
                    _ => Err(ApiError::IdempotencyKeyReused),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self, user: &UserId) -> Result<BeneficiaryList, ApiError> {
        Ok(BeneficiaryList {
            items: self
                .store
                .beneficiaries(user)
                .await?
                .iter()
                .map(BeneficiaryView::from)
                .collect(),
        })
    }

    /// Removes one of the caller's beneficiaries: no new withdrawal may name it. Withdrawals
    /// already requested to it are not redirected, nor stopped: each is paid to the account its
    /// owner chose when asking, unless the owner cancels it (while it is not yet claimed).
    /// Anything not the caller's, or not an id, is `not_found`. Removing one already removed
    /// answers it as it is (its first `removed_at`), as a DELETE should: a client retrying after
    /// a lost answer learns it is gone, and nothing is written or published again.
    pub async fn remove(&self, user: &UserId, id: &str) -> Result<BeneficiaryView, ApiError> {
        let id = BeneficiaryId::parse(id).map_err(|_| ApiError::NotFound)?;
        match self.store.remove_beneficiary(user, id, Utc::now()).await {
            Ok(removed) => Ok(BeneficiaryView::from(&removed)),
            Err(StoreError::Refused(Refusal::BeneficiaryRemoved)) => {
                let stored = self
                    .store
                    .beneficiary(user, id)
                    .await?
                    .ok_or(ApiError::NotFound)?;
                Ok(BeneficiaryView::from(&stored))
            }
            Err(e) => Err(e.into()),
        }
    }
}
