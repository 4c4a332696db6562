//! `warren worker`: one replica, until a signal.

use super::{CONNECT_TIMEOUT, redact};
use crate::args::{DEFAULT_HTTP_ADDR, Global, HttpAddr, WorkerArgs};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use tokio::signal::unix::{SignalKind, signal};
use warren_shared::db::DbError;
use warren_shared::topology::Topology;
use warren_worker::declared::{self, LoadError};
use warren_worker::{Registry, RetryPolicy, RunningWorker, Worker, WorkerConfig, WorkerError};

pub(crate) async fn run(
    global: &Global,
    args: WorkerArgs,
    registry: Registry,
) -> anyhow::Result<()> {
    let registry = match &args.tasks_file {
        Some(file) => with_declared(file, registry)?,
        None => registry,
    };
    let registry = if args.only.is_empty() {
        registry
    } else {
        registry
            .only(&args.only)
            .map_err(|unknown| anyhow::anyhow!("unknown task(s): {}", unknown.join(", ")))?
    };
    let mut config = WorkerConfig::new(
        global.amqp_url.clone(),
        global.database_url.clone(),
        Topology::new(global.namespace.clone(), args.queue_type)
            .with_delivery_limit(args.delivery_limit)
            .with_quorum_group_size(args.quorum_group_size),
    );
    config.retry = RetryPolicy {
        max_attempts: args.max_attempts,
        min_delay: args.retry_min_delay,
        max_delay: args.retry_max_delay,
        factor: args.retry_factor,
        jitter: args.retry_jitter,
    };
    if let Some(id) = args.worker_id {
        config.worker_id = id;
    }
    config.concurrency = args.concurrency.map(|c| c as usize);
    config.default_concurrency = args.default_concurrency as usize;
    config.default_max_duration = args.default_max_duration;
    config.prefetch = args.prefetch;
    config.grace_period = args.grace_period;
    config.idempotency_window = args.idempotency_window;
    config.max_message_bytes = args.max_message_bytes;
    config.message_budget_bytes = args.message_budget_bytes;
    config.db_pool_size = args.db_pool_size as usize;
    let http = match args.http_addr {
        Some(HttpAddr(addr)) => Http::Given(addr),
        None => Http::Default,
    };
    config.http_addr = match http {
        Http::Given(addr) => addr,
        Http::Default => Some(DEFAULT_HTTP_ADDR),
    };
    config.retention = args.retention.0;
    config.max_log_lines = args.max_log_lines as usize;

    // Listen before starting: a replica told to stop while it starts up exits cleanly too.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let worker = tokio::select! {
        worker = start(global, config, registry, http) => worker?,
        _ = terminate.recv() => return stopped_while_starting(),
        _ = interrupt.recv() => return stopped_while_starting(),
    };
    let token = worker.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("signal received: draining (send another to stop at once)");
        token.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        // Unsettled messages return to their queues when the connection drops, and resume from
        // their checkpoints elsewhere.
        tracing::warn!("second signal: stopping at once");
        std::process::exit(130);
    });
    worker.wait().await.context("worker stopped")
}

