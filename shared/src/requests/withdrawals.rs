//! The user-facing use cases of the request API: request, read, list, cancel, balances.
//! Transport-free: the HTTP handler parses the event and calls these.

use crate::domain::{
    Amount, Balance, BeneficiaryId, Currencies, Currency, Destination, DomainError, IdempotencyKey,
    Transition, UserId, Withdrawal, WithdrawalId, WithdrawalStatus,
};
use crate::http::api::ApiError;
use crate::store::Refusal;
use crate::store::{IdempotencyRecord, ListQuery, Resource, Store, StoreError, TransitionDetails};
use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A parsed, valid withdrawal request.
#[derive(Debug, Clone, PartialEq)]
pub struct WithdrawalRequest {
    pub currency: Currency,
    pub amount: Amount,
    /// One of the caller's registered beneficiaries: the request's transaction checks that it
    /// is theirs, not removed and past its cooling-off.
    pub beneficiary: BeneficiaryId,
}

/// The request body's shape, before any of its values is read. `bank_account` is known only to
/// be refused with its own code: money goes only to a registered beneficiary.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest<'a> {
    currency: String,
    #[serde(borrow)]
    amount: &'a RawValue,
    beneficiary_id: Option<String>,
    #[serde(default, rename = "bank_account")]
    _bank_account: Option<serde::de::IgnoredAny>,
}

impl RawRequest<'_> {
    fn beneficiary(&self) -> Result<BeneficiaryId, ApiError> {
        match (&self.beneficiary_id, &self._bank_account) {
            (Some(id), None) => Ok(BeneficiaryId::parse(id)?),
            _ => Err(ApiError::BeneficiaryRequired),
        }
    }
}

impl WithdrawalRequest {
    /// Parses the JSON body. `amount` may be a string or a JSON number; either way its digits are
    /// read exactly, never through a float.
    pub fn parse(body: &[u8], currencies: &Currencies) -> Result<Self, ApiError> {
        let raw: RawRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::InvalidJson(format!("request body: {e}")))?;
        let beneficiary = raw.beneficiary()?;
        let currency = currencies.get(&raw.currency)?.clone();
        let amount = parse_bounded_amount(raw.amount, &currency)?;
        Ok(Self {
            currency,
            amount,
            beneficiary,
        })
    }

    /// Same request ⇔ same fingerprint, whatever the JSON spelling (`"10"` vs `10.00`).
    pub fn fingerprint(&self) -> String {
        fingerprint(
            self.currency.code().as_str(),
            self.amount.value(),
            self.beneficiary,
        )
    }
}

/// The one fingerprint formula: the currency code, the amount in that currency's scale, the
/// beneficiary.
fn fingerprint(currency: &str, amount: Decimal, beneficiary: BeneficiaryId) -> String {
    let mut h = Sha256::new();
    h.update(currency);
    h.update(b"|");
    h.update(amount.to_string());
    h.update(b"|");
    h.update(beneficiary.to_string());
    hex::encode(h.finalize())
}

/// What a body asks for, read without today's settings (configured currencies, bounds, daily
/// limits): only to tell whether a request those settings refuse repeats the one its key was
/// first answered for. The amount takes the scale the first answer shows.
struct Asked {
    currency: String,
    amount: Decimal,
    beneficiary: BeneficiaryId,
}

impl Asked {
    fn parse(body: &[u8]) -> Option<Self> {
        let raw: RawRequest = serde_json::from_slice(body).ok()?;
        let text = match raw.amount.get() {
            quoted if quoted.starts_with('"') => serde_json::from_str::<String>(quoted).ok()?,
            bare => bare.to_string(),
        };
        let beneficiary = raw.beneficiary().ok()?;
        Some(Self {
            currency: raw.currency,
            amount: Decimal::from_str_exact(&text).ok()?,
            beneficiary,
        })
    }

    /// Whether this is the request `first` answered: its fingerprint, with the amount in the
    /// scale of the first answer's amount (an amount that does not fit it is another request).
    fn repeats(&self, first: &IdempotencyRecord) -> bool {
        let Ok(view) = serde_json::from_str::<WithdrawalView>(&first.response_body) else {
            return false;
        };
        let Ok(shown) = Decimal::from_str_exact(&view.amount) else {
            return false;
        };
        if self.amount.normalize().scale() > shown.scale() {
            return false;
        }
        let mut amount = self.amount;
        amount.rescale(shown.scale());
        fingerprint(&self.currency, amount, self.beneficiary) == first.fingerprint
    }
}

