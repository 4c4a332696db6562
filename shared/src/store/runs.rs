//! Reading runs: pages of runs by filter (`warren runs list`, the console's runs table) and one
//! run with its steps and transitions (`warren runs show`).
//!
//! A page is the newest runs matching a filter, ordered by (`created_at` DESC, `id` DESC), and
//! the next page starts strictly after the last run of the one before ([`RunCursor`]): keyset
//! pagination, so a page costs the same however deep it is, and no run is missed or repeated
//! between pages, even among the thousands of a fan-out that share one creation time. An index
//! per filter (migration V13) holds the runs in exactly that order, so Postgres reads a page's
//! rows and stops.
//!
//! Each combination of filters is its own statement, built from fixed fragments (never from
//! text a user gave), and each is planned with its values when it runs, not prepared once: a
//! prepared statement soon runs a generic plan, made without the values, and one generic plan
//! cannot serve both `status = 'succeeded'` (most runs) and `status = 'cancelled'` (perhaps
//! none); a catch-all `($1 IS NULL OR status = $1)` cannot use an index at all. Planning costs
//! a fraction of a millisecond.

use super::StoreError;
use crate::state::RunStatus;
use chrono::{DateTime, Datelike, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

/// One line of `warren runs list`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub id: Uuid,
    /// Task.
    pub task: String,
    /// Triggering event.
    pub event: String,
    /// Status.
    pub status: String,
    /// Last stage reached.
    pub stage: Option<String>,
    /// Named outcome of a halted run.
    pub outcome: Option<String>,
    /// Current attempt.
    pub attempt: i32,
    /// Error code of a failed run.
    pub error_code: Option<String>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The tenant it belongs to, if any.
    pub tenant: Option<String>,
}

/// The rows a page holds when nobody says otherwise.
pub const DEFAULT_PAGE_SIZE: i64 = 50;

/// Which runs [`page_runs`] and [`list_runs`] return. Filters combine (all must hold).
#[derive(Debug, Clone)]
pub struct RunFilter {
    /// Only this task.
    pub task: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only this tenant's runs.
    pub tenant: Option<String>,
    /// Only runs created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only runs created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only the children of this run, in the order they were created (oldest first, not
    /// newest first).
    pub parent: Option<Uuid>,
    /// Only runs after this one in the listing's order: the `next` of the previous page.
    pub after: Option<RunCursor>,
    /// At most this many (at least one; [`DEFAULT_PAGE_SIZE`] by default).
    pub limit: i64,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            task: None,
            status: None,
            tenant: None,
            created_after: None,
            created_before: None,
            parent: None,
            after: None,
            limit: DEFAULT_PAGE_SIZE,
        }
    }
}

/// Where a page ended: the creation time and id of its last run. The next page holds the runs
/// strictly after it in the listing's order. Passed around as an opaque, URL-safe token
/// ([`RunCursor::to_token`], [`RunCursor::parse`]; also its JSON form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCursor {
    /// The last run's creation time (Postgres keeps microseconds, and so does the token).
    pub created_at: DateTime<Utc>,
    /// The last run's id.
    pub id: Uuid,
}

/// A token that is not a [`RunCursor`]'s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0:?} is not a runs cursor (pass the `next` of an earlier page as it was given)")]
pub struct BadCursor(String);

/// The token's length: the creation time in microseconds since the epoch (16 hex digits, as
/// the bits of an i64), then the id (32).
const TOKEN_LEN: usize = 48;

impl RunCursor {
    /// The cursor just after `run`.
    pub fn of(run: &RunSummary) -> RunCursor {
        RunCursor {
            created_at: run.created_at,
            id: run.id,
        }
    }

    /// The opaque token: 48 lowercase hex digits, safe in a URL as it is.
    pub fn to_token(&self) -> String {
        // The bits of the i64, so that times before 1970 round-trip too.
        let micros = self.created_at.timestamp_micros() as u64;
        format!("{micros:016x}{:032x}", self.id.as_u128())
    }

    /// The cursor a token stands for.
    pub fn parse(token: &str) -> Result<RunCursor, BadCursor> {
        let bad = || BadCursor(token.chars().take(64).collect());
        if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let micros = u64::from_str_radix(&token[..16], 16).map_err(|_| bad())? as i64;
        let id = u128::from_str_radix(&token[16..], 16).map_err(|_| bad())?;
        // Within what Postgres and people use: a forged token is refused here, not by the query.
        let created_at = DateTime::from_timestamp_micros(micros)
            .filter(|at| (1..=9999).contains(&at.year()))
            .ok_or_else(bad)?;
        Ok(RunCursor {
            created_at,
            id: Uuid::from_u128(id),
        })
    }
}

