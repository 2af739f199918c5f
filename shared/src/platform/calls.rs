//! Records the AWS calls a function makes as the IAM actions they need, so that a test can hold
//! each function's policy in `template.yaml` against what the code really does — nothing local
//! enforces IAM (DynamoDB Local accepts any action), so this is the only way to see a missing
//! grant before AWS does.
//!
//! One SDK interceptor serves every AWS client (they share the smithy runtime). It is installed
//! only where `CALL_LOG_DIR` is set (local runs and tests; the template never sets it) and
//! appends each distinct `action resource` line once to `$CALL_LOG_DIR/<function>.calls`. The
//! benchmark uses the same interceptor to count requests per operation (every HTTP attempt,
//! retries included).

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation::query::QueryInput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_smithy_runtime_api::client::interceptors::context::Input;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The environment variable naming the folder the records go to.
pub const CALL_LOG_DIR_ENV: &str = "CALL_LOG_DIR";

/// One IAM action on one resource kind: `table`, `index/<name>`, `secret` or `bus`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Call {
    pub action: String,
    pub resource: String,
}

impl Call {
    fn new(action: String, resource: impl Into<String>) -> Self {
        Self {
            action,
            resource: resource.into(),
        }
    }

    pub fn line(&self) -> String {
        format!("{} {}", self.action, self.resource)
    }

    pub fn parse(line: &str) -> Option<Self> {
        let (action, resource) = line.trim().split_once(' ')?;
        Some(Self::new(action.to_string(), resource))
    }
}

/// The interceptor: records under one function's name, or counts requests per operation.
#[derive(Debug, Clone)]
pub struct CallRecorder {
    file: Option<PathBuf>,
    counts: Option<Arc<Mutex<BTreeMap<String, u64>>>>,
}

/// What this process already wrote, per file (a test makes many clients for one function).
fn written() -> &'static Mutex<HashSet<(PathBuf, Call)>> {
    static SEEN: OnceLock<Mutex<HashSet<(PathBuf, Call)>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

impl CallRecorder {
    pub fn new(dir: impl Into<PathBuf>, function: &str) -> Self {
        let dir = dir.into();
        let _ = std::fs::create_dir_all(&dir);
        Self {
            file: Some(dir.join(format!("{function}.calls"))),
            counts: None,
        }
    }

    /// Counts every request sent, per operation, in memory (the benchmark's round trips).
    pub fn counting() -> Self {
        Self {
            file: None,
            counts: Some(Arc::default()),
        }
    }

    /// The counts since the last call, and a fresh start.
    pub fn take_counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .as_ref()
            .map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// A recorder when `CALL_LOG_DIR` is set, named after the Lambda function (or, where no
    /// runtime names it, the executable).
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os(CALL_LOG_DIR_ENV)?;
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
            .ok()
            .or_else(|| {
                std::env::current_exe()
                    .ok()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Some(Self::new(dir, &function))
    }

    fn record(&self, calls: Vec<Call>) {
        let Some(file) = &self.file else { return };
        let mut seen = written().lock().unwrap_or_else(|e| e.into_inner());
        let new: Vec<Call> = calls
            .into_iter()
            .filter(|c| seen.insert((file.clone(), c.clone())))
            .collect();
        if new.is_empty() {
            return;
        }
        // One append per new set of lines: concurrent processes (test binaries) interleave whole
        // lines, and a line seen twice is harmless.
        let text: String = new.iter().map(|c| c.line() + "\n").collect();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// The IAM actions one SDK operation needs. A transaction needs the action of each of its items
/// (AWS checks `ConditionCheckItem` for a condition check, and so on); a query on an index needs
/// the grant on that index.
fn calls_of(service: &str, operation: &str, input: &Input) -> Vec<Call> {
    let prefix = service.to_ascii_lowercase().replace([' ', '-'], "");
    match prefix.as_str() {
        "dynamodb" => {
            if let Some(tx) = input.downcast_ref::<TransactWriteItemsInput>() {
                let mut out = vec![];
                for item in tx.transact_items() {
                    let action = if item.put().is_some() {
                        "PutItem"
                    } else if item.update().is_some() {
                        "UpdateItem"
                    } else if item.delete().is_some() {
                        "DeleteItem"
                    } else {
                        "ConditionCheckItem"
                    };
                    out.push(Call::new(format!("dynamodb:{action}"), "table"));
                }
                return out;
            }
            let resource = input
                .downcast_ref::<QueryInput>()
                .and_then(|q| q.index_name())
                .map_or("table".to_string(), |i| format!("index/{i}"));
            vec![Call::new(format!("dynamodb:{operation}"), resource)]
        }
        "secretsmanager" => vec![Call::new(format!("secretsmanager:{operation}"), "secret")],
        // IAM names EventBridge's actions `events:`; the publisher puts on its bus only.
        "eventbridge" => vec![Call::new(format!("events:{operation}"), "bus")],
        other => vec![Call::new(format!("{other}:{operation}"), "*")],
    }
}

impl Intercept for CallRecorder {
    fn name(&self) -> &'static str {
        "CallRecorder"
    }

    // Not `read_before_execution`: a client interceptor runs that before the operation has put
    // its name into the bag. This runs once per operation (before the retry loop).
    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(meta) = cfg.load::<Metadata>() {
            self.record(calls_of(meta.service(), meta.name(), context.input()));
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let (Some(counts), Some(meta)) = (&self.counts, cfg.load::<Metadata>()) {
            *counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(meta.name().to_string())
                .or_default() += 1;
        }
        Ok(())
    }
}
