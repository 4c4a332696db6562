//! One module per subcommand, and the connection helpers they share.

pub(crate) mod dlq;
pub(crate) mod migrate;
pub(crate) mod prune;
pub(crate) mod publish;
pub(crate) mod runs;
pub(crate) mod tasks;
pub(crate) mod worker;
pub(crate) mod workers;

use crate::args::Global;
use anyhow::Context;
use std::future::Future;
use std::time::Duration;
use warren_shared::topology::{QueueType, Topology};

/// How long a command waits for the broker or the database before giving up with a clear line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A Postgres pool on an existing, migrated database.
pub(crate) async fn database(global: &Global) -> anyhow::Result<deadpool_postgres::Pool> {
    let pool = within_timeout(
        &format!("Postgres at {}", redact(&global.database_url)),
        warren_shared::db::connect(&global.database_url, 2),
    )
    .await?;
    Ok(pool)
}

/// The topology for read-only commands (the queue type does not matter to them).
pub(crate) fn topology(global: &Global) -> Topology {
    Topology::new(global.namespace.clone(), QueueType::default())
}

/// The URL without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_in_error_messages() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
        assert_eq!(redact("postgres:///db"), "postgres:///db");
    }
}