impl std::fmt::Display for RunCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_token())
    }
}

impl std::str::FromStr for RunCursor {
    type Err = BadCursor;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        RunCursor::parse(token)
    }
}

impl Serialize for RunCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_token())
    }
}

impl<'de> Deserialize<'de> for RunCursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = String::deserialize(deserializer)?;
        RunCursor::parse(&token).map_err(serde::de::Error::custom)
    }
}

/// One page of runs.
#[derive(Debug, Clone, Serialize)]
pub struct RunPage {
    /// The runs, in the listing's order.
    pub runs: Vec<RunSummary>,
    /// Where the next page starts, when there are more runs; `None` on the last page.
    pub next: Option<RunCursor>,
}

/// The columns of a [`RunSummary`], in [`run_summary`]'s order.
const SUMMARY_COLUMNS: &str =
    "id, task, event, status, stage, outcome, attempt, error_code, created_at, finished_at, tenant";

/// The statement for a filter's shape, and its parameters. Only which filters are present
/// changes the text: every value is a parameter.
struct PageQuery<'a> {
    sql: String,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> PageQuery<'a> {
    /// The next parameter's placeholder, for `value`.
    fn param(&mut self, value: &'a (dyn ToSql + Sync)) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }
}

/// The statement of a page of `filter` (`status` is its status as text), fetching `fetch`
/// rows.
fn page_query<'a>(
    filter: &'a RunFilter,
    status: &'a Option<&'static str>,
    fetch: &'a i64,
) -> PageQuery<'a> {
    let mut query = PageQuery {
        sql: format!("SELECT {SUMMARY_COLUMNS} FROM runs"),
        params: Vec::new(),
    };
    let mut conditions = Vec::new();
    if let Some(parent) = &filter.parent {
        conditions.push(format!("parent_id = {}", query.param(parent)));
    }
    if let Some(task) = &filter.task {
        conditions.push(format!("task = {}", query.param(task)));
    }
    if let Some(status) = status {
        conditions.push(format!("status = {}", query.param(status)));
    }
    if let Some(tenant) = &filter.tenant {
        conditions.push(format!("tenant = {}", query.param(tenant)));
    }
    if let Some(after) = &filter.created_after {
        conditions.push(format!("created_at >= {}", query.param(after)));
    }
    if let Some(before) = &filter.created_before {
        conditions.push(format!("created_at < {}", query.param(before)));
    }
    // A parent's children go oldest first, everything else newest first; either way a row
    // comparison on the index's own columns, which Postgres turns into where to start reading.
    let (order, beyond) = if filter.parent.is_some() {
        ("created_at, id", ">")
    } else {
        ("created_at DESC, id DESC", "<")
    };
    if let Some(cursor) = &filter.after {
        let (at, id) = (query.param(&cursor.created_at), query.param(&cursor.id));
        conditions.push(format!("(created_at, id) {beyond} ({at}, {id})"));
    }
    if !conditions.is_empty() {
        query.sql.push_str(" WHERE ");
        query.sql.push_str(&conditions.join(" AND "));
    }
    let limit = query.param(fetch);
    query
        .sql
        .push_str(&format!(" ORDER BY {order} LIMIT {limit}"));
    query
}

/// A page of the runs matching `filter`, and where the next one starts.
pub async fn page_runs(
    client: &impl GenericClient,
    filter: &RunFilter,
) -> Result<RunPage, StoreError> {
    let limit = filter.limit.max(1);
    // One more than the page holds: whether it comes says whether there is a next page.
    let fetch = limit.saturating_add(1);
    let status = filter.status.map(RunStatus::as_str);
    let query = page_query(filter, &status, &fetch);
    // Not prepared: planned with these values (see the module's documentation).
    let rows = client.query(query.sql.as_str(), &query.params).await?;
    let mut runs: Vec<RunSummary> = rows.iter().map(run_summary).collect();
    let more = usize::try_from(limit).is_ok_and(|limit| runs.len() > limit);
    if more {
        runs.pop();
    }
    let next = if more {
        runs.last().map(RunCursor::of)
    } else {
        None
    };
    Ok(RunPage { runs, next })
}

/// The runs matching `filter`, newest first (a parent's children oldest first): the first page,
/// or the one after `filter.after`.
pub async fn list_runs(
    client: &impl GenericClient,
    filter: &RunFilter,
) -> Result<Vec<RunSummary>, StoreError> {
    Ok(page_runs(client, filter).await?.runs)
}

