//! Runs that start runs: a parent's step starts child runs and the parent waits, holding no
//! worker and no message, until every child has ended (or the wait's timeout passes).
//!
//! The bookkeeping is one open join per waiting parent (`run_joins`) and its children in list
//! order (`run_children`). Everything a join does commits with the write that causes it:
//! - the parent's step parks the run (`running → waiting_for_children`), records the join and
//!   its children, creates the runs of the children allowed to start (`queued`, so cancelling
//!   the parent reaches them before their messages arrive) and puts their messages and the
//!   parent's held wake-up in the outbox ([`start_join`]);
//! - a child's end counts it, starts the next waiting child when the join has a limit, and
//!   releases the parent's wake-up when it was the last ([`child_ended`]);
//! - the woken parent reads every child's outcome in list order ([`joined`]) and records it as
//!   the step's checkpoint, closing the join ([`close_join`]).
//!
//! A child's message id is `{parent}/{step}/{generation}/{position}`, so a step executed again
//! before its park committed names the same children, and the outbox relay sending a message
//! twice makes one run.

use super::{Change, StoreError, log_transition, outbox};
use crate::state::RunStatus;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A child the parent's step asked for.
#[derive(Debug, Clone)]
pub struct NewChild {
    /// Its run id (from its task and message id).
    pub id: Uuid,
    /// Its task.
    pub task: String,
    /// The event its message carries.
    pub event: String,
    /// Its message id.
    pub message_id: String,
    /// Its message: the run's input as body, to the task's queue on the default exchange.
    pub message: outbox::Message,
}

/// A join a parent's step starts.
#[derive(Debug, Clone)]
pub struct NewJoin<'a> {
    /// The parent.
    pub parent: Uuid,
    /// The step that waits.
    pub step: &'a str,
    /// Its position in the pipeline.
    pub position: i32,
    /// The children, in list order.
    pub children: &'a [NewChild],
    /// How many may run at once (all when `None`).
    pub max_running: Option<i32>,
    /// Whether the step started one child and wants its outcome as its output (not a list).
    pub single: bool,
    /// When the parent is woken even if children are still running.
    pub deadline: Option<DateTime<Utc>>,
    /// The parent's wake-up message (it carries `wake_token`).
    pub wake: &'a outbox::Message,
    /// The token the wake-up carries; a copy of the parent's message without it is stale.
    pub wake_token: &'a str,
    /// The parent's tenant, which its children inherit.
    pub tenant: Option<&'a str>,
}

/// Parks the running parent as `waiting_for_children` and starts its join (see the module
/// doc). Fenced like every write of a running run: [`StoreError::Conflict`] when the run is no
/// longer this worker's in this attempt. Returns how many children started now.
pub async fn start_join(
    client: &impl GenericClient,
    join: &NewJoin<'_>,
    change: &Change<'_>,
) -> Result<usize, StoreError> {
    let total = i32::try_from(join.children.len()).unwrap_or(i32::MAX);
    // Not `clamp(1, total)`: it panics for an empty list (total 0), which has a limit too.
    let started = join
        .max_running
        .map_or(total, |limit| limit.max(1).min(total));
    // A wake-up held until the last child ends: due at the deadline, or never by itself.
    let held_until = join
        .deadline
        .unwrap_or_else(|| Utc::now() + chrono::Duration::days(365 * 100));
    let parked = client
        .prepare_cached(
            "UPDATE runs SET status = 'waiting_for_children', wake_token = $4, join_step = $5,
                    next_attempt_at = $6, stage = coalesce($7, stage), updated_at = now()
             WHERE id = $1 AND status = 'running' AND attempt = $2 AND worker = $3",
        )
        .await?;
    let updated = client
        .execute(
            &parked,
            &[
                &join.parent,
                &change.attempt,
                &change.worker,
                &join.wake_token,
                &join.step,
                &join.deadline,
                &change.stage,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(StoreError::Conflict {
            run: join.parent,
            expected: RunStatus::Running,
        });
    }
    log_transition(
        client,
        join.parent,
        Some(RunStatus::Running),
        RunStatus::WaitingForChildren,
        change,
    )
    .await?;
    let wake_id = outbox::insert(client, std::slice::from_ref(join.wake), Some(held_until))
        .await?
        .first()
        .copied()
        .ok_or_else(|| StoreError::Corrupt("the wake-up was not written".into()))?;
    client
        .execute(
            "INSERT INTO run_joins (parent_id, step, position, total, started, max_running, single,
                                    wake_id, deadline)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &join.parent,
                &join.step,
                &join.position,
                &total,
                &started,
                &join.max_running,
                &join.single,
                &wake_id,
                &join.deadline,
            ],
        )
        .await?;
    insert_children(client, join).await?;
    let now_started = start_children(client, join.parent, 0, started, join.tenant).await?;
    if total == 0 {
        release_wake(client, wake_id).await?;
    }
    Ok(now_started)
}

