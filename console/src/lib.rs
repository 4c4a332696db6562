//! Warren's console: a web console for operators and an HTTP API (`/api/v1`) for operators and
//! for producers that cannot speak AMQP, served by `warren console`. It is a process of its
//! own, apart from the workers, and holds no state of its own beyond Postgres: run as many
//! copies as you like behind a load balancer.
//!
//! Layout:
//! - [`api`]: the routes, one module per resource (runs, tasks, fleet, dead letters, schedules,
//!   audit, events and webhooks, the login session);
//! - [`auth`], [`tokens`], [`sessions`]: who may do what (bearer tokens with scopes, or a
//!   browser session made from one);
//! - [`audit`]: who did what, when;
//! - [`live`]: the run updates the console's pages receive as server-sent events;
//! - [`webhooks`]: signed webhook sources from the configuration file;
//! - [`ui`]: the console's page, script and style, embedded in the binary.

mod api;
pub mod audit;
pub mod auth;
mod error;
mod extract;
pub mod live;
pub mod sessions;
mod state;
pub mod tokens;
mod ui;
pub mod webhooks;

pub use error::ApiError;

/// The routes of `/api/v1` (method, path relative to `/api/v1`), as served.
pub use api::ROUTES;
/// Served beside them: the OpenAPI document itself, at `/api/v1/openapi.yaml`.
pub const OPENAPI_ROUTE: (&str, &str) = ("get", "/api/v1/openapi.yaml");

use axum::Router;
use axum::http::{HeaderValue, header};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_shared::topology::{QueueType, Topology};

/// The default address: this machine only. Put a TLS-terminating reverse proxy in front to
/// serve others (docs/api.md).
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// The default limit of an ingress body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Postgres connections a console process holds at most (in the connection budget of
/// docs/operations.md).
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How a console is started.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Postgres (created and migrated if needed, as for a worker).
    pub database_url: String,
    /// The broker (a comma-separated list of nodes is accepted, as everywhere).
    pub amqp_url: String,
    /// The namespace of exchanges and queues.
    pub namespace: String,
    /// Ingress bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// Webhook sources (from the configuration file: [`webhooks::load`]).
    pub webhooks: Vec<webhooks::WebhookSource>,
    /// Mark the session cookie `Secure` (when the console is reached over HTTPS).
    pub secure_cookies: bool,
    /// How often live updates look for changes while someone watches.
    pub live_interval: Duration,
    /// Postgres connections at most.
    pub pool_size: usize,
}

impl ConsoleConfig {
    /// The defaults, with these connection strings.
    pub fn new(database_url: &str, amqp_url: &str, namespace: &str) -> ConsoleConfig {
        ConsoleConfig {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database_url: database_url.to_owned(),
            amqp_url: amqp_url.to_owned(),
            namespace: namespace.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            webhooks: Vec::new(),
            secure_cookies: false,
            live_interval: Duration::from_secs(1),
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

/// Why a console could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Postgres could not be reached or migrated.
    #[error("Postgres: {0}")]
    Database(#[from] warren_shared::db::DbError),
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running console.
pub struct Console {
    addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl Console {
    /// Prepares Postgres, binds and starts serving.
    pub async fn start(config: ConsoleConfig) -> Result<Console, StartError> {
        let pool = warren_shared::db::prepare(&config.database_url, config.pool_size).await?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let stop = CancellationToken::new();
        let live = live::spawn(pool.clone(), config.live_interval, stop.clone());
        let topology = Topology::new(config.namespace.clone(), QueueType::default());
        let webhooks = config.webhooks.clone();
        let state = state::AppState::new(pool, topology, config, live, webhooks);
        let app = router(state);
        let shutdown = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        tracing::info!(%addr, "console listening");
        Ok(Console { addr, stop, server })
    }

    /// Where it listens (the port chosen when the configuration said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` is cancelled (or the server fails).
    pub async fn serve_until(self, stop: CancellationToken) -> std::io::Result<()> {
        let Console {
            stop: own,
            mut server,
            ..
        } = self;
        tokio::select! {
            () = stop.cancelled() => {
                own.cancel();
                server.await.unwrap_or(Ok(()))
            }
            result = &mut server => {
                own.cancel();
                result.unwrap_or(Ok(()))
            }
        }
    }

    /// Stops serving: open requests finish, live streams end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

fn router(state: state::AppState) -> Router {
    Router::new()
        .nest("/api/v1", api::routes())
        .merge(ui::routes())
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers that keep the console's pages from being framed, sniffed or scripted from
/// elsewhere: its script and style come from itself only.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
