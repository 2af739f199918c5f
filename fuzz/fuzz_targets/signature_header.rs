#![no_main]
//! The `Payout-Signature` header parser never panics and never accepts a header it did not sign.
use libfuzzer_sys::fuzz_target;
use shared::payouts::signature::{verify, WebhookSecret};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else { return };
    let secret = WebhookSecret::new("whsec_fuzz_secret_0123").unwrap();
    let body = b"{\"id\":\"evt\"}";
    if verify(Some(header), body, std::slice::from_ref(&secret), 1_000, 300).is_ok() {
        // Only a header carrying the true signature of this body can pass.
        let t: i64 = header
            .split(',')
            .find_map(|p| p.trim().strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .unwrap();
        let expected = secret.sign(t, body);
        let sig = expected.split("v1=").nth(1).unwrap();
        assert!(header.contains(sig));
    }
});