async fn insert_children(
    client: &impl GenericClient,
    join: &NewJoin<'_>,
) -> Result<(), StoreError> {
    if join.children.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(join.children.len());
    let mut tasks = Vec::with_capacity(join.children.len());
    let mut events = Vec::with_capacity(join.children.len());
    let mut message_ids = Vec::with_capacity(join.children.len());
    let mut keys = Vec::with_capacity(join.children.len());
    let mut bodies = Vec::with_capacity(join.children.len());
    let mut properties = Vec::with_capacity(join.children.len());
    for child in join.children {
        ids.push(child.id);
        tasks.push(child.task.as_str());
        events.push(child.event.as_str());
        message_ids.push(child.message_id.as_str());
        keys.push(child.message.routing_key.as_str());
        bodies.push(child.message.body.as_slice());
        properties.push(tokio_postgres::types::Json(
            serde_json::to_value(&child.message.properties)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ));
    }
    client
        .execute(
            "INSERT INTO run_children (parent_id, position, child_id, task, event, message_id,
                                       routing_key, body, properties)
             SELECT $1, (n - 1)::int, c, t, e, m, k, b, p
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[],
                         $8::jsonb[]) WITH ORDINALITY AS x(c, t, e, m, k, b, p, n)",
            &[
                &join.parent,
                &ids,
                &tasks,
                &events,
                &message_ids,
                &keys,
                &bodies,
                &properties,
            ],
        )
        .await?;
    Ok(())
}

/// Starts the children at positions `from..to` of the parent's join: their runs (`queued`,
/// with the transition that says who started them) and their messages in the outbox. Returns
/// how many started.
async fn start_children(
    client: &impl GenericClient,
    parent: Uuid,
    from: i32,
    to: i32,
    tenant: Option<&str>,
) -> Result<usize, StoreError> {
    if to <= from {
        return Ok(0);
    }
    crate::state::check(None, RunStatus::Queued)?;
    let reason = format!("started by run {parent}");
    let stmt = client
        .prepare_cached(
            "WITH c AS (
                 SELECT * FROM run_children
                 WHERE parent_id = $1 AND position >= $2 AND position < $3 AND body IS NOT NULL
                 FOR UPDATE
             ), queued AS (
                 INSERT INTO outbox (run_id, kind, exchange, routing_key, body, properties)
                 SELECT $1, 'child', '', routing_key, body, properties FROM c ORDER BY position
             ), created AS (
                 INSERT INTO runs (id, message_id, task, event, status, attempt, input, tenant,
                                   parent_id, published_at)
                 SELECT child_id, message_id, task, event, 'queued', 1,
                        convert_from(body, 'UTF8')::jsonb, $4, $1, now()
                 FROM c
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id
             ), logged AS (
                 INSERT INTO run_transitions (run_id, from_status, to_status, attempt, reason)
                 SELECT id, NULL, 'queued', 1, $5 FROM created
             ), emptied AS (
                 UPDATE run_children r SET body = NULL, properties = NULL
                 FROM c WHERE r.parent_id = c.parent_id AND r.position = c.position
             )
             SELECT count(*) FROM c",
        )
        .await?;
    let row = client
        .query_one(&stmt, &[&parent, &from, &to, &tenant, &reason])
        .await?;
    let started: i64 = row.get(0);
    Ok(usize::try_from(started).unwrap_or(0))
}

/// The wake-up is due now. A wake-up a relay holds locked is being sent already (its timeout
/// came): it is skipped rather than waited for, so that a child's end never waits on the broker.
async fn release_wake(client: &impl GenericClient, wake_id: i64) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "UPDATE outbox SET available_at = now()
             WHERE id = (SELECT id FROM outbox WHERE id = $1 FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    client.execute(&stmt, &[&wake_id]).await?;
    Ok(())
}

