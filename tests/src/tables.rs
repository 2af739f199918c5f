//! Fresh tables, credits and seeded pending withdrawals.

use shared::domain::{Amount, CreditReference, Currencies, UserId};
use shared::store::{CreditRecord, DynamoStore, Store};
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

/// `n` pending withdrawals of `amount` written through `store`, by users of `per_user` each,
/// every user funded for exactly its withdrawals; 8 requests in flight.
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
    use shared::domain::{BankAccount, Withdrawal};
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
    }
    let account = BankAccount::parse(account).unwrap();
    stream::iter(0..n)
        .map(|i| {
            let w = Withdrawal::new(
                UserId::parse(&users[i / per_user]).unwrap(),
                c.clone(),
                amt,
                account.clone(),
                chrono::Utc::now(),
            );
            let store = store.clone();
            async move {
                store
                    .request_withdrawal(&w, None, u32::MAX)
                    .await
                    .expect("seed");
                w
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}