/// Postgres's plan for [`page_runs`] with `filter` (`EXPLAIN`, with `ANALYZE` when `analyze`),
/// one line per row: for tests that check that each filter goes through its index, and for the
/// benchmark.
pub async fn explain_page(
    client: &impl GenericClient,
    filter: &RunFilter,
    analyze: bool,
) -> Result<Vec<String>, StoreError> {
    let fetch = filter.limit.max(1).saturating_add(1);
    let status = filter.status.map(RunStatus::as_str);
    let query = page_query(filter, &status, &fetch);
    let explain = if analyze {
        "EXPLAIN (ANALYZE, BUFFERS)"
    } else {
        "EXPLAIN"
    };
    let rows = client
        .query(&format!("{explain} {}", query.sql), &query.params)
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A run summary from the first eleven columns of a row ([`SUMMARY_COLUMNS`]' order).
fn run_summary(row: &tokio_postgres::Row) -> RunSummary {
    RunSummary {
        id: row.get(0),
        task: row.get(1),
        event: row.get(2),
        status: row.get(3),
        stage: row.get(4),
        outcome: row.get(5),
        attempt: row.get(6),
        error_code: row.get(7),
        created_at: row.get(8),
        finished_at: row.get(9),
        tenant: row.get(10),
    }
}

/// A run with everything `warren runs show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run's columns.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The message identity.
    pub message_id: String,
    /// Input payload.
    pub input: Option<Value>,
    /// Output of a finished run.
    pub output: Option<Value>,
    /// Error message of a failed run.
    pub error_message: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Last worker.
    pub worker: Option<String>,
    /// Publish time.
    pub published_at: Option<DateTime<Utc>>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// The run that started it, when it is a child.
    pub parent_id: Option<Uuid>,
    /// Who cancelled it, when it was cancelled.
    pub cancelled_by: Option<String>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Steps with a recorded result, in pipeline order.
    pub steps: Vec<StepRecord>,
    /// Every transition, oldest first.
    pub transitions: Vec<TransitionRecord>,
}

/// A step's recorded result.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Step name.
    pub step: String,
    /// Position.
    pub position: i32,
    /// `succeeded`, `halted` or `failed`.
    pub status: String,
    /// Attempt that wrote it.
    pub attempt: i32,
    /// How many times the step was executed to a result.
    pub executions: i32,
    /// Output.
    pub output: Option<Value>,
    /// Error code of a failed step.
    pub error_code: Option<String>,
    /// Error message of a failed step.
    pub error_message: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: DateTime<Utc>,
}

/// One line of the transition log.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRecord {
    /// Status before (`None` at creation).
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// Stage reached, if any.
    pub stage: Option<String>,
    /// Step involved, if any.
    pub step: Option<String>,
    /// Attempt.
    pub attempt: i32,
    /// Who.
    pub worker: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The run with this id, or the runs of the message with this id.
pub async fn find_runs(
    client: &impl GenericClient,
    id_or_message_id: &str,
) -> Result<Vec<RunDetail>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT id, task, event, status, stage, outcome, attempt, error_code, created_at, finished_at,
                    tenant, message_id, input, output, error_message, idempotency_key, worker,
                    published_at, started_at, parent_id, cancelled_by, cancelled_at
             FROM runs WHERE id = $2 OR message_id = $1 ORDER BY created_at, task",
        )
        .await?;
    // Both lookups go through an index (a run id compared as text would scan every run).
    let as_id = Uuid::parse_str(id_or_message_id).ok();
    let mut runs = Vec::new();
    for row in client.query(&stmt, &[&id_or_message_id, &as_id]).await? {
        let id: Uuid = row.get(0);
        runs.push(RunDetail {
            summary: run_summary(&row),
            message_id: row.get(11),
            input: row.get::<_, Option<Json<Value>>>(12).map(|j| j.0),
            output: row.get::<_, Option<Json<Value>>>(13).map(|j| j.0),
            error_message: row.get(14),
            idempotency_key: row.get(15),
            worker: row.get(16),
            published_at: row.get(17),
            started_at: row.get(18),
            parent_id: row.get(19),
            cancelled_by: row.get(20),
            cancelled_at: row.get(21),
            steps: steps(client, id).await?,
            transitions: transitions(client, id).await?,
        });
    }
    Ok(runs)
}

