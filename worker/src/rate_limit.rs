//! Fleet-wide rate limits on a task's starts: at most N per second or per minute across every
//! replica, for the task as a whole or per key (the tenant, or a value of the input such as an
//! API host).
//!
//! Starts are spaced evenly (`1/N` s apart): each delivery reserves its start in Postgres
//! (`warren_shared::store::rate_limits`) before it claims its run. A start within
//! [`HOLD`] is waited for in the worker, holding the delivery that long at most; a later one is
//! not reserved, and the message goes back through the broker's delay queues until its turn
//! is near. Nothing spins: a delivery either sleeps until its reserved start or leaves.
//!
//! ```no_run
//! # use warren_worker::{Task, rate_limit::RateLimit};
//! # use serde_json::Value;
//! let task = Task::<Value>::new("api.call").rate_limit(RateLimit::per_second(20).per_tenant());
//! ```

pub use crate::keys::KeyFrom;
use serde_json::value::RawValue;
use std::time::Duration;

/// The longest a delivery waits in a worker for its reserved start: longer waits go back to
/// the broker instead of holding a run slot and an unacked message.
pub const HOLD: Duration = Duration::from_secs(2);

/// How much wider than `period / limit` starts are spaced. A start is reserved for an instant,
/// but made (and recorded) a little later: after the reply to its reservation, the worker's
/// wake-up and its claim's commit, each slower on a busy machine. Starts that lag by different
/// amounts crowd together, and a window of one period could then hold a start or two more than
/// the limit; 5 % of headroom (19 a second for a limit of 20) keeps them under it.
pub const HEADROOM: f64 = 0.05;

/// A limit on a task's starts, fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Starts allowed per [`RateLimit::per`].
    limit: u32,
    per: Per,
    key: KeyFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Per {
    Second,
    Minute,
}

impl RateLimit {
    /// At most `n` starts per second (at least one), spaced `1/n` s apart.
    pub fn per_second(n: u32) -> Self {
        RateLimit {
            limit: n.max(1),
            per: Per::Second,
            key: KeyFrom::Task,
        }
    }

    /// At most `n` starts per minute (at least one), spaced `60/n` s apart.
    pub fn per_minute(n: u32) -> Self {
        RateLimit {
            limit: n.max(1),
            per: Per::Minute,
            key: KeyFrom::Task,
        }
    }

    /// The limit applies to each tenant on its own.
    pub fn per_tenant(mut self) -> Self {
        self.key = KeyFrom::Tenant;
        self
    }

    /// The limit applies to each value of the input at `pointer` (RFC 6901) on its own.
    pub fn per_input(mut self, pointer: impl Into<String>) -> Self {
        self.key = KeyFrom::Input(pointer.into());
        self
    }

    /// The time between two starts of one key: the period over the limit, with
    /// [`HEADROOM`].
    pub fn interval(&self) -> Duration {
        let even = match self.per {
            Per::Second => Duration::from_secs(1) / self.limit,
            Per::Minute => Duration::from_secs(60) / self.limit,
        };
        even.mul_f64(1.0 + HEADROOM)
    }

    /// The key a run of `task` counts against.
    pub(crate) fn key(&self, task: &str, tenant: Option<&str>, input: Option<&RawValue>) -> String {
        self.key.key(task, tenant, input)
    }
}

/// As `warren tasks` shows it: `20/s`, `30/min per /crmHost`, `5/s per tenant`.
impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = match self.per {
            Per::Second => "s",
            Per::Minute => "min",
        };
        write!(f, "{}/{per}{}", self.limit, self.key.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_spaced_evenly_with_headroom() {
        assert_eq!(
            RateLimit::per_second(20).interval(),
            Duration::from_micros(52_500)
        );
        assert_eq!(
            RateLimit::per_minute(30).interval(),
            Duration::from_millis(2_100)
        );
        assert_eq!(
            RateLimit::per_second(0).interval(),
            Duration::from_millis(1_050)
        );
    }

    #[test]
    fn a_limit_reads_as_written() {
        assert_eq!(RateLimit::per_second(20).to_string(), "20/s");
        assert_eq!(
            RateLimit::per_minute(30).per_input("/crmHost").to_string(),
            "30/min per /crmHost"
        );
        assert_eq!(
            RateLimit::per_second(5).per_tenant().to_string(),
            "5/s per tenant"
        );
    }
}
