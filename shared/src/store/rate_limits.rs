//! Fleet-wide rate limits: reservations of start times, spaced evenly, in Postgres (migration
//! V10, `warren_reserve_start`). A run of a limited task reserves its start before it claims
//! its run; every replica reserves from the same row, so the limit holds for the fleet.

use super::StoreError;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use std::time::Duration;

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
