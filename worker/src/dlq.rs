//! Dead-letter queue operations for operators: peek, replay, purge. The `warren dlq` commands
//! are a thin layer over these, so a web page can offer the same.
//!
//! Replay and purge never lose or duplicate a message when interrupted: a dead letter is acked
//! only after what replaces it is confirmed by the broker (replay), and whatever was read but not
//! settled returns to the dead-letter queue when the channel closes.

use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::Pool;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_producer::{PublishError, Publisher};
use warren_shared::contract::{self, header};
use warren_shared::store::{self, StoreError};
use warren_shared::topology::Topology;

/// What can go wrong handling dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// A republish was not confirmed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No connection from the pool.
    #[error("cannot get a Postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The dead-letter queue does not exist.
    #[error("no dead-letter queue {0} (no worker has declared the task yet?)")]
    NoQueue(String),
}

/// A dead letter as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The message id (or `-`).
    pub message_id: String,
    /// The run, when the message has one.
    pub run_id: Option<String>,
    /// The event it was published as.
    pub event: String,
    /// Why it is here: Warren's reason code, or the broker's (`delivery_limit` for a message
    /// that kept crashing the worker).
    pub reason: String,
    /// The explanation.
    pub message: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the first failure of its last retry budget happened.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When it was dead-lettered.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Every header, as text.
    pub headers: BTreeMap<String, String>,
    /// The body, as text when it is UTF-8.
    pub payload: String,
}

impl DeadLetter {
    /// Reads a dead letter taken from the queue.
    pub fn from_message(message: &BasicGetMessage) -> DeadLetter {
        let props = &message.delivery.properties;
        let headers = props.headers().as_ref();
        let text = |name: &'static str| contract::string_header(headers, name).ok().flatten();
        let time = |name: &'static str| contract::time_header(headers, name).ok().flatten();
        let death = broker_death(headers);
        // A copy Warren forwarded (a retry, a replay) names its event in a header; its routing
        // key is a queue or delay route, never to be taken for the event.
        let event = text(header::EVENT)
            .or_else(|| text(header::DEAD_ROUTING_KEY))
            .or_else(|| death.as_ref().and_then(|d| d.routing_key.clone()))
            .unwrap_or_else(|| message.delivery.routing_key.to_string());
        let (reason, explanation) = match (text(header::DEAD_REASON), &death) {
            (Some(reason), _) => (reason, text(header::DEAD_MESSAGE).unwrap_or_default()),
            (None, Some(d)) => (
                d.reason.clone(),
                format!(
                    "dead-lettered by the broker from {} ({}): it was delivered {} times without being settled, so it probably crashes the worker",
                    d.queue, d.reason, d.count
                ),
            ),
            (None, None) => ("unknown".into(), String::new()),
        };
        let attempts = contract::int_header(headers, header::DEAD_ATTEMPTS)
            .ok()
            .flatten()
            .or_else(|| death.as_ref().map(|d| d.count))
            .unwrap_or(0);
        let mut all = BTreeMap::new();
        if let Some(h) = headers {
            for (name, value) in h.inner() {
                all.insert(name.to_string(), value_text(value));
            }
        }
        DeadLetter {
            message_id: props
                .message_id()
                .as_ref()
                .map_or_else(|| "-".into(), |m| m.to_string()),
            run_id: text(header::DEAD_RUN_ID),
            event,
            reason,
            message: explanation,
            attempts,
            first_failed_at: time(header::DEAD_FIRST_FAILED_AT),
            last_failed_at: time(header::DEAD_LAST_FAILED_AT).or(death.and_then(|d| d.time)),
            headers: all,
            payload: String::from_utf8_lossy(&message.delivery.data).into_owned(),
        }
    }

    /// Does `id` name this dead letter (its message id or run id)?
    pub fn is(&self, id: &str) -> bool {
        self.message_id == id || self.run_id.as_deref() == Some(id)
    }
}

/// The broker's own record of a dead-lettering (the first `x-death` entry).
struct BrokerDeath {
    reason: String,
    queue: String,
    count: i64,
    time: Option<DateTime<Utc>>,
    routing_key: Option<String>,
}

fn broker_death(headers: Option<&FieldTable>) -> Option<BrokerDeath> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let get = |k: &str| first.inner().get(k);
    let text = |k: &str| get(k).map(value_text);
    Some(BrokerDeath {
        reason: text("reason").unwrap_or_else(|| "dead-lettered".into()),
        queue: text("queue").unwrap_or_default(),
        count: match get("count") {
            Some(AMQPValue::LongLongInt(n)) => *n,
            Some(AMQPValue::LongInt(n)) => i64::from(*n),
            _ => 0,
        },
        time: match get("time") {
            Some(AMQPValue::Timestamp(t)) => i64::try_from(*t)
                .ok()
                .and_then(|t| Utc.timestamp_opt(t, 0).single()),
            _ => None,
        },
        routing_key: match get("routing-keys") {
            Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().map(value_text),
            _ => None,
        },
    })
}

fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        other => format!("{other:?}"),
    }
}

/// A task's dead-letter queue.
pub struct DeadLetterQueue<'a> {
    connection: &'a Connection,
    topology: &'a Topology,
    task: &'a str,
}

/// What `replay` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Message ids sent back to the task queue.
    pub replayed: Vec<String>,
}

impl<'a> DeadLetterQueue<'a> {
    /// The dead-letter queue of `task`.
    pub fn new(connection: &'a Connection, topology: &'a Topology, task: &'a str) -> Self {
        DeadLetterQueue {
            connection,
            topology,
            task,
        }
    }

    fn queue(&self) -> String {
        self.topology.dead_letter_queue(self.task)
    }

