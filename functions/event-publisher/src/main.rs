use aws_lambda_events::event::dynamodb::Event;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    // Configuration and the EventBridge client are built once per cold start.
    let app = event_publisher::App::from_env().await?;
    let app = &app;
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<_, Error>(app.handle(event.payload).await)
    }))
    .await
}