/// A JSON `amount` (a string or a number; either way its digits are read exactly, never through a
/// float) in `currency`'s scale and within its configured bounds. Requests and credits share it.
pub(crate) fn parse_bounded_amount(
    raw: &RawValue,
    currency: &Currency,
) -> Result<Amount, ApiError> {
    let amount_text = raw.get();
    let amount = if amount_text.starts_with('"') {
        let s: String = serde_json::from_str(amount_text)
            .map_err(|_| ApiError::InvalidAmount("amount is not a valid string".into()))?;
        Amount::parse(&s, currency)?
    } else if amount_text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        Amount::parse(amount_text, currency)?
    } else {
        return Err(ApiError::InvalidAmount(
            "amount must be a decimal string like \"125.50\"".into(),
        ));
    };
    within_bounds(amount, currency)
}

/// `amount` if within `currency`'s configured minimum and maximum withdrawal.
fn within_bounds(amount: Amount, currency: &Currency) -> Result<Amount, ApiError> {
    if amount.value() < currency.min_withdrawal() {
        return Err(DomainError::AmountBelowMinimum {
            min: currency.format(currency.min_withdrawal()),
            currency: currency.code().to_string(),
        }
        .into());
    }
    if amount.value() > currency.max_withdrawal() {
        return Err(DomainError::AmountAboveMaximum {
            max: currency.format(currency.max_withdrawal()),
            currency: currency.code().to_string(),
        }
        .into());
    }
    Ok(amount)
}

/// What a withdrawal of an amount would cost now (`GET /withdrawals/quote`): nothing is written
/// or reserved, and a later request is charged the fee then in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuoteView {
    pub currency: String,
    pub amount: String,
    pub fee: String,
    pub total: String,
}

/// The JSON shape of a withdrawal in every response. The bank account is always masked, and
/// shown once known: a withdrawal to a beneficiary has it from its claim into a batch on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WithdrawalView {
    pub id: String,
    pub status: String,
    pub currency: String,
    /// What the provider pays.
    pub amount: String,
    /// Charged on top, fixed at request time (`default`: answers stored before fees).
    #[serde(default)]
    pub fee: String,
    /// `amount + fee`: what the request locked.
    #[serde(default)]
    pub total: String,
    /// What a bank return gave back of the fee, once returned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fee_returned: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub beneficiary_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bank_account: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provider_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure_reason: Option<String>,
}

