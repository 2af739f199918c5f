use std::fmt;

/// What one provider callback event did, recorded with the event so its repeats are recognised (and
/// answered, with HTTP 200 for every one, so the provider stops retrying).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallbackOutcome {
    /// It moved the withdrawal (the record is written by the same transaction).
    Applied,
    /// The withdrawal already was where the event puts it.
    NoChange,
    /// A repeat of an event already recorded.
    Duplicate,
    /// It contradicts what we know (another amount or currency, paid after failed, …): never
    /// applied, left to an operator.
    Conflict,
    /// Its reference is not a member of its batch.
    UnknownWithdrawal,
}

impl CallbackOutcome {
    pub const ALL: [CallbackOutcome; 5] = [
        Self::Applied,
        Self::NoChange,
        Self::Duplicate,
        Self::Conflict,
        Self::UnknownWithdrawal,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::NoChange => "no_change",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
            Self::UnknownWithdrawal => "unknown_withdrawal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for CallbackOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_stored_names() {
        for o in CallbackOutcome::ALL {
            assert_eq!(CallbackOutcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(CallbackOutcome::parse("applied "), None);
    }
}
