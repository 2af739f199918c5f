//! Least privilege both ways, from evidence: every AWS call a function's code made during the
//! integration tests (recorded per function by `shared::platform::calls::CallRecorder`, see
//! `function_client`) must be granted by that function's policy in template.yaml, and every
//! grant must have been used. DynamoDB Local enforces no IAM, so without this a missing action
//! (as `dynamodb:ConditionCheckItem` once was) shows only on AWS.
//!
//! `scripts/test.sh` runs the suite with `CALL_LOG_DIR=target/calls`, then this check
//! (`--ignored`: it needs the suite's records). `scripts/arm64-loop.sh` runs it against the
//! records of the real arm64 bootstraps with `IAM_CHECK_UNUSED=0` (that loop covers only the
//! common paths, so it proves nothing about unused grants).

use serde_yaml_ng::Value;
use shared::platform::calls::Call;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Grants the suite cannot exercise, each with its reason. Keep it short.
const EXCEPTIONS: &[(&str, &str, &str, &str)] = &[
    // (function, action, resource, why)
    // Lambda's event-source mapping polls the stream and writes to the on-failure queue with the
    // publisher's role; the function's own code never makes these calls.
    (
        "event-publisher",
        "dynamodb:DescribeStream",
        "stream",
        MAPPING,
    ),
    ("event-publisher", "dynamodb:GetRecords", "stream", MAPPING),
    (
        "event-publisher",
        "dynamodb:GetShardIterator",
        "stream",
        MAPPING,
    ),
    ("event-publisher", "dynamodb:ListStreams", "*", MAPPING),
    ("event-publisher", "sqs:SendMessage", "queue", MAPPING),
];
const MAPPING: &str = "used by the stream's event-source mapping, with the function's role";

fn template() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).expect("template.yaml parses")
}

