//! The run state machine: the one place that says which status changes are legal.
//!
//! Every write to `runs.status` goes through [`check`], so an illegal change is refused before it
//! reaches Postgres, and every accepted change is appended to `run_transitions`. The diagram lives
//! in `docs/state-machine.md`; the table below is its source of truth.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a run is in its life. Stored as lower-case text in `runs.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Known to Postgres and on its way back to a task queue (a replayed dead letter), not yet
    /// picked up by a worker.
    Queued,
    /// A worker holds the message and is executing steps. A run stays `running` from step to step;
    /// each finished step (and the stage it reaches) is logged as `running → running`.
    Running,
    /// An attempt failed retryably; the message waits in the broker's delay queues for the next
    /// attempt. No worker holds it.
    Retrying,
    /// A step asked to be resumed later ("wait for"); the message waits in the broker, no worker
    /// holds it.
    Waiting,
    /// A step started child runs and the run waits for them to end (or for the wait's timeout);
    /// its wake-up is in the outbox, no worker and no message hold it.
    WaitingForChildren,
    /// The run's concurrency key had no free slot (as many runs of the key running as its limit
    /// allows): its message is held in the outbox and released when a slot frees, in the key's
    /// order of arrival. No worker and no message in a queue hold it.
    WaitingForKey,
    /// Terminal: every step finished.
    Succeeded,
    /// Terminal: a step ended the run early with a named outcome that is not an error
    /// (for example `NEEDS_USER_INPUT`). The outcome is in `runs.outcome`.
    Halted,
    /// Terminal until an operator replays it: the run failed for good and its message is in the
    /// task's dead-letter queue with the reason.
    Dead,
    /// Terminal until an operator retries it: someone cancelled the run (`runs.cancelled_by`,
    /// `runs.cancelled_at`); its children were cancelled with it.
    Cancelled,
}

impl RunStatus {
    /// Every status, in the order the documentation lists them.
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Retrying,
        RunStatus::Waiting,
        RunStatus::WaitingForChildren,
        RunStatus::WaitingForKey,
        RunStatus::Succeeded,
        RunStatus::Halted,
        RunStatus::Dead,
        RunStatus::Cancelled,
    ];

    /// The text stored in Postgres and printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Retrying => "retrying",
            RunStatus::Waiting => "waiting",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Halted => "halted",
            RunStatus::WaitingForChildren => "waiting_for_children",
            RunStatus::WaitingForKey => "waiting_for_key",
            RunStatus::Dead => "dead",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// A finished run: a redelivered message for it is acknowledged without running anything.
    /// `dead` and `cancelled` count as finished: only an operator's replay or retry moves them
    /// on.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Halted | RunStatus::Dead | RunStatus::Cancelled
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`RunStatus::ALL`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown run status {0:?} (expected one of queued, running, retrying, waiting, waiting_for_children, waiting_for_key, succeeded, halted, dead, cancelled)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for RunStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A status change the state machine does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("illegal run transition {} -> {to}", from.map_or("(new)", RunStatus::as_str))]
pub struct IllegalTransition {
    /// The status the run had (`None` for a run that does not exist yet).
    pub from: Option<RunStatus>,
    /// The status that was asked for.
    pub to: RunStatus,
}

