//! Per-run logs: the lines steps write to their run, stored bounded, and read back for
//! `warren runs show`.
//!
//! A step's lines are written in the transaction of its checkpoint (or of its failure), by the
//! same group commit: [`append`] is one statement for every step of the batch that logged
//! anything, and nothing at all runs for a batch whose steps logged nothing.
//!
//! A run keeps its newest lines only (at most the `keep` each write names, the worker's
//! `--max-log-lines`). Lines are numbered (`seq`) over everything the run logged, dropped
//! lines included, so the number dropped is the first kept line's number minus one: nothing to
//! count in a row of its own (see `V12__run_logs.sql`).

use super::StoreError;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde::Serialize;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Lines a run keeps unless the worker says otherwise; the oldest go beyond it.
pub const DEFAULT_MAX_LINES: usize = 1_000;

/// The longest line stored, in bytes: a longer one is cut and ends with a marker saying so.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// One line as a step wrote it, ready to store: [`clean_line`] has been through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// When the step wrote it.
    pub at: DateTime<Utc>,
    /// The text.
    pub line: String,
}

/// `text` as a line Postgres stores: at most [`MAX_LINE_BYTES`] bytes (a longer line is cut at
/// a character boundary and marked `… [truncated, N bytes]`, N its full length), and no NUL
/// (which a Postgres `text` cannot hold: it would fail the whole group commit), each replaced
/// by U+FFFD.
pub fn clean_line(text: String) -> String {
    let len = text.len();
    line_from(text, len)
}

/// As [`clean_line`], for a line of which a reader kept only the start (`start`), `len` bytes
/// long in full: a program's line of megabytes is never held whole.
pub fn line_from(mut start: String, len: usize) -> String {
    if start.contains('\0') {
        start = start.replace('\0', "\u{FFFD}");
    }
    if start.len() <= MAX_LINE_BYTES && len <= start.len() {
        return start;
    }
    let marker = format!("… [truncated, {} bytes]", len.max(start.len()));
    let mut end = MAX_LINE_BYTES.saturating_sub(marker.len()).min(start.len());
    while !start.is_char_boundary(end) {
        end -= 1;
    }
    start.truncate(end);
    start.push_str(&marker);
    start
}

/// The lines one step wrote in one execution, to store with its checkpoint or failure.
#[derive(Debug, Clone, Copy)]
pub struct NewLines<'a> {
    /// The run.
    pub run: Uuid,
    /// The step that wrote them.
    pub step: &'a str,
    /// The run's attempt.
    pub attempt: i32,
    /// Lines the step wrote before these that were dropped without being stored (it wrote more
    /// than the run keeps): they still take their numbers.
    pub skipped: u64,
    /// The lines, oldest first.
    pub lines: &'a [Logged],
    /// The most lines the run keeps.
    pub keep: usize,
}

