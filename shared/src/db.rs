//! Postgres connections and the schema's migrations.
//!
//! Connection strings are libpq's (URL or `key=value`), with every `sslmode` and `sslrootcert`
//! ([`settings`], [`tls`]), and timeouts by default: a new connection has 10 s, a statement
//! 30 s, a lock wait 5 s, a wait for a pooled connection [`POOL_WAIT_TIMEOUT`], and TCP
//! keepalives and `tcp_user_timeout` notice a connection whose packets are lost.
//!
//! Migrations are embedded in every binary (refinery) and applied under a session advisory
//! lock, so replicas that start together migrate once and the others wait, then find nothing
//! to do.

pub mod settings;
mod tls;

use crate::config::ENV_DATABASE_CA_FILE;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use settings::Settings;
use std::error::Error as _;
use std::time::Duration;
use tokio_postgres::error::SqlState;

refinery::embed_migrations!("migrations");

/// The advisory lock key that serialises migrations ("warren" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x7761_7272_656e;

/// How long a caller waits for a connection of a pool whose connections are all in use. Longer
/// than a statement may last ([`settings::DEFAULT_STATEMENT_TIMEOUT`]), so only a Postgres that
/// does not answer at all makes it expire; then the caller gets an error rather than a wait
/// without end.
pub const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(35);

/// How often a replica tries again for the migration lock while another replica migrates.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(250);
/// How often a replica that waits for another's migration says so.
const MIGRATION_WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// What can go wrong reaching or preparing the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// Postgres refused or could not be reached.
    #[error("cannot reach Postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    /// Postgres did not complete a new connection in time.
    #[error("cannot reach Postgres: no connection within {}s", .0.as_secs_f64())]
    ConnectTimeout(Duration),
    /// TLS could not be set up: the roots cannot be read, the server does not speak TLS, or its
    /// certificate is not what `sslmode` asks for.
    #[error("Postgres TLS: {0}")]
    Tls(String),
    /// A query failed.
    #[error("Postgres query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The pool could not hand out a connection.
    #[error("cannot get a Postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

/// Reads the connection string, with the root certificate file of `WARREN_DATABASE_CA_FILE`
/// when the string names none.
pub fn parse(url: &str) -> Result<Settings, DbError> {
    let env_root_cert = std::env::var(ENV_DATABASE_CA_FILE).ok();
    settings::parse(url, env_root_cert.as_deref()).map_err(DbError::InvalidUrl)
}

/// A failed connection attempt, said plainly: tokio-postgres reports every TLS failure as
/// "error performing TLS handshake" and keeps the reason (unknown issuer, wrong name, no TLS on
/// the server) in its source.
fn connect_error(error: tokio_postgres::Error, settings: &Settings) -> DbError {
    if let Some(cause) = error.source()
        && error
            .to_string()
            .starts_with("error performing TLS handshake")
    {
        return DbError::Tls(format!(
            "handshake failed (sslmode={}): {cause}",
            settings.ssl_mode
        ));
    }
    DbError::Connect(error)
}

/// Opens one connection outside any pool, bounded by the connect timeout, and drives it.
async fn connect_once(
    settings: &Settings,
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, DbError> {
    let tls = tls::connector(&settings.verification).map_err(DbError::Tls)?;
    let (client, connection) = tokio::time::timeout(settings.connect_timeout, config.connect(tls))
        .await
        .map_err(|_| DbError::ConnectTimeout(settings.connect_timeout))?
        .map_err(|e| connect_error(e, settings))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Postgres connection ended");
        }
    });
    Ok(client)
}

/// Creates the URL's database if it does not exist (through the server's `postgres` database).
/// Safe to call from replicas at once.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let settings = parse(url)?;
    let Some(name) = settings.config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = settings.config.clone();
    admin.dbname("postgres");
    let client = connect_once(&settings, &admin).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another replica created it between our check and our CREATE.
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A connection pool of at most `max_size` connections. Connects once to fail fast with a clear
/// error when Postgres is unreachable or its TLS is not what `sslmode` asks for.
pub async fn connect(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let settings = parse(url)?;
    let tls = tls::connector(&settings.verification).map_err(DbError::Tls)?;
    let manager = Manager::from_config(
        settings.config.clone(),
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // deadpool bounds the whole creation (TCP, TLS, authentication); tokio-postgres's own
    // connect_timeout covers the TCP connect only.
    let pool = Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .wait_timeout(Some(POOL_WAIT_TIMEOUT))
        .build()
        .map_err(|e| DbError::InvalidUrl(e.to_string()))?;
    let _probe = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => connect_error(e, &settings),
        deadpool_postgres::PoolError::Timeout(_) => {
            DbError::ConnectTimeout(settings.connect_timeout)
        }
        other => DbError::Pool(other),
    })?;
    Ok(pool)
}

/// Applies every pending migration, holding the migration advisory lock meanwhile.
/// Returns the names of the migrations it applied.
///
/// A replica that finds another one migrating waits as long as that takes, saying so: it polls
/// the lock rather than blocking on it, so neither the statement nor the lock timeout cuts the
/// wait. The migration itself runs without a statement timeout (an index on a large table may
/// take minutes); its lock waits keep the lock timeout, so a migration stuck behind a stray
/// transaction fails rather than queueing every query of the fleet behind it.
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, DbError> {
    let mut client = pool.get().await?;
    let started = tokio::time::Instant::now();
    let mut last_said = None;
    while !client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?
        .get::<_, bool>(0)
    {
        if last_said.is_none_or(|at: tokio::time::Instant| at.elapsed() >= MIGRATION_WAIT_LOG_EVERY)
        {
            tracing::info!(
                waited_s = started.elapsed().as_secs(),
                lock = MIGRATION_LOCK_KEY,
                "waiting for another replica's migration (it holds the migration lock)"
            );
            last_said = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(MIGRATION_LOCK_POLL).await;
    }
    if last_said.is_some() {
        tracing::info!(
            waited_s = started.elapsed().as_secs(),
            "the other replica's migration is over"
        );
    }
    client.batch_execute("SET statement_timeout = 0").await?;
    let report = migrations::runner().run_async(&mut **client).await;
    // Back to the connection's own timeout, and unlock, even when migrating failed; the lock
    // also ends with the session.
    client.batch_execute("RESET statement_timeout").await?;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// The names of the migrations embedded in this binary, in order.
pub fn embedded_migrations() -> Vec<String> {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}

/// Creates the database if needed, connects and migrates: what a worker does at start-up.
pub async fn prepare(url: &str, max_size: usize) -> Result<Pool, DbError> {
    ensure_database(url).await?;
    let pool = connect(url, max_size).await?;
    migrate(&pool).await?;
    Ok(pool)
}
