//! The event-source mapping, locally: reads the table's stream from DynamoDB Local (its
//! `dynamodbstreams` API, the real thing), keeps what the template's filter keeps, and hands
//! each shard's records to `event-publisher` in order, in batches, the way Lambda's mapping does
//! with `ReportBatchItemFailures`: a reported sequence number and everything after it come again;
//! after `max_attempts` the rest of that batch is given up (deployed: the on-failure queue and
//! its alarm). No bisecting: a batch that keeps failing is retried whole.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use aws_sdk_dynamodbstreams::error::ProvideErrorMetadata;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use aws_sdk_dynamodbstreams::Client;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// The mapping's filter (template.yaml's `FilterCriteria`, held against this by a test): only
/// withdrawal, credit, switch and beneficiary items, as written (a removed item has no new image and is dropped).
pub fn filter_pattern() -> Value {
    json!({"dynamodb": {"NewImage": {shared::store::TYPE_ATTRIBUTE: {"S": [
        shared::store::WITHDRAWAL_TYPE,
        shared::store::CREDIT_TYPE,
        shared::store::CONTROL_TYPE,
        shared::store::BENEFICIARY_TYPE,
    ]}}}})
}

/// [`filter_pattern`] applied: the new image's `type` is one of the pattern's strings.
fn passes_filter(record: &EventRecord) -> bool {
    let pattern = filter_pattern();
    let kept = &pattern["dynamodb"]["NewImage"][shared::store::TYPE_ATTRIBUTE]["S"];
    match record.change.new_image.get(shared::store::TYPE_ATTRIBUTE) {
        Some(serde_dynamo::AttributeValue::S(t)) => kept
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v.as_str() == Some(t))),
        _ => false,
    }
}

/// The function the records go to.
pub type Invoke<'a> = &'a (dyn Fn(Event) -> Pin<Box<dyn Future<Output = Result<DynamoDbEventResponse, String>> + Send>>
         + Sync);

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delivered {
    pub invocations: usize,
    /// Records handed over, retries included.
    pub records: usize,
    /// Invocations that reported a failure (or failed).
    pub retried: usize,
    /// Records given up after `max_attempts`.
    pub given_up: usize,
    /// The sequence number of the last record the function reported it could not take (what
    /// an operator names to `operator skip-record`).
    pub last_failed: Option<String>,
}

struct Shard {
    id: String,
    parent: Option<String>,
    /// `None` once the shard is closed and read to its end.
    iterator: Option<String>,
    buffer: VecDeque<EventRecord>,
    /// When the oldest record still buffered arrived (the batching window counts from it).
    since: Option<Instant>,
    /// The last record read from the shard: where a replaced iterator resumes.
    last_sequence: Option<String>,
    attempts: u32,
}

pub struct Relay {
    client: Client,
    stream_arn: String,
    region: String,
    shards: Vec<Shard>,
    pub batch_size: usize,
    /// Attempts at a failing batch before the rest of it is given up. Deployed, the mapping
    /// retries until the stream's own retention (`MaximumRecordAgeInSeconds: -1`); locally a
    /// bound keeps a run finite, and a test shortens it to stand for an outage past it.
    pub max_attempts: u32,
    /// The mapping's `MaximumBatchingWindowInSeconds`: a batch smaller than `batch_size` waits
    /// this long for more records. Zero by default (tests); the template's is 1 s.
    pub batching_window: Duration,
}

impl Relay {
    /// Follows the table's (latest) stream from its oldest record.
    pub async fn for_table(client: Client, table: &str) -> Result<Self, String> {
        let streams = client
            .list_streams()
            .table_name(table)
            .send()
            .await
            .map_err(|e| format!("ListStreams: {e:?}"))?;
        let stream_arn = streams
            .streams()
            .last()
            .and_then(|s| s.stream_arn())
            .ok_or_else(|| format!("table {table} has no stream"))?
            .to_string();
        let region = client
            .config()
            .region()
            .map_or("us-east-1".to_string(), |r| r.to_string());
        Ok(Self {
            client,
            stream_arn,
            region,
            shards: Vec::new(),
            batch_size: 100,
            max_attempts: 10,
            batching_window: Duration::ZERO,
        })
    }

