//! Events out: each committed change published once to EventBridge, and rebuilt from the table
//! when an operator asks.

pub mod events;
pub mod republish;
