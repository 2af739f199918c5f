//! Events out, end to end on real emulators: the test table's stream on DynamoDB Local, read by
//! the local relay (the event-source mapping's stand-in), handed to event-publisher in process,
//! put on an EventBridge bus in moto's server, whose rule delivers every event of the pipeline
//! to an SQS queue the test reads.

use crate::TestEnv;
use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use event_publisher::{App as Publisher, EventBridgeBus};
use serde_json::Value;
use shared::publishing::events::{EventBus, PipelineEvent};
use std::sync::{Arc, Mutex};
use stream_relay::{Delivered, Relay};

pub const EVENTS_FN: &str = "event-publisher";

/// One invocation of the publisher, as the relay awaits it.
type InvocationFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<DynamoDbEventResponse, String>> + Send>,
>;

/// moto's server (scripts/test.sh starts it; Secrets Manager, EventBridge and SQS share it).
pub fn moto_endpoint() -> String {
    std::env::var("SECRETS_ENDPOINT").expect(
        "SECRETS_ENDPOINT is not set: run the integration tests with ./scripts/test.sh, \
         which starts moto's server",
    )
}

/// Dummy credentials and region for an emulator at `endpoint` (moto's server, DynamoDB Local's
/// stream API).
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            aws_sdk_sqs::config::Credentials::new("local", "local", None, None, "tests"),
        ))
        .endpoint_url(endpoint)
        .build()
}

/// EventBridge as event-publisher's code uses it: its calls recorded for the IAM check.
pub fn eventbridge_client(function: &str) -> aws_sdk_eventbridge::Client {
    let mut conf = aws_sdk_eventbridge::config::Builder::from(&sdk_config(&moto_endpoint()));
    if let Ok(dir) = std::env::var(shared::platform::calls::CALL_LOG_DIR_ENV) {
        conf = conf.interceptor(shared::platform::calls::CallRecorder::new(dir, function));
    }
    aws_sdk_eventbridge::Client::from_conf(conf.build())
}

/// What a subscriber received: the `detail-type` and the `detail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub detail_type: String,
    pub source: String,
    pub detail: Value,
}

impl Received {
    pub fn event_id(&self) -> &str {
        self.detail["event_id"].as_str().unwrap_or_default()
    }
}

pub struct EventsEnv {
    pub bus_name: String,
    subscriber: Subscriber,
    relay: tokio::sync::Mutex<Relay>,
    publisher: Arc<Publisher>,
    received: Mutex<Vec<Received>>,
}

impl EventsEnv {
    /// The test table's stream, a bus of the test's own, a rule for the pipeline's events and
    /// the queue it feeds. Call it before the test writes anything.
    pub async fn new(env: &TestEnv) -> Self {
        Self::with_bus(env, |bus| Box::new(bus)).await
    }

    /// With the bus the publisher sees wrapped (faults).
    pub async fn with_bus(
        env: &TestEnv,
        wrap: impl FnOnce(EventBridgeBus) -> Box<dyn EventBus>,
    ) -> Self {
        // The tests' tables have no stream (it slows DynamoDB Local down): this one gets the
        // stream template.yaml gives the deployed table, before anything is written.
        env.store
            .client()
            .update_table()
            .table_name(env.store.table_name())
            .stream_specification(
                aws_sdk_dynamodb::types::StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("enable the stream");
        let name = env.store.table_name().replace('_', "-");
        let subscriber = Subscriber::create(&moto_endpoint(), &name).await;
        let bus = EventBridgeBus::new(eventbridge_client(EVENTS_FN), &name);
        // Skipped records are asked of the table through the publisher's recorded client.
        let publisher = Arc::new(Publisher::new(
            wrap(bus),
            env.currencies.clone(),
            env.store_for(EVENTS_FN),
        ));
        let streams = aws_sdk_dynamodbstreams::Client::new(&sdk_config(&crate::endpoint()));
        let relay = Relay::for_table(streams, env.store.table_name())
            .await
            .expect("the table has a stream");
        Self {
            bus_name: name,
            subscriber,
            relay: tokio::sync::Mutex::new(relay),
            publisher,
            received: Mutex::default(),
        }
    }

    /// The publisher as the relay invokes it.
    fn invoker(&self) -> impl Fn(StreamEvent) -> InvocationFuture + Sync + 'static {
        let publisher = self.publisher.clone();
        move |event: StreamEvent| {
            let publisher = publisher.clone();
            Box::pin(
                async move { Ok::<DynamoDbEventResponse, String>(publisher.handle(event).await) },
            ) as InvocationFuture
        }
    }

