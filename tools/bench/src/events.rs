//! Events out on the local relay: events per state change, PutEvents calls per 100 changes, and
//! the latency from a change's commit to the PutEvents that carried its event. The relay runs as
//! the template's mapping is configured (batches of up to 100 records or 1 s of them) and reads
//! DynamoDB Local's stream every 200 ms when idle; the batching window dominates the latency.

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use event_publisher::{App as Publisher, EventBridgeBus};
use integration_tests::events::{sdk_config, Subscriber};
use shared::domain::{Currencies, UserId};
use shared::publishing::events::{EventBus, PipelineEvent};
use shared::store::DynamoStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(200);

/// A bus, timing and counting its calls: `put_at` is when the publisher issued the PutEvents
/// that carried each event; `call_ms` how long each call took.
struct Timed {
    inner: Box<dyn EventBus>,
    calls: Mutex<u64>,
    call_ms: Mutex<Vec<f64>>,
    put_at: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Takes every entry at once: the latency run measures the stream, the relay and the publisher,
/// not moto's PutEvents (about 2 s per call of 10 entries with a rule to SQS on this machine).
struct AcceptAll;

#[async_trait::async_trait]
impl EventBus for AcceptAll {
    async fn put(&self, events: &[PipelineEvent]) -> Result<Vec<bool>, String> {
        Ok(vec![true; events.len()])
    }
}

#[async_trait::async_trait]
impl EventBus for Timed {
    async fn put(&self, events: &[PipelineEvent]) -> Result<Vec<bool>, String> {
        *self.calls.lock().unwrap() += 1;
        let now = Instant::now();
        let taken = self.inner.put(events).await?;
        self.call_ms
            .lock()
            .unwrap()
            .push(now.elapsed().as_secs_f64() * 1000.0);
        let mut at = self.put_at.lock().unwrap();
        for (e, ok) in events.iter().zip(&taken) {
            if *ok {
                at.entry(e.event_id.clone()).or_insert(now);
            }
        }
        Ok(taken)
    }
}

/// What one run through the relay measured.
pub struct Run {
    pub changes: u64,
    pub received: u64,
    pub calls: u64,
    pub records: usize,
    pub latency_ms: Vec<f64>,
    pub call_ms: Vec<f64>,
}

/// Two runs of the same workload: through moto's EventBridge to a subscriber's queue (events per
/// change, calls per 100 changes, moto's call time), and to an in-process bus (the latency
/// the pipeline adds: commit → the PutEvents call that carries the event).
pub async fn report(
    tables: [(Arc<DynamoStore>, Currencies); 2],
    ddb_endpoint: &str,
    moto: &str,
    users: usize,
) -> String {
    let [(store, currencies), (store2, currencies2)] = tables;
    let real = run(store, currencies, ddb_endpoint, moto, users, false).await;
    let fast = run(store2, currencies2, ddb_endpoint, moto, users, true).await;
    let mut call_ms = real.call_ms.clone();
    call_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut lat = fast.latency_ms.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "### Events out: {} state changes ({users} credits, {users} requests, {} cancels) through the local relay\n\n| | value |\n|---|---:|\n| events a subscriber's queue received per state change (moto's EventBridge → rule → SQS) | **{:.3}** (target 1.0) |\n| PutEvents calls per 100 state changes | **{:.1}** (target ≤ 10 + retries) |\n| stream records handed to the publisher (after the filter) | {} |\n| commit → the PutEvents carrying the event, p50 / p99 (in-process bus; batching window 1 s, idle polls every {} ms) | **{:.0} / {:.0} ms** |\n| one PutEvents call of up to 10 entries on moto, p50 (not ours: moto's rule to SQS) | {:.0} ms |\n\n",
        real.changes,
        users.div_ceil(2),
        real.received as f64 / real.changes as f64,
        real.calls as f64 * 100.0 / real.changes as f64,
        real.records,
        POLL.as_millis(),
        super::pct(&lat, 0.5),
        super::pct(&lat, 0.99),
        super::pct(&call_ms, 0.5),
    )
}

