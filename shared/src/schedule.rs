//! When a schedule fires: cron expressions in an IANA time zone, and fixed intervals.
//!
//! Slots are computed here rather than by a cron crate so that the daylight-saving rules are
//! Warren's own, written down and tested (docs/schedules.md):
//!
//! - a cron expression is matched against the wall clock of its zone;
//! - a local time that does not exist (the hour skipped when clocks go forward) fires at the
//!   first valid instant after the gap, once, however many matching times fall in the gap;
//! - a local time that happens twice (the hour repeated when clocks go back) fires at its first
//!   occurrence only;
//! - an interval (`every`) ignores zones: its slots are the multiples of the interval since the
//!   Unix epoch, so every replica computes the same ones.
//!
//! Slots are instants in UTC, strictly increasing.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::fmt;
use std::str::FromStr;

/// Why a schedule's definition cannot be used. Each message is one line, for the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression {expr:?}: {detail}")]
    Cron {
        /// The expression.
        expr: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The time zone is not an IANA zone name.
    #[error("unknown time zone {0:?} (expected an IANA name such as Europe/Paris or UTC)")]
    Zone(String),
    /// Neither or both of a cron expression and an interval.
    #[error("a schedule needs either a cron expression or an interval, not {0}")]
    Timing(&'static str),
    /// The interval does not parse or is not a whole, positive number of seconds.
    #[error("invalid interval {0:?} (expected a duration such as 30s, 5m or 1h, at least 1s)")]
    Every(String),
    /// The missed-slot policy is unknown.
    #[error("invalid missed policy {0:?} (expected skip, latest or all)")]
    Missed(String),
    /// A schedule name that is empty, too long or has whitespace.
    #[error("invalid schedule name {0:?} (1 to 200 characters, no spaces)")]
    Name(String),
    /// A cron expression that matches no date (e.g. 30 February).
    #[error("cron expression {0:?} never fires")]
    Never(String),
}

/// What happens to slots that passed while no replica could fire them (downtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// None of them fire; the schedule resumes with its next slot.
    Skip,
    /// The latest of them fires, once.
    #[default]
    Latest,
    /// All of them fire, up to the schedule's catch-up limit (the latest ones).
    All,
}

impl Missed {
    /// The text stored in `schedules.missed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Latest => "latest",
            Missed::All => "all",
        }
    }
}

impl FromStr for Missed {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Missed::Skip),
            "latest" => Ok(Missed::Latest),
            "all" => Ok(Missed::All),
            other => Err(ScheduleError::Missed(other.to_owned())),
        }
    }
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default number of missed slots the `all` policy fires.
pub const DEFAULT_CATCH_UP_LIMIT: u32 = 10;

/// How late a slot may fire and still count as on time rather than missed: a replica's
/// scheduler loop, a lock held by a replica that died or a short Postgres hiccup delays fires
/// by seconds, and those slots fire whatever the policy. Older slots are missed (downtime).
pub const GRACE: Duration = Duration::seconds(60);

/// The most slots one fire looks at: beyond this (a one-second schedule down for more than a
/// day), the missed slots are skipped whatever the policy.
const MAX_ENUMERATED: usize = 100_000;

