//! `jit-lambda-vendor`: the Lambda function binary (runtime `provided.al2023`).
//!
//! Cold start builds one [`Vendor`] (catalogue, store, AWS clients); every
//! invocation borrows it. Tracing goes to stderr without colours; stdout
//! carries the audit records only, one JSON line each.

use lambda_runtime::{service_fn, LambdaEvent};
use lambda_vendor::Vendor;
use serde_json::Value;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // The runtime logs each raw event at TRACE, Authorization header included: never that.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("lambda_runtime::layers::api_response=debug".parse()?);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let vendor = match Vendor::from_env().await {
        Ok(v) => v,
        Err(e) => {
            // Lambda reports the init failure; the message names the variable at fault.
            tracing::error!(error = %e, "cannot start");
            return Err(e.into());
        }
    };
    let vendor = &vendor;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        Ok::<Value, lambda_runtime::Error>(vendor.handle(event).await)
    }))
    .await
}
