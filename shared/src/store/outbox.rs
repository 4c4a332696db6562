//! The transactional outbox: messages written in the same transaction as the write that causes
//! them (a step's emitted events, a parent's child triggers, a parent's wake-up, a retried
//! run's message), and sent by a relay (`warren_producer::relay`) only once that transaction
//! has committed. A step's effects on the broker therefore happen if and only if its checkpoint
//! commits. Message ids are deterministic, so a relay that sends a row twice (it crashed between
//! the confirm and the delete) makes no second run.

use super::StoreError;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use lapin::BasicProperties;
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// What an outbox row is for (shown by `warren runs show`, a label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event a step emitted.
    Event,
    /// The message that starts a child run.
    Child,
    /// The message that wakes a parent whose children ended (or whose wait timed out).
    Wake,
    /// The message of a run an operator retried.
    Retry,
    /// The message of a run a schedule fired.
    Schedule,
    /// The message of a run waiting for a slot of its concurrency key: held until its turn.
    KeyTurn,
}

impl Kind {
    /// The text stored in `outbox.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Child => "child",
            Kind::Wake => "wake",
            Kind::Retry => "retry",
            Kind::Schedule => "schedule",
            Kind::KeyTurn => "key_turn",
        }
    }
}

/// A message to send once the caller's transaction commits.
#[derive(Debug, Clone)]
pub struct Message {
    /// The run whose write causes it (the parent, for a child trigger).
    pub run_id: Uuid,
    /// What it is for.
    pub kind: Kind,
    /// Where it goes.
    pub exchange: String,
    /// Its routing key (the event, or a queue's name on the default exchange).
    pub routing_key: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Its properties (message id, headers).
    pub properties: BasicProperties,
}

/// A row the relay sends.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The row.
    pub id: i64,
    /// Where it goes.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Its properties.
    pub properties: BasicProperties,
    /// Failed publishes so far.
    pub attempts: i32,
}

/// An unsent row, as `warren runs show` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Unsent {
    /// The row.
    pub id: i64,
    /// `event`, `child`, `wake`, `retry`, `schedule` or `key_turn`.
    pub kind: String,
    /// Where it goes.
    pub routing_key: String,
    /// The message id.
    pub message_id: Option<String>,
    /// When it may be sent (a wake-up held until its children end shows the join's deadline).
    pub available_at: DateTime<Utc>,
    /// Failed publishes so far.
    pub attempts: i32,
    /// Why the last publish failed.
    pub last_error: Option<String>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// How far the relay is behind: the rows that are due and not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Rows due now.
    pub due: i64,
    /// How long the oldest due row has been due, in seconds (0 when none): a wake-up held until
    /// its children ended counts from when it was released, not from when it was written.
    pub oldest_seconds: f64,
    /// Rows whose publish failed at least once and are not sent yet.
    pub failing: i64,
}

fn properties_json(properties: &BasicProperties) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(properties)
        .map_err(|e| StoreError::Corrupt(format!("message properties do not serialise: {e}")))
}

/// The properties stored with a row, as AMQP properties.
pub fn parse_properties(value: serde_json::Value) -> Result<BasicProperties, StoreError> {
    serde_json::from_value(value)
        .map_err(|e| StoreError::Corrupt(format!("outbox properties do not parse: {e}")))
}

/// Writes `messages`, sendable from `available_at` (now when `None`); returns their row ids in
/// order. One statement however many messages there are.
pub async fn insert(
    client: &impl GenericClient,
    messages: &[Message],
    available_at: Option<DateTime<Utc>>,
) -> Result<Vec<i64>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let mut runs = Vec::with_capacity(messages.len());
    let mut kinds = Vec::with_capacity(messages.len());
    let mut exchanges = Vec::with_capacity(messages.len());
    let mut keys = Vec::with_capacity(messages.len());
    let mut bodies = Vec::with_capacity(messages.len());
    let mut properties = Vec::with_capacity(messages.len());
    for message in messages {
        runs.push(message.run_id);
        kinds.push(message.kind.as_str());
        exchanges.push(message.exchange.as_str());
        keys.push(message.routing_key.as_str());
        bodies.push(message.body.as_slice());
        properties.push(Json(properties_json(&message.properties)?));
    }
    let stmt = client
        .prepare_cached(
            "INSERT INTO outbox (run_id, kind, exchange, routing_key, body, properties, available_at)
             SELECT r, k, e, rk, b, p, coalesce($7, now())
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[])
                  WITH ORDINALITY AS m(r, k, e, rk, b, p, n)
             ORDER BY n
             RETURNING id",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[
                &runs,
                &kinds,
                &exchanges,
                &keys,
                &bodies,
                &properties,
                &available_at,
            ],
        )
        .await?;
    let mut ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    // RETURNING follows the insert order, which follows ORDER BY n; sort to be certain, since
    // ids come from a sequence in that same order.
    ids.sort_unstable();
    Ok(ids)
}

