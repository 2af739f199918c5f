//! Withdrawal fees: quoted without a write, locked with the amount in the request's one
//! transaction, fixed at request time, charged on settlement, given back by a rejection or a
//! cancel, and on a bank return by the currency's policy; the provider is paid the amount.

use integration_tests::{
    ApiRequest, BalanceView, PayoutEnv, TestEnv, TestResponse, ACCOUNTS, BENEFICIARY,
};
use serde_json::{json, Value};
use shared::domain::Currencies;
use std::time::Duration;

/// EUR: 0.25 + 0.1 %, at least 1.00, at most 20.00, given back on a return. USD: a flat 1.00,
/// kept on a return, and a daily limit of 100.
fn currencies() -> Currencies {
    Currencies::parse_config("USD:2:1:50000:100,EUR:2:1:50000,JPY:0:100:5000000")
        .unwrap()
        .with_fees("EUR:0.25:0.001:1.00:20.00,USD:1.00:0:0:0:keep")
        .unwrap()
}

fn quote(currency: &str, amount: &str) -> lambda_http::Request {
    ApiRequest::new(
        "GET",
        &format!("/withdrawals/quote?currency={currency}&amount={amount}"),
    )
    .user("quoter")
    .build()
}

fn withdraw(user: &str, key: &str, currency: &str, amount: &str) -> lambda_http::Request {
    ApiRequest::new("POST", "/withdrawals")
        .user(user)
        .header("idempotency-key", key)
        .body(
            json!({"currency": currency, "amount": amount, "beneficiary_id": BENEFICIARY})
                .to_string(),
        )
        .build()
}

fn money(r: &TestResponse) -> (String, String, String) {
    let j: Value = r.json();
    let s = |k: &str| j[k].as_str().unwrap_or_default().to_string();
    (s("amount"), s("fee"), s("total"))
}

fn triple(amount: &str, fee: &str, total: &str) -> (String, String, String) {
    (amount.into(), fee.into(), total.into())
}

