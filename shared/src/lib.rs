//! Shared core of the withdrawal pipeline: domain types, the store port and its DynamoDB adapter,
//! configuration, authentication and the API error vocabulary.

pub mod api;
pub mod auth;
pub mod check;
pub mod config;
pub mod domain;
pub mod store;
pub mod withdrawals;
