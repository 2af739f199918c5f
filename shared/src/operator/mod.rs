//! What operators run against the table: money-moving actions, the switches (pause, block)
//! and the invariant check.

pub mod check;
pub mod controls;
pub mod operations;
