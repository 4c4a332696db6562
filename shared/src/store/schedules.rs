//! Schedules in Postgres (docs/schedules.md): their definitions, and the transaction that fires
//! a due schedule's slots. A slot fires once across the fleet because its `schedule_fires` row
//! (primary key schedule and slot) commits together with the run's message in the outbox and
//! the schedule's next fire time; replicas take due schedules with `FOR UPDATE SKIP LOCKED`, so
//! two never work on one schedule at once, and a replica that dies mid-transaction leaves
//! nothing behind.

use super::{StoreError, outbox};
use crate::contract::{self, Outgoing, header};
use crate::schedule::{Due, Missed, ScheduleError, Timing};
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::collections::HashMap;
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// Who made a schedule: a task's declaration (kept in step with the code at each start of a
/// replica) or an operator (`warren schedules create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Declared on a task.
    Task,
    /// Created with the CLI.
    Cli,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Task => "task",
            Source::Cli => "cli",
        }
    }
}

/// What a schedule is: the task it starts, the payload, and when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// Its unique name (`{task}/{name or index}` for a declared one).
    pub name: String,
    /// The task whose runs it starts.
    pub task: String,
    /// The input of each run.
    pub payload: serde_json::Value,
    /// A cron expression, or `None` for an interval.
    pub cron: Option<String>,
    /// An interval in seconds, or `None` for a cron expression.
    pub every_secs: Option<i64>,
    /// The IANA zone of the cron expression.
    pub timezone: String,
    /// What happens to slots missed during downtime.
    #[serde(serialize_with = "display")]
    pub missed: Missed,
    /// How many missed slots `all` fires at most.
    pub catch_up_limit: u32,
}

fn display<S: serde::Serializer>(value: &Missed, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.as_str())
}

impl Definition {
    /// When it fires, checked.
    pub fn timing(&self) -> Result<Timing, ScheduleError> {
        match (&self.cron, self.every_secs) {
            (Some(_), Some(_)) => Err(ScheduleError::Timing("both")),
            (Some(cron), None) => Timing::cron(cron, &self.timezone),
            (None, Some(seconds)) => Timing::every_seconds(seconds),
            (None, None) => Err(ScheduleError::Timing("neither")),
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Its definition.
    #[serde(flatten)]
    pub definition: Definition,
    /// Paused schedules do not fire (a trigger still does).
    pub paused: bool,
    /// Who made it.
    pub source: String,
    /// Its next slot (`None` when it never fires again).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_at: DateTime<Utc>,
}

/// A slot that fired, and how its run is doing.
#[derive(Debug, Clone, Serialize)]
pub struct Fire {
    /// The slot.
    pub slot: DateTime<Utc>,
    /// A manual slot (`warren schedules trigger`).
    pub manual: bool,
    /// When it fired.
    pub fired_at: DateTime<Utc>,
    /// The run it starts.
    pub run_id: Uuid,
    /// The run's status, `None` while its message is on its way.
    pub status: Option<String>,
}

const COLUMNS: &str = "name, task, payload, cron, every_secs, timezone, missed, catch_up_limit, \
                       paused, source, next_fire_at, created_at, updated_at";

fn schedule_from(row: &Row) -> Result<Schedule, StoreError> {
    let missed: String = row.try_get("missed")?;
    let limit: i32 = row.try_get("catch_up_limit")?;
    Ok(Schedule {
        definition: Definition {
            name: row.try_get("name")?,
            task: row.try_get("task")?,
            payload: row.try_get::<_, Json<serde_json::Value>>("payload")?.0,
            cron: row.try_get("cron")?,
            every_secs: row.try_get("every_secs")?,
            timezone: row.try_get("timezone")?,
            missed: missed
                .parse()
                .map_err(|e: ScheduleError| StoreError::Corrupt(e.to_string()))?,
            catch_up_limit: u32::try_from(limit).unwrap_or(0),
        },
        paused: row.try_get("paused")?,
        source: row.try_get("source")?,
        next_fire_at: row.try_get("next_fire_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn limit(definition: &Definition) -> i32 {
    i32::try_from(definition.catch_up_limit).unwrap_or(i32::MAX)
}

/// Creates an operator's schedule; `false` when the name is taken.
pub async fn create(
    client: &impl GenericClient,
    definition: &Definition,
    next_fire_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let d = definition;
    let n = client
        .execute(
            "INSERT INTO schedules (name, task, payload, cron, every_secs, timezone, missed,
                                    catch_up_limit, source, next_fire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'cli', $9)
             ON CONFLICT (name) DO NOTHING",
            &[
                &d.name,
                &d.task,
                &Json(&d.payload),
                &d.cron,
                &d.every_secs,
                &d.timezone,
                &d.missed.as_str(),
                &limit(d),
                &next_fire_at,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Writes a task's declared schedule at a replica's start. An unchanged definition keeps its
/// paused flag and next fire time; a changed one keeps the paused flag and, when its timing
/// changed, starts again from `next_fire_at`. An operator's schedule of the same name is left
/// alone (`false`).
pub async fn upsert_declared(
    client: &impl GenericClient,
    definition: &Definition,
    next_fire_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let d = definition;
    let n = client
        .execute(
            "INSERT INTO schedules AS s (name, task, payload, cron, every_secs, timezone, missed,
                                         catch_up_limit, source, next_fire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (name) DO UPDATE SET
                 task = EXCLUDED.task, payload = EXCLUDED.payload, cron = EXCLUDED.cron,
                 every_secs = EXCLUDED.every_secs, timezone = EXCLUDED.timezone,
                 missed = EXCLUDED.missed, catch_up_limit = EXCLUDED.catch_up_limit,
                 next_fire_at = CASE
                     WHEN (s.cron, s.every_secs, s.timezone)
                          IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every_secs, EXCLUDED.timezone)
                     THEN EXCLUDED.next_fire_at ELSE s.next_fire_at END,
                 updated_at = now()
             WHERE s.source = 'task'
               AND (s.task, s.payload, s.cron, s.every_secs, s.timezone, s.missed, s.catch_up_limit)
                   IS DISTINCT FROM (EXCLUDED.task, EXCLUDED.payload, EXCLUDED.cron,
                                     EXCLUDED.every_secs, EXCLUDED.timezone, EXCLUDED.missed,
                                     EXCLUDED.catch_up_limit)",
            &[
                &d.name,
                &d.task,
                &Json(&d.payload),
                &d.cron,
                &d.every_secs,
                &d.timezone,
                &d.missed.as_str(),
                &limit(d),
                &Source::Task.as_str(),
                &next_fire_at,
            ],
        )
        .await?;
    if n == 1 {
        return Ok(true);
    }
    let source: Option<String> = client
        .query_opt("SELECT source FROM schedules WHERE name = $1", &[&d.name])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    Ok(source.as_deref() == Some("task"))
}

/// Deletes the declared schedules of `tasks` that are not in `keep`: a schedule removed from a
/// task's code stops when a replica running the new code starts. Operators' schedules stay.
pub async fn delete_undeclared(
    client: &impl GenericClient,
    tasks: &[&str],
    keep: &[&str],
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM schedules
             WHERE source = 'task' AND task = ANY($1) AND NOT (name = ANY($2))",
            &[&tasks, &keep],
        )
        .await?)
}

/// All schedules, by name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Schedule>, StoreError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM schedules ORDER BY name"),
            &[],
        )
        .await?;
    rows.iter().map(schedule_from).collect()
}

/// One schedule.
pub async fn get(client: &impl GenericClient, name: &str) -> Result<Option<Schedule>, StoreError> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM schedules WHERE name = $1"),
            &[&name],
        )
        .await?
        .as_ref()
        .map(schedule_from)
        .transpose()
}

