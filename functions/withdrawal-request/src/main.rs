use lambda_http::{run, service_fn, Error, Request};
use withdrawal_request::App;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    // Config and the SDK client are built once per cold start, outside the handler.
    let app = App::from_env().await?;
    let app = &app;
    run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(app.handle(req).await)
    }))
    .await
}
