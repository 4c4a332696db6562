//! Postgres connections and the schema's migrations.
//!
//! Migrations are embedded in every binary (refinery) and applied under a session advisory
//! lock, so replicas that start together migrate once and the others wait, then find nothing
//! to do.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

refinery::embed_migrations!("migrations");

/// The advisory lock key that serialises migrations ("warren" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7761_7272_656e;

/// What can go wrong reaching or preparing the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// Postgres refused or could not be reached.
    #[error("cannot reach Postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
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

fn parse(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| DbError::InvalidUrl(e.to_string()))
}

/// Creates the URL's database if it does not exist (through the server's `postgres` database).
/// Safe to call from replicas at once.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let config = parse(url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await.map_err(DbError::Connect)?;
    let driver = tokio::spawn(connection);
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
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// A connection pool of at most `max_size` connections. Connects once to fail fast with a clear
/// error when Postgres is unreachable.
pub async fn connect(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config = parse(url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| DbError::InvalidUrl(e.to_string()))?;
    let _probe = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => DbError::Connect(e),
        other => DbError::Pool(other),
    })?;
    Ok(pool)
}

/// Applies every pending migration, holding the migration advisory lock meanwhile.
/// Returns the names of the migrations it applied.
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, DbError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let report = migrations::runner().run_async(&mut **client).await;
    // Unlock even when migrating failed; the lock also ends with the session.
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
