//! The HTTP edge: the API's error vocabulary and who is calling. The only place `lambda_http`
//! appears in the core.

pub mod api;
pub mod auth;
