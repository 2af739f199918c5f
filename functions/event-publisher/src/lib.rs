//! `event-publisher`: the table's stream (through an event-source mapping that passes only
//! withdrawal and credit items) → one EventBridge event per withdrawal status change and per
//! credit, on the stack's own bus. Thin: convert the records, hand them to
//! `shared::publishing::events::publish`, report the first change not published as the batch item failure.

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use shared::domain::Currencies;
use shared::platform::config::{ConfigError, PublisherConfig};
use shared::publishing::events::{self, Change, EventBus, Image, PipelineEvent, SkippedRecords};
use std::sync::Arc;

pub struct App {
    bus: Box<dyn EventBus>,
    currencies: Currencies,
    /// The table, asked only about a record that cannot be read: did an operator skip it?
    skips: Arc<dyn SkippedRecords>,
}

impl App {
    pub fn new(
        bus: Box<dyn EventBus>,
        currencies: Currencies,
        skips: Arc<dyn SkippedRecords>,
    ) -> Self {
        Self {
            bus,
            currencies,
            skips,
        }
    }

    /// Configuration ([`PublisherConfig`]), the EventBridge and DynamoDB clients, once per
    /// cold start.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = PublisherConfig::from_env()?;
        let bus = bus(config.bus_name).await;
        let skips = Arc::new(config.store.store().await);
        Ok(Self::new(Box::new(bus), config.store.currencies, skips))
    }

    pub async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let changes: Vec<Change> = event.records.into_iter().map(change_of).collect();
        let published = events::publish(
            self.bus.as_ref(),
            &self.currencies,
            self.skips.as_ref(),
            &changes,
        )
        .await;
        if published.unreadable {
            // Alarmed on: the shard waits for an operator (`operator skip-record`).
            shared::platform::metrics::emit(
                "UnreadableStreamRecords",
                1.0,
                shared::platform::metrics::Unit::Count,
                &[],
            );
        }
        tracing::info!(
            records = changes.len(),
            events = published.events,
            skipped = published.skipped,
            calls = published.calls,
            retry_from = published.retry_from.as_deref().unwrap_or("-"),
            "stream batch published"
        );
        shared::platform::metrics::emit(
            "EventsPublished",
            published.events as f64,
            shared::platform::metrics::Unit::Count,
            &[],
        );
        let mut response = DynamoDbEventResponse::default();
        if let Some(sequence_number) = published.retry_from {
            shared::platform::metrics::emit(
                "EventBatchesRetried",
                1.0,
                shared::platform::metrics::Unit::Count,
                &[],
            );
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence_number);
            response.batch_item_failures.push(failure);
        }
        response
    }
}

/// A stream record as the publisher reads it: its images in the SDK's type, so the store's own
/// codec decodes them. An absent image arrives empty.
pub fn change_of(record: EventRecord) -> Change {
    let image = |item: serde_dynamo::Item| -> Option<Image> {
        let map = item.into_inner();
        (!map.is_empty()).then(|| map.into_iter().map(|(k, v)| (k, v.into())).collect())
    };
    Change {
        sequence_number: record.change.sequence_number.unwrap_or_default(),
        old: image(record.change.old_image),
        new: image(record.change.new_image),
    }
}

/// The stack's bus through an EventBridge client built from the environment (the publisher's,
/// and `operator republish`'s).
pub async fn bus(bus_name: impl Into<String>) -> EventBridgeBus {
    EventBridgeBus::new(shared::sdk_client!(aws_sdk_eventbridge), bus_name)
}

/// EventBridge's PutEvents on one bus.
pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus_name: String,
}

impl EventBridgeBus {
    pub fn new(client: aws_sdk_eventbridge::Client, bus_name: impl Into<String>) -> Self {
        Self {
            client,
            bus_name: bus_name.into(),
        }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn put(&self, events: &[PipelineEvent]) -> Result<Vec<bool>, String> {
        let entries = events
            .iter()
            .map(|e| {
                let time = event_time(&e.occurred_at);
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus_name)
                    .source(events::SOURCE)
                    .detail_type(e.kind.detail_type())
                    .detail(e.detail.to_string())
                    .set_time(time)
                    .build()
            })
            .collect::<Vec<_>>();
        let out = self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| format!("{e:?}").chars().take(300).collect::<String>())?;
        Ok(out
            .entries()
            .iter()
            .map(|r| r.error_code().is_none() && r.event_id().is_some())
            .collect())
    }
}

fn event_time(rfc3339: &str) -> Option<aws_sdk_eventbridge::primitives::DateTime> {
    aws_sdk_eventbridge::primitives::DateTime::from_str(
        rfc3339,
        aws_sdk_eventbridge::primitives::DateTimeFormat::DateTime,
    )
    .ok()
}
