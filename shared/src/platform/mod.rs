//! What every function stands on: configuration and clients, secrets, metrics, and the call
//! recorder the IAM check reads.

pub mod calls;
pub mod config;
pub mod metrics;
pub mod secrets;