/// A parsed cron expression: five fields (minute hour day-of-month month day-of-week) or six
/// with seconds first. Each field is a set of allowed values, as bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month was `*` or `?`: only the weekday restricts days.
    any_day: bool,
    /// Day-of-week was `*` or `?`: only the day of month restricts days.
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Cron {
    /// Parses `expr`: `*`, `?` (day fields), numbers, names (`JAN`, `MON`), ranges `a-b`,
    /// steps `*/n` and `a-b/n`, lists `a,b`; `@yearly`, `@monthly`, `@weekly`, `@daily`,
    /// `@hourly`. In day-of-week 0 and 7 are Sunday. When both day fields are restricted a
    /// day matching either fires (as in Vixie cron).
    pub fn parse(expr: &str) -> Result<Cron, ScheduleError> {
        let err = |detail: String| ScheduleError::Cron {
            expr: expr.to_owned(),
            detail,
        };
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(err(format!(
                    "expected 5 fields (minute hour day month weekday) or 6 (seconds first), found {n}"
                )));
            }
        };
        let field = |text: &str, name: &str, min: u32, max: u32, names: &[&str], day: bool| {
            parse_field(text, min, max, names, day).map_err(|e| err(format!("{name}: {e}")))
        };
        let weekdays = field(rest[4], "day of week", 0, 7, &WEEKDAYS, true)?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        let cron = Cron {
            text: expr.trim().to_owned(),
            seconds: field(seconds, "seconds", 0, 59, &[], false)?,
            minutes: field(rest[0], "minutes", 0, 59, &[], false)?,
            hours: field(rest[1], "hours", 0, 23, &[], false)?,
            days: field(rest[2], "day of month", 1, 31, &[], true)?,
            months: field(rest[3], "month", 1, 12, &MONTHS, false)?,
            weekdays,
            any_day: matches!(rest[2], "*" | "?"),
            any_weekday: matches!(rest[4], "*" | "?"),
        };
        Ok(cron)
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if !has(self.months, date.month()) {
            return false;
        }
        let day = has(self.days, date.day());
        let weekday = has(self.weekdays, date.weekday().num_days_from_sunday());
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => day,
            (true, false) => weekday,
            (false, false) => day || weekday,
        }
    }

    /// The first slot strictly after `after`, in `zone`; `None` when there is none within nine
    /// years (an expression such as `0 0 30 2 *`).
    fn next_after(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Local times map to instants in order (a gap maps to its end, a repeated time to its
        // first occurrence), and the wall-clock reading of `after` maps to `after` or earlier:
        // no local time before it can map to a later instant, so the search starts there.
        let start = after.with_timezone(&zone).naive_local();
        let start_date = start.date();
        for date in start_date.iter_days().take(366 * 9) {
            if !self.day_matches(date) {
                continue;
            }
            let first_day = date == start_date;
            for hour in bits(self.hours) {
                if first_day && hour < start.hour() {
                    continue;
                }
                let first_hour = first_day && hour == start.hour();
                for minute in bits(self.minutes) {
                    if first_hour && minute < start.minute() {
                        continue;
                    }
                    let first_minute = first_hour && minute == start.minute();
                    for second in bits(self.seconds) {
                        if first_minute && second < start.second() {
                            continue;
                        }
                        let local = date.and_hms_opt(hour, minute, second)?;
                        let instant = resolve(zone, local);
                        if instant > after {
                            return Some(instant);
                        }
                    }
                }
            }
        }
        None
    }
}

fn has(set: u64, value: u32) -> bool {
    set & (1 << value) != 0
}

fn bits(set: u64) -> impl Iterator<Item = u32> {
    (0..64u32).filter(move |b| has(set, *b))
}

fn parse_field(text: &str, min: u32, max: u32, names: &[&str], day: bool) -> Result<u64, String> {
    if day && text == "?" {
        return Ok(range_bits(min, max, 1));
    }
    let value = |part: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(part)) {
            // Month names count from 1, weekday names from 0 (Sunday).
            return Ok(i as u32 + if names.len() == 12 { 1 } else { 0 });
        }
        let n: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a number"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step {step:?} is not a positive number"))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {range:?} goes backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (a, if step > 1 { max } else { a })
        };
        set |= range_bits(low, high, step);
    }
    Ok(set)
}

fn range_bits(low: u32, high: u32, step: u32) -> u64 {
    (low..=high)
        .step_by(step as usize)
        .fold(0, |set, b| set | (1 << b))
}

/// The instant a local time names in `zone`: a repeated time is its first occurrence, a time
/// in a gap is the first valid instant after the gap (gaps begin and end on whole minutes).
fn resolve(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    if let Some(instant) = zone.from_local_datetime(&local).earliest() {
        return instant.with_timezone(&Utc);
    }
    let mut probe = local.with_second(0).unwrap_or(local);
    // No zone has a gap longer than a day; a minute at a time finds its end.
    for _ in 0..(24 * 60) {
        probe += Duration::minutes(1);
        if let Some(instant) = zone.from_local_datetime(&probe).earliest() {
            return instant.with_timezone(&Utc);
        }
    }
    Utc.from_utc_datetime(&local)
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// A cron expression on the wall clock of a zone.
    Cron {
        /// The expression.
        cron: Cron,
        /// The zone.
        zone: Tz,
    },
    /// Every so many seconds, aligned to the Unix epoch.
    Every {
        /// The interval in seconds (at least 1).
        seconds: i64,
    },
}

/// The slots of one round of firing a schedule: those to fire now, how many missed slots are
/// skipped, and the next slot after now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// Slots to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed slots that do not fire (by the policy).
    pub skipped: u64,
    /// The next slot after now (`None` for a cron expression that never fires again).
    pub next: Option<DateTime<Utc>>,
}

