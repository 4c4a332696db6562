//! The HTTP scenarios' endpoint: a no-op step served in the benchmark's own process, so that
//! what the scenarios measure is Warren's side of an HTTP step (and the loopback), not a step's
//! work.

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::post;

/// Serves `POST /step` (answering `{"output": null}`) on a free loopback port for as long as
/// the benchmark runs; returns its URL.
pub(crate) async fn serve() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the HTTP scenarios' endpoint")?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/step",
        post(|| async { ([("content-type", "application/json")], r#"{"output":null}"#) }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the HTTP scenarios' endpoint stopped: {e}");
        }
    });
    Ok(format!("http://{addr}/step"))
}