/// Stores the lines of several steps (of different runs: a group commit holds one write per
/// run), numbered after their runs' last line, and deletes each run's lines beyond its newest
/// `keep`. One statement whatever the batch; call it only with lines to store.
pub async fn append(tx: &Transaction<'_>, steps: &[NewLines<'_>]) -> Result<(), StoreError> {
    let total: usize = steps.iter().map(|s| s.lines.len()).sum();
    let mut runs = Vec::with_capacity(total);
    let mut numbers = Vec::with_capacity(total);
    let mut names = Vec::with_capacity(total);
    let mut attempts = Vec::with_capacity(total);
    let mut ats = Vec::with_capacity(total);
    let mut lines = Vec::with_capacity(total);
    let mut keeps = Vec::with_capacity(total);
    for step in steps {
        let keep = i64::try_from(step.keep).unwrap_or(i64::MAX);
        let skipped = i64::try_from(step.skipped).unwrap_or(i64::MAX);
        for (n, logged) in (1_i64..).zip(step.lines) {
            runs.push(step.run);
            numbers.push(skipped.saturating_add(n));
            names.push(step.step);
            attempts.push(step.attempt);
            ats.push(logged.at);
            lines.push(logged.line.as_str());
            keeps.push(keep);
        }
    }
    if runs.is_empty() {
        return Ok(());
    }
    // Each run's lines are numbered after its last one (found through the primary key), and
    // its lines older than its newest `keep` deleted (only runs over it are even looked at:
    // most runs are far under it). The `DELETE` does not see the rows this statement inserts,
    // and needs not: a write never brings more than `keep` lines, so what goes is always older
    // lines. `DO NOTHING`: only a replica that lost the run to another can race for its
    // numbers, and its write is refused by the run's fence anyway. Planned for its arrays each
    // time, like the set-based checkpoint writes (`batch`): a generic plan made while the
    // table was small would scan it.
    tx.query_typed(
        "WITH u AS (
             SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int4[],
                                  $5::timestamptz[], $6::text[], $7::int8[])
                 AS u(run_id, n, step, attempt, at, line, keep)
         ), last AS (
             SELECT r.run_id, r.top, r.keep,
                    coalesce((SELECT l.seq FROM run_logs l WHERE l.run_id = r.run_id
                              ORDER BY l.seq DESC LIMIT 1), 0) AS seq
             FROM (SELECT run_id, max(n) AS top, max(keep) AS keep FROM u GROUP BY run_id) r
         ), added AS (
             INSERT INTO run_logs (run_id, seq, step, attempt, at, line)
             SELECT u.run_id, last.seq + u.n, u.step, u.attempt, u.at, u.line
             FROM u JOIN last ON last.run_id = u.run_id
             ON CONFLICT (run_id, seq) DO NOTHING
         )
         DELETE FROM run_logs l USING last
         WHERE last.seq + last.top > last.keep
               AND l.run_id = last.run_id AND l.seq <= last.seq + last.top - last.keep",
        &[
            (&runs, Type::UUID_ARRAY),
            (&numbers, Type::INT8_ARRAY),
            (&names, Type::TEXT_ARRAY),
            (&attempts, Type::INT4_ARRAY),
            (&ats, Type::TIMESTAMPTZ_ARRAY),
            (&lines, Type::TEXT_ARRAY),
            (&keeps, Type::INT8_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Its number among every line the run logged (dropped ones included), from 1.
    pub seq: i64,
    /// The step that wrote it.
    pub step: String,
    /// The attempt of the run it was written in.
    pub attempt: i32,
    /// When the step wrote it.
    pub at: DateTime<Utc>,
    /// The text (cut at [`MAX_LINE_BYTES`], with a marker).
    pub line: String,
}

/// A run's logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunLogs {
    /// The lines kept, oldest first.
    pub lines: Vec<LogLine>,
    /// How many older lines were dropped to keep the run within its bound.
    pub dropped: i64,
}

/// The run's stored lines, oldest first, and how many were dropped before them.
pub async fn run_logs(client: &impl GenericClient, run: Uuid) -> Result<RunLogs, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, step, attempt, at, line FROM run_logs WHERE run_id = $1 ORDER BY seq",
        )
        .await?;
    let lines: Vec<LogLine> = client
        .query(&stmt, &[&run])
        .await?
        .into_iter()
        .map(|row| LogLine {
            seq: row.get(0),
            step: row.get(1),
            attempt: row.get(2),
            at: row.get(3),
            line: row.get(4),
        })
        .collect();
    let dropped = lines.first().map_or(0, |first| first.seq - 1);
    Ok(RunLogs { lines, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_line_is_kept_as_written() {
        assert_eq!(clean_line("fetched 3 pages".into()), "fetched 3 pages");
    }

    #[test]
    fn a_long_line_is_cut_at_the_limit_with_a_marker_naming_its_length() {
        let line = clean_line("é".repeat(3_000));
        assert!(line.len() <= MAX_LINE_BYTES, "{}", line.len());
        assert!(line.ends_with("… [truncated, 6000 bytes]"), "{line}");
        assert!(line.starts_with("éé"));
    }

    #[test]
    fn a_line_read_in_part_says_how_long_it_was() {
        assert_eq!(line_from("abc".into(), 3), "abc");
        assert_eq!(
            line_from("abc".into(), 9_000),
            "abc… [truncated, 9000 bytes]"
        );
    }

    #[test]
    fn a_nul_cannot_reach_postgres() {
        assert_eq!(clean_line("a\0b".into()), "a\u{FFFD}b");
    }
}
