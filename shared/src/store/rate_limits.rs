//! Fleet-wide rate limits: reservations of start times, spaced evenly, in Postgres (migration
//! V10, `warren_reserve_start`). A run of a limited task reserves its start before it claims
//! its run; every replica reserves from the same row, so the limit holds for the fleet. A run
//! reaching a limited step reserves that step's start; when its turn is far off, the run waits
//! for it (`waiting`), its checkpoints kept ([`wait_for_step_turn`]).

use super::{Change, StoreError, log_transition};
use crate::state::RunStatus;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use std::time::Duration;
use uuid::Uuid;

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The reserved start, or (when not reserved) the key's next free time.
    pub start: DateTime<Utc>,
    /// Whether `start` is this caller's.
    pub reserved: bool,
    /// Postgres's clock when it answered: waits are `start - now`, on one clock.
    pub now: DateTime<Utc>,
}

impl Reservation {
    /// How long from the answer to `start`.
    pub fn wait(&self) -> Duration {
        (self.start - self.now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// Reserves the next start of `key`, spaced `interval` after the one before, if it comes within
/// `hold` of now (see the migration's `warren_reserve_start`).
pub async fn reserve_start(
    client: &impl GenericClient,
    key: &str,
    interval: Duration,
    hold: Duration,
) -> Result<Reservation, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT start, reserved, db_now FROM warren_reserve_start(
                 $1, make_interval(secs => $2), make_interval(secs => $3))",
        )
        .await?;
    let row = client
        .query_one(&stmt, &[&key, &interval.as_secs_f64(), &hold.as_secs_f64()])
        .await?;
    Ok(Reservation {
        start: row.get(0),
        reserved: row.get(1),
        now: row.get(2),
    })
}

/// A run whose rate-limited step's turn is far off waits for it: `running → waiting`, woken by
/// the message carrying `token` (already sent through the delay queues, due at `until`).
/// Fenced like every write of a running run; `false` when the run was no longer this
/// replica's to park.
pub async fn wait_for_step_turn(
    client: &impl GenericClient,
    run: Uuid,
    token: &str,
    until: DateTime<Utc>,
    change: &Change<'_>,
) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached(
            "UPDATE runs SET status = 'waiting', wake_token = $2, next_attempt_at = $3,
                             updated_at = now()
             WHERE id = $1 AND status = 'running' AND attempt = $4 AND worker = $5",
        )
        .await?;
    let parked = client
        .execute(
            &stmt,
            &[&run, &token, &until, &change.attempt, &change.worker],
        )
        .await?
        == 1;
    if parked {
        log_transition(
            client,
            run,
            Some(RunStatus::Running),
            RunStatus::Waiting,
            change,
        )
        .await?;
    }
    Ok(parked)
}