/// Untags `!Ref X` / `!GetAtt X.Arn` / `!Sub "…"` and names the resource kind it points at.
fn resource_kind(v: &Value, resources: &serde_yaml_ng::Mapping) -> String {
    let text = match v {
        Value::Tagged(t) => match &t.value {
            Value::String(s) => s.clone(),
            Value::Sequence(seq) => seq
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("."),
            other => format!("{other:?}"),
        },
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    };
    if let Some((_, index)) = text.split_once("/index/") {
        return format!("index/{index}");
    }
    if text.ends_with(".StreamArn") {
        return "stream".into();
    }
    let logical = text
        .trim_start_matches("${")
        .split(['.', '}'])
        .next()
        .unwrap_or("");
    let kind = resources
        .get(logical)
        .and_then(|r| r.get("Type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    match kind {
        "AWS::DynamoDB::Table" => "table".into(),
        "AWS::SecretsManager::Secret" => "secret".into(),
        "AWS::Events::EventBus" => "bus".into(),
        "AWS::SQS::Queue" => "queue".into(),
        "" => text,
        other => other.to_string(),
    }
}

/// `binary name → granted (action, resource kind)` for every function in the template.
fn granted() -> BTreeMap<String, BTreeSet<Call>> {
    let t = template();
    let resources = t["Resources"].as_mapping().unwrap();
    let mut out = BTreeMap::new();
    for (_, r) in resources {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = r["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("every function names its Binary")
            .to_string();
        let mut grants = BTreeSet::new();
        for policy in r["Properties"]["Policies"].as_sequence().unwrap_or(&vec![]) {
            let statements = policy["Statement"].as_sequence().unwrap_or_else(|| {
                panic!("{binary}: only explicit Statement policies are checked")
            });
            for st in statements {
                assert_eq!(st["Effect"].as_str(), Some("Allow"), "{binary}: {st:?}");
                let actions: Vec<String> = match &st["Action"] {
                    Value::String(a) => vec![a.clone()],
                    Value::Sequence(s) => {
                        s.iter().map(|a| a.as_str().unwrap().to_string()).collect()
                    }
                    other => panic!("{binary}: Action {other:?}"),
                };
                let resources_of: Vec<String> = match &st["Resource"] {
                    Value::Sequence(s) => s.iter().map(|x| resource_kind(x, resources)).collect(),
                    one => vec![resource_kind(one, resources)],
                };
                for a in &actions {
                    assert!(!a.contains('*'), "{binary}: wildcard action {a}");
                    for res in &resources_of {
                        grants.insert(Call {
                            action: a.clone(),
                            resource: res.clone(),
                        });
                    }
                }
            }
        }
        out.insert(binary, grants);
    }
    out
}

fn recorded(dir: &str, function: &str) -> BTreeSet<Call> {
    let path = PathBuf::from(dir).join(format!("{function}.calls"));
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(Call::parse)
        .collect()
}

/// What the code did that the policy does not allow, and what the policy allows that the code
/// never did (less the justified exceptions).
fn gaps(
    function: &str,
    granted: &BTreeSet<Call>,
    recorded: &BTreeSet<Call>,
) -> (Vec<String>, Vec<String>) {
    let missing = recorded.difference(granted).map(Call::line).collect();
    let unused = granted
        .difference(recorded)
        .filter(|c| {
            !EXCEPTIONS
                .iter()
                .any(|(f, a, r, _)| *f == function && *a == c.action && *r == c.resource)
        })
        .map(Call::line)
        .collect();
    (missing, unused)
}

#[test]
#[ignore = "needs the records of a whole test run: scripts/test.sh runs it after the suite"]
fn every_recorded_call_is_granted_and_every_grant_was_used() {
    let dir = std::env::var(shared::platform::calls::CALL_LOG_DIR_ENV)
        .expect("CALL_LOG_DIR names the folder the suite recorded its calls in");
    let check_unused = std::env::var("IAM_CHECK_UNUSED").map_or(true, |v| v != "0");
    let mut report = vec![];
    for (function, grants) in granted() {
        let calls = recorded(&dir, &function);
        assert!(
            !calls.is_empty(),
            "no calls recorded for {function} in {dir}: did the suite run with CALL_LOG_DIR?"
        );
        let (missing, unused) = gaps(&function, &grants, &calls);
        for m in missing {
            report.push(format!(
                "{function}: the code calls `{m}` but template.yaml does not grant it"
            ));
        }
        if check_unused {
            for u in unused {
                report.push(format!(
                    "{function}: template.yaml grants `{u}` but no test ever used it"
                ));
            }
        }
    }
    assert!(
        report.is_empty(),
        "IAM policies vs recorded calls:\n{}",
        report.join("\n")
    );
}

#[test]
fn a_condition_check_in_a_transaction_needs_its_own_action() {
    // The shape of the defect this check exists for: a grant of Put/Update but a transaction
    // that also carries a ConditionCheck.
    let call = |a: &str| Call::parse(&format!("dynamodb:{a} table")).unwrap();
    let granted: BTreeSet<Call> = [call("PutItem"), call("UpdateItem"), call("GetItem")].into();
    let recorded: BTreeSet<Call> = [call("UpdateItem"), call("ConditionCheckItem")].into();
    let (missing, unused) = gaps("payout-batcher", &granted, &recorded);
    assert_eq!(missing, vec!["dynamodb:ConditionCheckItem table"]);
    assert_eq!(
        unused,
        vec!["dynamodb:GetItem table", "dynamodb:PutItem table"]
    );
}

#[test]
fn the_template_grants_are_read_per_function_and_resource_kind() {
    let g = granted();
    assert_eq!(
        g.keys().map(String::as_str).collect::<Vec<_>>(),
        vec![
            "event-publisher",
            "payout-batcher",
            "provider-webhook",
            "withdrawal-request"
        ]
    );
    assert!(g["payout-batcher"]
        .iter()
        .any(|c| c.action == "dynamodb:Query" && c.resource == "index/pending-index"));
    assert!(g["event-publisher"]
        .iter()
        .any(|c| c.action == "events:PutEvents" && c.resource == "bus"));
    assert!(g["event-publisher"]
        .iter()
        .any(|c| c.action == "dynamodb:GetRecords" && c.resource == "stream"));
}

#[tokio::test]
async fn the_same_interceptor_counts_requests_per_operation_for_the_benchmark() {
    let counter = shared::platform::calls::CallRecorder::counting();
    let client = integration_tests::counting_client(&counter);
    let store = shared::store::DynamoStore::new(
        client,
        format!("t_{}", ulid::Ulid::new()),
        shared::domain::Currencies::default(),
    );
    store.create_table().await.unwrap();
    let created = counter.take_counts();
    assert_eq!(created.get("CreateTable"), Some(&1), "{created:?}");
    use shared::store::Store;
    let user = shared::domain::UserId::parse("counted").unwrap();
    store.balances(&user).await.unwrap();
    store.balances(&user).await.unwrap();
    let counts = counter.take_counts();
    assert_eq!(counts.values().sum::<u64>(), 2, "{counts:?}");
    assert!(counter.take_counts().is_empty());
}
