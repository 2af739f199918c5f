//! Crash points: the run or the webhook dies at each one, recovery runs, the books balance.

use super::{audit, scale, scenario, Row};
use integration_tests::faults::{Fault as StoreFault, FaultyStore, When};
use integration_tests::{
    spawn_webhook_server, PayoutEnv, ACCOUNTS, API_KEY, BATCHER_FN, WEBHOOK_FN, WEBHOOK_SECRET,
};
use sandbox_provider::Fault as ProviderFault;
use shared::domain::{BatchStatus, WithdrawalStatus};
use shared::payouts::batcher::{Batcher, BatcherConfig};
use shared::payouts::webhook::WebhookProcessor;
use shared::store::BatchStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

// 4 ------------------------------------------------------------------------------------------
#[derive(Clone, Debug)]
enum Crash {
    /// A store call of the batcher fails (before / after it is written).
    Batcher(StoreFault),
    /// The provider misbehaves around recording the batch.
    Provider(ProviderFault),
    /// The run's process dies at this store call (the call hangs and the run is dropped).
    Abort(StoreFault),
    /// A store call of the webhook fails.
    Webhook(StoreFault),
}

fn crash_config(budget: Duration) -> (BatcherConfig, Instant) {
    (
        BatcherConfig {
            provider_timeout: Duration::from_millis(500),
            safety_margin: Duration::from_millis(50),
            lease_margin: Duration::ZERO,
            ..BatcherConfig::default()
        },
        Instant::now() + budget,
    )
}

/// One crash point per test: the run (or webhook) dies there, recovery runs, the books balance.
macro_rules! crash_point {
    ($test:ident, $name:expr, $crash:expr) => {
        #[test]
        fn $test() {
            scenario(|rt| vec![rt.block_on(crash_scenario($name, $crash))]);
        }
    };
}

crash_point!(
    s4a_crash_after_claim_before_the_provider_call,
    "4a. crash after claim, before the provider call",
    Crash::Batcher(StoreFault::new("close_claiming", 1, When::Before))
);

crash_point!(
    s4b_crash_between_claim_chunks,
    "4b. crash between claim chunks",
    Crash::Batcher(StoreFault::new("claim", 2, When::Before))
);

crash_point!(
    s4c_crash_right_after_a_claim_was_written,
    "4c. crash right after a claim was written",
    Crash::Batcher(StoreFault::new("claim", 1, When::After))
);

crash_point!(
    s4d_provider_recorded_crash_before_our_write,
    "4d. provider recorded, crash before our write",
    Crash::Batcher(StoreFault::new("record_attempt", 1, When::Before))
);

crash_point!(
    s4e_crash_after_recording_the_provider_s_answer,
    "4e. crash after recording the provider's answer",
    Crash::Batcher(StoreFault::new("record_attempt", 1, When::After))
);

crash_point!(
    s4f_provider_times_out_after_recording,
    "4f. provider times out after recording",
    Crash::Provider(ProviderFault::TimeoutAfterRecord)
);

crash_point!(
    s4g_provider_5xx_after_recording,
    "4g. provider 5xx after recording",
    Crash::Provider(ProviderFault::ErrorAfterRecord)
);

crash_point!(
    s4h_process_killed_right_after_the_first_claim,
    "4h. process killed right after the first claim",
    Crash::Abort(StoreFault::new("claim", 1, When::HangAfter))
);

crash_point!(
    s4i_process_killed_between_claim_chunks,
    "4i. process killed between claim chunks",
    Crash::Abort(StoreFault::new("claim", 2, When::HangBefore))
);

crash_point!(
    s4j_process_killed_after_the_provider_recorded,
    "4j. process killed after the provider recorded",
    Crash::Abort(StoreFault::new("record_attempt", 1, When::HangBefore))
);

crash_point!(
    s4k_webhook_store_fails_mid_settlement,
    "4k. webhook: store fails mid-settlement",
    Crash::Webhook(StoreFault::new("write_transition", 1, When::Before))
);

crash_point!(
    s4l_webhook_settled_crash_before_answering,
    "4l. webhook: settled, crash before answering",
    Crash::Webhook(StoreFault::new("write_transition", 2, When::After))
);

crash_point!(
    s4m_webhook_crash_before_the_batch_completes,
    "4m. webhook: crash before the batch completes",
    Crash::Webhook(StoreFault::new("complete_if_final", 1, When::Before))
);

crash_point!(
    s4n_webhook_crash_on_the_batch_read,
    "4n. webhook: crash on the batch read",
    Crash::Webhook(StoreFault::new("batch_with_final_count", 3, When::Before))
);