/// What a child's end did to its parent's join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildEnded {
    /// A waiting child started in its place.
    pub started_next: bool,
    /// It was the last: the parent's wake-up is due.
    pub woke_parent: bool,
}

/// A child run ended (succeeded, halted, dead or cancelled): count it in its parent's open
/// join, in the transaction of the write that ended it. Once per child, however many times it
/// ends (a dead child replayed and succeeding later changes nothing for a join that counted it);
/// nothing for a child whose parent stopped waiting (the join timed out or was cancelled).
pub async fn child_ended(
    client: &impl GenericClient,
    child: Uuid,
) -> Result<ChildEnded, StoreError> {
    children_ended(client, &[child]).await
}

/// [`child_ended`] for many children at once (a group commit's), in one statement whatever
/// their number: a join is locked and counted once per batch rather than once per child (a
/// fan-out's children all end in the same join, whose row each end locked until its commit).
/// The joins are locked in the order of their parents' ids, so that two such statements
/// never wait for each other in a cycle. Says whether any waiting child started and any
/// parent's wake-up became due.
pub async fn children_ended(
    client: &impl GenericClient,
    children: &[Uuid],
) -> Result<ChildEnded, StoreError> {
    if children.is_empty() {
        return Ok(ChildEnded::default());
    }
    let stmt = client
        .prepare_cached(
            "WITH c AS (
                 UPDATE run_children SET ended_at = now()
                 WHERE child_id = ANY($1) AND ended_at IS NULL
                 RETURNING parent_id
             ), n AS (
                 SELECT parent_id, count(*)::int AS k FROM c GROUP BY parent_id
             ), old AS (
                 SELECT j.parent_id, j.started, n.k FROM run_joins j JOIN n USING (parent_id)
                 ORDER BY j.parent_id
                 FOR UPDATE OF j
             )
             UPDATE run_joins j
             SET ended = j.ended + old.k,
                 started = CASE WHEN j.max_running IS NULL THEN j.started
                                ELSE least(j.started + old.k, j.total) END
             FROM old WHERE j.parent_id = old.parent_id
             RETURNING j.parent_id, old.started, j.started, j.ended, j.total, j.wake_id,
                       (SELECT tenant FROM runs WHERE id = j.parent_id)",
        )
        .await?;
    let rows = client.query(&stmt, &[&children]).await?;
    let mut effect = ChildEnded::default();
    for row in rows {
        let parent: Uuid = row.get(0);
        let was_started: i32 = row.get(1);
        let started: i32 = row.get(2);
        let ended: i32 = row.get(3);
        let total: i32 = row.get(4);
        let wake_id: i64 = row.get(5);
        let tenant: Option<String> = row.get(6);
        if started > was_started {
            effect.started_next |=
                start_children(client, parent, was_started, started, tenant.as_deref()).await? > 0;
        }
        if ended >= total {
            release_wake(client, wake_id).await?;
            effect.woke_parent = true;
        }
    }
    Ok(effect)
}

/// A woken parent's join: every child's outcome in list order, as the waiting step's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The step that waited.
    pub step: String,
    /// Its position.
    pub position: i32,
    /// When the step started its children.
    pub started_at: DateTime<Utc>,
    /// Whether the wait's timeout woke the parent before every child ended.
    pub timed_out: bool,
    /// The step's output: the child's outcome for a single child, else
    /// `{"children": [...], "succeeded", "failed", "halted", "unfinished", "timed_out"}`.
    pub output: Value,
}

