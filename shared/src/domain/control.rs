//! What an operator switches off without a deploy: withdrawals of one currency (a provider or
//! bank incident) or of one user (a suspected takeover). A switch only stops new requests (and,
//! for a currency, new batches); money already on its way is still tracked to its end.

use super::{CurrencyCode, UserId};
use chrono::{DateTime, Utc};
use std::fmt;

/// What a switch is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ControlSubject {
    /// `operator pause --currency C`: no new request or batch in C.
    Currency(CurrencyCode),
    /// `operator block-user --user U`: no new request from U.
    User(UserId),
}

impl fmt::Display for ControlSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Currency(c) => write!(f, "currency {c}"),
            Self::User(u) => write!(f, "user {}", u.as_str()),
        }
    }
}

/// A switch as stored: on (paused, blocked) or off, and its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub subject: ControlSubject,
    /// Paused or blocked now.
    pub on: bool,
    /// Why the last change was made (required to switch on; optional to switch off).
    pub reason: Option<String>,
    /// Who made the last change (`operator:<name>`).
    pub by: String,
    pub at: DateTime<Utc>,
    /// How many changes the switch has seen: orders its events, and names each one.
    pub changes: u32,
}

impl Control {
    /// What the last change was, as the event catalogue names it.
    pub fn change_name(&self) -> &'static str {
        match (&self.subject, self.on) {
            (ControlSubject::Currency(_), true) => "currency.paused",
            (ControlSubject::Currency(_), false) => "currency.resumed",
            (ControlSubject::User(_), true) => "user.blocked",
            (ControlSubject::User(_), false) => "user.unblocked",
        }
    }
}

/// An operator's change of a switch, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlChange {
    pub subject: ControlSubject,
    pub on: bool,
    pub reason: Option<String>,
    pub by: String,
    pub at: DateTime<Utc>,
}
