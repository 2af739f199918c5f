//! DynamoDB's transaction conflicts, which DynamoDB Local does not produce: on AWS a transaction
//! that touches an item another transaction is still writing is cancelled with
//! `TransactionConflict` (and the caller retries). DynamoDB Local runs transactions one after
//! the other, so a hot item looks free there.
//!
//! [`ConflictEmulator`] is an SDK interceptor for a test's client: an attempt of
//! `TransactWriteItems` that names an item (table, PK, SK) held by another attempt still in
//! flight is not executed — its target is switched to a harmless read — and answers the
//! `TransactionCanceledException` with `TransactionConflict` reasons AWS would. An attempt is in
//! flight from just before it is signed until its answer arrives, which on a loaded DynamoDB Local
//! is longer than AWS takes to run a transaction: the emulation errs on the side of more
//! conflicts.

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
    FinalizerInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Item → attempts in flight holding it.
    held: Mutex<HashMap<String, u32>>,
    attempts: AtomicU64,
    conflicts: AtomicU64,
    /// Conflicting items by kind (their sort key up to the first `#`: `BAL`, `COUNTER`, …).
    by_kind: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Share one emulator between the clients whose transactions may meet on the same items.
#[derive(Debug, Clone, Default)]
pub struct ConflictEmulator(Arc<State>);

impl ConflictEmulator {
    /// How often an item of each kind (sort key up to its first `#`) was the one in the way.
    pub fn conflicts_by_kind(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.by_kind.lock().unwrap().clone()
    }

    /// `(transaction attempts, of which cancelled for a conflict)` so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.attempts.load(Ordering::SeqCst),
            self.0.conflicts.load(Ordering::SeqCst),
        )
    }
}

/// What this attempt holds, or that it was cancelled: `items` positions that conflicted.
#[derive(Debug, Clone)]
enum Attempt {
    Holds(Vec<String>),
    Conflicted {
        items: usize,
        conflicting: Vec<bool>,
    },
}

impl Storable for Attempt {
    type Storer = StoreReplace<Self>;
}

/// `table|PK|SK` of every item of a `TransactWriteItems` body.
fn items_of(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let items = v.get("TransactItems")?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|item| {
                let (_, op) = item.as_object()?.iter().next()?;
                let key = op.get("Key").or_else(|| op.get("Item"))?;
                let s = |name: &str| key.get(name)?.get("S")?.as_str().map(str::to_string);
                Some(format!(
                    "{}|{}|{}",
                    op.get("TableName")?.as_str()?,
                    s("PK")?,
                    s("SK")?
                ))
            })
            .collect(),
    )
}

impl Intercept for ConflictEmulator {
    fn name(&self) -> &'static str {
        "ConflictEmulator"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        let is_tx = request
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".TransactWriteItems"));
        if !is_tx {
            return Ok(());
        }
        let Some(items) = request.body().bytes().and_then(items_of) else {
            return Ok(());
        };
        self.0.attempts.fetch_add(1, Ordering::SeqCst);
        let attempt = {
            let mut held = self.0.held.lock().unwrap();
            let conflicting: Vec<bool> = items.iter().map(|i| held.contains_key(i)).collect();
            if conflicting.iter().any(|c| *c) {
                let mut by_kind = self.0.by_kind.lock().unwrap();
                for (item, _) in items.iter().zip(&conflicting).filter(|(_, c)| **c) {
                    let sk = item.rsplit('|').next().unwrap_or("");
                    let kind = sk.split('#').next().unwrap_or(sk);
                    *by_kind.entry(kind.to_string()).or_default() += 1;
                }
                Attempt::Conflicted {
                    items: items.len(),
                    conflicting,
                }
            } else {
                for i in &items {
                    *held.entry(i.clone()).or_default() += 1;
                }
                Attempt::Holds(items)
            }
        };
        if matches!(attempt, Attempt::Conflicted { .. }) {
            self.0.conflicts.fetch_add(1, Ordering::SeqCst);
            // Not executed: a read that changes nothing goes out instead; its answer is replaced.
            request
                .headers_mut()
                .insert("x-amz-target", "DynamoDB_20120810.ListTables");
            *request.body_mut() = SdkBody::from("{}");
            request.headers_mut().insert("content-length", "2");
        }
        cfg.interceptor_state().store_put(attempt);
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(Attempt::Conflicted { items, conflicting }) = cfg.load::<Attempt>().cloned()
        else {
            return Ok(());
        };
        let reasons: Vec<Value> = (0..items)
            .map(|i| match conflicting[i] {
                true => json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}),
                false => json!({"Code": "None"}),
            })
            .collect();
        let codes: Vec<&str> = conflicting
            .iter()
            .map(|c| if *c { "TransactionConflict" } else { "None" })
            .collect();
        let body = json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": format!("Transaction cancelled, please refer cancellation reasons for specific reasons [{}]", codes.join(", ")),
            "CancellationReasons": reasons,
        })
        .to_string();
        let mut response = Response::new(StatusCode::try_from(400).unwrap(), SdkBody::from(body));
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        *context.response_mut() = response;
        Ok(())
    }

    fn read_after_attempt(
        &self,
        _: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Attempt::Holds(items)) = cfg.load::<Attempt>().cloned() {
            let mut held = self.0.held.lock().unwrap();
            for i in items {
                if let Some(n) = held.get_mut(&i) {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(&i);
                    }
                }
            }
            // This attempt is over: the next one on this operation decides afresh.
            cfg.interceptor_state()
                .store_put(Attempt::Holds(Vec::new()));
        }
        Ok(())
    }
}