impl Timing {
    /// A cron expression in `zone` (an IANA name).
    pub fn cron(expr: &str, zone: &str) -> Result<Timing, ScheduleError> {
        let cron = Cron::parse(expr)?;
        let zone = parse_zone(zone)?;
        let timing = Timing::Cron { cron, zone };
        if timing.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Never(expr.trim().to_owned()));
        }
        Ok(timing)
    }

    /// Every `seconds` (at least 1).
    pub fn every_seconds(seconds: i64) -> Result<Timing, ScheduleError> {
        if seconds < 1 {
            return Err(ScheduleError::Every(format!("{seconds}s")));
        }
        Ok(Timing::Every { seconds })
    }

    /// An interval written as a duration (`30s`, `5m`, `1h 30m`): whole seconds only.
    pub fn every(text: &str) -> Result<Timing, ScheduleError> {
        let duration = humantime_like(text).ok_or_else(|| ScheduleError::Every(text.to_owned()))?;
        Timing::every_seconds(duration).map_err(|_| ScheduleError::Every(text.to_owned()))
    }

    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron { cron, zone } => cron.next_after(*zone, after),
            Timing::Every { seconds } => {
                let next = (after.timestamp().div_euclid(*seconds) + 1).checked_mul(*seconds)?;
                DateTime::from_timestamp(next, 0)
            }
        }
    }

    /// The next `n` slots after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut slots = Vec::with_capacity(n);
        let mut at = after;
        while slots.len() < n {
            match self.next_after(at) {
                Some(slot) => {
                    slots.push(slot);
                    at = slot;
                }
                None => break,
            }
        }
        slots
    }

    /// The slots due at `now` from `first` (the oldest slot not fired yet, at or before now),
    /// by `missed` policy: slots within [`GRACE`] of now are on time and fire; older ones are
    /// missed and fire by the policy (`all` fires the latest `catch_up_limit` of them).
    pub fn due(
        &self,
        first: DateTime<Utc>,
        now: DateTime<Utc>,
        missed: Missed,
        catch_up_limit: u32,
    ) -> Due {
        let on_time_from = now - GRACE;
        let keep = match missed {
            Missed::Skip => 0,
            Missed::Latest => 1,
            Missed::All => catch_up_limit as usize,
        };
        let mut late = std::collections::VecDeque::with_capacity(keep.min(1024));
        let mut on_time = Vec::new();
        let mut late_count: u64 = 0;
        let mut slot = Some(first);
        let mut seen = 0usize;
        while let Some(at) = slot.filter(|at| *at <= now) {
            seen += 1;
            if at > on_time_from {
                on_time.push(at);
            } else {
                late_count += 1;
                if keep > 0 {
                    if late.len() == keep {
                        late.pop_front();
                    }
                    late.push_back(at);
                }
                if seen >= MAX_ENUMERATED {
                    // Too far behind to look at every slot: skip to the on-time window.
                    late.clear();
                    slot = self.next_after(on_time_from);
                    continue;
                }
            }
            slot = self.next_after(at);
        }
        let fired_late = late.len() as u64;
        let mut fire: Vec<_> = late.into_iter().collect();
        fire.extend(on_time);
        Due {
            fire,
            skipped: late_count - fired_late,
            next: slot,
        }
    }
}

/// The longest schedule name: a slot's message id (`schedule/{name}/{slot}`) then always fits
/// the contract's id limit, so a run can tell its slot from its message id.
pub const MAX_NAME_LEN: usize = 200;

/// Is `name` usable as a schedule name (1 to 200 characters, no whitespace or control)?
pub fn validate_name(name: &str) -> Result<(), ScheduleError> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ScheduleError::Name(name.to_owned()));
    }
    Ok(())
}

/// The slot a run was fired for, read from its message id (`schedule/{name}/{slot}`): the id
/// stays with the run through retries, waits and replays, which headers may not.
pub fn slot_of_message_id(message_id: &str) -> Option<DateTime<Utc>> {
    let rest = message_id.strip_prefix("schedule/")?;
    let (_, slot) = rest.rsplit_once('/')?;
    DateTime::parse_from_rfc3339(slot)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// An IANA zone by name.
pub fn parse_zone(name: &str) -> Result<Tz, ScheduleError> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::Zone(name.to_owned()))
}

/// `30s`, `5m`, `2h`, `1d`, `1h30m`, `90` (seconds): whole seconds.
fn humantime_like(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
        any = true;
    }
    (any && number.is_empty()).then_some(total)
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