/// A run's recorded steps, in pipeline order.
pub async fn steps(client: &impl GenericClient, run: Uuid) -> Result<Vec<StepRecord>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT step, position, status, attempt, executions, output, error_code, error_message,
                    started_at, finished_at
             FROM run_steps WHERE run_id = $1 ORDER BY position",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&run])
        .await?
        .into_iter()
        .map(|row| StepRecord {
            step: row.get(0),
            position: row.get(1),
            status: row.get(2),
            attempt: row.get(3),
            executions: row.get(4),
            output: row.get::<_, Option<Json<Value>>>(5).map(|j| j.0),
            error_code: row.get(6),
            error_message: row.get(7),
            started_at: row.get(8),
            finished_at: row.get(9),
        })
        .collect())
}

/// A run's transitions, oldest first.
pub async fn transitions(
    client: &impl GenericClient,
    run: Uuid,
) -> Result<Vec<TransitionRecord>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT from_status, to_status, stage, step, attempt, worker, reason, at
             FROM run_transitions WHERE run_id = $1 ORDER BY id",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&run])
        .await?
        .into_iter()
        .map(|row| TransitionRecord {
            from_status: row.get(0),
            to_status: row.get(1),
            stage: row.get(2),
            step: row.get(3),
            attempt: row.get(4),
            worker: row.get(5),
            reason: row.get(6),
            at: row.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_token() {
        for (micros, id) in [
            (1_764_600_000_123_456_i64, Uuid::new_v4()),
            (0, Uuid::nil()),
            (-86_400_000_001, Uuid::max()),
            // The first and the last microsecond of years 1 and 9999.
            (-62_135_596_800_000_000, Uuid::new_v4()),
            (253_402_300_799_999_999, Uuid::new_v4()),
        ] {
            let cursor = RunCursor {
                created_at: DateTime::from_timestamp_micros(micros).unwrap(),
                id,
            };
            let token = cursor.to_token();
            assert_eq!(token.len(), TOKEN_LEN);
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
            assert_eq!(RunCursor::parse(&token).unwrap(), cursor);
            assert_eq!(token.parse::<RunCursor>().unwrap(), cursor);
            let json = serde_json::to_string(&cursor).unwrap();
            assert_eq!(json, format!("\"{token}\""));
            assert_eq!(serde_json::from_str::<RunCursor>(&json).unwrap(), cursor);
        }
    }

    #[test]
    fn anything_else_is_not_a_cursor() {
        let good = RunCursor {
            created_at: Utc::now(),
            id: Uuid::new_v4(),
        }
        .to_token();
        for bad in [
            String::new(),
            good[1..].to_owned(),
            format!("{good}0"),
            format!("g{}", &good[1..]),
            format!("+{}", &good[1..]),
            // The largest time: out of chrono's range; the year 10000; before the year 1.
            format!("7fffffffffffffff{}", &good[16..]),
            format!("{:016x}{}", 253_402_300_800_000_000_u64, &good[16..]),
            format!("{:016x}{}", -62_135_596_800_000_001_i64 as u64, &good[16..]),
            "é".repeat(24),
        ] {
            assert!(RunCursor::parse(&bad).is_err(), "{bad:?}");
        }
    }

    fn shape(filter: &RunFilter) -> (String, usize) {
        let fetch = 51;
        let status = filter.status.map(RunStatus::as_str);
        let query = page_query(filter, &status, &fetch);
        (query.sql, query.params.len())
    }

    #[test]
    fn each_filter_is_a_condition_with_its_own_parameter() {
        let (sql, params) = shape(&RunFilter::default());
        assert_eq!(
            sql,
            format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC LIMIT $1"
            )
        );
        assert_eq!(params, 1);
        let every = RunFilter {
            task: Some("t".into()),
            status: Some(RunStatus::Dead),
            tenant: Some("acme".into()),
            created_after: Some(Utc::now()),
            created_before: Some(Utc::now()),
            parent: None,
            after: Some(RunCursor {
                created_at: Utc::now(),
                id: Uuid::nil(),
            }),
            limit: 10,
        };
        let (sql, params) = shape(&every);
        assert_eq!(
            sql,
            format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs WHERE task = $1 AND status = $2 AND tenant = $3 \
                 AND created_at >= $4 AND created_at < $5 AND (created_at, id) < ($6, $7) \
                 ORDER BY created_at DESC, id DESC LIMIT $8"
            )
        );
        assert_eq!(params, 8);
        let children = RunFilter {
            parent: Some(Uuid::nil()),
            ..every
        };
        let (sql, params) = shape(&children);
        assert!(
            sql.ends_with(
                "WHERE parent_id = $1 AND task = $2 AND status = $3 AND tenant = $4 \
                 AND created_at >= $5 AND created_at < $6 AND (created_at, id) > ($7, $8) \
                 ORDER BY created_at, id LIMIT $9"
            ),
            "{sql}"
        );
        assert_eq!(params, 9);
    }
}
