//! Steps 2 and 3: batching pending withdrawals to the provider, and applying its answers
//! (callbacks, status reads, reconciliation).

pub mod batcher;
pub mod provider;
pub mod reconcile;
pub mod settlement;
pub mod signature;
pub mod webhook;