#[tokio::test]
async fn a_quote_writes_nothing_and_a_request_locks_its_fee_fixed_for_good() {
    let env = TestEnv::with_config(5, currencies()).await;
    // The rounding rule: 0.25 + 1.2345 = 1.4845 → 1.48; 0.25 + 1.235 = 1.485 → 1.49; the
    // minimum below, the maximum above; a currency without a schedule is free.
    for (ccy, amount, want) in [
        ("EUR", "1234.50", triple("1234.50", "1.48", "1235.98")),
        ("EUR", "1235", triple("1235.00", "1.49", "1236.49")),
        ("EUR", "10", triple("10.00", "1.00", "11.00")),
        ("EUR", "50000", triple("50000.00", "20.00", "50020.00")),
        ("USD", "7.5", triple("7.50", "1.00", "8.50")),
        ("JPY", "1000", triple("1000", "0", "1000")),
    ] {
        let r = env.call(quote(ccy, amount)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(money(&r), want, "{ccy} {amount}");
    }
    for (ccy, amount, code) in [
        ("GBP", "10", "invalid_currency"),
        ("EUR", "10.001", "invalid_amount"),
        ("EUR", "0.5", "amount_below_minimum"),
        ("EUR", "50000.01", "amount_above_maximum"),
    ] {
        let r = env.call(quote(ccy, amount)).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, code),
            "{}",
            r.body
        );
    }
    let report = env.store.scan_all().await.unwrap();
    assert!(
        report.balances.is_empty() && report.withdrawals.is_empty(),
        "a quote writes nothing"
    );

    // 99.50 + 1.00 is more than the 100.00 there is; 99.00 + 1.00 is all of it.
    env.credit("ann", "EUR", "100").await;
    let r = env.call(withdraw("ann", "too-much", "EUR", "99.50")).await;
    assert_eq!(r.error_code(), "insufficient_funds", "{}", r.body);
    let r = env.call(withdraw("ann", "all-of-it", "EUR", "99")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(money(&r), triple("99.00", "1.00", "100.00"));
    let first = r.body.clone();
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        env.balance("ann", "EUR").await,
        BalanceView {
            available: "0.00".into(),
            locked: "100.00".into(),
            paid_out: "0.00".into(),
            credited: "100.00".into(),
        }
    );

    // The schedule changes (a deploy): the quote says so, the withdrawal keeps its fee, and a
    // replay of its request answers the first fee.
    let dearer = Currencies::default()
        .with_fees("EUR:5.00:0.01:0:0")
        .unwrap();
    let q = env.call_with(&dearer, quote("EUR", "99")).await;
    assert_eq!(money(&q), triple("99.00", "5.99", "104.99"));
    let replay = env
        .call_with(&dearer, withdraw("ann", "all-of-it", "EUR", "99"))
        .await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.body, first);
    let got = env
        .call_with(
            &dearer,
            ApiRequest::new("GET", &format!("/withdrawals/{id}"))
                .user("ann")
                .build(),
        )
        .await;
    assert_eq!(money(&got), triple("99.00", "1.00", "100.00"));

    // A cancel gives the amount and the fee back, whatever the schedule is now.
    let cancelled = env
        .call_with(
            &dearer,
            ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
                .user("ann")
                .build(),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(env.balance("ann", "EUR").await.available, "100.00");
    assert_eq!(env.fees_paid("ann", "EUR").await, "0.00");

    // The daily limit counts the amount, not the fee: 100.00 (+ 1.00) fits the limit of 100.
    env.credit("bob", "USD", "200").await;
    let r = env.call(withdraw("bob", "day-1", "USD", "100")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(money(&r), triple("100.00", "1.00", "101.00"));
    let r = env.call(withdraw("bob", "day-2", "USD", "1")).await;
    assert_eq!(r.error_code(), "daily_limit_exceeded", "{}", r.body);
    assert_eq!(env.balance("bob", "USD").await.locked, "101.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn settling_charges_the_fee_rejecting_gives_it_back_and_a_return_follows_the_policy() {
    // The batcher and the webhook run under the opposite return policies and other fees (a
    // later deploy): what the requests fixed is what happens.
    let later = Currencies::parse_config("USD:2:1:50000:100,EUR:2:1:50000,JPY:0:100:5000000")
        .unwrap()
        .with_fees("EUR:3.00:0:0:0:keep,USD:2.00:0:0:0")
        .unwrap();
    let p = PayoutEnv::with_callbacks(later).await;
    let env = &p.env;
    // (user, currency, account, the status it ends in)
    let cases = [
        ("paid", "EUR", ACCOUNTS[0], "SETTLED"),
        ("failed", "EUR", ACCOUNTS[1], "REJECTED"),
        ("refunded", "EUR", ACCOUNTS[2], "RETURNED"),
        ("kept", "USD", ACCOUNTS[2], "RETURNED"),
    ];
    for (user, ccy, account, _) in cases {
        env.credit(user, ccy, "100").await;
        let beneficiary = env.beneficiary(user, account).await;
        let r = env
            .call_with(
                &currencies(),
                ApiRequest::new("POST", "/withdrawals")
                    .user(user)
                    .fresh_key()
                    .body(
                        json!({"currency": ccy, "amount": "60.00", "beneficiary_id": beneficiary})
                            .to_string(),
                    )
                    .build(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(money(&r), triple("60.00", "1.00", "61.00"));
    }
    p.run(PayoutEnv::config()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let views = loop {
        let mut views = Vec::new();
        for (user, ..) in cases {
            let list = env
                .call(ApiRequest::new("GET", "/withdrawals").user(user).build())
                .await
                .json();
            views.push(list["items"][0].clone());
        }
        if views
            .iter()
            .zip(cases)
            .all(|(v, (.., status))| v["status"] == status)
        {
            break views;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks did not finish: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // (available, paid_out, fees) afterwards, and what the return gave back of the fee.
    let expect = [
        ("paid", "EUR", ("39.00", "60.00", "1.00"), None),
        ("failed", "EUR", ("100.00", "0.00", "0.00"), None),
        ("refunded", "EUR", ("100.00", "0.00", "0.00"), Some("1.00")),
        ("kept", "USD", ("99.00", "0.00", "1.00"), Some("0.00")),
    ];
    for ((user, ccy, (available, paid_out, fees), returned), view) in expect.iter().zip(&views) {
        let b = env.balance(user, ccy).await;
        assert_eq!(
            (
                b.available.as_str(),
                b.locked.as_str(),
                b.paid_out.as_str(),
                env.fees_paid(user, ccy).await.as_str()
            ),
            (*available, "0.00", *paid_out, *fees),
            "{user}"
        );
        assert_eq!(view["fee"], "1.00", "{user}");
        assert_eq!(view["fee_returned"].as_str(), *returned, "{user}");
    }
    // The provider paid the amounts alone, the fee never (the failed one is not in its ledger).
    let ledger = p.sandbox.ledger();
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    assert!(ledger.iter().all(|e| e.amount == "60.00"), "{ledger:?}");
    // The house's revenue is the users' fees: one kept by the settled payout, one by the USD
    // return; `operator check` proves each user's part against their withdrawals.
    let report = env.store.scan_all().await.unwrap();
    assert_eq!(
        shared::operator::check::fee_revenue(&report),
        [
            "EUR: fees 1.00 from 1 user(s)",
            "USD: fees 1.00 from 1 user(s)"
        ]
    );
    env.assert_conserved().await;
}
