//! Registered destinations: a withdrawal is paid only to one of its owner's beneficiaries, once
//! that beneficiary's cooling-off has passed, and to the account it had when the withdrawal was
//! requested. Its checks are conditions of the request's one transaction; the batcher copies the
//! account onto the withdrawal in the claim.

use integration_tests::{
    withdrawal_body, ApiRequest, BalanceView, PayoutEnv, TestEnv, TestResponse, ACCOUNTS,
    BENEFICIARY, IBAN,
};
use serde_json::{json, Value};
use shared::domain::{Destination, UserId, WithdrawalId, WithdrawalStatus};
use shared::requests::beneficiaries::BeneficiaryRules;
use shared::store::Store;

fn rules(cooling_off_secs: i64, max_per_user: u32) -> BeneficiaryRules {
    BeneficiaryRules {
        cooling_off: chrono::Duration::seconds(cooling_off_secs),
        max_per_user,
    }
}

fn with_rules(env: &mut TestEnv, rules: BeneficiaryRules) {
    env.app = env.app.clone().with_beneficiary_rules(rules);
}

fn body(account: &str, holder: &str) -> String {
    json!({"bank_account": account, "holder_name": holder, "label": "Main"}).to_string()
}

async fn add(env: &TestEnv, user: &str, key: &str, body: String) -> TestResponse {
    env.call(
        ApiRequest::new("POST", "/beneficiaries")
            .user(user)
            .header("idempotency-key", key)
            .body(body)
            .build(),
    )
    .await
}

async fn list(env: &TestEnv, user: &str) -> Vec<Value> {
    let r = env
        .call(ApiRequest::new("GET", "/beneficiaries").user(user).build())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["items"].as_array().unwrap().clone()
}

async fn remove(env: &TestEnv, user: &str, id: &str) -> TestResponse {
    env.call(
        ApiRequest::new("DELETE", &format!("/beneficiaries/{id}"))
            .user(user)
            .build(),
    )
    .await
}

async fn withdraw_to(env: &TestEnv, user: &str, beneficiary: &str, amount: &str) -> TestResponse {
    env.call(
        ApiRequest::new("POST", "/withdrawals")
            .user(user)
            .fresh_key()
            .body(
                json!({"currency": "EUR", "amount": amount, "beneficiary_id": beneficiary})
                    .to_string(),
            )
            .build(),
    )
    .await
}

fn untouched(credited: &str) -> BalanceView {
    BalanceView {
        available: credited.into(),
        locked: "0.00".into(),
        paid_out: "0.00".into(),
        credited: credited.into(),
    }
}

#[tokio::test]
async fn a_beneficiary_is_added_once_per_key_listed_masked_and_refused_when_invalid() {
    let mut env = TestEnv::new().await;
    with_rules(&mut env, rules(3600, 10));
    let first = add(
        &env,
        "ann",
        "b-1",
        body("DE89 3704 0044 0532 0130 00", " Ann Lee "),
    )
    .await;
    assert_eq!(
        (first.status, first.replayed),
        (201, false),
        "{}",
        first.body
    );
    let b = first.json();
    assert_eq!(b["bank_account"], "DE89…3000");
    assert_eq!(b["holder_name"], "Ann Lee");
    assert_eq!(b["label"], "Main");
    assert!(!first.body.contains(IBAN), "full account number leaked");
    let created = chrono::DateTime::parse_from_rfc3339(b["created_at"].as_str().unwrap()).unwrap();
    let usable = chrono::DateTime::parse_from_rfc3339(b["usable_from"].as_str().unwrap()).unwrap();
    assert_eq!(usable - created, chrono::Duration::seconds(3600));

    // The same body under the same key (spelled otherwise) is the first answer; another body
    // under it is refused.
    let again = add(
        &env,
        "ann",
        "b-1",
        body("de89370400440532013000", "Ann Lee"),
    )
    .await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body);
    let other = add(&env, "ann", "b-1", body(ACCOUNTS[1], "Ann Lee")).await;
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (422, "idempotency_key_reused")
    );
    // A key first used for a withdrawal is another request here too.
    env.credit("ann", "EUR", "100").await;
    let w = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("ann")
                .header("idempotency-key", "shared-key")
                .body(withdrawal_body("EUR", "10"))
                .build(),
        )
        .await;
    assert_eq!(w.status, 201, "{}", w.body);
    let crossed = add(&env, "ann", "shared-key", body(ACCOUNTS[1], "Ann Lee")).await;
    assert_eq!(crossed.error_code(), "idempotency_key_reused");

    for (bad, code) in [
        (
            body("DE89370400440532013001", "Ann"),
            "invalid_bank_account",
        ),
        (body(IBAN, ""), "invalid_beneficiary"),
        (body(IBAN, &"x".repeat(71)), "invalid_beneficiary"),
        (json!({"bank_account": IBAN}).to_string(), "invalid_json"),
        (
            json!({"bank_account": IBAN, "holder_name": "A", "user_id": "bob"}).to_string(),
            "invalid_json",
        ),
    ] {
        let r = add(&env, "ann", &format!("bad-{}", ulid::Ulid::new()), bad).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, code),
            "{}",
            r.body
        );
    }
    let missing_key = env
        .call(
            ApiRequest::new("POST", "/beneficiaries")
                .user("ann")
                .body(body(IBAN, "Ann"))
                .build(),
        )
        .await;
    assert_eq!(missing_key.error_code(), "missing_idempotency_key");
    // Only what was added is listed: the one above and the test beneficiary `credit` adds.
    let listed = list(&env, "ann").await;
    let listed_ids: Vec<&str> = listed.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids.len(), 2, "{listed:?}");
    assert!(listed_ids.contains(&b["id"].as_str().unwrap()));
    assert!(listed_ids.contains(&BENEFICIARY));
    assert!(
        list(&env, "bob").await.is_empty(),
        "another user sees none of them"
    );
}

