// Placeholder until the batcher lands: it acknowledges the schedule and claims nothing, so no
// withdrawal leaves PENDING before exactly-once claims exist.
use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    run(service_fn(
        |_event: LambdaEvent<EventBridgeEvent<Value>>| async {
            tracing::warn!("payout batcher not implemented yet; nothing claimed");
            Ok::<_, Error>(json!({"claimed": 0}))
        },
    ))
    .await
}
