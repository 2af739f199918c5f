use lambda_http::{run, service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    // Secrets, config and the SDK client are read once per cold start.
    let app = provider_webhook::app_from_env().await?;
    let app = &app;
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(provider_webhook::handle(app, req).await)
    }))
    .await
}
