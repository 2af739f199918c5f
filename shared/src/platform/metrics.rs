//! CloudWatch Embedded Metric Format: one JSON line on stdout per data point, turned into metrics
//! by CloudWatch Logs without any API call from the function.

use serde_json::{json, Map, Value};

/// The namespace when `METRICS_NAMESPACE` is not set; the template sets one per stack
/// (`WithdrawalPipeline/<stack>`), so two stacks in one account never share an alarm's metric.
pub const NAMESPACE: &str = "WithdrawalPipeline";

fn namespace() -> &'static str {
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| std::env::var("METRICS_NAMESPACE").unwrap_or_else(|_| NAMESPACE.into()))
}

#[derive(Clone, Copy, Debug)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// The EMF document for one data point (exposed for tests). A point with dimensions is also
/// published without them (the empty dimension set), the series the alarms watch.
pub fn document(name: &str, value: f64, unit: Unit, dimensions: &[(&str, &str)]) -> Value {
    let mut doc = Map::new();
    let mut sets = vec![dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()];
    if !dimensions.is_empty() {
        sets.push(vec![]);
    }
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace(),
                "Dimensions": sets,
                "Metrics": [{"Name": name, "Unit": unit.as_str()}],
            }],
        }),
    );
    for (k, v) in dimensions {
        doc.insert((*k).into(), json!(v));
    }
    doc.insert(name.into(), json!(value));
    Value::Object(doc)
}

/// Emits a data point when running as a Lambda function (or under `cargo lambda`).
pub fn emit(name: &str, value: f64, unit: Unit, dimensions: &[(&str, &str)]) {
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!("{}", document(name, value, unit, dimensions));
    }
}

pub fn count(name: &str, currency: &str) {
    emit(name, 1.0, Unit::Count, &[("Currency", currency)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_the_emf_shape() {
        let d = document(
            "WithdrawalsSettled",
            1.0,
            Unit::Count,
            &[("Currency", "USD")],
        );
        assert_eq!(d["WithdrawalsSettled"], 1.0);
        assert_eq!(d["Currency"], "USD");
        let m = &d["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], NAMESPACE);
        assert_eq!(m["Dimensions"][0][0], "Currency");
        // The aggregate the alarms use.
        assert_eq!(m["Dimensions"][1], serde_json::json!([]));
        assert_eq!(m["Metrics"][0]["Unit"], "Count");
    }
}
