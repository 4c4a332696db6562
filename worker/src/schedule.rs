//! Schedules (docs/schedules.md): runs of a task started at cron times or fixed intervals.
//!
//! A task declares its schedules ([`Task::schedule`](crate::Task::schedule)); each replica
//! writes them to Postgres at start and runs a scheduler loop that fires the due slots of every
//! schedule of the tasks it runs (declared or created with `warren schedules create`). A slot's
//! record, its run's message (in the outbox) and the schedule's next time commit in one
//! transaction, so each slot fires once across the fleet.
//!
//! ```no_run
//! # use warren_worker::{Task, schedule::Schedule};
//! # use serde_json::json;
//! # fn task() -> Result<Task<serde_json::Value>, warren_shared::schedule::ScheduleError> {
//! let task = Task::<serde_json::Value>::new("reports.daily").schedule(
//!     Schedule::cron("0 9 * * *")?
//!         .timezone("Europe/Paris")?
//!         .payload(json!({ "report": "sales" })),
//! );
//! # Ok(task) }
//! ```

use deadpool_postgres::Pool;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_producer::relay::Relay;
use warren_shared::metrics as names;
use warren_shared::schedule::{DEFAULT_CATCH_UP_LIMIT, Missed, ScheduleError, Timing};
use warren_shared::store::StoreError;
use warren_shared::store::schedules::{self, Definition, Target};

pub use warren_shared::schedule::Missed as MissedPolicy;

/// How often a replica looks for due schedules: slots fire within this of their time.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// Schedules fired per transaction.
const BATCH: i64 = 32;

/// A schedule declared on a task: when, with what payload, and what to do about missed slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    name: Option<String>,
    cron: Option<String>,
    every_secs: Option<i64>,
    timezone: String,
    payload: Value,
    missed: Missed,
    catch_up_limit: u32,
}

impl Schedule {
    fn new(cron: Option<String>, every_secs: Option<i64>) -> Self {
        Schedule {
            name: None,
            cron,
            every_secs,
            timezone: "UTC".to_owned(),
            payload: Value::Object(Default::default()),
            missed: Missed::default(),
            catch_up_limit: DEFAULT_CATCH_UP_LIMIT,
        }
    }

    /// At the times of a cron expression (five fields, or six with seconds first), in UTC
    /// until [`Schedule::timezone`] says otherwise.
    pub fn cron(expr: &str) -> Result<Self, ScheduleError> {
        Timing::cron(expr, "UTC")?;
        Ok(Schedule::new(Some(expr.trim().to_owned()), None))
    }

    /// Every interval (`30s`, `5m`, `1h`), aligned to the Unix epoch.
    pub fn every(interval: &str) -> Result<Self, ScheduleError> {
        match Timing::every(interval)? {
            Timing::Every { seconds } => Ok(Schedule::new(None, Some(seconds))),
            Timing::Cron { .. } => Err(ScheduleError::Every(interval.to_owned())),
        }
    }

    /// The IANA zone whose wall clock the cron expression follows (no effect on intervals).
    pub fn timezone(mut self, zone: &str) -> Result<Self, ScheduleError> {
        warren_shared::schedule::parse_zone(zone)?;
        self.timezone = zone.trim().to_owned();
        Ok(self)
    }

    /// The input of each run (a JSON object; `{}` by default).
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// Its name within the task (the schedule is `{task}/{name}`; by default its position).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What to do with slots missed during downtime (default: run the latest once).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// How many missed slots [`Missed::All`] runs at most (default 10).
    pub fn catch_up_limit(mut self, limit: u32) -> Self {
        self.catch_up_limit = limit;
        self
    }

    /// Its definition as task `task`'s schedule number `index`, checked.
    pub fn definition(&self, task: &str, index: usize) -> Result<Definition, ScheduleError> {
        let name = match &self.name {
            Some(name) => format!("{task}/{name}"),
            None => format!("{task}/{index}"),
        };
        warren_shared::schedule::validate_name(&name)?;
        let definition = Definition {
            name,
            task: task.to_owned(),
            payload: self.payload.clone(),
            cron: self.cron.clone(),
            every_secs: self.every_secs,
            timezone: self.timezone.clone(),
            missed: self.missed,
            catch_up_limit: self.catch_up_limit,
        };
        definition.timing()?;
        Ok(definition)
    }
}

/// Why the declared schedules could not be written at start.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// A declaration is not valid.
    #[error("task {task}: {source}")]
    Invalid {
        /// The task.
        task: String,
        /// What is wrong.
        source: ScheduleError,
    },
    /// A declaration's payload is not a JSON object.
    #[error("task {task}: schedule {name}: the payload must be a JSON object")]
    Payload {
        /// The task.
        task: String,
        /// The schedule.
        name: String,
    },
    /// Postgres failed.
    #[error("cannot write the declared schedules: {0}")]
    Store(#[from] StoreError),
}