/// The last `n` fires of a schedule, newest first, with their runs' status.
pub async fn recent_fires(
    client: &impl GenericClient,
    name: &str,
    n: i64,
) -> Result<Vec<Fire>, StoreError> {
    let rows = client
        .query(
            "SELECT f.slot, f.manual, f.fired_at, f.run_id, r.status
             FROM schedule_fires f LEFT JOIN runs r ON r.id = f.run_id
             WHERE f.schedule = $1 ORDER BY f.slot DESC LIMIT $2",
            &[&name, &n],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Fire {
                slot: row.try_get(0)?,
                manual: row.try_get(1)?,
                fired_at: row.try_get(2)?,
                run_id: row.try_get(3)?,
                status: row.try_get(4)?,
            })
        })
        .collect()
}

/// Pauses or resumes a schedule; `false` when there is none of that name. Resuming starts
/// again from the next slot after now: the slots of the pause are not missed slots.
pub async fn set_paused(
    client: &impl GenericClient,
    name: &str,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE schedules SET paused = $2,
                 next_fire_at = CASE WHEN $2 OR NOT paused THEN next_fire_at ELSE $3 END
             WHERE name = $1",
            &[&name, &paused, &next_fire_at],
        )
        .await?;
    Ok(n == 1)
}

/// Deletes a schedule and its fire records; `false` when there is none of that name.
pub async fn delete(client: &impl GenericClient, name: &str) -> Result<bool, StoreError> {
    Ok(client
        .execute("DELETE FROM schedules WHERE name = $1", &[&name])
        .await?
        == 1)
}

