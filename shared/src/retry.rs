//! The retry policy: how many attempts a run gets and how long it waits between them.
//!
//! Warren has one retry authority: the attempt number carried by each message (`warren-attempt`)
//! and recorded on the run in Postgres. The broker's delivery limit is only a safety net for
//! messages that crash the worker process itself (see `topology`).

use std::time::Duration;

/// Attempts, delays and jitter. The default is 3 attempts, 1 s to 30 s, factor 2, jitter on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 means never retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub min_delay: Duration,
    /// No delay is longer than this.
    pub max_delay: Duration,
    /// Each delay is this many times the one before.
    pub factor: f64,
    /// Spread retries out: each delay is drawn uniformly from [delay/2, delay] ("equal jitter"),
    /// so that runs that failed together do not all come back together.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay before the attempt after `failed` (the 1-based number of the attempt that just
    /// failed, counted within the current budget), or `None` when the budget is spent.
    /// `unit` is a number in [0, 1) used for jitter (pass `rand::random()`).
    pub fn delay_after(&self, failed: u32, unit: f64) -> Option<Duration> {
        if failed >= self.max_attempts {
            return None;
        }
        let exponent = i32::try_from(failed.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.min_delay.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let delay = if self.jitter {
            capped * (0.5 + 0.5 * unit.clamp(0.0, 1.0))
        } else {
            capped
        };
        Some(Duration::from_secs_f64(delay.max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn the_default_is_three_attempts_one_to_thirty_seconds_doubling_with_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.min_delay, Duration::from_secs(1));
        assert_eq!(p.max_delay, Duration::from_secs(30));
        assert_eq!(p.factor, 2.0);
        assert!(p.jitter);
    }

    #[test]
    fn delays_double_from_the_minimum_and_stop_when_attempts_run_out() {
        let p = no_jitter();
        assert_eq!(p.delay_after(1, 0.0), Some(Duration::from_secs(1)));
        assert_eq!(p.delay_after(2, 0.0), Some(Duration::from_secs(2)));
        assert_eq!(p.delay_after(3, 0.0), None);
    }

    #[test]
    fn delays_are_capped_at_the_maximum() {
        let p = RetryPolicy {
            max_attempts: 20,
            ..no_jitter()
        };
        assert_eq!(p.delay_after(6, 0.0), Some(Duration::from_secs(30)));
        assert_eq!(p.delay_after(19, 0.0), Some(Duration::from_secs(30)));
    }

    #[test]
    fn jitter_keeps_each_delay_between_half_and_all_of_it() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_after(2, 0.0), Some(Duration::from_secs(1)));
        assert_eq!(
            p.delay_after(2, 0.999_999).map(|d| d.as_secs_f64().round()),
            Some(2.0)
        );
        let mid = p.delay_after(2, 0.5).unwrap().as_secs_f64();
        assert!((mid - 1.5).abs() < 1e-9);
    }

    #[test]
    fn never_means_one_attempt() {
        assert_eq!(RetryPolicy::never().delay_after(1, 0.0), None);
    }
}
