// Placeholder until webhook handling lands: 503 makes the provider retry later instead of
// losing the callback.
use lambda_http::{run, service_fn, Body, Error, Request, Response};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    run(service_fn(|_req: Request| async {
        Response::builder()
            .status(503)
            .header("content-type", "application/json")
            .body(Body::Text(
                r#"{"error":{"code":"try_again","message":"webhook processing is not available yet"}}"#.into(),
            ))
            .map_err(Error::from)
    }))
    .await
}
