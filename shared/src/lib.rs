//! Shared core of the withdrawal pipeline: domain types, the store port and its DynamoDB adapter,
//! configuration, authentication and the API error vocabulary.

pub mod api;
pub mod auth;
pub mod batcher;
pub mod calls;
pub mod check;
pub mod config;
pub mod credits;
pub mod domain;
pub mod events;
pub mod metrics;
pub mod operations;
pub mod provider;
pub mod reconcile;
pub mod republish;
pub mod secrets;
pub mod settlement;
pub mod signature;
pub mod store;
pub mod webhook;
pub mod withdrawals;
