//! The audit log: who did what, when, through the console, the API or `warren tokens`.
//! Recorded in the same transaction as the action where the action is a Postgres write, and
//! right after it where the action is the broker's (a replay, a purge, a publish).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;

/// One recorded action.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Order of recording.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: `token:{name}` or `operator:{login}`.
    pub actor: String,
    /// What, as `thing.verb` (`run.cancel`, `dead_letters.replay`, ...).
    pub action: String,
    /// On what (a run id, a task, a schedule, a token name).
    pub target: Option<String>,
    /// The action's parameters and result.
    pub detail: Value,
}

/// Records an action.
pub async fn record(
    client: &impl GenericClient,
    actor: &str,
    action: &str,
    target: Option<&str>,
    detail: Value,
) -> Result<(), tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &actor,
                &action,
                &target,
                &tokio_postgres::types::Json(&detail),
            ],
        )
        .await?;
    Ok(())
}

/// The newest entries, before entry `before` when given (the next page).
pub async fn list(
    client: &impl GenericClient,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Entry>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, at, actor, action, target, detail FROM audit_log
             WHERE $2::bigint IS NULL OR id < $2 ORDER BY id DESC LIMIT $1",
            &[&limit, &before],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Entry {
            id: row.get(0),
            at: row.get(1),
            actor: row.get(2),
            action: row.get(3),
            target: row.get(4),
            detail: row.get::<_, tokio_postgres::types::Json<Value>>(5).0,
        })
        .collect())
}