#[tokio::test]
async fn a_withdrawal_names_only_a_usable_beneficiary_of_its_own() {
    let mut env = TestEnv::new().await;
    with_rules(&mut env, rules(3600, 10));
    env.credit("cat", "EUR", "100").await;
    env.credit("dan", "EUR", "100").await;
    let cooling = add(&env, "cat", "c-1", body(ACCOUNTS[0], "Cat"))
        .await
        .json();
    let cooling_id = cooling["id"].as_str().unwrap();
    let dans = env.beneficiary("dan", ACCOUNTS[1]).await;

    let r = withdraw_to(&env, "cat", cooling_id, "10").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "beneficiary_cooling_off"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(cooling["usable_from"].as_str().unwrap()),
        "the answer says from when: {}",
        r.body
    );
    // Another user's beneficiary is not found under the caller's key: unknown, like one that
    // never existed.
    for other in [
        dans.as_str(),
        &shared::domain::BeneficiaryId::new().to_string(),
    ] {
        let r = withdraw_to(&env, "cat", other, "10").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (422, "unknown_beneficiary"),
            "{}",
            r.body
        );
    }
    // An account of the body's own is never paid, valid or not.
    let raw = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("cat")
                .fresh_key()
                .body(
                    json!({"currency": "EUR", "amount": "10", "bank_account": ACCOUNTS[0]})
                        .to_string(),
                )
                .build(),
        )
        .await;
    assert_eq!(
        (raw.status, raw.error_code().as_str()),
        (400, "beneficiary_required")
    );
    assert_eq!(env.balance("cat", "EUR").await, untouched("100.00"));
    let listed = env
        .call(ApiRequest::new("GET", "/withdrawals").user("cat").build())
        .await;
    assert_eq!(listed.json()["items"], json!([]), "nothing was written");

    // Once its cooling-off is over it is usable (the test beneficiary has none).
    let ok = withdraw_to(&env, "cat", BENEFICIARY, "10").await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert_eq!(ok.json()["beneficiary_id"], BENEFICIARY);
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_removed_beneficiary_takes_no_new_withdrawal_but_those_requested_are_paid_to_it() {
    let p = PayoutEnv::new(|_| {}).await;
    let env = &p.env;
    env.credit("eve", "EUR", "200").await;
    let chosen = env.beneficiary("eve", ACCOUNTS[3]).await;
    let r = withdraw_to(env, "eve", &chosen, "60.00").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();

    let removed = remove(env, "eve", &chosen).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(removed.json()["removed_at"].is_string());
    assert!(
        list(env, "eve")
            .await
            .iter()
            .all(|b| b["id"].as_str() != Some(&chosen)),
        "a removed one is not listed"
    );
    // Removing it again (a retry after a lost answer) answers it as removed the first time.
    let again = remove(env, "eve", &chosen).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["removed_at"], removed.json()["removed_at"]);
    for unknown in [
        shared::domain::BeneficiaryId::new().to_string(),
        "nope".into(),
    ] {
        assert_eq!(remove(env, "eve", &unknown).await.status, 404);
    }
    assert_eq!(
        remove(env, "mallory", &chosen).await.status,
        404,
        "not theirs"
    );
    let late = withdraw_to(env, "eve", &chosen, "10").await;
    assert_eq!(
        (late.status, late.error_code().as_str()),
        (422, "beneficiary_removed")
    );

    // The withdrawal asked for before the removal goes where its owner chose then.
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["EUR"].claimed, 1);
    p.settle_from_status().await;
    let w = env
        .store
        .withdrawal(
            &UserId::parse("eve").unwrap(),
            WithdrawalId::parse(&id).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.status, WithdrawalStatus::Settled);
    assert_eq!(
        w.destination.account().map(|a| a.expose().to_string()),
        Some(ACCOUNTS[3].to_string()),
        "the claim copied the beneficiary's account onto the withdrawal"
    );
    let ledger = p.sandbox.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(
        (
            ledger[0].reference.as_str(),
            ledger[0].bank_account.as_str()
        ),
        (id.as_str(), ACCOUNTS[3])
    );
    let view = env
        .call(
            ApiRequest::new("GET", &format!("/withdrawals/{id}"))
                .user("eve")
                .build(),
        )
        .await
        .json();
    assert_eq!(
        view["bank_account"], "NL91…4300",
        "masked, once claimed: {view}"
    );
    assert_eq!(
        env.balance("eve", "EUR").await,
        BalanceView {
            available: "140.00".into(),
            locked: "0.00".into(),
            paid_out: "60.00".into(),
            credited: "200.00".into()
        }
    );
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_user_has_at_most_the_configured_number_of_beneficiaries() {
    let mut env = TestEnv::new().await;
    with_rules(&mut env, rules(0, 2));
    let a = add(&env, "fay", "f-1", body(ACCOUNTS[0], "Fay")).await;
    let b = add(&env, "fay", "f-2", body(ACCOUNTS[1], "Fay")).await;
    assert_eq!((a.status, b.status), (201, 201));
    let c = add(&env, "fay", "f-3", body(ACCOUNTS[2], "Fay")).await;
    assert_eq!(
        (c.status, c.error_code().as_str()),
        (409, "too_many_beneficiaries")
    );
    assert_eq!(
        list(&env, "fay").await.len(),
        2,
        "the refused one was not written"
    );
    let a_id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(remove(&env, "fay", &a_id).await.status, 200);
    let c = add(&env, "fay", "f-3", body(ACCOUNTS[2], "Fay")).await;
    assert_eq!(c.status, 201, "a removal makes room: {}", c.body);
    // Other users count their own.
    assert_eq!(
        add(&env, "gus", "g-1", body(ACCOUNTS[0], "Gus"))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn a_withdrawal_recorded_with_its_account_inline_still_completes() {
    let p = PayoutEnv::new(|_| {}).await;
    p.env.credit("old", "EUR", "50").await;
    let eur = p.env.currencies.get("EUR").unwrap().clone();
    let w = shared::domain::Withdrawal::new(
        UserId::parse("old").unwrap(),
        eur.clone(),
        shared::domain::Amount::parse("20", &eur).unwrap(),
        Destination::Account(shared::domain::BankAccount::parse(ACCOUNTS[4]).unwrap()),
        chrono::Utc::now(),
    );
    p.env.store.request_withdrawal(&w, None, 5).await.unwrap();
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["EUR"].claimed, 1);
    p.settle_from_status().await;
    assert_eq!(p.reload(&w).await.status, WithdrawalStatus::Settled);
    let ledger = p.sandbox.ledger();
    assert_eq!(ledger[0].bank_account, ACCOUNTS[4]);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_request_to_a_beneficiary_is_one_transaction_and_the_batcher_reads_them_in_bulk() {
    let p = PayoutEnv::new(|_| {}).await;
    let env = &p.env;
    env.credit("hub", "EUR", "1000").await;
    let (counter, service) = env.counted_service();
    let body = withdrawal_body("EUR", "10");
    service
        .request(
            &UserId::parse("hub").unwrap(),
            body.as_bytes(),
            shared::domain::IdempotencyKey::parse("one-trip").unwrap(),
        )
        .await
        .unwrap();
    let counts = counter.take_counts();
    assert_eq!(
        counts,
        std::collections::BTreeMap::from([("TransactWriteItems".to_string(), 1)]),
        "the beneficiary's checks ride in the request's one transaction"
    );

    // 150 withdrawals to 150 users' beneficiaries: the batcher resolves them in two reads of
    // 100 keys at most (one read of the page's distinct beneficiaries), not one per withdrawal.
    integration_tests::seed_pending(
        &env.store,
        &env.currencies,
        "bulk",
        "EUR",
        "1.00",
        150,
        1,
        ACCOUNTS[0],
    )
    .await;
    let counter = shared::platform::calls::CallRecorder::counting();
    let store = std::sync::Arc::new(
        shared::store::DynamoStore::new(
            integration_tests::counting_client(&counter),
            env.store.table_name(),
            env.currencies.clone(),
        )
        .with_pending_shards(env.store.pending_shards()),
    );
    let summary = p
        .batcher_on(store, PayoutEnv::config())
        .run(std::time::Instant::now() + std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(summary.currencies["EUR"].claimed, 151);
    let reads = counter
        .take_counts()
        .get("BatchGetItem")
        .copied()
        .unwrap_or(0);
    // One read for the pauses of the run, at most one per 100 distinct beneficiaries.
    assert!(reads <= 1 + 2, "BatchGetItem calls: {reads}");
    p.settle_from_status().await;
    assert!(p
        .sandbox
        .ledger()
        .iter()
        .all(|e| e.bank_account == IBAN || e.bank_account == ACCOUNTS[0]));
    env.assert_conserved().await;
}

#[tokio::test]
async fn a_beneficiary_the_batcher_cannot_read_holds_only_its_own_withdrawal() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let p = PayoutEnv::new(|_| {}).await;
    let env = &p.env;
    let mut ids = Vec::new();
    for user in ["fine", "odd", "gone"] {
        env.credit(user, "EUR", "100").await;
        let r = withdraw_to(env, user, BENEFICIARY, "10").await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let key = |user: &str| {
        (
            AttributeValue::S(format!("USER#{user}")),
            AttributeValue::S(format!("BENEFICIARY#{BENEFICIARY}")),
        )
    };
    // One no longer passes today's rules (a holder longer than the limit, as a later release's
    // stricter rules or a hand-written item would leave it); one is gone from the table.
    let (pk, sk) = key("odd");
    env.store
        .client()
        .update_item()
        .table_name(env.store.table_name())
        .key("PK", pk)
        .key("SK", sk)
        .update_expression("SET holder_name = :h")
        .expression_attribute_values(":h", AttributeValue::S("x".repeat(500)))
        .send()
        .await
        .unwrap();
    let (pk, sk) = key("gone");
    env.store
        .client()
        .delete_item()
        .table_name(env.store.table_name())
        .key("PK", pk)
        .key("SK", sk)
        .send()
        .await
        .unwrap();

    let summary = p.run(PayoutEnv::config()).await;
    let eur = &summary.currencies["EUR"];
    assert_eq!(
        (eur.claimed, eur.unresolved, eur.errors),
        (1, 2, 2),
        "{summary:?}"
    );
    assert_eq!(summary.errors.len(), 2, "each is a run error (alarmed)");
    p.settle_from_status().await;
    let ledger = p.sandbox.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].reference, ids[0]);
    // The other two wait, unpaid, and their owners can still take their money back.
    for (user, id) in [("odd", &ids[1]), ("gone", &ids[2])] {
        let got = env
            .call(
                ApiRequest::new("GET", &format!("/withdrawals/{id}"))
                    .user(user)
                    .build(),
            )
            .await;
        assert_eq!(got.json()["status"], "PENDING", "{}", got.body);
        let cancelled = env
            .call(
                ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
                    .user(user)
                    .build(),
            )
            .await;
        assert_eq!(cancelled.status, 200, "{}", cancelled.body);
        assert_eq!(env.balance(user, "EUR").await, untouched("100.00"));
    }
    // Every balance adds up; `operator check` names the item it cannot read.
    let report = env.store.scan_all().await.unwrap();
    let problems = shared::operator::check::violations(&report);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("unreadable item USER#odd/BENEFICIARY#"),
        "{problems:#?}"
    );
}
