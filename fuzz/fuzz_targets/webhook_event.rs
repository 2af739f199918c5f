#![no_main]
//! The provider event parser never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shared::payouts::webhook::ProviderEvent::parse(data);
});
