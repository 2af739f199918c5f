//! What operators run against the table: money-moving actions and the invariant check.

pub mod check;
pub mod operations;
