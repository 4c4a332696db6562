//! The dead-letter format: the original body and properties, plus headers that say why.
//! Documented in `docs/protocol.md` (and `docs/failures.md` for operators).

use crate::writes::RunFields;
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, LongString, ShortString};
use warren_shared::contract::{format_time, header};

/// Why a message is dead-lettered.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) attempts: i64,
    pub(crate) run_id: Option<uuid::Uuid>,
    /// The identity of the run's message, which the dead letter keeps (a replay resumes the
    /// run by it, even when the producer set no message id and the worker gave it one).
    pub(crate) message_id: Option<String>,
    /// The event, when known: the routing key of a copy Warren forwarded is not the event.
    pub(crate) event: Option<String>,
    pub(crate) first_failed_at: DateTime<Utc>,
    pub(crate) last_failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// A message dead-lettered now, before any attempt ran.
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let now = Utc::now();
        DeadLetter {
            code: code.into(),
            message: message.into(),
            attempts: 0,
            run_id: None,
            message_id: None,
            event: None,
            first_failed_at: now,
            last_failed_at: now,
        }
    }

    /// Names the run and its attempt count.
    pub(crate) fn for_run(mut self, run: &RunFields) -> Self {
        self.run_id = Some(run.id);
        self.message_id = Some(run.message_id.clone());
        self.event = Some(run.event.clone());
        self.attempts = i64::from(run.attempt);
        self
    }

    /// When the first failing attempt of the budget started.
    pub(crate) fn failed_at(mut self, first: DateTime<Utc>) -> Self {
        self.first_failed_at = first;
        self
    }
}

/// The dead letter's properties: the delivery's own, with the reason headers added.
pub(crate) fn properties(delivery: &Delivery, task: &str, letter: &DeadLetter) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut text = |name: &str, value: &str| {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    };
    text(header::DEAD_REASON, &letter.code);
    text(header::DEAD_MESSAGE, &letter.message);
    text(header::DEAD_TASK, task);
    text(header::DEAD_EXCHANGE, delivery.exchange.as_str());
    text(header::DEAD_ROUTING_KEY, delivery.routing_key.as_str());
    text(
        header::DEAD_FIRST_FAILED_AT,
        &format_time(letter.first_failed_at),
    );
    text(
        header::DEAD_LAST_FAILED_AT,
        &format_time(letter.last_failed_at),
    );
    if let Some(run) = letter.run_id {
        text(header::DEAD_RUN_ID, &run.to_string());
    }
    if let Some(event) = &letter.event {
        text(header::EVENT, event);
    }
    headers.insert(
        header::DEAD_ATTEMPTS.into(),
        AMQPValue::LongLongInt(letter.attempts),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    match &letter.message_id {
        Some(id) => properties.with_message_id(id.as_str().into()),
        None => properties,
    }
}