/// Due rows, as the relay takes them.
#[derive(Debug, Default)]
pub struct Due {
    /// Rows to send.
    pub pending: Vec<Pending>,
    /// Rows whose stored properties do not parse (written by another release, say), with why:
    /// the relay sets them aside rather than let one row stop every relay.
    pub unreadable: Vec<(i64, String)>,
}

/// Takes up to `limit` due rows, oldest first, locked for the caller's transaction (other
/// relays skip them).
pub async fn take_due(client: &impl GenericClient, limit: i64) -> Result<Due, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT id, exchange, routing_key, body, properties, attempts FROM outbox
             WHERE available_at <= now() ORDER BY available_at, id LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let rows = client.query(&stmt, &[&limit]).await?;
    let mut due = Due::default();
    for row in rows {
        let id: i64 = row.get(0);
        let Json(properties): Json<serde_json::Value> = row.get(4);
        match parse_properties(properties) {
            Ok(properties) => due.pending.push(Pending {
                id,
                exchange: row.get(1),
                routing_key: row.get(2),
                body: row.get(3),
                properties,
                attempts: row.get(5),
            }),
            Err(e) => due.unreadable.push((id, e.to_string())),
        }
    }
    Ok(due)
}

/// Forgets rows whose messages the broker confirmed.
pub async fn delete_sent(client: &impl GenericClient, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = client
        .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
        .await?;
    client.execute(&stmt, &[&ids]).await?;
    Ok(())
}

/// Keeps a row whose publish failed, to be tried again after `delay`, with the reason.
pub async fn postpone(
    client: &impl GenericClient,
    id: i64,
    error: &str,
    delay: Duration,
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                    available_at = now() + make_interval(secs => $3)
             WHERE id = $1",
        )
        .await?;
    client
        .execute(&stmt, &[&id, &error, &delay.as_secs_f64()])
        .await?;
    Ok(())
}

/// How far behind the relays are.
pub async fn lag(client: &impl GenericClient) -> Result<Lag, StoreError> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE available_at <= now()),
                    coalesce(extract(epoch FROM now() - min(available_at) FILTER (WHERE available_at <= now())), 0)::float8,
                    count(*) FILTER (WHERE attempts > 0)
             FROM outbox WHERE available_at <= now() OR attempts > 0",
            &[],
        )
        .await?;
    Ok(Lag {
        due: row.get(0),
        oldest_seconds: row.get(1),
        failing: row.get(2),
    })
}

/// A run's unsent messages.
pub async fn unsent_for_run(
    client: &impl GenericClient,
    run: Uuid,
) -> Result<Vec<Unsent>, StoreError> {
    let rows = client
        .query(
            "SELECT id, kind, routing_key, properties->>'message_id', available_at, attempts,
                    last_error, created_at
             FROM outbox WHERE run_id = $1 ORDER BY id LIMIT 100",
            &[&run],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Unsent {
            id: row.get(0),
            kind: row.get(1),
            routing_key: row.get(2),
            message_id: row.get(3),
            available_at: row.get(4),
            attempts: row.get(5),
            last_error: row.get(6),
            created_at: row.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    #[test]
    fn properties_survive_the_trip_through_json() {
        let mut headers = FieldTable::default();
        headers.insert(
            "warren-event".into(),
            AMQPValue::LongString(LongString::from("story.transcribe")),
        );
        headers.insert("warren-attempt".into(), AMQPValue::LongLongInt(3));
        let properties = BasicProperties::default()
            .with_message_id("run/step/0".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let json = properties_json(&properties).unwrap();
        assert_eq!(parse_properties(json).unwrap(), properties);
    }
}
