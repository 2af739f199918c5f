//! Shared core of the withdrawal pipeline, one folder per step of the flow:
//! `requests` (a withdrawal or credit asked for) → `payouts` (batched to the provider, its
//! answers applied) → `publishing` (events out), with `operator` beside them. They stand on
//! `domain` (values that cannot be invalid), `store` (the persistence port and its DynamoDB
//! adapter), `http` (the API edge) and `platform` (config, secrets, metrics).

pub mod domain;
pub mod http;
pub mod operator;
pub mod payouts;
pub mod platform;
pub mod publishing;
pub mod requests;
pub mod store;
