//! The operator's switches: pause or resume a currency, block or unblock a user. Each change is
//! conditioned on the switch being the other way, written with its actor and reason, and heard
//! by the platform as an event (`currency.paused`, `user.blocked`, … in docs/events.md).

use super::operations::OperationError;
use crate::domain::{Control, ControlChange, ControlSubject, Currencies, UserId};
use crate::store::{ControlStore, Refusal, StoreError};
use chrono::Utc;

/// The longest reason kept with a switch (it travels in events and the item).
pub const MAX_REASON_LEN: usize = 200;

/// What an operator names: a currency code or a user id, checked before anything is written.
pub enum Target<'a> {
    Currency(&'a str),
    User(&'a str),
}

/// Switches `target` on (pause, block: `reason` required) or off (resume, unblock). A currency
/// must be one the pipeline is configured with; a switch already as asked writes nothing and
/// says so.
pub async fn switch<S: ControlStore + ?Sized>(
    store: &S,
    currencies: &Currencies,
    target: Target<'_>,
    on: bool,
    reason: Option<&str>,
    by: &str,
) -> Result<Control, OperationError> {
    let subject = match target {
        Target::Currency(code) => ControlSubject::Currency(
            currencies
                .get(code)
                .map_err(|e| OperationError::Refused(e.to_string()))?
                .code(),
        ),
        Target::User(user) => ControlSubject::User(
            UserId::parse(user).map_err(|e| OperationError::Refused(e.to_string()))?,
        ),
    };
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    match reason {
        None if on => {
            return Err(OperationError::Refused(
                "a reason is required to pause or block".into(),
            ))
        }
        Some(r) if r.chars().count() > MAX_REASON_LEN => {
            return Err(OperationError::Refused(format!(
                "the reason is longer than {MAX_REASON_LEN} characters"
            )))
        }
        _ => {}
    }
    let change = ControlChange {
        subject,
        on,
        reason: reason.map(str::to_string),
        by: by.to_string(),
        at: Utc::now(),
    };
    match store.set_control(&change).await {
        Ok(control) => Ok(control),
        Err(StoreError::Refused(Refusal::ControlUnchanged(what))) => {
            Err(OperationError::Refused(format!(
                "{what} is already {}: nothing changed",
                if on {
                    on_word(&change.subject)
                } else {
                    off_word(&change.subject)
                }
            )))
        }
        Err(e) => Err(e.into()),
    }
}

fn on_word(subject: &ControlSubject) -> &'static str {
    match subject {
        ControlSubject::Currency(_) => "paused",
        ControlSubject::User(_) => "blocked",
    }
}

fn off_word(subject: &ControlSubject) -> &'static str {
    match subject {
        ControlSubject::Currency(_) => "not paused",
        ControlSubject::User(_) => "not blocked",
    }
}