    /// How many dead letters wait.
    pub async fn count(&self) -> Result<u32, DlqError> {
        let channel = self.connection.create_channel().await?;
        let stats = warren_shared::topology::inspect_queue(&channel, &self.queue()).await?;
        warren_shared::amqp::close_channel(&channel, "done").await;
        stats
            .map(|s| s.messages)
            .ok_or_else(|| DlqError::NoQueue(self.queue()))
    }

    /// Reads up to `limit` dead letters without removing them (they return to the queue when
    /// the reading channel closes).
    pub async fn peek(&self, limit: usize) -> Result<Vec<DeadLetter>, DlqError> {
        let channel = self.connection.create_channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            match self.get(&channel).await? {
                Some(message) => letters.push(DeadLetter::from_message(&message)),
                None => break,
            }
        }
        warren_shared::amqp::close_channel(&channel, "peeked").await;
        Ok(letters)
    }

    /// Finds the dead letter with this message id or run id, reading the queue one letter at a
    /// time (what it passes over is not kept: a large queue is never held in memory) and no
    /// further than what the queue held when it started.
    pub async fn find(&self, id: &str) -> Result<Option<DeadLetter>, DlqError> {
        let available = self.count().await?;
        let channel = self.connection.create_channel().await?;
        let mut found = None;
        for _ in 0..available {
            let Some(message) = self.get(&channel).await? else {
                break;
            };
            let letter = DeadLetter::from_message(&message);
            if letter.is(id) {
                found = Some(letter);
                break;
            }
        }
        warren_shared::amqp::close_channel(&channel, "peeked").await;
        Ok(found)
    }

    async fn get(&self, channel: &Channel) -> Result<Option<BasicGetMessage>, DlqError> {
        match channel
            .basic_get(self.queue().as_str().into(), BasicGetOptions::default())
            .await
        {
            Ok(message) => Ok(message),
            Err(e) if warren_shared::topology::is_not_found(&e) => {
                Err(DlqError::NoQueue(self.queue()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends dead letters back to the task's queue with a fresh retry budget: those `select`
    /// accepts, at most `limit`, among the letters the queue held when the replay started. Each
    /// replayed run is logged `dead → queued` and resumes from its checkpoint. A message is acked
    /// here only after its copy is confirmed in the task queue.
    ///
    /// Bounded by what was there at the start: while the cause is not fixed, the workers
    /// dead-letter the replayed runs again, and a replay that took those too would never end.
    pub async fn replay(
        &self,
        pool: &Pool,
        select: impl Fn(&DeadLetter) -> bool,
        limit: usize,
        operator: &str,
    ) -> Result<ReplayReport, DlqError> {
        let channel = self.connection.create_channel().await?;
        let publisher = Publisher::open(self.connection).await?;
        let mut client = pool.get().await?;
        let mut report = ReplayReport::default();
        // Through the task's lanes: a letter keeps its `warren-priority` header, so its lane.
        let (exchange, routing_key) = self.topology.task_route(self.task);
        let available = self.count().await?;
        for _ in 0..available {
            if report.replayed.len() >= limit {
                break;
            }
            let Some(message) = self.get(&channel).await? else {
                break;
            };
            let letter = DeadLetter::from_message(&message);
            if !select(&letter) {
                continue; // left unacked: back to the queue when the channel closes
            }
            let props = &message.delivery.properties;
            let headers = props.headers().as_ref();
            let carried = contract::int_header(headers, header::ATTEMPT)
                .ok()
                .flatten()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(1);
            // The run (if there is one and it is dead) is queued first, so that the worker that
            // receives the copy finds it ready; a crash before the copy is sent leaves the run
            // queued and the dead letter in place, and replaying again completes the job.
            let run = props
                .message_id()
                .as_ref()
                .map(|m| store::run_id(self.task, m.as_str()));
            let attempt = match run {
                Some(run) => {
                    let tx = client.transaction().await.map_err(StoreError::from)?;
                    let replayed = store::replay_run(&tx, run, operator).await?;
                    tx.commit().await.map_err(StoreError::from)?;
                    replayed
                        .and_then(|a| u32::try_from(a).ok())
                        .unwrap_or(carried)
                }
                None => carried,
            };
            let properties = contract::forwarded_properties(props, &letter.event, attempt, &[]);
            publisher
                .send(&exchange, &routing_key, &message.delivery.data, properties)
                .await?;
            message.delivery.ack(BasicAckOptions::default()).await?;
            report.replayed.push(letter.message_id);
        }
        warren_shared::amqp::close_channel(&channel, "replayed").await;
        Ok(report)
    }

    /// Deletes dead letters: all of them, or those dead-lettered more than `older_than` ago.
    /// Returns how many.
    pub async fn purge(&self, older_than: Option<Duration>) -> Result<u32, DlqError> {
        let channel = self.connection.create_channel().await?;
        let Some(older_than) = older_than else {
            let purged = channel
                .queue_purge(self.queue().as_str().into(), QueuePurgeOptions::default())
                .await;
            warren_shared::amqp::close_channel(&channel, "purged").await;
            return match purged {
                Ok(n) => Ok(n),
                Err(e) if warren_shared::topology::is_not_found(&e) => {
                    Err(DlqError::NoQueue(self.queue()))
                }
                Err(e) => Err(e.into()),
            };
        };
        // A span longer than chrono can subtract purges nothing rather than panicking.
        let cutoff = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|span| Utc::now().checked_sub_signed(span))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let mut purged = 0;
        while let Some(message) = self.get(&channel).await? {
            let letter = DeadLetter::from_message(&message);
            if letter.last_failed_at.is_some_and(|at| at < cutoff) {
                message.delivery.ack(BasicAckOptions::default()).await?;
                purged += 1;
            }
        }
        warren_shared::amqp::close_channel(&channel, "purged").await;
        Ok(purged)
    }
}