async fn run(
    store: Arc<DynamoStore>,
    currencies: Currencies,
    ddb_endpoint: &str,
    moto: &str,
    users: usize,
    in_process: bool,
) -> Run {
    let name = store.table_name().replace('_', "-");
    let subscriber = Subscriber::create(moto, &name).await;
    let events = aws_sdk_eventbridge::Client::new(&sdk_config(moto));
    let put_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let inner: Box<dyn EventBus> = if in_process {
        Box::new(AcceptAll)
    } else {
        Box::new(EventBridgeBus::new(events.clone(), &name))
    };
    let bus = Arc::new(Timed {
        inner,
        calls: Mutex::new(0),
        call_ms: Mutex::default(),
        put_at: put_at.clone(),
    });
    struct Shared(Arc<Timed>);
    #[async_trait::async_trait]
    impl EventBus for Shared {
        async fn put(&self, e: &[PipelineEvent]) -> Result<Vec<bool>, String> {
            self.0.put(e).await
        }
    }
    let publisher = Arc::new(Publisher::new(
        Box::new(Shared(bus.clone())),
        currencies.clone(),
        Arc::new(shared::publishing::events::NoneSkipped),
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay_task = spawn_relay(publisher, &store, ddb_endpoint, stop.clone()).await;
    let (changes, committed) = workload(&store, &currencies, users).await;
    // Everything published, then the relay stops.
    let deadline = Instant::now() + Duration::from_secs(120);
    while put_at.lock().unwrap().len() < changes as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let records = relay_task.await.unwrap();
    let received = subscriber.drain().await.len() as u64;
    let calls = *bus.calls.lock().unwrap();
    let at = put_at.lock().unwrap();
    let latency_ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, c)| {
            at.get(id)
                .map(|p| p.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    let call_ms = bus.call_ms.lock().unwrap().clone();
    Run {
        changes,
        received: if in_process { changes } else { received },
        calls,
        records,
        latency_ms,
        call_ms,
    }
}

/// The local relay feeding the publisher until `stop` is set and a pass finds nothing; the
/// task returns how many records it handed over.
async fn spawn_relay(
    publisher: Arc<Publisher>,
    store: &DynamoStore,
    ddb_endpoint: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk_config(ddb_endpoint));
    let mut relay = stream_relay::Relay::for_table(streams, store.table_name())
        .await
        .unwrap();
    // As template.yaml's mapping: up to 100 records, or what came within a second.
    relay.batching_window = Duration::from_secs(1);
    tokio::spawn(async move {
        let invoke = move |event: StreamEvent| {
            let publisher = publisher.clone();
            Box::pin(async move { Ok(publisher.handle(event).await) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        };
        let mut records = 0;
        loop {
            let t = Instant::now();
            let d = relay.step(&invoke).await.unwrap();
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!(
                    "pass {:?} inv {} rec {}",
                    t.elapsed(),
                    d.invocations,
                    d.records
                );
            }
            records += d.records;
            if d.invocations == 0 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return records;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    })
}

/// The workload, at a steady pace: credit, request, and cancel every second request. Returns
/// the changes made and when each withdrawal change committed.
async fn workload(
    store: &Arc<DynamoStore>,
    currencies: &Currencies,
    users: usize,
) -> (u64, HashMap<String, Instant>) {
    let service = shared::requests::withdrawals::WithdrawalService::new(
        store.clone(),
        currencies.clone(),
        u32::MAX,
    );
    let usd = currencies.get("USD").unwrap().clone();
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let mut changes = 0u64;
    for i in 0..users {
        let user = format!("ev-{i}");
        store
            .credit(&super::credit(&user, &usd, "100"))
            .await
            .unwrap();
        changes += 1;
        let w = shared::domain::Withdrawal::new(
            UserId::parse(&user).unwrap(),
            usd.clone(),
            shared::domain::Amount::parse("10", &usd).unwrap(),
            shared::domain::Destination::Account(
                shared::domain::BankAccount::parse(super::IBAN).unwrap(),
            ),
            chrono::Utc::now(),
        );
        use shared::store::Store;
        store.request_withdrawal(&w, None, u32::MAX).await.unwrap();
        committed.insert(format!("{}.PENDING", w.id), Instant::now());
        changes += 1;
        if i % 2 == 0 {
            service.cancel(&w.user_id, &w.id.to_string()).await.unwrap();
            committed.insert(format!("{}.CANCELLED", w.id), Instant::now());
            changes += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (changes, committed)
}