/// Writes the declared schedules of `tasks` (task id and its schedules), and deletes those
/// tasks' declared schedules that the code no longer has. An unchanged definition keeps its
/// paused flag and its next fire time.
pub async fn declare(
    pool: &Pool,
    tasks: &[(String, Vec<Schedule>)],
) -> Result<usize, DeclareError> {
    let mut definitions = Vec::new();
    for (task, declared) in tasks {
        for (index, schedule) in declared.iter().enumerate() {
            let definition =
                schedule
                    .definition(task, index)
                    .map_err(|source| DeclareError::Invalid {
                        task: task.clone(),
                        source,
                    })?;
            if !definition.payload.is_object() {
                return Err(DeclareError::Payload {
                    task: task.clone(),
                    name: definition.name,
                });
            }
            definitions.push(definition);
        }
    }
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    let now = chrono::Utc::now();
    for definition in &definitions {
        let next = definition
            .timing()
            .ok()
            .and_then(|timing| timing.next_after(now));
        if !schedules::upsert_declared(&client, definition, next).await? {
            tracing::warn!(schedule = %definition.name, "a schedule made with the CLI has this declared schedule's name; keeping the CLI's");
        }
    }
    let task_ids: Vec<&str> = tasks.iter().map(|(task, _)| task.as_str()).collect();
    let names: Vec<&str> = definitions.iter().map(|d| d.name.as_str()).collect();
    let removed = schedules::delete_undeclared(&client, &task_ids, &names).await?;
    if removed > 0 {
        tracing::info!(
            removed,
            "deleted the schedules this replica's tasks no longer declare"
        );
    }
    Ok(definitions.len())
}

/// Fires the due slots of the schedules of `targets`' tasks until `stop`: every
/// [`POLL_EVERY`], or at once again while there is more to do. One indexed query when nothing
/// is due.
pub async fn run(
    pool: Pool,
    targets: HashMap<String, Target>,
    relay: Relay,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            match fire(&pool, &targets).await {
                Ok(handled) if handled >= BATCH as usize && !stop.is_cancelled() => relay.nudge(),
                Ok(handled) => {
                    if handled > 0 {
                        relay.nudge();
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the scheduler could not fire due schedules; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    break;
                }
            }
        }
    }
}

/// One transaction's worth; returns how many schedules it handled.
async fn fire(pool: &Pool, targets: &HashMap<String, Target>) -> Result<usize, StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    let fired = schedules::fire_due(&mut client, targets, BATCH).await?;
    for f in &fired {
        if !f.lateness.is_empty() {
            metrics::counter!(names::SCHEDULE_FIRES, "task" => f.task.clone())
                .increment(f.lateness.len() as u64);
            let lateness = metrics::histogram!(names::SCHEDULE_LATENESS, "task" => f.task.clone());
            for late in &f.lateness {
                lateness.record(*late);
            }
            tracing::info!(schedule = %f.schedule, slots = f.lateness.len(), "schedule fired");
        }
        if f.skipped > 0 {
            metrics::counter!(names::SCHEDULE_MISSED, "task" => f.task.clone())
                .increment(f.skipped);
            tracing::warn!(schedule = %f.schedule, skipped = f.skipped, "missed schedule slots skipped by the policy");
        }
    }
    Ok(fired.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_declared_schedule_is_named_after_its_task_and_its_name_or_position() {
        let named = Schedule::cron("0 9 * * *")
            .unwrap()
            .timezone("Europe/Paris")
            .unwrap()
            .named("morning")
            .payload(json!({ "report": "sales" }))
            .definition("report.daily", 0)
            .unwrap();
        assert_eq!(named.name, "report.daily/morning");
        assert_eq!(named.cron.as_deref(), Some("0 9 * * *"));
        assert_eq!(named.timezone, "Europe/Paris");
        assert_eq!(named.missed, Missed::Latest);
        assert_eq!(named.catch_up_limit, DEFAULT_CATCH_UP_LIMIT);
        let numbered = Schedule::every("5m")
            .unwrap()
            .missed(Missed::All)
            .catch_up_limit(3)
            .definition("health", 2)
            .unwrap();
        assert_eq!(numbered.name, "health/2");
        assert_eq!(
            (
                numbered.every_secs,
                numbered.missed,
                numbered.catch_up_limit
            ),
            (Some(300), Missed::All, 3)
        );
        assert_eq!(numbered.payload, json!({}));
    }

    #[test]
    fn a_bad_declaration_says_what_is_wrong() {
        assert!(Schedule::cron("0 9 * *").is_err());
        assert!(Schedule::every("never").is_err());
        assert!(
            Schedule::cron("0 9 * * *")
                .unwrap()
                .timezone("Europe/Atlantis")
                .is_err()
        );
        let spaced = Schedule::every("1m").unwrap().named("two words");
        assert!(spaced.definition("t", 0).is_err());
    }

    #[test]
    fn a_step_request_carries_the_slot_only_for_a_scheduled_run() {
        let mut run = crate::RunInfo {
            id: uuid::Uuid::nil(),
            task: "t".into(),
            event: "t".into(),
            attempt: 1,
            message_id: "m".into(),
            tenant: None,
            scheduled_for: None,
        };
        let plain = serde_json::to_value(&run).unwrap();
        assert!(plain.get("scheduled_for").is_none(), "{plain}");
        run.scheduled_for = chrono::DateTime::from_timestamp(1_774_746_000, 0);
        let scheduled = serde_json::to_value(&run).unwrap();
        assert_eq!(scheduled["scheduled_for"], "2026-03-29T01:00:00Z");
    }
}