/// The open join of `parent`, with its children's outcomes; `None` when it has none.
pub async fn joined(
    client: &impl GenericClient,
    parent: Uuid,
) -> Result<Option<Joined>, StoreError> {
    let join = client
        .query_opt(
            "SELECT step, position, total, ended, single, created_at FROM run_joins
             WHERE parent_id = $1",
            &[&parent],
        )
        .await?;
    let Some(join) = join else { return Ok(None) };
    let step: String = join.get(0);
    let position: i32 = join.get(1);
    let total: i32 = join.get(2);
    let ended: i32 = join.get(3);
    let single: bool = join.get(4);
    let started_at: DateTime<Utc> = join.get(5);
    let rows = client
        .query(
            "SELECT c.child_id, c.task, c.message_id, r.status, r.output, r.outcome, r.error_code,
                    r.error_message
             FROM run_children c LEFT JOIN runs r ON r.id = c.child_id
             WHERE c.parent_id = $1 ORDER BY c.position",
            &[&parent],
        )
        .await?;
    let mut children = Vec::with_capacity(rows.len());
    let (mut succeeded, mut failed, mut halted, mut unfinished) = (0, 0, 0, 0);
    for row in rows {
        let status: Option<String> = row.get(3);
        let status = status.unwrap_or_else(|| "pending".to_owned());
        let mut outcome = Map::new();
        outcome.insert("run_id".into(), json!(row.get::<_, Uuid>(0)));
        outcome.insert("task".into(), json!(row.get::<_, String>(1)));
        outcome.insert("message_id".into(), json!(row.get::<_, String>(2)));
        match status.as_str() {
            "succeeded" => {
                succeeded += 1;
                let output: Option<tokio_postgres::types::Json<Value>> = row.get(4);
                outcome.insert("output".into(), output.map_or(Value::Null, |j| j.0));
            }
            "halted" => {
                halted += 1;
                let output: Option<tokio_postgres::types::Json<Value>> = row.get(4);
                outcome.insert("output".into(), output.map_or(Value::Null, |j| j.0));
                outcome.insert("outcome".into(), json!(row.get::<_, Option<String>>(5)));
            }
            "dead" | "cancelled" => {
                failed += 1;
                let code: Option<String> = row.get(6);
                let message: Option<String> = row.get(7);
                let code = code.unwrap_or_else(|| status.clone());
                outcome.insert(
                    "error".into(),
                    json!({ "code": code, "message": message.unwrap_or_default() }),
                );
            }
            _ => unfinished += 1,
        }
        outcome.insert("status".into(), json!(status));
        children.push(Value::Object(outcome));
    }
    let timed_out = ended < total;
    let output = if single && children.len() == 1 {
        let mut only = children.pop().unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut only {
            fields.insert("timed_out".into(), json!(timed_out));
        }
        only
    } else {
        json!({
            "children": children,
            "succeeded": succeeded,
            "failed": failed,
            "halted": halted,
            "unfinished": unfinished,
            "timed_out": timed_out,
        })
    };
    Ok(Some(Joined {
        step,
        position,
        started_at,
        timed_out,
        output,
    }))
}

/// Closes the parent's join once its outcome is the step's checkpoint (in that transaction):
/// the join, its children's rows and an unsent wake-up go; children still running after a
/// timeout go on, their ends count for nothing, and children that never started never will.
pub async fn close_join(client: &impl GenericClient, parent: Uuid) -> Result<(), StoreError> {
    close_joins(client, std::slice::from_ref(&parent)).await
}

/// [`close_join`] for several parents at once (a cancelled tree). A wake-up a relay holds
/// locked is being sent: that relay deletes it once confirmed, and its delivery finds the run
/// moved on; it is not waited for, so that no write waits on the broker.
pub async fn close_joins(client: &impl GenericClient, parents: &[Uuid]) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH j AS (DELETE FROM run_joins WHERE parent_id = ANY($1) RETURNING wake_id),
                  c AS (DELETE FROM run_children WHERE parent_id = ANY($1))
             DELETE FROM outbox
             WHERE id IN (SELECT o.id FROM outbox o JOIN j ON o.id = j.wake_id
                          FOR UPDATE OF o SKIP LOCKED)",
        )
        .await?;
    client.execute(&stmt, &[&parents]).await?;
    Ok(())
}

/// A summary of a run's children for `warren runs show`: how many in each status, and the open
/// join, if any (total, started, ended).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Family {
    /// The parent, when the run is a child.
    pub parent: Option<Uuid>,
    /// Children by status.
    pub children: Vec<(String, i64)>,
    /// The open join: (step, total, started, ended).
    pub join: Option<(String, i32, i32, i32)>,
}

/// The run's parent, its children by status, and its open join.
pub async fn family(client: &impl GenericClient, run: Uuid) -> Result<Family, StoreError> {
    let parent = client
        .query_opt("SELECT parent_id FROM runs WHERE id = $1", &[&run])
        .await?
        .and_then(|row| row.get(0));
    let children = client
        .query(
            "SELECT status, count(*) FROM runs WHERE parent_id = $1 GROUP BY status ORDER BY status",
            &[&run],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let join = client
        .query_opt(
            "SELECT step, total, started, ended FROM run_joins WHERE parent_id = $1",
            &[&run],
        )
        .await?
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)));
    Ok(Family {
        parent,
        children,
        join,
    })
}
