//! Step 1, money in and requests out: the user API's withdrawal use cases and the internal
//! credit API.

pub mod credits;
pub mod withdrawals;
