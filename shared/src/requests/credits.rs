//! Funds in: the credit API's use cases (`POST /internal/credits`, `GET /internal/credits/{ref}`)
//! for the platform's own services (a deposit service), and the core `operator credit` shares.
//! Transport-free: the HTTP handler authenticates the caller and hands over the body.
//!
//! A credit is idempotent by its `reference` (the deposit's id in the caller's system): one
//! transaction adds to the balance and records the credit under the reference, so the same
//! credit sent again changes nothing and answers the first record, and another credit under a
//! used reference is refused. Debit corrections are out of scope.

use crate::domain::timestamp;
use crate::domain::{CreditReference, Currencies, UserId};
use crate::http::api::ApiError;
use crate::requests::withdrawals::parse_bounded_amount;
use crate::store::{CreditOutcome, CreditRecord, Store};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// The longest `description` kept with a credit.
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// A parsed, valid credit request.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditRequest {
    pub user_id: UserId,
    pub reference: CreditReference,
    pub currency: crate::domain::Currency,
    pub amount: crate::domain::Amount,
    pub description: Option<String>,
}

impl CreditRequest {
    /// Parses the JSON body with the same rules as a withdrawal request: a configured currency,
    /// a strict plain-decimal amount in its scale and within its bounds.
    pub fn parse(body: &[u8], currencies: &Currencies) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw<'a> {
            user_id: String,
            currency: String,
            #[serde(borrow)]
            amount: &'a RawValue,
            reference: String,
            #[serde(default)]
            description: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(body)
            .map_err(|e| ApiError::InvalidJson(format!("request body: {e}")))?;
        let user_id = UserId::parse(&raw.user_id)
            .map_err(|e| ApiError::InvalidParameter(format!("user_id: {e}")))?;
        let reference = CreditReference::parse(&raw.reference)
            .ok()
            .filter(|r| addressable(r.as_str()))
            .ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "reference: 1-{} of A-Z a-z 0-9 . _ ~ : @ -, not starting with '.'",
                    CreditReference::MAX_LEN
                ))
            })?;
        let currency = currencies.get(&raw.currency)?.clone();
        let amount = parse_bounded_amount(raw.amount, &currency)?;
        if let Some(d) = &raw.description {
            if d.chars().count() > MAX_DESCRIPTION_CHARS || d.chars().any(char::is_control) {
                return Err(ApiError::InvalidParameter(format!(
                    "description: at most {MAX_DESCRIPTION_CHARS} characters, no control characters"
                )));
            }
        }
        Ok(Self {
            user_id,
            reference,
            currency,
            amount,
            // An empty description is no description: a retry that sends `""` instead of
            // leaving it out is the same credit.
            description: raw.description.filter(|d| !d.is_empty()),
        })
    }

    /// The record this request writes, made by `actor`.
    pub fn record(self, actor: &str) -> CreditRecord {
        CreditRecord::new(
            self.reference,
            self.user_id,
            self.currency,
            self.amount,
            actor,
        )
        .with_description(self.description)
    }
}

/// Whether `reference` reads back unchanged at `/internal/credits/{reference}` however the path
/// is carried: API Gateway hands the function a decoded path, so `/`, `#`, `?` or `%` in a
/// reference would address another resource (or another credit), and `.`/`..` are path steps.
/// Unreserved URL characters, `:` and `@` only, not starting with `.`. Stricter than
/// [`CreditReference`] on purpose: a reference that cannot be read back tempts a caller that lost
/// an answer to credit again under a new one.
fn addressable(reference: &str) -> bool {
    !reference.starts_with('.')
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:@-".contains(&b))
}

/// The reference a path segment names, however the path was carried. An API Gateway HTTP API
/// hands the function a decoded `rawPath`; `cargo lambda watch` (the local stack) hands it over as
/// the client sent it, so `dep@1` may arrive as `dep%401`. An addressable reference holds no `%`,
/// so decoding once reads both the same. The one difference left: on AWS a path encoded twice is
/// decoded twice, which still names only an addressable reference (anything else is not found).
fn reference_in_path(segment: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    addressable(&decoded).then(|| decoded.into_owned())
}

/// The JSON shape of a credit in every response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreditView {
    pub reference: String,
    pub user_id: String,
    pub currency: String,
    pub amount: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Who credited: the calling service's ARN, or `operator`.
    pub actor: String,
    pub created_at: String,
}

impl From<&CreditRecord> for CreditView {
    fn from(c: &CreditRecord) -> Self {
        Self {
            reference: c.reference.as_str().to_string(),
            user_id: c.user_id.as_str().to_string(),
            currency: c.currency.code().to_string(),
            amount: c.amount.to_string(),
            description: c.description.clone(),
            actor: c.actor.clone(),
            created_at: timestamp(&c.created_at),
        }
    }
}

