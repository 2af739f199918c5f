//! Fuzzed input: generated requests and callbacks, nothing but 4xx and no money moved.

use super::{audit, scale, scenario, Row};
use integration_tests::{
    deliver, now_secs, sign, webhook_request, ApiRequest, PayoutEnv, TestEnv, ACCOUNTS,
    BENEFICIARY, IBAN, WEBHOOK_SECRET,
};
use proptest::prelude::{any, prop_assert, prop_oneof, Just, Strategy};
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;

#[test]
fn s7_fuzzed_input() {
    scenario(|rt| vec![fuzzed_input(rt)]);
}

// 7 ------------------------------------------------------------------------------------------
fn fuzzed_input(rt: &tokio::runtime::Runtime) -> Row {
    let (env, p) = rt.block_on(async {
        let p = PayoutEnv::new(|_| {}).await;
        // Room for every accepted request: no open-withdrawal cap, balances far above the sum
        // of the largest amounts the valid generator can draw.
        let env = TestEnv::with_max_open(u32::MAX).await;
        env.credit("fuzz", "USD", "10000000").await;
        env.credit("fuzz", "EUR", "10000000").await;
        env.credit("fuzz", "JPY", "1000000000").await;
        (env, p)
    });
    let webhook = p.webhook_app(&[WEBHOOK_SECRET]);
    let tally = Tally::default();
    fuzz_requests(rt, &env, &tally);
    fuzz_queries(rt, &env, &tally);
    fuzz_callbacks(rt, &webhook, &tally);
    let cases = scale(5000) + scale(2000) + scale(3000);
    // A realistic mix reaches the accepting path at least a third of the time.
    let accepted_share = tally.created.get() as f64 / scale(5000) as f64;
    let too_few_accepted = usize::from(accepted_share < 1.0 / 3.0);

    // Rejected input changed nothing: the table holds exactly the accepted withdrawals.
    let (failures, lost) = rt.block_on(async {
        let report = env.store.scan_all().await.unwrap();
        let mut f = report.withdrawals.len().abs_diff(tally.created.get());
        let locked: Decimal = report.balances.iter().map(|(_, b)| b.locked).sum();
        if locked != tally.created_total.get() {
            f += 1;
        }
        let (v, lost) = audit(&env, None).await;
        (f + v, lost)
    });
    Row {
        scenario: "7. fuzzed input (proptest)",
        operations: cases,
        failures: failures + tally.server_errors.get() + too_few_accepted,
        money_lost: lost,
        note: format!(
            "request bodies and keys, query strings, webhook bodies and signatures: 0 panics, 0 5xx; {} of {} requests accepted ({:.0}%), everything else changed nothing",
            tally.created.get(),
            scale(5000),
            accepted_share * 100.0
        ),
    }
}

/// What the fuzzed calls did: withdrawals created (and their sum), properties broken.
#[derive(Default)]
struct Tally {
    created: std::cell::Cell<usize>,
    created_total: std::cell::Cell<Decimal>,
    server_errors: std::cell::Cell<usize>,
}

/// Request bodies and keys: half as real clients send them, half anything.
fn request_strategy() -> impl Strategy<Value = (String, Option<String>)> {
    let currency = prop_oneof![
        Just("USD".to_string()),
        Just("JPY".to_string()),
        Just("usd".to_string()),
        "[A-Z]{0,4}",
        any::<String>()
    ];
    let amount = prop_oneof![
        "-?[0-9]{0,7}(\\.[0-9]{0,4})?".prop_map(serde_json::Value::String),
        "[0-9]{1,6}(\\.[0-9]{1,3})?(e-?[0-9])?"
            .prop_map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null)),
        any::<String>().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<bool>().prop_map(|b| serde_json::json!(b)),
        Just(serde_json::Value::Null),
    ];
    // The user's registered one, an id that is nobody's, an arbitrary string.
    let beneficiary = prop_oneof![
        2 => Just(BENEFICIARY.to_string()),
        1 => Just(shared::domain::BeneficiaryId::new().to_string()),
        1 => any::<String>()
    ];
    // Sometimes an account of the body's own too, which is always refused.
    let account = proptest::option::of(prop_oneof![
        Just(IBAN.to_string()),
        Just(ACCOUNTS[4].to_string()),
        "[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}",
        any::<String>()
    ]);
    let structured = (
        currency,
        amount,
        beneficiary,
        account,
        proptest::option::of(("[a-z_]{1,8}", any::<String>())),
    )
        .prop_map(|(c, a, b, account, extra)| {
            let mut m = serde_json::json!({"currency": c, "amount": a, "beneficiary_id": b});
            if let Some(account) = account {
                m["bank_account"] = serde_json::Value::String(account);
            }
            if let Some((k, v)) = extra {
                m[k] = serde_json::Value::String(v);
            }
            m.to_string()
        });
    let body = prop_oneof![3 => structured, 1 => any::<String>(), 1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned())];
    // Mostly valid keys (a create needs one); the rest are missing or arbitrary.
    let key = prop_oneof![
        2 => "[!-~]{1,64}".prop_map(Some),
        1 => proptest::option::of("[ -~]{0,300}"),
    ];
    // What real clients send: a configured currency, an amount within its bounds and scale, a
    // valid account and a key. Half the cases, so the accepting path is fuzzed as hard as the
    // refusing ones (the mixed generator above alone is accepted a few times in 10,000).
    let valid_amount = prop_oneof![
        (
            "[1-9][0-9]{0,3}(\\.[0-9]{1,2})?",
            prop_oneof![Just("USD"), Just("EUR")]
        ),
        ("[1-9][0-9]{2,5}", Just("JPY")),
    ];
    let valid = (valid_amount, "[!-~]{8,64}").prop_map(|((amount, currency), key)| {
        let body =
            serde_json::json!({"currency": currency, "amount": amount, "beneficiary_id": BENEFICIARY});
        (body.to_string(), Some(key))
    });
    prop_oneof![1 => valid, 1 => (body, key)]
}