/// Is `from → to` legal? `from` is `None` when the run is being created.
///
/// The table, read row by row:
/// - a new run starts `running`, or `dead` when its message is already known to be unusable
///   (it fails the task's input schema), or `queued` when it is a child its parent started
///   (the row exists before its message is sent, so that cancelling the parent reaches it),
///   or `waiting_for_key` when its concurrency key has no free slot;
/// - `queued`, `retrying`, `waiting` and `waiting_for_children` runs are picked up again
///   (`running`), or dead-lettered without running when their message can no longer be used,
///   or wait for a slot of their concurrency key (`waiting_for_key`) — as does a run left
///   `running` by a crashed replica, whose slot lapsed with it;
/// - a `waiting_for_key` run starts (`running`) when its key has a slot for it;
/// - a `running` run records each finished step as `running → running`, and goes on to one of
///   `retrying`, `waiting`, `waiting_for_children`, `succeeded`, `halted` or `dead`; a worker
///   that picks up a redelivered message of a run left `running` by a crashed replica also logs
///   `running → running`;
/// - every run that has not finished can be `cancelled`;
/// - `dead` is left only by an operator's replay or retry, `cancelled` only by a retry
///   (`queued`);
/// - `succeeded` and `halted` are final.
pub fn check(from: Option<RunStatus>, to: RunStatus) -> Result<(), IllegalTransition> {
    use RunStatus::*;
    let legal = match from {
        None => matches!(to, Running | Dead | Queued | WaitingForKey),
        Some(Queued | Retrying | Waiting | WaitingForChildren) => {
            matches!(to, Running | Dead | Cancelled | WaitingForKey)
        }
        Some(WaitingForKey) => matches!(to, Running | Dead | Cancelled),
        Some(Running) => matches!(
            to,
            Running
                | Retrying
                | Waiting
                | WaitingForChildren
                | WaitingForKey
                | Succeeded
                | Halted
                | Dead
                | Cancelled
        ),
        Some(Dead | Cancelled) => matches!(to, Queued),
        Some(Succeeded | Halted) => false,
    };
    if legal {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus::*;
    use super::*;

    fn legal(from: Option<RunStatus>, to: RunStatus) -> bool {
        check(from, to).is_ok()
    }

    #[test]
    fn a_new_run_starts_running_or_dead_or_queued_as_a_child_or_waiting_for_its_key() {
        let allowed: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|to| legal(None, *to))
            .collect();
        assert_eq!(allowed, vec![Queued, Running, WaitingForKey, Dead]);
    }

    #[test]
    fn a_running_run_may_checkpoint_and_reach_every_outcome() {
        for to in [
            Running,
            Retrying,
            Waiting,
            WaitingForChildren,
            WaitingForKey,
            Succeeded,
            Halted,
            Dead,
            Cancelled,
        ] {
            assert!(legal(Some(Running), to), "running -> {to}");
        }
        assert!(!legal(Some(Running), Queued));
    }

    #[test]
    fn parked_runs_are_resumed_dead_lettered_cancelled_or_wait_for_their_key() {
        for from in [Queued, Retrying, Waiting, WaitingForChildren] {
            let allowed: Vec<_> = RunStatus::ALL
                .into_iter()
                .filter(|to| legal(Some(from), *to))
                .collect();
            assert_eq!(
                allowed,
                vec![Running, WaitingForKey, Dead, Cancelled],
                "from {from}"
            );
        }
    }

    #[test]
    fn a_run_waiting_for_its_key_starts_or_is_cancelled_or_dead_lettered() {
        let allowed: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|to| legal(Some(WaitingForKey), *to))
            .collect();
        assert_eq!(allowed, vec![Running, Dead, Cancelled]);
    }

    #[test]
    fn finished_runs_never_move_except_a_replayed_dead_or_retried_cancelled_run() {
        for to in RunStatus::ALL {
            assert!(!legal(Some(Succeeded), to), "succeeded -> {to}");
            assert!(!legal(Some(Halted), to), "halted -> {to}");
            assert_eq!(legal(Some(Dead), to), to == Queued, "dead -> {to}");
            assert_eq!(
                legal(Some(Cancelled), to),
                to == Queued,
                "cancelled -> {to}"
            );
        }
    }

    #[test]
    fn terminal_statuses_are_exactly_succeeded_halted_dead_cancelled() {
        let terminal: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, vec![Succeeded, Halted, Dead, Cancelled]);
    }

    #[test]
    fn status_names_round_trip_and_unknown_names_are_refused() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        assert_eq!(
            "done".parse::<RunStatus>(),
            Err(UnknownStatus("done".into()))
        );
    }

    #[test]
    fn the_error_names_both_ends() {
        let err = check(Some(Succeeded), Running).unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal run transition succeeded -> running"
        );
        let err = check(None, Halted).unwrap_err();
        assert_eq!(err.to_string(), "illegal run transition (new) -> halted");
    }
}