async fn crash_scenario(name: &'static str, crash: Crash) -> Row {
    // A webhook closes a batch only when its read shows it is the last member: the crash before
    // closing needs callbacks answered item by item (at once, none sees itself last and the
    // batcher closes the batch).
    let one_by_one = matches!(&crash, Crash::Webhook(f) if f.method == "complete_if_final");
    let p = PayoutEnv::new(|c| {
        c.callback_delay = Duration::from_millis(20);
        if one_by_one {
            c.callback_spacing = Duration::from_millis(15);
        }
        c.hang = Duration::from_millis(800);
    })
    .await;
    let webhook_store = Arc::new(FaultyStore::new(
        p.env.store_for(WEBHOOK_FN),
        match &crash {
            Crash::Webhook(f) => vec![f.clone()],
            _ => vec![],
        },
    ));
    let processor = Arc::new(provider_webhook::App::from(WebhookProcessor::new(
        webhook_store.clone(),
        vec![shared::payouts::signature::WebhookSecret::new(WEBHOOK_SECRET).unwrap()],
        300,
    )));
    p.sandbox
        .set_webhook_url(&spawn_webhook_server(processor).await);
    let mut seeded = p
        .seed("crash-usd", "USD", "1.00", scale(130).max(100), ACCOUNTS[0])
        .await;
    seeded.extend(
        p.seed("crash-eur", "EUR", "2.00", scale(20), ACCOUNTS[1])
            .await,
    );

    // The crashing run.
    let provider = Arc::new(
        shared::payouts::provider::HttpProvider::new(
            &p.provider_url,
            API_KEY,
            Duration::from_millis(500),
        )
        .unwrap(),
    );
    let (config, deadline) = crash_config(Duration::from_millis(1500));
    let batch_faults = match &crash {
        Crash::Batcher(f) | Crash::Abort(f) => vec![f.clone()],
        _ => vec![],
    };
    if let Crash::Provider(f) = &crash {
        p.sandbox.inject(&[*f]);
    }
    let faulty = Arc::new(FaultyStore::new(p.env.store_for(BATCHER_FN), batch_faults));
    let batcher = Batcher::new(
        faulty.clone(),
        provider.clone(),
        p.env.currencies.clone(),
        config.clone(),
    );
    let first = match &crash {
        Crash::Abort(_) => tokio::time::timeout(Duration::from_millis(1400), batcher.run(deadline))
            .await
            .map_err(|_| "aborted".to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        _ => batcher.run(deadline).await.map_err(|e| e.to_string()),
    };
    // Leases of the crashed run expire at its deadline + the provider timeout.
    tokio::time::sleep_until(
        (deadline + config.provider_timeout + Duration::from_millis(100)).into(),
    )
    .await;

    // Recovery: ordinary runs until nothing is pending or open-but-unsent.
    let healthy = p.batcher(PayoutEnv::config());
    for _ in 0..6 {
        healthy
            .run(Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        let open = p.env.store.open_batches().await.unwrap();
        let unsent = open.iter().any(|b| {
            matches!(
                b.as_ref().expect("readable batch").status,
                BatchStatus::Claiming | BatchStatus::Open | BatchStatus::Rejecting
            )
        });
        let pending = !p
            .env
            .store
            .pending(&p.env.currencies.get("USD").unwrap().clone(), 1, None)
            .await
            .unwrap()
            .is_empty()
            || !p
                .env
                .store
                .pending(&p.env.currencies.get("EUR").unwrap().clone(), 1, None)
                .await
                .unwrap()
                .is_empty();
        if !unsent && !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait for the callbacks (the sandbox retries refused deliveries), then let a run complete
    // batches whose last event was processed by a crashed webhook.
    let waited = Instant::now();
    let mut stuck = seeded.len();
    while waited.elapsed() < Duration::from_secs(30) {
        stuck = 0;
        for w in &seeded {
            let w = p.reload(w).await;
            if w.status != WithdrawalStatus::Settled {
                stuck += 1;
            }
        }
        if stuck == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    healthy
        .run(Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let batches = p.env.store.all_batches().await.unwrap();
    let unfinished = batches
        .iter()
        .filter(|b| b.status != BatchStatus::Completed)
        .count();
    let paid = p.sandbox.payouts_by_reference();
    let unpaid = seeded
        .iter()
        .filter(|w| !paid.contains_key(&w.id.to_string()))
        .count();
    let (violations, lost) = audit(&p.env, Some(&p.sandbox)).await;
    let fired = [faulty.fired(), webhook_store.fired()].concat();
    let injected = match &crash {
        Crash::Batcher(_) | Crash::Webhook(_) => !fired.is_empty(),
        Crash::Provider(_) => p.sandbox.submit_calls() >= 2,
        Crash::Abort(_) => !fired.is_empty() && first.is_err(),
    };
    Row {
        scenario: name,
        operations: seeded.len(),
        failures: violations + stuck + unfinished + unpaid + usize::from(!injected),
        money_lost: lost,
        note: format!(
            "first run: {}; then {} settled, {} stuck, {} batches not completed, max payouts per withdrawal {}",
            match &first {
                Ok(_) => "finished".to_string(),
                Err(e) => format!("failed ({})", e.chars().take(40).collect::<String>()),
            },
            seeded.len() - stuck,
            stuck,
            unfinished,
            paid.values().max().copied().unwrap_or(0)
        ),
    }
}