/// `POST /withdrawals`: never a 5xx; every 201 counted.
fn fuzz_requests(rt: &tokio::runtime::Runtime, env: &TestEnv, tally: &Tally) {
    let request = request_strategy();
    let mut runner = TestRunner::new(Config {
        cases: scale(5000) as u32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request, |(body, key)| {
            let mut e = ApiRequest::new("POST", "/withdrawals")
                .user("fuzz")
                .body(body.clone());
            if let Some(k) = &key {
                e = e.header("idempotency-key", k);
            }
            let r = rt.block_on(env.call(e.build()));
            prop_assert!(r.status < 500, "{} for {body:?}: {}", r.status, r.body);
            if r.status == 201 && !r.replayed {
                tally.created.set(tally.created.get() + 1);
                tally.created_total.set(
                    tally.created_total.get()
                        + r.json()["amount"]
                            .as_str()
                            .unwrap()
                            .parse::<Decimal>()
                            .unwrap(),
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| {
            tally.server_errors.set(tally.server_errors.get() + 1);
            eprintln!("request fuzz: {e}");
        });
}

/// `GET /withdrawals` with any query: 200 or 400, nothing else.
fn fuzz_queries(rt: &tokio::runtime::Runtime, env: &TestEnv, tally: &Tally) {
    let query = (
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
    );
    let mut runner = TestRunner::new(Config {
        cases: scale(2000) as u32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&query, |(status, limit, cursor)| {
            let mut e = ApiRequest::new("GET", "/withdrawals").user("fuzz");
            let mut params = serde_json::Map::new();
            for (k, v) in [("status", status), ("limit", limit), ("cursor", cursor)] {
                if let Some(v) = v {
                    params.insert(k.into(), serde_json::Value::String(v));
                }
            }
            e = e.query(params);
            let r = rt.block_on(env.call(e.build()));
            prop_assert!(
                r.status == 200 || r.status == 400,
                "{}: {}",
                r.status,
                r.body
            );
            Ok(())
        })
        .unwrap_or_else(|e| {
            tally.server_errors.set(tally.server_errors.get() + 1);
            eprintln!("query fuzz: {e}");
        });
}

/// Callback bodies and signatures: any body, mostly signed correctly.
fn callback_strategy() -> impl Strategy<Value = (String, Option<Option<String>>)> {
    let event_body = prop_oneof![
        any::<String>(),
        ("[a-z._]{0,20}", any::<String>(), "(bt|wd)_[0-9A-Z]{0,30}", "(bt|wd)_[0-9A-Z]{0,30}").prop_map(|(t, id, b, r)| {
            serde_json::json!({"id": id, "type": t, "data": {"batch_id": b, "reference": r}}).to_string()
        }),
        (prop_oneof![Just("payout.paid"), Just("payout.failed"), Just("payout.returned")], "[ -~]{1,40}").prop_map(|(t, id)| {
            serde_json::json!({"id": id, "type": t, "data": {"batch_id": shared::domain::BatchId::new().to_string(), "reference": shared::domain::WithdrawalId::new().to_string()}}).to_string()
        }),
    ];
    let signature =
        prop_oneof![3 => Just(None), 1 => proptest::option::of("[ -~]{0,120}").prop_map(Some)];
    (event_body, signature)
}

/// Callbacks: never a 5xx; a 200 only for an unknown withdrawal or a duplicate.
fn fuzz_callbacks(rt: &tokio::runtime::Runtime, webhook: &provider_webhook::App, tally: &Tally) {
    let callback = callback_strategy();
    let mut runner = TestRunner::new(Config {
        cases: scale(3000) as u32,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&callback, |(body, sig)| {
            let header = match sig {
                None => Some(sign(&body, WEBHOOK_SECRET, now_secs())),
                Some(s) => s,
            };
            let r = rt.block_on(deliver(webhook, webhook_request(&body, header)));
            prop_assert!(r.status < 500, "{}: {}", r.status, r.body);
            if r.status == 200 {
                prop_assert!(
                    r.json()["status"] == "unknown_withdrawal" || r.json()["status"] == "duplicate",
                    "{}",
                    r.body
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| {
            tally.server_errors.set(tally.server_errors.get() + 1);
            eprintln!("webhook fuzz: {e}");
        });
}