/// Asks for a manual slot now (`warren schedules trigger`); returns its slot time, `None` when
/// there is no such schedule. A trigger not fired yet is not doubled by a second one.
pub async fn request_trigger(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(client
        .query_opt(
            "UPDATE schedules SET triggered_at = coalesce(triggered_at, date_trunc('milliseconds', now()))
             WHERE name = $1 RETURNING triggered_at",
            &[&name],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?)
}

/// Where a task's runs are sent: the event its message carries and its queue.
#[derive(Debug, Clone)]
pub struct Target {
    /// The task's first event.
    pub event: String,
    /// The task's queue (published to on the default exchange).
    pub queue: String,
}

/// What one scheduler pass did for one schedule (for the metrics).
#[derive(Debug, Clone)]
pub struct Fired {
    /// The schedule.
    pub schedule: String,
    /// Its task.
    pub task: String,
    /// Slots fired (including a manual one), with their lateness in seconds.
    pub lateness: Vec<f64>,
    /// Missed slots skipped by the policy.
    pub skipped: u64,
}

/// The message id of a slot's run: the same for every replica and every attempt, so that even
/// a message sent twice makes one run.
pub fn message_id(schedule: &str, slot: DateTime<Utc>) -> String {
    contract::bounded_id(format!(
        "schedule/{schedule}/{}",
        slot.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    ))
}

/// The message that starts the run of `slot`.
fn message(
    schedule: &Schedule,
    target: &Target,
    slot: DateTime<Utc>,
) -> Result<(String, Uuid, outbox::Message), StoreError> {
    let definition = &schedule.definition;
    let message_id = message_id(&definition.name, slot);
    let run_id = super::run_id(&definition.task, &message_id);
    let body = serde_json::to_vec(&definition.payload)
        .map_err(|e| StoreError::Corrupt(format!("schedule payload: {e}")))?;
    let mut outgoing = Outgoing::new();
    outgoing.message_id = message_id.clone();
    let properties = outgoing
        .with_header(header::EVENT, target.event.clone())
        .with_header(
            header::SCHEDULED_FOR,
            slot.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
        .properties()
        .map_err(|e| StoreError::Corrupt(format!("schedule {}: {e}", definition.name)))?;
    Ok((
        message_id,
        run_id,
        outbox::Message {
            run_id,
            kind: outbox::Kind::Schedule,
            exchange: String::new(),
            routing_key: target.queue.clone(),
            body,
            properties,
        },
    ))
}

/// Fires the due slots (and requested triggers) of at most `batch` schedules of `targets`'
/// tasks, in one transaction: the slots' `schedule_fires` rows, their runs' messages in the
/// outbox and the schedules' next fire times commit together. Schedules another replica is
/// firing are skipped, not waited for. A schedule whose stored definition no longer parses is
/// paused, with an error in the log.
pub async fn fire_due(
    client: &mut deadpool_postgres::Object,
    targets: &HashMap<String, Target>,
    batch: i64,
) -> Result<Vec<Fired>, StoreError> {
    let tasks: Vec<&str> = targets.keys().map(String::as_str).collect();
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS}, triggered_at, now() AS now FROM schedules
                 WHERE task = ANY($1)
                   AND ((NOT paused AND next_fire_at <= now()) OR triggered_at IS NOT NULL)
                 ORDER BY next_fire_at NULLS LAST
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&tasks, &batch],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut fired = Vec::with_capacity(rows.len());
    let mut messages = Vec::new();
    for row in &rows {
        let schedule = schedule_from(row)?;
        let triggered_at: Option<DateTime<Utc>> = row.try_get("triggered_at")?;
        let now: DateTime<Utc> = row.try_get("now")?;
        let definition = &schedule.definition;
        let Some(target) = targets.get(&definition.task) else {
            continue;
        };
        let due = match (schedule.paused, schedule.next_fire_at) {
            (false, Some(first)) if first <= now => match definition.timing() {
                Ok(timing) => timing.due(first, now, definition.missed, definition.catch_up_limit),
                Err(e) => {
                    tracing::error!(schedule = %definition.name, error = %e, "a stored schedule does not parse: pausing it");
                    tx.execute(
                        "UPDATE schedules SET paused = true WHERE name = $1",
                        &[&definition.name],
                    )
                    .await?;
                    continue;
                }
            },
            _ => Due {
                fire: Vec::new(),
                skipped: 0,
                next: schedule.next_fire_at,
            },
        };
        let mut slots: Vec<(DateTime<Utc>, bool)> = due.fire.iter().map(|s| (*s, false)).collect();
        if let Some(at) = triggered_at {
            slots.push((at, true));
        }
        let mut lateness = Vec::with_capacity(slots.len());
        for (slot, manual) in slots {
            let (message_id, run_id, message) = message(&schedule, target, slot)?;
            let inserted = tx
                .execute(
                    "INSERT INTO schedule_fires (schedule, slot, message_id, run_id, manual)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&definition.name, &slot, &message_id, &run_id, &manual],
                )
                .await?;
            if inserted == 1 {
                messages.push(message);
                lateness.push((now - slot).num_milliseconds().max(0) as f64 / 1000.0);
            }
        }
        tx.execute(
            "UPDATE schedules SET next_fire_at = $2, triggered_at = NULL WHERE name = $1",
            &[&definition.name, &due.next],
        )
        .await?;
        fired.push(Fired {
            schedule: definition.name.clone(),
            task: definition.task.clone(),
            lateness,
            skipped: due.skipped,
        });
    }
    outbox::insert(&tx, &messages, None).await?;
    tx.commit().await?;
    Ok(fired)
}
