//! Claiming pending withdrawals into batches: per currency, in chunks, at the size limit, across shards and overlapping runs.

use super::d;
use futures::future::join_all;
use futures::StreamExt;
use integration_tests::BalanceView;
use integration_tests::{claiming_batch, PayoutEnv, ACCOUNTS};
use rust_decimal::Decimal;
use shared::domain::{BatchStatus, WithdrawalStatus};
use shared::payouts::batcher::BatcherConfig;
use shared::store::{BatchStore, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[tokio::test]
async fn one_provider_call_per_currency_with_exact_totals() {
    let p = PayoutEnv::new(|_| {}).await;
    let mut all = Vec::new();
    all.extend(p.seed("u-usd-a", "USD", "10.25", 3, ACCOUNTS[0]).await);
    all.extend(p.seed("u-usd-b", "USD", "20.50", 2, ACCOUNTS[1]).await);
    all.extend(p.seed("u-eur", "EUR", "7.77", 4, ACCOUNTS[2]).await);
    all.extend(p.seed("u-jpy", "JPY", "1500", 3, ACCOUNTS[3]).await);

    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(p.sandbox.submit_calls(), 3, "one call per currency");
    assert_eq!(p.sandbox.batch_count(), 3);
    let usd = &summary.currencies["USD"];
    assert_eq!((usd.claimed, usd.submitted, usd.batches), (5, 5, 1));
    assert_eq!(summary.currencies["EUR"].submitted, 4);
    assert_eq!(summary.currencies["JPY"].submitted, 3);

    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    for e in p.sandbox.ledger() {
        *totals.entry(e.currency.clone()).or_default() += d(&e.amount);
    }
    assert_eq!(totals["USD"], d("71.75"));
    assert_eq!(totals["EUR"], d("31.08"));
    assert_eq!(totals["JPY"], d("4500"));
    // JPY goes out with its own precision.
    assert!(p
        .sandbox
        .ledger()
        .iter()
        .any(|e| e.currency == "JPY" && e.amount == "1500"));

    let batches = p.env.store.all_batches().await.unwrap();
    assert_eq!(batches.len(), 3);
    for b in &batches {
        assert_eq!(b.status, BatchStatus::Accepted);
        assert_eq!(b.attempts, 1);
    }
    assert_eq!(
        batches
            .iter()
            .find(|b| b.currency.code().as_str() == "USD")
            .unwrap()
            .total,
        d("71.75")
    );
    for w in &all {
        let w = p.reload(w).await;
        assert_eq!(w.status, WithdrawalStatus::Submitted);
        assert!(batches
            .iter()
            .any(|b| Some(b.id) == w.batch_id && b.members.contains_key(&w.id)));
    }
    // Submitted funds stay locked until the provider's final word.
    assert_eq!(p.env.balance("u-usd-a-0", "USD").await.locked, "30.75");
    // A second run finds nothing new.
    let again = p.run(PayoutEnv::config()).await;
    assert_eq!(again.currencies["USD"].claimed, 0);
    assert_eq!(p.sandbox.submit_calls(), 3);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn large_backlogs_are_claimed_in_chunks_and_split_at_the_batch_limit() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("big", "USD", "1.00", 650, ACCOUNTS[0]).await;
    let summary = p.run(PayoutEnv::config()).await;
    assert_eq!(summary.currencies["USD"].claimed, 650);
    assert_eq!(summary.currencies["USD"].batches, 2, "500 + 150");
    assert_eq!(p.sandbox.submit_calls(), 2);
    let mut sizes: Vec<u32> = p
        .env
        .store
        .all_batches()
        .await
        .unwrap()
        .iter()
        .map(|b| b.member_count())
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![150, 500]);
    let paid = p.sandbox.payouts_by_reference();
    assert_eq!(paid.len(), 650);
    assert!(paid.values().all(|n| *n == 1));
    let ids: BTreeSet<String> = seeded.iter().map(|w| w.id.to_string()).collect();
    assert_eq!(paid.keys().cloned().collect::<BTreeSet<_>>(), ids);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn overlapping_runs_put_each_withdrawal_in_exactly_one_batch() {
    let p = PayoutEnv::new(|_| {}).await;
    let mut seeded = Vec::new();
    seeded.extend(p.seed("ov-usd", "USD", "2.00", 250, ACCOUNTS[0]).await);
    seeded.extend(p.seed("ov-eur", "EUR", "3.00", 200, ACCOUNTS[1]).await);
    seeded.extend(p.seed("ov-jpy", "JPY", "500", 150, ACCOUNTS[2]).await);
    let config = BatcherConfig {
        max_batch_size: 120,
        ..PayoutEnv::config()
    };
    for runs in [2usize, 4] {
        let batchers: Vec<_> = (0..runs).map(|_| p.batcher(config.clone())).collect();
        let summaries = join_all(
            batchers
                .iter()
                .map(|b| b.run(std::time::Instant::now() + Duration::from_secs(60))),
        )
        .await;
        let claimed: u32 = summaries
            .iter()
            .map(|s| {
                s.as_ref()
                    .unwrap()
                    .currencies
                    .values()
                    .map(|c| c.claimed)
                    .sum::<u32>()
            })
            .sum();
        if runs == 2 {
            assert_eq!(claimed, 600, "the two runs together claim everything once");
            // Seed more for the four-way round.
            seeded.extend(p.seed("ov2-usd", "USD", "2.00", 300, ACCOUNTS[3]).await);
        } else {
            assert_eq!(claimed, 300);
        }
    }
    let batches = p.env.store.all_batches().await.unwrap();
    let mut membership: BTreeMap<String, u32> = BTreeMap::new();
    for b in &batches {
        assert_eq!(b.status, BatchStatus::Accepted);
        for id in b.members.keys() {
            *membership.entry(id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(membership.len(), 900);
    assert!(
        membership.values().all(|n| *n == 1),
        "a withdrawal in two batches"
    );
    let paid = p.sandbox.payouts_by_reference();
    assert_eq!(paid.len(), 900);
    assert!(paid.values().all(|n| *n == 1), "paid twice");
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn a_withdrawal_cancelled_before_the_claim_is_skipped() {
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = p.seed("race", "EUR", "9.00", 3, ACCOUNTS[0]).await;
    let cancelled = p
        .env
        .store
        .transition(
            &seeded[1],
            shared::domain::Transition::Cancel,
            shared::store::TransitionDetails::by("user"),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.status, WithdrawalStatus::Cancelled);
    // The claim still holds the stale PENDING copy, as a run reading a lagging index would.
    let batch = claiming_batch(
        &seeded[0].currency,
        "r",
        chrono::Utc::now().timestamp_millis() + 60_000,
    );
    let r = p.env.store.claim(&batch, "r", &seeded, true).await.unwrap();
    assert_eq!(r.lost, vec![seeded[1].id]);
    assert_eq!(r.claimed.len(), 2);
    assert_eq!(
        p.reload(&seeded[1]).await.status,
        WithdrawalStatus::Cancelled
    );
    let stored = p.env.store.batch(batch.id).await.unwrap().unwrap();
    assert_eq!(stored.member_count(), 2);
    assert_eq!(stored.total, d("18.00"));
    p.env.assert_conserved().await;
}

/// DynamoDB's size of one attribute value, by its documented rules (strings and names by
/// their UTF-8 length, numbers about one byte per two digits plus one, a map or list 3 bytes
/// plus one per element).
fn attribute_size(v: &aws_sdk_dynamodb::types::AttributeValue) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    match v {
        A::S(s) => s.len(),
        A::N(n) => n.trim_start_matches('-').replace('.', "").len().div_ceil(2) + 1,
        A::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + attribute_size(v) + 1)
                .sum::<usize>()
        }
        A::L(l) => 3 + l.iter().map(|v| attribute_size(v) + 1).sum::<usize>(),
        _ => 1,
    }
}

/// `MAX_BATCH_MEMBERS` pending USD 1.00 withdrawals, 10 per user, every user id as long as a
/// user id can be: the largest batch record there can be.
async fn seed_largest_batch(p: &PayoutEnv) -> Vec<shared::domain::Withdrawal> {
    use integration_tests::BENEFICIARY;
    use shared::domain::{Amount, BeneficiaryId, Destination, UserId, Withdrawal};
    use shared::store::MAX_BATCH_MEMBERS;
    let usd = p.env.currencies.get("USD").unwrap().clone();
    let amount = Amount::parse("1.00", &usd).unwrap();
    let users: Vec<UserId> = (0..MAX_BATCH_MEMBERS.div_ceil(10))
        .map(|i| {
            let id = format!("{i:05}-{}", "u".repeat(UserId::MAX_LEN - 6));
            UserId::parse(&id).unwrap()
        })
        .collect();
    assert!(users.iter().all(|u| u.as_str().len() == UserId::MAX_LEN));
    for u in &users {
        p.env.credit(u.as_str(), "USD", "10.00").await;
    }
    let account = Destination::beneficiary(BeneficiaryId::parse(BENEFICIARY).unwrap());
    futures::stream::iter(0..MAX_BATCH_MEMBERS)
        .map(|i| {
            let w = Withdrawal::new(
                users[i / 10].clone(),
                usd.clone(),
                amount,
                account.clone(),
                chrono::Utc::now(),
            );
            let store = p.env.store.clone();
            async move {
                store.request_withdrawal(&w, None, u32::MAX).await.unwrap();
                w
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// The batch record's size as DynamoDB counts it.
async fn batch_record_bytes(p: &PayoutEnv, id: shared::domain::BatchId) -> usize {
    let raw = p
        .env
        .store
        .client()
        .get_item()
        .table_name(p.env.store.table_name())
        .key(
            "PK",
            aws_sdk_dynamodb::types::AttributeValue::S(shared::store::TableSchema::batch_pk(id)),
        )
        .key("SK", aws_sdk_dynamodb::types::AttributeValue::S("-".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    raw.iter().map(|(k, v)| k.len() + attribute_size(v)).sum()
}

#[tokio::test]
async fn a_batch_of_the_largest_size_with_the_longest_user_ids_is_claimed_and_read_back() {
    use shared::store::MAX_BATCH_MEMBERS;
    let started = std::time::Instant::now();
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = seed_largest_batch(&p).await;
    let seeding = started.elapsed();

    let claim_started = std::time::Instant::now();
    let summary = p
        .run(BatcherConfig {
            max_batch_size: MAX_BATCH_MEMBERS,
            ..PayoutEnv::config()
        })
        .await;
    let claiming = claim_started.elapsed();
    let usd_summary = &summary.currencies["USD"];
    assert_eq!(
        (usd_summary.claimed, usd_summary.batches),
        (MAX_BATCH_MEMBERS as u32, 1)
    );
    let batches = p.env.store.all_batches().await.unwrap();
    assert_eq!(batches.len(), 1);
    let batch = p.env.store.batch(batches[0].id).await.unwrap().unwrap();
    assert_eq!(batch.status, BatchStatus::Accepted);
    assert_eq!(batch.member_count() as usize, MAX_BATCH_MEMBERS);
    for w in &seeded {
        assert_eq!(
            batch.members.get(&w.id),
            Some(&shared::domain::Member::of(w))
        );
    }
    let total: rust_decimal::Decimal = seeded.iter().map(|w| w.amount.value()).sum();
    assert_eq!(batch.total, total);
    assert_eq!(p.sandbox.payouts_by_reference().len(), MAX_BATCH_MEMBERS);

    // How close to the 400 KB item limit the record really came.
    let size = batch_record_bytes(&p, batch.id).await;
    assert!(size < 400 * 1024 * 4 / 5, "batch record is {size} bytes");
    println!(
        "largest batch: {MAX_BATCH_MEMBERS} members, record {size} bytes ({:.0} % of 400 KB); \
         seeding {:.1} s, claim + send {:.1} s",
        size as f64 * 100.0 / 409_600.0,
        seeding.as_secs_f64(),
        claiming.as_secs_f64()
    );
    p.env.assert_conserved().await;
}

/// Whatever operators do to a batch's members cannot grow its record without bound: every
/// member of the largest batch (longest user ids), flagged and never recorded, is rejected one
/// by one with a long reason, and each reject goes through. Before the fix each reject appended
/// a history line (~130 bytes plus the reason) to the batch record: it passed 400 KB part way
/// and the remaining members' rejects failed with an item-size error, their funds locked.
#[tokio::test]
async fn every_member_of_the_largest_batch_can_be_rejected_one_by_one() {
    use shared::store::{TransitionDetails, MAX_BATCH_MEMBERS};
    let p = PayoutEnv::new(|_| {}).await;
    let seeded = seed_largest_batch(&p).await;
    p.sandbox
        .inject(&[sandbox_provider::Fault::ErrorBeforeRecord]);
    p.run(BatcherConfig {
        max_batch_size: MAX_BATCH_MEMBERS,
        max_attempts: 1,
        ..PayoutEnv::config()
    })
    .await;
    let batch = p.env.store.all_batches().await.unwrap().remove(0);
    assert_eq!(batch.status, BatchStatus::NeedsOperator);
    assert_eq!(batch.member_count() as usize, MAX_BATCH_MEMBERS);
    let before = batch_record_bytes(&p, batch.id).await;
    let reason = format!(
        "never recorded at the provider (ticket OPS-1234): {}",
        "r".repeat(150)
    );
    let quiet_before = chrono::Utc::now() + chrono::Duration::minutes(1);
    let members = p.env.store.members(&batch).await.unwrap();
    let rejected: Vec<Result<_, _>> = futures::stream::iter(members)
        .map(|w| {
            let store = p.env.store.clone();
            let mut details = TransitionDetails::by(shared::operator::operations::OPERATOR);
            details.failure_reason = Some(reason.clone());
            async move { store.reject_flagged_member(&w, details, quiet_before).await }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let failed: Vec<_> = rejected.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} rejects failed: {:?}",
        failed.len(),
        failed.first()
    );
    let after = batch_record_bytes(&p, batch.id).await;
    assert!(
        after <= before + 64,
        "the record grew from {before} to {after} bytes through rejects"
    );
    for w in &seeded {
        let w = p.reload(w).await;
        assert_eq!(w.status, WithdrawalStatus::Rejected);
        assert_eq!(w.failure_reason.as_deref(), Some(reason.as_str()));
    }
    let BalanceView {
        available, locked, ..
    } = p.env.balance(seeded[0].user_id.as_str(), "USD").await;
    assert_eq!((available.as_str(), locked.as_str()), ("10.00", "0.00"));
    p.run(PayoutEnv::config()).await;
    let closed = p.env.store.batch(batch.id).await.unwrap().unwrap();
    assert_eq!(closed.status, BatchStatus::Completed);
    assert_eq!(p.sandbox.submit_calls(), 1, "never re-sent");
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn lowering_pending_shards_strands_no_withdrawal() {
    use integration_tests::{function_client, BATCHER_FN, REQUEST_FN};
    use shared::store::DynamoStore;
    use std::sync::Arc;
    let p = PayoutEnv::new(|_| {}).await;
    let store_with = |function: &str, shards: u32| {
        Arc::new(
            DynamoStore::new(
                function_client(function),
                p.env.store.table_name(),
                p.env.currencies.clone(),
            )
            .with_pending_shards(shards),
        )
    };
    // The request function ran with 8 shards: its cold start recorded them, its requests spread.
    let eight = store_with(REQUEST_FN, 8);
    eight.record_pending_shards().await.unwrap();
    let mut seeded = p
        .seed_through(&eight, "sh8", "USD", "1.00", 60, ACCOUNTS[0])
        .await;
    assert!(
        seeded.iter().filter(|w| w.id.shard(8) >= 2).count() > 30,
        "most of them live in shards a 2-shard batcher would not read by itself"
    );
    // Then PENDING_SHARDS went down to 2: a new cold start records 2, which lowers nothing, while
    // a warm instance still on the old setting keeps writing into 8 shards.
    let two = store_with(REQUEST_FN, 2);
    two.record_pending_shards().await.unwrap();
    seeded.extend(
        p.seed_through(&eight, "sh8b", "USD", "1.00", 40, ACCOUNTS[0])
            .await,
    );
    seeded.extend(
        p.seed_through(&two, "sh2", "USD", "1.00", 20, ACCOUNTS[0])
            .await,
    );

    let batcher = p.batcher_on(store_with(BATCHER_FN, 2), PayoutEnv::config());
    let summary = batcher
        .run(std::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(summary.currencies["USD"].claimed, 120);
    for w in &seeded {
        assert_eq!(p.reload(w).await.status, WithdrawalStatus::Submitted);
    }
    assert_eq!(p.sandbox.payouts_by_reference().len(), 120);
    p.env.assert_conserved().await;
}

#[tokio::test]
async fn pending_pages_are_exactly_the_oldest_across_unevenly_filled_shards() {
    use integration_tests::BENEFICIARY;
    use shared::domain::{Amount, BeneficiaryId, Destination, UserId, Withdrawal};
    // The page reads each shard a share at a time and only the shard that bounds what is
    // known further: one shard holding most of the backlog must still come out oldest first,
    // with no withdrawal skipped or repeated between pages.
    let p = PayoutEnv::new(|_| {}).await;
    let store = &p.env.store;
    let usd = p.env.currencies.get("USD").unwrap().clone();
    p.env.credit("skew", "USD", "1000.00").await;
    let account = Destination::beneficiary(BeneficiaryId::parse(BENEFICIARY).unwrap());
    let shards = store.pending_shards();
    assert!(shards >= 2, "the test needs shards to fill unevenly");
    let mut per_shard = vec![0; shards as usize];
    let mut written = Vec::new();
    while written.len() < 65 + 5 * (shards as usize - 1) {
        let w = Withdrawal::new(
            UserId::parse("skew").unwrap(),
            usd.clone(),
            Amount::parse("1.00", &usd).unwrap(),
            account.clone(),
            chrono::Utc::now(),
        );
        let shard = w.id.shard(shards) as usize;
        let room = if shard == 0 { 65 } else { 5 };
        if per_shard[shard] < room {
            per_shard[shard] += 1;
            store.request_withdrawal(&w, None, u32::MAX).await.unwrap();
            written.push(w.id);
        }
    }
    written.sort();
    for page in [7, 20, 80, 100] {
        let mut read = Vec::new();
        let mut after = None;
        loop {
            let got = store.pending(&usd, page, after).await.unwrap();
            read.extend(got.iter().map(|w| w.id));
            match got.last() {
                Some(last) if got.len() == page => after = Some(last.id),
                _ => break,
            }
        }
        assert_eq!(read, written, "pages of {page}");
    }
}