/// `registry` and the tasks declared in `file`. A file with any mistake stops the replica before
/// it connects to anything: a fleet never runs half of what a file meant.
pub(crate) fn with_declared(file: &Path, registry: Registry) -> anyhow::Result<Registry> {
    let declared = match declared::load(file, &registry) {
        Ok(declared) => declared,
        Err(LoadError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && names_tasks(&file.to_string_lossy(), &registry) =>
        {
            anyhow::bail!(
                "--tasks (WARREN_TASKS) names a task file now, and there is no file {}: to run only some tasks, use --only {} (WARREN_ONLY)",
                file.display(),
                file.display()
            )
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(file = %file.display(), tasks = ?declared.names(), "declared tasks");
    Ok(declared.register_into(registry)?)
}

/// Whether `value` is a list of task ids, as `--tasks` took before it named a file.
fn names_tasks(value: &str, registry: &Registry) -> bool {
    value.split(',').all(|id| registry.get(id.trim()).is_some())
}

/// Where the HTTP endpoints were asked to be.
#[derive(Clone, Copy)]
enum Http {
    /// By --http-addr or WARREN_HTTP_ADDR: that address or nothing.
    Given(Option<SocketAddr>),
    /// Nobody said: [`DEFAULT_HTTP_ADDR`], or a free port when another process holds it.
    Default,
}

/// Starts the replica. Several replicas started on one host with the defaults (as the README
/// suggests) cannot all have port 9464: the ones that find it taken serve on a free port and
/// say which. Deployments name the address (the image sets `WARREN_HTTP_ADDR`), so a probe or
/// a scrape config never silently points at another process: a given address is used or
/// refused.
async fn start(
    global: &Global,
    config: WorkerConfig,
    registry: Registry,
    http: Http,
) -> anyhow::Result<RunningWorker> {
    let fallback = matches!(http, Http::Default).then(|| (config.clone(), registry.clone()));
    match start_once(config, registry).await {
        Ok(worker) => Ok(worker),
        Err(StartError::Worker(WorkerError::Http { source, .. }))
            if source.kind() == std::io::ErrorKind::AddrInUse
                && let Some((mut config, registry)) = fallback =>
        {
            config.http_addr = Some(SocketAddr::new(DEFAULT_HTTP_ADDR.ip(), 0));
            let worker = start_once(config, registry)
                .await
                .map_err(|e| e.explain(global))?;
            tracing::warn!(
                taken = %DEFAULT_HTTP_ADDR,
                serving = %worker.http_addr().map_or_else(|| "-".into(), |a| a.to_string()),
                "the default HTTP port is taken (another replica on this host?): serving /metrics, /healthz and /readyz on a free port instead; choose one with --http-addr"
            );
            Ok(worker)
        }
        Err(e) => Err(e.explain(global)),
    }
}

/// Why a start failed, before it is put into words.
enum StartError {
    Worker(WorkerError),
    TimedOut,
}

async fn start_once(config: WorkerConfig, registry: Registry) -> Result<RunningWorker, StartError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, Worker::new(config, registry).start()).await {
        Ok(Ok(worker)) => Ok(worker),
        Ok(Err(e)) => Err(StartError::Worker(e)),
        Err(_) => Err(StartError::TimedOut),
    }
}

impl StartError {
    /// The error with what it concerns: the HTTP port, the broker, or Postgres (each named by
    /// its address, without the password).
    fn explain(self, global: &Global) -> anyhow::Error {
        let broker = format!("the broker at {}", redact(&global.amqp_url));
        let postgres = format!("Postgres at {}", redact(&global.database_url));
        match self {
            StartError::TimedOut => anyhow::anyhow!(
                "cannot reach {broker} or {postgres}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            StartError::Worker(WorkerError::Http { addr, source })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                anyhow::anyhow!(
                    "cannot serve /metrics, /healthz and /readyz on {addr}: the port is in use (by another replica on this host?): give each replica its own with --http-addr (or WARREN_HTTP_ADDR), e.g. 127.0.0.1:9465, or 127.0.0.1:0 for any free port, or off"
                )
            }
            StartError::Worker(e @ WorkerError::Http { .. }) => {
                anyhow::Error::new(e).context("check --http-addr (or WARREN_HTTP_ADDR)")
            }
            StartError::Worker(e @ WorkerError::Db(DbError::Connect(_) | DbError::Pool(_))) => {
                anyhow::Error::new(e).context(format!("cannot reach {postgres}"))
            }
            StartError::Worker(e @ (WorkerError::Db(_) | WorkerError::Register(_))) => {
                anyhow::Error::new(e).context(postgres)
            }
            StartError::Worker(
                e @ (WorkerError::Broker(_)
                | WorkerError::Publisher(_)
                | WorkerError::ConsumerLost { .. }),
            ) => anyhow::Error::new(e).context(format!("cannot reach {broker}")),
            StartError::Worker(e) => anyhow::Error::new(e),
        }
    }
}

/// Nothing was taken from the broker yet: there is nothing to drain.
fn stopped_while_starting() -> anyhow::Result<()> {
    tracing::info!("signal received while starting: stopping");
    Ok(())
}