/// What a credit answered: 201 for a new credit, 200 with the first record for a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditAnswer {
    pub status_code: u16,
    pub view: CreditView,
    pub replayed: bool,
}

#[derive(Clone)]
pub struct CreditService {
    store: Arc<dyn Store>,
    currencies: Currencies,
}

impl CreditService {
    pub fn new(store: Arc<dyn Store>, currencies: Currencies) -> Self {
        Self { store, currencies }
    }

    /// Credits what `body` asks, as `actor` (the caller's ARN).
    pub async fn credit(&self, actor: &str, body: &[u8]) -> Result<CreditAnswer, ApiError> {
        let request = CreditRequest::parse(body, &self.currencies)?;
        let record = request.record(actor);
        Ok(match self.store.credit(&record).await? {
            CreditOutcome::Recorded(r) => CreditAnswer {
                status_code: 201,
                view: CreditView::from(&r),
                replayed: false,
            },
            CreditOutcome::Replayed(first) => CreditAnswer {
                status_code: 200,
                view: CreditView::from(&first),
                replayed: true,
            },
        })
    }

    /// The credit a `/internal/credits/{segment}` path names.
    pub async fn get(&self, segment: &str) -> Result<CreditView, ApiError> {
        // An id that cannot exist is simply not found: nothing to tell a caller beyond that.
        let reference = reference_in_path(segment)
            .and_then(|r| CreditReference::parse(&r).ok())
            .ok_or(ApiError::NotFound)?;
        let record = self
            .store
            .credit_record(&reference)
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok(CreditView::from(&record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: serde_json::Value) -> Result<CreditRequest, ApiError> {
        CreditRequest::parse(body.to_string().as_bytes(), &Currencies::default())
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({"user_id": "alice", "currency": "USD", "amount": "125.50",
                           "reference": "dep-1", "description": "wire 17"})
    }

    #[test]
    fn a_valid_body_parses_with_its_exact_amount() {
        let r = parse(valid()).unwrap();
        assert_eq!(r.amount.to_string(), "125.50");
        assert_eq!(r.reference.as_str(), "dep-1");
        assert_eq!(r.description.as_deref(), Some("wire 17"));
    }

    #[test]
    fn an_empty_description_is_none_and_references_are_url_safe() {
        let mut body = valid();
        body["description"] = "".into();
        assert_eq!(parse(body).unwrap().description, None);
        for ok in ["dep-1", "SEPA:2026-11-30:17", "a.b_c~d@e", "x.."] {
            let mut body = valid();
            body["reference"] = ok.into();
            assert!(parse(body).is_ok(), "{ok}");
        }
    }

    #[test]
    fn every_bad_field_has_its_own_code() {
        let cases: [(&str, serde_json::Value, &str); 14] = [
            ("currency", "XXX".into(), "invalid_currency"),
            ("amount", "1e2".into(), "invalid_amount"),
            ("amount", "1.001".into(), "invalid_amount"),
            ("amount", "-5".into(), "invalid_amount"),
            ("amount", "0.50".into(), "amount_below_minimum"),
            ("amount", "50000.01".into(), "amount_above_maximum"),
            ("amount", serde_json::json!(true), "invalid_amount"),
            ("reference", "two words".into(), "invalid_parameter"),
            ("reference", "wire/2026/17".into(), "invalid_parameter"),
            ("reference", "wire#17".into(), "invalid_parameter"),
            ("reference", "..".into(), "invalid_parameter"),
            ("reference", "r".repeat(129).into(), "invalid_parameter"),
            ("user_id", "".into(), "invalid_parameter"),
            ("description", "a\nb".into(), "invalid_parameter"),
        ];
        for (field, value, code) in cases {
            let mut body = valid();
            body[field] = value.clone();
            let e = parse(body).unwrap_err();
            assert_eq!(e.code(), code, "{field} = {value}");
        }
        let mut extra = valid();
        extra["debit"] = true.into();
        assert_eq!(parse(extra).unwrap_err().code(), "invalid_json");
        let mut missing = valid();
        missing.as_object_mut().unwrap().remove("reference");
        assert_eq!(parse(missing).unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn a_path_segment_names_the_same_reference_decoded_or_not() {
        // API Gateway decodes the path; the local stack does not. Both read one reference.
        let cases = [
            ("dep@2026:17", Some("dep@2026:17")),
            ("dep%402026%3A17", Some("dep@2026:17")),
            ("dep%2D1", Some("dep-1")),
            // What decodes to a reference no path could carry names nothing.
            ("wire%2F17", None),
            ("wire%2317", None),
            ("%2E%2E", None),
            ("dep%2", None),
            ("%FF", None),
        ];
        for (segment, reference) in cases {
            assert_eq!(
                reference_in_path(segment).as_deref(),
                reference,
                "{segment}"
            );
        }
    }
}
