//! `warren migrate`.

use super::{redact, within_timeout};
use crate::args::Global;

pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let what = format!("Postgres at {}", redact(&global.database_url));
    within_timeout(
        &what,
        warren_shared::db::ensure_database(&global.database_url),
    )
    .await?;
    let pool = super::database(global).await?;
    let applied = warren_shared::db::migrate(&pool).await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        for migration in applied {
            println!("applied {migration}");
        }
    }
    Ok(())
}
