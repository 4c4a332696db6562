//! One module per subcommand, and the connection helpers they share.

pub(crate) mod console;
pub(crate) mod dlq;
pub(crate) mod migrate;
pub(crate) mod prune;
pub(crate) mod publish;
pub(crate) mod runs;
pub(crate) mod schedules;
pub(crate) mod tasks;
pub(crate) mod tokens;
pub(crate) mod worker;
pub(crate) mod workers;

use crate::args::Global;
use anyhow::Context;
use std::future::Future;
use std::time::Duration;
use warren_shared::topology::{QueueType, Topology};

/// How long a command waits for the broker or the database before giving up with a clear line.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a connection attempt with [`CONNECT_TIMEOUT`].
pub(crate) async fn within_timeout<T, E>(
    what: &str,
    future: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, future).await {
        Ok(result) => result.with_context(|| format!("cannot reach {what}")),
        Err(_) => anyhow::bail!(
            "cannot reach {what}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// Postgres connections a one-shot command may hold: they query one at a time (two leaves room
/// for a replay that records while it reads). Part of the connection budget in
/// `docs/operations.md`.
const COMMAND_POOL_SIZE: usize = 2;

/// A Postgres pool on an existing, migrated database.
pub(crate) async fn database(global: &Global) -> anyhow::Result<deadpool_postgres::Pool> {
    let pool = within_timeout(
        &format!("Postgres at {}", redact(&global.database_url)),
        warren_shared::db::connect(&global.database_url, COMMAND_POOL_SIZE),
    )
    .await?;
    Ok(pool)
}

/// The topology for read-only commands (the queue type does not matter to them).
/// The namespace's topology; refused when its names would not fit AMQP (see
/// [`Topology::check_names`]), for `tasks` too when given.
pub(crate) fn topology(global: &Global, tasks: &[&str]) -> anyhow::Result<Topology> {
    let topology = Topology::new(global.namespace.clone(), QueueType::default());
    topology.check_names(tasks.iter().map(|task| (*task, &[][..])))?;
    Ok(topology)
}

/// Who an operator's action is recorded as: `operator:{login}`.
pub(crate) fn operator() -> String {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("operator:{login}")
}

/// The connection string without its password, for messages (see [`warren_shared::redact`]).
pub(crate) fn redact(url: &str) -> String {
    warren_shared::redact::url(url)
}