    /// Hands every record on the stream so far to the publisher, as the mapping would.
    pub async fn pump(&self) -> Delivered {
        let invoke = self.invoker();
        let mut relay = self.relay.lock().await;
        relay.drain(&invoke).await.expect("relay the stream")
    }

    /// One pass of the relay: what is new on the stream, one batch per shard.
    pub async fn step(&self) -> Delivered {
        let invoke = self.invoker();
        let mut relay = self.relay.lock().await;
        relay.step(&invoke).await.expect("relay the stream")
    }

    /// Attempts at a failing batch before the relay gives the rest of it up (the stand-in for
    /// how long the mapping retries).
    pub async fn set_relay_attempts(&self, attempts: u32) {
        self.relay.lock().await.max_attempts = attempts;
    }

    /// Every event the subscriber's queue has received so far, in arrival order.
    pub async fn received(&self) -> Vec<Received> {
        let new = self.subscriber.drain().await;
        let mut received = self.received.lock().unwrap();
        received.extend(new);
        received.clone()
    }
}

/// A consumer subscribed as docs/events.md says: a bus in moto's server, a rule on it matching the
/// pipeline's source, and the SQS queue the rule feeds.
pub struct Subscriber {
    queue_url: String,
    sqs: aws_sdk_sqs::Client,
}

impl Subscriber {
    /// Creates the bus `name`, its rule and a queue of the same name, on moto at `endpoint`.
    pub async fn create(endpoint: &str, name: &str) -> Self {
        let admin = aws_sdk_eventbridge::Client::new(&sdk_config(endpoint));
        let sqs = aws_sdk_sqs::Client::new(&sdk_config(endpoint));
        admin
            .create_event_bus()
            .name(name)
            .send()
            .await
            .expect("create bus");
        let queue_url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .expect("queue url")
            .to_string();
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .expect("queue arn")
            .clone();
        admin
            .put_rule()
            .name("all-pipeline-events")
            .event_bus_name(name)
            .event_pattern(
                serde_json::json!({"source": [shared::publishing::events::SOURCE]}).to_string(),
            )
            .send()
            .await
            .expect("put rule");
        admin
            .put_targets()
            .rule("all-pipeline-events")
            .event_bus_name(name)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(queue_arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("put targets");
        Self { queue_url, sqs }
    }

    /// What the queue holds now, in arrival order; each message is deleted once read.
    pub async fn drain(&self) -> Vec<Received> {
        let mut received = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive");
            let messages = out.messages();
            if messages.is_empty() {
                return received;
            }
            for m in messages {
                let body: Value = serde_json::from_str(m.body().unwrap_or("{}")).expect("json");
                let detail = match &body["detail"] {
                    Value::String(s) => serde_json::from_str(s).expect("detail json"),
                    d => d.clone(),
                };
                received.push(Received {
                    detail_type: body["detail-type"].as_str().unwrap_or_default().into(),
                    source: body["source"].as_str().unwrap_or_default().into(),
                    detail,
                });
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }
}

/// A bus that refuses chosen entries (by the call's number and the entry's position) or whole
/// calls, once each: what PutEvents' partial failures look like.
pub struct FlakyBus {
    inner: EventBridgeBus,
    calls: Mutex<usize>,
    /// `(call number from 1, entry index)`: that entry is refused on that call.
    pub refuse_entries: Vec<(usize, usize)>,
    /// Call numbers that fail as a whole.
    pub fail_calls: Vec<usize>,
}

impl FlakyBus {
    pub fn new(inner: EventBridgeBus) -> Self {
        Self {
            inner,
            calls: Mutex::new(0),
            refuse_entries: vec![],
            fail_calls: vec![],
        }
    }
}

#[async_trait::async_trait]
impl EventBus for FlakyBus {
    async fn put(&self, events: &[PipelineEvent]) -> Result<Vec<bool>, String> {
        let call = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        if self.fail_calls.contains(&call) {
            return Err(format!("injected: call {call} failed"));
        }
        let refused: Vec<usize> = self
            .refuse_entries
            .iter()
            .filter(|(c, _)| *c == call)
            .map(|(_, i)| *i)
            .collect();
        let kept: Vec<PipelineEvent> = events
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains(i))
            .map(|(_, e)| e.clone())
            .collect();
        let mut taken = if kept.is_empty() {
            vec![]
        } else {
            self.inner.put(&kept).await?
        }
        .into_iter();
        Ok((0..events.len())
            .map(|i| !refused.contains(&i) && taken.next().unwrap_or(false))
            .collect())
    }
}
