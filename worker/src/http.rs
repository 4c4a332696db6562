//! The replica's HTTP endpoints, for Prometheus and for an orchestrator's probes:
//! `/metrics` (Prometheus text format), `/healthz` (the process is alive and serving) and
//! `/readyz` (connected to the broker and the database, migrated, consuming, not draining).
//!
//! Liveness deliberately ignores the broker and the database: a replica waiting for them to come
//! back is healthy, and restarting it would not bring them back sooner.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warren_shared::metrics as names;

/// What readiness is made of.
pub(crate) struct Health {
    consuming: AtomicBool,
    draining: AtomicBool,
    /// The state writer's view of Postgres (not the writer itself, which must be free to stop).
    database: watch::Receiver<bool>,
}

impl Health {
    pub(crate) fn new(database: watch::Receiver<bool>) -> Self {
        Health {
            consuming: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            database,
        }
    }

    pub(crate) fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ready to take work: consuming from the broker, Postgres reachable, not draining.
    /// (Migrations ran before the replica started consuming.)
    pub(crate) fn ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && *self.database.borrow()
    }
}

/// The process's Prometheus recorder, installed on first use. Metric handles are bound to the
/// recorder present when they are registered, so the worker installs it before building its
/// tasks' metrics.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(names::DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => {
                names::describe_all();
                handle
            }
            Err(e) => {
                // The embedding program installed a recorder of its own: it gets the metrics,
                // and this endpoint serves an empty page.
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

/// Serves the endpoints on `listener` until `stop`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP endpoint stopped");
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    metrics::gauge!(names::WORKER_READY).set(if health.ready() { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
