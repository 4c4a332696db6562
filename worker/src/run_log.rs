//! Per-run logs, the worker's side: the lines one execution of a step writes
//! ([`crate::StepContext::log`], an HTTP step's `logs`, a command step's standard error) are
//! collected with the step's other effects, and written with its checkpoint or its failure, in
//! the same group commit (`store::logs`). A step that logs nothing costs nothing more: no
//! allocation, no statement.
//!
//! What a step can do to the worker is bounded here: it keeps at most the run's limit of
//! lines (the oldest dropped, and counted, as they come), each cut at
//! [`MAX_LINE_BYTES`](warren_shared::store::logs::MAX_LINE_BYTES).

use crate::step::Outbox;
use chrono::Utc;
use std::collections::VecDeque;
use std::sync::Arc;
use uuid::Uuid;
use warren_shared::store::logs::{Logged, NewLines, clean_line};

/// The lines of one execution of a step, as they come: at most `limit`, the older dropped.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    kept: VecDeque<Logged>,
    dropped: u64,
    /// 0: the replica keeps no logs, and lines are not even looked at.
    limit: usize,
}

impl Lines {
    /// Keeps at most `limit` lines (the most a run keeps: more from one step would be deleted
    /// at once).
    pub(crate) fn bounded(limit: usize) -> Self {
        Lines {
            kept: VecDeque::new(),
            dropped: 0,
            limit,
        }
    }

    pub(crate) fn push(&mut self, text: String) {
        if self.limit == 0 {
            return;
        }
        if self.kept.len() >= self.limit {
            self.kept.pop_front();
            self.dropped += 1;
        }
        self.kept.push_back(Logged {
            at: Utc::now(),
            line: clean_line(text),
        });
    }

    /// What was logged so far, to store; `None` when nothing was.
    pub(crate) fn take(&mut self) -> Option<Arc<StepLines>> {
        if self.kept.is_empty() {
            return None;
        }
        Some(Arc::new(StepLines {
            lines: Vec::from(std::mem::take(&mut self.kept)),
            skipped: std::mem::take(&mut self.dropped),
            keep: self.limit,
        }))
    }
}

/// The lines a step wrote, to store with its checkpoint or failure (shared, so that a
/// checkpoint Postgres refuses can hand them on to the step's failure).
#[derive(Debug)]
pub(crate) struct StepLines {
    lines: Vec<Logged>,
    /// Lines written before these and dropped already.
    skipped: u64,
    /// The most lines the run keeps.
    keep: usize,
}

impl StepLines {
    /// The store's view of these lines, written by `step` of `run` in `attempt`.
    pub(crate) fn new_lines<'a>(&'a self, run: Uuid, step: &'a str, attempt: i32) -> NewLines<'a> {
        NewLines {
            run,
            step,
            attempt,
            skipped: self.skipped,
            lines: &self.lines,
            keep: self.keep,
        }
    }
}

/// Where a step's log lines go, for code that runs the step without its context at hand (an
/// external step, a task the step spawned): see [`crate::StepContext::logger`]. Lines written
/// after the step's execution ended are not stored.
#[derive(Debug, Clone, Default)]
pub struct StepLog {
    outbox: Outbox,
}

impl StepLog {
    pub(crate) fn of(outbox: &Outbox) -> Self {
        StepLog {
            outbox: outbox.clone(),
        }
    }

    /// A log that keeps nothing (for an external step called outside a run: a failure
    /// handler, a test).
    pub fn discard() -> Self {
        StepLog::default()
    }

    /// Writes `line` to the run's log (see [`crate::StepContext::log`]).
    pub fn line(&self, line: impl Into<String>) {
        self.outbox.log(line.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_keeps_its_newest_lines_and_counts_the_ones_it_dropped() {
        let mut lines = Lines::bounded(3);
        for n in 1..=5 {
            lines.push(format!("line {n}"));
        }
        let taken = lines.take().expect("lines");
        let kept: Vec<&str> = taken.lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(kept, ["line 3", "line 4", "line 5"]);
        assert_eq!((taken.skipped, taken.keep), (2, 3));
        assert!(lines.take().is_none(), "taken once");
    }

    #[test]
    fn nothing_logged_or_no_limit_is_nothing_to_store() {
        assert!(Lines::bounded(10).take().is_none());
        let mut off = Lines::bounded(0);
        off.push("ignored".into());
        assert!(off.take().is_none());
    }
}
