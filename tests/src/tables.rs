//! Fresh tables, credits and seeded pending withdrawals.

use shared::domain::{
    Amount, Beneficiary, BeneficiaryDetails, BeneficiaryId, CreditReference, Currencies,
    Destination, IdempotencyKey, UserId,
};
use shared::store::{
    CreditRecord, DynamoStore, IdempotencyRecord, Refusal, Resource, Store, StoreError,
};
use std::sync::Arc;

/// A credit made now by the tests, as an operator would make it.
pub fn credit_record(
    currency: &shared::domain::Currency,
    user: &str,
    amount: &str,
    reference: &str,
) -> CreditRecord {
    CreditRecord::new(
        CreditReference::parse(reference).unwrap(),
        UserId::parse(user).unwrap(),
        currency.clone(),
        Amount::parse(amount, currency).unwrap(),
        "operator",
    )
}

/// The beneficiary id every test user's default account is registered under (ids live under
/// their owner's key, so each user has their own under the same id).
pub const BENEFICIARY: &str = "bn_01J0000000000000000000TEST";

/// Registers `account` for `user` as beneficiary `id`, usable at once (what the local stack's
/// `BENEFICIARY_COOLING_OFF_SECS=0` gives), through `store`. Registering the same again is a
/// no-op.
pub async fn register_beneficiary(store: &dyn Store, user: &str, account: &str, id: &str) {
    let user = UserId::parse(user).unwrap();
    let id = BeneficiaryId::parse(id).unwrap();
    if store
        .beneficiary(&user, id)
        .await
        .expect("read beneficiary")
        .is_some()
    {
        return;
    }
    let mut b = Beneficiary::new(
        user.clone(),
        BeneficiaryDetails::parse(account, "Test Holder", None).unwrap(),
        chrono::Utc::now() - chrono::Duration::seconds(1),
        chrono::Duration::zero(),
    );
    b.id = id;
    let record = IdempotencyRecord {
        user_id: user,
        key: IdempotencyKey::parse(&format!("test-beneficiary-{id}")).unwrap(),
        fingerprint: String::new(),
        resource: Resource::Beneficiary(id),
        status_code: 201,
        response_body: String::new(),
        created_at: b.created_at,
    };
    match store.add_beneficiary(&b, &record, u32::MAX).await {
        // A concurrent registration of the same one won: as good.
        Ok(()) | Err(StoreError::Refused(Refusal::IdempotencyKeyTaken(_))) => {}
        Err(e) => panic!("register beneficiary: {e}"),
    }
}

/// A new table of its own on DynamoDB Local. Without the stream unless asked: on DynamoDB Local a
/// stream slows every write, and only the events tests and the bench's events section read it.
pub async fn fresh_table(
    client: aws_sdk_dynamodb::Client,
    currencies: &Currencies,
    stream: bool,
) -> Arc<DynamoStore> {
    let store = DynamoStore::new(
        client,
        format!("t_{}", ulid::Ulid::new()),
        currencies.clone(),
    );
    let created = if stream {
        store.create_table().await
    } else {
        store.create_table_without_stream().await
    };
    assert!(created.expect("create table"));
    Arc::new(store)
}

/// `n` pending withdrawals of `amount` to `account` written through `store`, by users of
/// `per_user` each, every user funded for exactly its withdrawals and with `account` registered
/// as [`BENEFICIARY`]; 8 requests in flight. Returned as a claim takes them: with the
/// beneficiary's account looked up (as stored they name only the beneficiary).
#[allow(clippy::too_many_arguments)]
pub async fn seed_pending(
    store: &Arc<DynamoStore>,
    currencies: &Currencies,
    prefix: &str,
    currency: &str,
    amount: &str,
    n: usize,
    per_user: usize,
    account: &str,
) -> Vec<shared::domain::Withdrawal> {
    use futures::stream::{self, StreamExt};
    use shared::domain::Withdrawal;
    let c = currencies.get(currency).unwrap().clone();
    let amt = Amount::parse(amount, &c).unwrap();
    let users: Vec<String> = (0..n.div_ceil(per_user))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    for u in &users {
        let total = amt.value() * rust_decimal::Decimal::from(per_user as u64);
        let reference = format!("seed-{}", ulid::Ulid::new());
        store
            .credit(&credit_record(&c, u, &total.to_string(), &reference))
            .await
            .expect("credit");
        register_beneficiary(store.as_ref(), u, account, BENEFICIARY).await;
    }
    let beneficiary = BeneficiaryId::parse(BENEFICIARY).unwrap();
    let account = shared::domain::BankAccount::parse(account).unwrap();
    stream::iter(0..n)
        .map(|i| {
            let w = Withdrawal::new(
                UserId::parse(&users[i / per_user]).unwrap(),
                c.clone(),
                amt,
                Destination::beneficiary(beneficiary),
                chrono::Utc::now(),
            );
            let store = store.clone();
            let account = account.clone();
            async move {
                store
                    .request_withdrawal(&w, None, u32::MAX)
                    .await
                    .expect("seed");
                // Handed back as the batcher hands them to a claim: the account looked up.
                let mut w = w;
                w.destination = Destination::Beneficiary {
                    id: beneficiary,
                    account: Some(account),
                };
                w
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}
