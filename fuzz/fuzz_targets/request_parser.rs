#![no_main]
//! The withdrawal request body parser never panics, and whatever it accepts is valid.
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;
use shared::domain::Currencies;
use shared::requests::withdrawals::WithdrawalRequest;

fuzz_target!(|data: &[u8]| {
    let currencies = Currencies::default();
    if let Ok(req) = WithdrawalRequest::parse(data, &currencies) {
        let v = req.amount.value();
        assert!(v > Decimal::ZERO);
        assert!(v >= req.currency.min_withdrawal() && v <= req.currency.max_withdrawal());
        assert_eq!(v.scale(), req.currency.scale());
    }
});