impl From<&Withdrawal> for WithdrawalView {
    fn from(w: &Withdrawal) -> Self {
        Self {
            id: w.id.to_string(),
            status: w.status.to_string(),
            currency: w.currency.code().to_string(),
            amount: w.amount.to_string(),
            fee: w.currency.format(w.fee),
            total: w.currency.format(w.total()),
            fee_returned: w.fee_returned.map(|f| w.currency.format(f)),
            beneficiary_id: w.destination.beneficiary_id().map(|b| b.to_string()),
            bank_account: w.destination.account().map(|a| a.masked()),
            created_at: crate::domain::timestamp(&w.created_at),
            updated_at: crate::domain::timestamp(&w.updated_at),
            batch_id: w.batch_id.map(|b| b.to_string()),
            provider_reference: w.provider_reference.clone(),
            failure_reason: w.failure_reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BalanceView {
    pub currency: String,
    pub available: String,
    pub locked: String,
}

impl From<&Balance> for BalanceView {
    fn from(b: &Balance) -> Self {
        Self {
            currency: b.currency.code().to_string(),
            available: b.currency.format(b.available),
            locked: b.currency.format(b.locked),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PageView {
    pub items: Vec<WithdrawalView>,
    pub next_cursor: Option<String>,
}

/// A created (or replayed) withdrawal response.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub status_code: u16,
    pub body: String,
    pub replayed: bool,
    pub withdrawal_id: WithdrawalId,
}

impl Created {
    /// The first answer for a key, given again; a key that first created something else is
    /// another request.
    fn replay(first: IdempotencyRecord) -> Result<Self, ApiError> {
        let Resource::Withdrawal(withdrawal_id) = first.resource else {
            return Err(ApiError::IdempotencyKeyReused);
        };
        Ok(Self {
            status_code: first.status_code,
            body: first.response_body,
            replayed: true,
            withdrawal_id,
        })
    }
}

#[derive(Clone)]
pub struct WithdrawalService {
    store: Arc<dyn Store>,
    currencies: Currencies,
    max_open: u32,
}

impl WithdrawalService {
    pub const DEFAULT_PAGE: u32 = 20;
    pub const MAX_PAGE: u32 = 100;

    pub fn new(store: Arc<dyn Store>, currencies: Currencies, max_open: u32) -> Self {
        Self {
            store,
            currencies,
            max_open,
        }
    }

    pub fn currencies(&self) -> &Currencies {
        &self.currencies
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Creates a withdrawal, or replays the first answer for `key`. The key is required: it is
    /// what makes a client's retry after a lost answer safe.
    pub async fn request(
        &self,
        user: &UserId,
        body: &[u8],
        key: IdempotencyKey,
    ) -> Result<Created, ApiError> {
        let req = match WithdrawalRequest::parse(body, &self.currencies) {
            Ok(req) => req,
            Err(refusal) => return self.replay_or(user, &key, body, refusal).await,
        };
        let withdrawal = Withdrawal::new(
            user.clone(),
            req.currency.clone(),
            req.amount,
            Destination::beneficiary(req.beneficiary),
            Utc::now(),
        );
        let answer = serde_json::to_string(&WithdrawalView::from(&withdrawal))
            .map_err(|_| ApiError::Internal)?;
        let record = IdempotencyRecord {
            user_id: user.clone(),
            key: key.clone(),
            fingerprint: req.fingerprint(),
            resource: Resource::Withdrawal(withdrawal.id),
            status_code: 201,
            response_body: answer.clone(),
            created_at: withdrawal.created_at,
        };
        match self
            .store
            .request_withdrawal(&withdrawal, Some(&record), self.max_open)
            .await
        {
            Ok(()) => {
                crate::platform::metrics::count(
                    "WithdrawalsRequested",
                    withdrawal.currency.code().as_str(),
                );
                Ok(Created {
                    status_code: 201,
                    body: answer,
                    replayed: false,
                    withdrawal_id: withdrawal.id,
                })
            }
            Err(StoreError::Refused(Refusal::IdempotencyKeyTaken(stored))) => {
                let first = super::first_record(&*self.store, user, &key, stored).await?;
                // The same request, also when today's scale spells its amount otherwise.
                let same = first.fingerprint == req.fingerprint()
                    || Asked::parse(body).is_some_and(|asked| asked.repeats(&first));
                if !same {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                Created::replay(first)
            }
            // Refused before the transaction was sent (an amount above the whole limit).
            Err(e @ StoreError::Refused(Refusal::DailyLimitExceeded(_))) => {
                self.replay_or(user, &key, body, e.into()).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The key wins over today's settings: a request they refuse (a bound or a daily limit
    /// lowered, a currency's scale or presence changed since) whose key already has a record is
    /// answered from that record, so a client's retry gets its first 201, never a refusal for a
    /// withdrawal that goes ahead. Looked up only here, on the refused path: the accepting path
    /// stays one round trip (its transaction refuses a taken key by itself).
    async fn replay_or(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        body: &[u8],
        refusal: ApiError,
    ) -> Result<Created, ApiError> {
        let Some(first) = self.store.idempotency_record(user, key).await? else {
            return Err(refusal);
        };
        match Asked::parse(body) {
            Some(asked) if asked.repeats(&first) => Created::replay(first),
            _ => Err(ApiError::IdempotencyKeyReused),
        }
    }

    /// The fee and total of a withdrawal of `amount` in `currency` under today's schedule,
    /// validated as a request would be (currency, amount, bounds); no read, no write.
    pub fn quote(
        &self,
        currency: Option<&str>,
        amount: Option<&str>,
    ) -> Result<QuoteView, ApiError> {
        let currency = self.currencies.get(currency.unwrap_or_default())?;
        let amount = within_bounds(
            Amount::parse(amount.unwrap_or_default(), currency)?,
            currency,
        )?;
        let fee = currency.fee_for(amount.value());
        Ok(QuoteView {
            currency: currency.code().to_string(),
            amount: amount.to_string(),
            fee: currency.format(fee),
            total: currency.format(amount.value() + fee),
        })
    }

    pub async fn get(&self, user: &UserId, id: &str) -> Result<WithdrawalView, ApiError> {
        Ok(WithdrawalView::from(&self.own(user, id).await?))
    }

    /// The user's own withdrawal; anything else (another user's, an id of the wrong shape, an
    /// unknown one) is the same `not_found`.
    async fn own(&self, user: &UserId, id: &str) -> Result<Withdrawal, ApiError> {
        let id = WithdrawalId::parse(id).map_err(|_| ApiError::NotFound)?;
        self.store
            .withdrawal(user, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    pub async fn list(
        &self,
        user: &UserId,
        status: Option<&str>,
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<PageView, ApiError> {
        let status = status
            .map(|s| {
                WithdrawalStatus::parse(s).ok_or_else(|| {
                    ApiError::InvalidParameter(format!("status must be one of {}", status_names()))
                })
            })
            .transpose()?;
        let limit = match limit {
            None => Self::DEFAULT_PAGE,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=Self::MAX_PAGE).contains(l))
                .ok_or_else(|| {
                    ApiError::InvalidParameter(format!("limit must be 1 to {}", Self::MAX_PAGE))
                })?,
        };
        let after = cursor
            .map(|c| {
                WithdrawalId::parse(c)
                    .map_err(|_| ApiError::InvalidParameter("cursor is not valid".into()))
            })
            .transpose()?;
        let page = self
            .store
            .list_withdrawals(
                user,
                &ListQuery {
                    status,
                    limit,
                    after,
                },
            )
            .await?;
        Ok(PageView {
            items: page.items.iter().map(WithdrawalView::from).collect(),
            next_cursor: page.next.map(|id| id.to_string()),
        })
    }

    pub async fn cancel(&self, user: &UserId, id: &str) -> Result<WithdrawalView, ApiError> {
        let w = self.own(user, id).await?;
        if w.status.cancel().is_err() {
            return Err(ApiError::NotCancellable(w.status.to_string()));
        }
        let cancelled = self
            .store
            .transition(&w, Transition::Cancel, TransitionDetails::by("user"))
            .await?;
        Ok(WithdrawalView::from(&cancelled))
    }

    pub async fn balances(&self, user: &UserId) -> Result<Vec<BalanceView>, ApiError> {
        let mut balances = self.store.balances(user).await?;
        balances.sort_by_key(|b| b.currency.code());
        Ok(balances.iter().map(BalanceView::from).collect())
    }
}

fn status_names() -> String {
    WithdrawalStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "bn_01J0000000000000000000TEST";

    fn parse(body: &str) -> Result<WithdrawalRequest, ApiError> {
        WithdrawalRequest::parse(body.replace("$B", B).as_bytes(), &Currencies::default())
    }

    #[test]
    fn string_and_number_amounts_parse_to_the_same_request() {
        let a = parse(r#"{"currency":"USD","amount":"125.50","beneficiary_id":"$B"}"#).unwrap();
        let b = parse(r#"{"currency":"USD","amount":125.5,"beneficiary_id":"$B"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        // A number with more digits than an f64 holds is still read exactly.
        let c = parse(r#"{"currency":"USD","amount":49999.99,"beneficiary_id":"$B"}"#).unwrap();
        assert_eq!(c.amount.to_string(), "49999.99");
    }

    #[test]
    fn each_invalid_field_has_its_own_code() {
        let cases = [
            (r#"{"currency":"USD""#, "invalid_json"),
            (r#"[]"#, "invalid_json"),
            (
                r#"{"currency":"USD","amount":"1","beneficiary_id":"$B","x":1}"#,
                "invalid_json",
            ),
            (
                r#"{"currency":"GBP","amount":"1","beneficiary_id":"$B"}"#,
                "invalid_currency",
            ),
            (
                r#"{"currency":"USD","amount":"1.001","beneficiary_id":"$B"}"#,
                "invalid_amount",
            ),
            (
                r#"{"currency":"USD","amount":true,"beneficiary_id":"$B"}"#,
                "invalid_amount",
            ),
            (
                r#"{"currency":"USD","amount":-5,"beneficiary_id":"$B"}"#,
                "invalid_amount",
            ),
            (
                r#"{"currency":"USD","amount":"0.99","beneficiary_id":"$B"}"#,
                "amount_below_minimum",
            ),
            (
                r#"{"currency":"USD","amount":"50000.01","beneficiary_id":"$B"}"#,
                "amount_above_maximum",
            ),
            (
                r#"{"currency":"JPY","amount":"99","beneficiary_id":"$B"}"#,
                "amount_below_minimum",
            ),
            // Money goes only to a registered beneficiary: an account of the body's own is
            // refused, alone or beside a beneficiary, valid or not.
            (
                r#"{"currency":"USD","amount":"10","bank_account":"DE89370400440532013000"}"#,
                "beneficiary_required",
            ),
            (
                r#"{"currency":"USD","amount":"10","beneficiary_id":"$B","bank_account":"DE89370400440532013000"}"#,
                "beneficiary_required",
            ),
            (
                r#"{"currency":"USD","amount":"10"}"#,
                "beneficiary_required",
            ),
            (
                r#"{"currency":"USD","amount":"10","beneficiary_id":"bn_nope"}"#,
                "invalid_parameter",
            ),
        ];
        for (body, code) in cases {
            assert_eq!(parse(body).unwrap_err().code(), code, "{body}");
        }
    }
}