    /// Learns shards that appeared since (a shard closes and children follow it).
    async fn discover(&mut self) -> Result<(), String> {
        let mut start: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.clone())
                .send()
                .await
                .map_err(|e| format!("DescribeStream: {e:?}"))?;
            let Some(desc) = out.stream_description() else {
                return Ok(());
            };
            for s in desc.shards() {
                let Some(id) = s.shard_id() else { continue };
                if self.shards.iter().any(|k| k.id == id) {
                    continue;
                }
                let iterator = self
                    .client
                    .get_shard_iterator()
                    .stream_arn(&self.stream_arn)
                    .shard_id(id)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .map_err(|e| format!("GetShardIterator: {e:?}"))?
                    .shard_iterator()
                    .map(str::to_string);
                self.shards.push(Shard {
                    id: id.to_string(),
                    parent: s.parent_shard_id().map(str::to_string),
                    iterator,
                    buffer: VecDeque::new(),
                    since: None,
                    last_sequence: None,
                    attempts: 0,
                });
            }
            match desc.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_string()),
                None => return Ok(()),
            }
        }
    }

    /// Reads what is new on every shard whose parent is read to its end. Returns how many
    /// records (after the filter) were added.
    async fn fill(&mut self) -> Result<usize, String> {
        self.discover().await?;
        let done: Vec<String> = self
            .shards
            .iter()
            .filter(|s| s.iterator.is_none() && s.buffer.is_empty())
            .map(|s| s.id.clone())
            .collect();
        let known: Vec<String> = self.shards.iter().map(|s| s.id.clone()).collect();
        let mut added = 0;
        for shard in &mut self.shards {
            let parent_pending = shard
                .parent
                .as_ref()
                .is_some_and(|p| known.contains(p) && !done.contains(p));
            if parent_pending {
                continue;
            }
            let Some(iterator) = shard.iterator.clone() else {
                continue;
            };
            let out = match self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(1000)
                .send()
                .await
            {
                Ok(out) => out,
                // DynamoDB Local invalidates an iterator now and then (an expired one, or one
                // that "reads past the oldest record" of a shard that was empty when it was
                // taken): take a new one after the last record read, as Lambda's poller does.
                Err(e)
                    if matches!(
                        e.code(),
                        Some("TrimmedDataAccessException" | "ExpiredIteratorException")
                    ) =>
                {
                    let request = self
                        .client
                        .get_shard_iterator()
                        .stream_arn(&self.stream_arn)
                        .shard_id(&shard.id);
                    let request = match &shard.last_sequence {
                        Some(seq) => request
                            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                            .sequence_number(seq),
                        None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
                    };
                    shard.iterator = request
                        .send()
                        .await
                        .map_err(|e| format!("GetShardIterator: {e:?}"))?
                        .shard_iterator()
                        .map(str::to_string);
                    continue;
                }
                Err(e) => return Err(format!("GetRecords: {e:?}")),
            };
            shard.iterator = out.next_shard_iterator().map(str::to_string);
            for r in out.records() {
                if let Some(seq) = r.dynamodb().and_then(|d| d.sequence_number()) {
                    shard.last_sequence = Some(seq.to_string());
                }
                let record = lambda_record(r, &self.stream_arn, &self.region)?;
                if passes_filter(&record) {
                    shard.since.get_or_insert_with(Instant::now);
                    shard.buffer.push_back(record);
                    added += 1;
                }
            }
        }
        Ok(added)
    }

    /// One pass: reads what is new, then hands each shard's next batch to `invoke`.
    pub async fn step(&mut self, invoke: Invoke<'_>) -> Result<Delivered, String> {
        self.fill().await?;
        let mut out = Delivered::default();
        for shard in &mut self.shards {
            let waited = shard
                .since
                .is_some_and(|t| t.elapsed() >= self.batching_window);
            if shard.buffer.is_empty() || (shard.buffer.len() < self.batch_size && !waited) {
                continue;
            }
            let n = shard.buffer.len().min(self.batch_size);
            let records: Vec<EventRecord> = shard.buffer.iter().take(n).cloned().collect();
            out.invocations += 1;
            out.records += n;
            let answer = invoke(event_of(records.clone())).await;
            let failed_at = match answer {
                // As Lambda reads it: the lowest reported sequence number; an identifier that is
                // empty or names no record of the batch fails the whole batch.
                Ok(response) => response
                    .batch_item_failures
                    .iter()
                    .map(|f| {
                        f.item_identifier
                            .as_deref()
                            .filter(|id| !id.is_empty())
                            .and_then(|id| {
                                records
                                    .iter()
                                    .position(|r| r.change.sequence_number.as_deref() == Some(id))
                            })
                            .unwrap_or(0)
                    })
                    .min(),
                Err(e) => {
                    tracing::warn!(error = %e, "event-publisher failed; the batch comes again");
                    Some(0)
                }
            };
            match failed_at {
                None => {
                    shard.buffer.drain(..n);
                    shard.attempts = 0;
                    shard.since = (!shard.buffer.is_empty()).then(Instant::now);
                }
                Some(i) => {
                    out.retried += 1;
                    out.last_failed = records[i].change.sequence_number.clone();
                    shard.buffer.drain(..i);
                    shard.attempts = if i > 0 { 1 } else { shard.attempts + 1 };
                    if shard.attempts >= self.max_attempts {
                        // What Lambda does past its retries: the rest of the batch goes to the
                        // on-failure queue and the shard moves on.
                        let lost: Vec<EventRecord> = shard.buffer.drain(..n - i).collect();
                        tracing::error!(
                            first = lost
                                .first()
                                .and_then(|r| r.change.sequence_number.clone())
                                .unwrap_or_default(),
                            records = lost.len(),
                            "records given up after {} attempts (deployed: the on-failure queue)",
                            self.max_attempts
                        );
                        out.given_up += lost.len();
                        shard.attempts = 0;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Steps until the stream has nothing new and every record is delivered or given up.
    pub async fn drain(&mut self, invoke: Invoke<'_>) -> Result<Delivered, String> {
        let mut total = Delivered::default();
        loop {
            let d = self.step(invoke).await?;
            let idle = d.invocations == 0;
            total.invocations += d.invocations;
            total.records += d.records;
            total.retried += d.retried;
            total.given_up += d.given_up;
            total.last_failed = d.last_failed.or(total.last_failed);
            if idle {
                return Ok(total);
            }
        }
    }
}

fn event_of(records: Vec<EventRecord>) -> Event {
    let mut event = Event::default();
    event.records = records;
    event
}

/// A record in the shape Lambda hands the function (its JSON, parsed by the same type).
fn lambda_record(r: &Record, stream_arn: &str, region: &str) -> Result<EventRecord, String> {
    let image =
        |m: Option<&HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| -> Value {
            let item: HashMap<String, serde_dynamo::AttributeValue> = m
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect();
            serde_json::to_value(serde_dynamo::Item::from(item)).unwrap_or(Value::Null)
        };
    let d = r.dynamodb().ok_or("a stream record without its change")?;
    let created = d
        .approximate_creation_date_time()
        .map_or(0.0, |t| t.as_secs_f64());
    let mut change = json!({
        "ApproximateCreationDateTime": created,
        "Keys": image(d.keys()),
        "SequenceNumber": d.sequence_number(),
        "SizeBytes": d.size_bytes().unwrap_or(0),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if d.new_image().is_some() {
        change["NewImage"] = image(d.new_image());
    }
    if d.old_image().is_some() {
        change["OldImage"] = image(d.old_image());
    }
    let record = json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    });
    serde_json::from_value(record).map_err(|e| format!("stream record: {e}"))
}

/// `cargo lambda watch`'s invoke endpoint for one function (what `cargo lambda invoke` calls).
pub fn http_invoke(
    url: String,
) -> impl Fn(Event) -> Pin<Box<dyn Future<Output = Result<DynamoDbEventResponse, String>> + Send>> + Sync
{
    let http = reqwest::Client::new();
    move |event: Event| {
        let http = http.clone();
        let url = url.clone();
        Box::pin(async move {
            let response = http
                .post(&url)
                .json(&event)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ));
            }
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
        })
    }
}
