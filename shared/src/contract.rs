//! The wire contract: what a message on Warren's exchange looks like. This is a public API,
//! documented for other languages in `docs/protocol.md`; change both together.
//!
//! A producer publishes to the topic exchange with the event name as routing key. Two body
//! formats are accepted, chosen by the AMQP `content-type` property:
//! - `application/json` (or no content type): the body is the task's JSON input, and the run's
//!   identity, idempotency key, tenant, trace context and timestamps travel in AMQP properties and
//!   the headers named in [`header`];
//! - `application/cloudevents+json`: a CloudEvents 1.0 structured event whose `type` is the event,
//!   `id` the message identity, `time` the publish time and `data` the input.
//!
//! Decoding never panics: every way a message can be unusable is a [`ContractError`] with a stable
//! reason code, which the worker puts on the dead-letter queue.

use chrono::{DateTime, TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Content type of a plain JSON payload (the default when none is set).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of a CloudEvents 1.0 structured-mode event.
pub const CONTENT_TYPE_CLOUDEVENTS: &str = "application/cloudevents+json";
/// The largest message body a worker accepts by default; larger ones are dead-lettered.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The longest event name; AMQP routing keys are at most 255 bytes.
pub const MAX_EVENT_NAME_LEN: usize = 255;

/// AMQP header names Warren reads and writes. Plain names (no `x-` prefix), lower case.
pub mod header {
    /// Deduplicates triggers: publishes of one task with the same key make one run.
    pub const IDEMPOTENCY_KEY: &str = "warren-idempotency-key";
    /// Free-form tenant or workspace identifier, recorded on the run.
    pub const TENANT: &str = "warren-tenant";
    /// When the producer published the message, RFC 3339 with milliseconds (UTC).
    pub const PUBLISHED_AT: &str = "warren-published-at";
    /// Which attempt this message carries (1 for a first publish). Set by Warren on retries.
    pub const ATTEMPT: &str = "warren-attempt";
    /// The event, when the routing key is not the event (messages Warren forwards through the
    /// delay cascade or replays carry it). Producers need not set it.
    pub const EVENT: &str = "warren-event";
    /// On a message that resumes a waiting run: which wait it ends.
    pub const WAKE: &str = "warren-wake";
    /// On retries: when the run's first attempt in this budget failed (RFC 3339).
    pub const FIRST_FAILED_AT: &str = "warren-first-failed-at";
    /// When a message that went through the delay queues was due (RFC 3339): a retry, a
    /// wake-up or a delayed publish. Queue wait is measured from here rather than from the
    /// publish. Set by Warren; producers need not set it.
    pub const DUE_AT: &str = "warren-due-at";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context vendor state.
    pub const TRACESTATE: &str = "tracestate";

    /// Dead letters: stable reason code (`malformed_message`, `invalid_input`, ...).
    pub const DEAD_REASON: &str = "warren-dead-reason";
    /// Dead letters: the human-readable explanation.
    pub const DEAD_MESSAGE: &str = "warren-dead-message";
    /// Dead letters: how many attempts were made.
    pub const DEAD_ATTEMPTS: &str = "warren-dead-attempts";
    /// Dead letters: the task whose queue the message was taken from.
    pub const DEAD_TASK: &str = "warren-dead-task";
    /// Dead letters: the exchange the message was originally published to.
    pub const DEAD_EXCHANGE: &str = "warren-dead-exchange";
    /// Dead letters: the original routing key (the event).
    pub const DEAD_ROUTING_KEY: &str = "warren-dead-routing-key";
    /// Dead letters: when the first attempt failed (RFC 3339).
    pub const DEAD_FIRST_FAILED_AT: &str = "warren-dead-first-failed-at";
    /// Dead letters: when the last attempt failed (RFC 3339).
    pub const DEAD_LAST_FAILED_AT: &str = "warren-dead-last-failed-at";
    /// Dead letters: the run the message belongs to, when it has one.
    pub const DEAD_RUN_ID: &str = "warren-dead-run-id";
}

/// Why a message cannot be used. The `code` of each is written into dead letters and is stable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ContractError {
    /// The body is larger than the worker's limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not JSON (or not UTF-8).
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The content type is neither JSON nor CloudEvents JSON.
    #[error(
        "unsupported content type {0:?} (expected application/json or application/cloudevents+json)"
    )]
    UnsupportedContentType(String),
    /// A CloudEvents envelope is missing a required attribute or has a wrong one.
    #[error("invalid CloudEvents envelope: {0}")]
    InvalidCloudEvent(String),
    /// The event name (routing key or CloudEvents `type`) is not a valid event name.
    #[error("invalid event name {0:?}: use letters, digits, '.', '_' or '-', at most 255 bytes")]
    InvalidEventName(String),
    /// A Warren header has a value of the wrong type or format.
    #[error("header {name} is invalid: {detail}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl ContractError {
    /// The stable reason code written into the dead letter's `warren-dead-reason` header.
    pub fn code(&self) -> &'static str {
        match self {
            ContractError::TooLarge { .. } => "message_too_large",
            _ => "malformed_message",
        }
    }
}

/// A decoded message: everything the worker needs to start or resume a run.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The producer's message identity (AMQP `message-id`, or CloudEvents `id`). `None` when the
    /// producer set none: the worker then cannot recognise a redelivery (see the protocol doc).
    pub message_id: Option<String>,
    /// The event name, e.g. `video.process`.
    pub event: String,
    /// The task input, validated as JSON but not parsed into a tree.
    pub payload: Box<RawValue>,
    /// Deduplication key for triggers.
    pub idempotency_key: Option<String>,
    /// Tenant identifier.
    pub tenant: Option<String>,
    /// When the producer published the message.
    pub published_at: Option<DateTime<Utc>>,
    /// Which attempt this message carries, 1 for a first publish.
    pub attempt: u32,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The wait this message ends, on a message that resumes a waiting run.
    pub wake: Option<String>,
    /// When the first failed attempt of the current retry budget failed.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When a message that went through the delay queues was due.
    pub due_at: Option<DateTime<Utc>>,
}

/// Is `name` usable as an event name (a topic routing key without wildcards)?
pub fn validate_event_name(name: &str) -> Result<(), ContractError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let valid = !name.is_empty()
        && name.len() <= MAX_EVENT_NAME_LEN
        && name.chars().all(valid_char)
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    if valid {
        Ok(())
    } else {
        Err(ContractError::InvalidEventName(name.to_owned()))
    }
}

/// Decodes a delivery's routing key, properties and body into an [`Envelope`].
pub fn decode(
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
    max_bytes: usize,
) -> Result<Envelope, ContractError> {
    if body.len() > max_bytes {
        return Err(ContractError::TooLarge {
            size: body.len(),
            limit: max_bytes,
        });
    }
    let headers = properties.headers().as_ref();
    // A forwarded message names its event in a header; otherwise the routing key is the event.
    let event_header = string_header(headers, header::EVENT)?;
    let routing_key = event_header.as_deref().unwrap_or(routing_key);
    let content_type = properties.content_type().as_ref().map(|ct| {
        ct.as_str()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let mut envelope = match content_type.as_deref() {
        None | Some("") | Some(CONTENT_TYPE_JSON) => Envelope {
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            event: routing_key.to_owned(),
            payload: serde_json::from_slice(body)
                .map_err(|e| ContractError::MalformedJson(e.to_string()))?,
            idempotency_key: string_header(headers, header::IDEMPOTENCY_KEY)?,
            tenant: string_header(headers, header::TENANT)?,
            published_at: published_at(headers, properties)?,
            attempt: 1,
            traceparent: string_header(headers, header::TRACEPARENT)?,
            tracestate: string_header(headers, header::TRACESTATE)?,
            wake: None,
            first_failed_at: None,
            due_at: None,
        },
        Some(CONTENT_TYPE_CLOUDEVENTS) => decode_cloudevent(routing_key, headers, body)?,
        Some(other) => return Err(ContractError::UnsupportedContentType(other.to_owned())),
    };
    validate_event_name(&envelope.event)?;
    envelope.wake = string_header(headers, header::WAKE)?;
    envelope.first_failed_at = time_header(headers, header::FIRST_FAILED_AT)?;
    envelope.due_at = time_header(headers, header::DUE_AT)?;
    if let Some(attempt) = int_header(headers, header::ATTEMPT)? {
        envelope.attempt = u32::try_from(attempt)
            .ok()
            .filter(|a| *a >= 1)
            .ok_or_else(|| ContractError::InvalidHeader {
                name: header::ATTEMPT,
                detail: format!("{attempt} is not a positive attempt number"),
            })?;
    }
    Ok(envelope)
}

/// The attributes of a CloudEvents 1.0 structured event that Warren reads.
#[derive(Deserialize)]
struct CloudEvent {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    time: Option<String>,
    data: Option<Box<RawValue>>,
    data_base64: Option<serde_json::Value>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    idempotencykey: Option<String>,
    tenant: Option<String>,
}

fn decode_cloudevent(
    routing_key: &str,
    headers: Option<&FieldTable>,
    body: &[u8],
) -> Result<Envelope, ContractError> {
    let ce: CloudEvent =
        serde_json::from_slice(body).map_err(|e| ContractError::MalformedJson(e.to_string()))?;
    let invalid = |what: &str| ContractError::InvalidCloudEvent(what.to_owned());
    if ce.specversion.as_deref() != Some("1.0") {
        return Err(invalid("specversion must be \"1.0\""));
    }
    let id = ce
        .id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("id is required"))?;
    ce.source
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("source is required"))?;
    let event = ce
        .event_type
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("type is required"))?;
    if event != routing_key {
        return Err(invalid(&format!(
            "type {event:?} does not match the routing key {routing_key:?}"
        )));
    }
    if ce.data_base64.is_some() {
        return Err(invalid("data_base64 is not supported: send JSON in data"));
    }
    let payload = match ce.data {
        Some(data) => data,
        None => RawValue::from_string("null".to_owned())
            .map_err(|e| ContractError::MalformedJson(e.to_string()))?,
    };
    let published_at = ce
        .time
        .map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| invalid(&format!("time {t:?} is not RFC 3339: {e}")))
        })
        .transpose()?;
    Ok(Envelope {
        message_id: Some(id),
        event,
        payload,
        idempotency_key: ce
            .idempotencykey
            .or(string_header(headers, header::IDEMPOTENCY_KEY)?),
        tenant: ce.tenant.or(string_header(headers, header::TENANT)?),
        published_at,
        attempt: 1,
        traceparent: ce
            .traceparent
            .or(string_header(headers, header::TRACEPARENT)?),
        tracestate: ce
            .tracestate
            .or(string_header(headers, header::TRACESTATE)?),
        wake: None,
        first_failed_at: None,
        due_at: None,
    })
}

fn header_value<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers.and_then(|h| h.inner().get(name))
}

/// Reads a text header; clients differ in whether they send long or short strings.
pub fn string_header(
    headers: Option<&FieldTable>,
    name: &'static str,
) -> Result<Option<String>, ContractError> {
    match header_value(headers, name) {
        None | Some(AMQPValue::Void) => Ok(None),
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec())
            .map(Some)
            .map_err(|_| ContractError::InvalidHeader {
                name,
                detail: "not UTF-8".into(),
            }),
        Some(AMQPValue::ShortString(s)) => Ok(Some(s.as_str().to_owned())),
        Some(other) => Err(ContractError::InvalidHeader {
            name,
            detail: format!("expected a string, got {other:?}"),
        }),
    }
}

/// Reads an integer header of any AMQP integer width (clients pick different ones).
pub fn int_header(
    headers: Option<&FieldTable>,
    name: &'static str,
) -> Result<Option<i64>, ContractError> {
    Ok(match header_value(headers, name) {
        None | Some(AMQPValue::Void) => None,
        Some(AMQPValue::ShortShortInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::ShortShortUInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::ShortInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::ShortUInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::LongInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::LongUInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::LongLongInt(v)) => Some(*v),
        Some(AMQPValue::LongString(s)) => Some(
            std::str::from_utf8(s.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ContractError::InvalidHeader {
                    name,
                    detail: "expected an integer".into(),
                })?,
        ),
        Some(other) => {
            return Err(ContractError::InvalidHeader {
                name,
                detail: format!("expected an integer, got {other:?}"),
            });
        }
    })
}

/// Reads an RFC 3339 time header.
pub fn time_header(
    headers: Option<&FieldTable>,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, ContractError> {
    string_header(headers, name)?
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ContractError::InvalidHeader {
                    name,
                    detail: format!("{text:?} is not RFC 3339: {e}"),
                })
        })
        .transpose()
}

fn published_at(
    headers: Option<&FieldTable>,
    properties: &BasicProperties,
) -> Result<Option<DateTime<Utc>>, ContractError> {
    if let Some(at) = time_header(headers, header::PUBLISHED_AT)? {
        return Ok(Some(at));
    }
    Ok(properties
        .timestamp()
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(|secs| Utc.timestamp_opt(secs, 0).single()))
}

/// Formats a time the way [`header::PUBLISHED_AT`] and the dead-letter times carry it.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The properties of a message Warren sends on again (a retry, a wait, a replay): the original
/// properties and headers, minus the broker's dead-letter history (a message that carries
/// `x-death` for a queue it re-enters can be dropped by the broker as a cycle) and minus old
/// dead-letter reasons, with the event, the attempt and `extra` headers set.
pub fn forwarded_properties(
    original: &BasicProperties,
    event: &str,
    attempt: u32,
    extra: &[(&str, String)],
) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = original.headers() {
        for (name, value) in old.inner() {
            let n = name.as_str();
            let broker_history =
                n == "x-death" || n.starts_with("x-first-death") || n.starts_with("x-last-death");
            if !broker_history
                && !n.starts_with("warren-dead-")
                && n != header::WAKE
                && n != header::DUE_AT
            {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    let mut text = |name: &str, value: &str| {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
    };
    text(header::EVENT, event);
    for (name, value) in extra {
        text(name, value);
    }
    headers.insert(
        header::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    original.clone().with_headers(headers).with_delivery_mode(2)
}

/// A message about to be published: the one place that turns Warren's fields into AMQP
/// properties, used by the producer, and by the worker for dead letters and retries.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message identity.
    pub message_id: String,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Tenant, if any.
    pub tenant: Option<String>,
    /// Publish time.
    pub published_at: DateTime<Utc>,
    /// Attempt number carried by the message (1 for a first publish).
    pub attempt: u32,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// Further headers (dead-letter reasons, user headers).
    pub extra_headers: Vec<(String, AMQPValue)>,
}

impl Outgoing {
    /// A first publish with a fresh UUIDv7 message id.
    pub fn new() -> Self {
        Outgoing {
            message_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: None,
            tenant: None,
            published_at: Utc::now(),
            attempt: 1,
            traceparent: None,
            tracestate: None,
            extra_headers: Vec::new(),
        }
    }

    /// The outgoing form of a received message, to forward it (dead letters, retries): keeps its
    /// identity, publish time and trace context.
    pub fn forward(envelope: &Envelope) -> Self {
        Outgoing {
            message_id: envelope
                .message_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            idempotency_key: envelope.idempotency_key.clone(),
            tenant: envelope.tenant.clone(),
            published_at: envelope.published_at.unwrap_or_else(Utc::now),
            attempt: envelope.attempt,
            traceparent: envelope.traceparent.clone(),
            tracestate: envelope.tracestate.clone(),
            extra_headers: Vec::new(),
        }
    }

    /// Adds a text header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((
            name.into(),
            AMQPValue::LongString(LongString::from(value.into().into_bytes())),
        ));
        self
    }

    /// Adds an integer header.
    pub fn with_int_header(mut self, name: impl Into<String>, value: i64) -> Self {
        self.extra_headers
            .push((name.into(), AMQPValue::LongLongInt(value)));
        self
    }

    /// The AMQP properties for a JSON body: persistent, with identity, timestamps and headers.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut text = |name: &str, value: &str| {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
            );
        };
        text(header::PUBLISHED_AT, &format_time(self.published_at));
        for (name, value) in [
            (header::IDEMPOTENCY_KEY, &self.idempotency_key),
            (header::TENANT, &self.tenant),
            (header::TRACEPARENT, &self.traceparent),
            (header::TRACESTATE, &self.tracestate),
        ] {
            if let Some(value) = value {
                text(name, value);
            }
        }
        // A first attempt carries no attempt header (absent means 1, as for any producer):
        // every header is parsed by the broker on every publish.
        if self.attempt > 1 {
            headers.insert(
                header::ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(self.attempt)),
            );
        }
        for (name, value) in &self.extra_headers {
            headers.insert(ShortString::from(name.as_str()), value.clone());
        }
        let timestamp = u64::try_from(self.published_at.timestamp()).unwrap_or(0);
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(2)
            .with_message_id(self.message_id.as_str().into())
            .with_timestamp(timestamp)
            .with_headers(headers)
    }
}

impl Default for Outgoing {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props_with(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.as_bytes().to_vec().into())
    }

    #[test]
    fn a_plain_json_message_carries_its_metadata_in_properties_and_headers() {
        let props = props_with(&[
            (header::IDEMPOTENCY_KEY, long("k-1")),
            (header::TENANT, long("acme")),
            (header::PUBLISHED_AT, long("2026-11-23T10:00:00.250Z")),
            (
                header::TRACEPARENT,
                long("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ),
        ])
        .with_message_id("m-1".into())
        .with_content_type("application/json".into());
        let env = decode("video.process", &props, br#"{"a":1}"#, 1024).unwrap();
        assert_eq!(env.message_id.as_deref(), Some("m-1"));
        assert_eq!(env.event, "video.process");
        assert_eq!(env.payload.get(), r#"{"a":1}"#);
        assert_eq!(env.idempotency_key.as_deref(), Some("k-1"));
        assert_eq!(env.tenant.as_deref(), Some("acme"));
        assert_eq!(env.attempt, 1);
        assert_eq!(
            env.published_at.map(format_time).as_deref(),
            Some("2026-11-23T10:00:00.250Z")
        );
        assert!(env.traceparent.is_some());
    }

    #[test]
    fn a_message_without_content_type_or_headers_is_plain_json() {
        let env = decode("player.dump", &BasicProperties::default(), b"{}", 1024).unwrap();
        assert_eq!(env.message_id, None);
        assert_eq!(env.attempt, 1);
    }

    #[test]
    fn broken_json_oversize_and_odd_content_types_are_errors_with_codes() {
        let props = BasicProperties::default();
        let err = decode("e", &props, b"{not json", 1024).unwrap_err();
        assert_eq!(err.code(), "malformed_message");
        assert!(err.to_string().starts_with("body is not valid JSON"));

        let err = decode("e", &props, &[b' '; 2048], 1024).unwrap_err();
        assert_eq!(err.code(), "message_too_large");

        let xml = BasicProperties::default().with_content_type("text/xml".into());
        let err = decode("e", &xml, b"<a/>", 1024).unwrap_err();
        assert!(matches!(err, ContractError::UnsupportedContentType(_)));
    }

    #[test]
    fn a_cloudevent_maps_type_id_time_and_data() {
        let props = BasicProperties::default().with_content_type(CONTENT_TYPE_CLOUDEVENTS.into());
        let body = br#"{"specversion":"1.0","type":"player.dump","id":"ce-1","source":"/tests",
            "time":"2026-11-23T10:00:00Z","data":{"playerId":"p1"},"tenant":"acme"}"#;
        let env = decode("player.dump", &props, body, 4096).unwrap();
        assert_eq!(env.message_id.as_deref(), Some("ce-1"));
        assert_eq!(env.event, "player.dump");
        assert_eq!(env.payload.get(), r#"{"playerId":"p1"}"#);
        assert_eq!(env.tenant.as_deref(), Some("acme"));
        assert!(env.published_at.is_some());
    }

    #[test]
    fn a_cloudevent_without_required_attributes_or_with_a_foreign_type_is_refused() {
        let props = BasicProperties::default().with_content_type(CONTENT_TYPE_CLOUDEVENTS.into());
        let missing_id = br#"{"specversion":"1.0","type":"a","source":"s","data":{}}"#;
        assert!(matches!(
            decode("a", &props, missing_id, 4096),
            Err(ContractError::InvalidCloudEvent(m)) if m.contains("id")
        ));
        let mismatch = br#"{"specversion":"1.0","type":"b","id":"1","source":"s","data":{}}"#;
        assert!(matches!(
            decode("a", &props, mismatch, 4096),
            Err(ContractError::InvalidCloudEvent(m)) if m.contains("routing key")
        ));
    }

    #[test]
    fn the_attempt_header_accepts_any_integer_width_and_refuses_zero() {
        for value in [
            AMQPValue::ShortShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
            long("3"),
        ] {
            let env = decode("e", &props_with(&[(header::ATTEMPT, value)]), b"1", 64).unwrap();
            assert_eq!(env.attempt, 3);
        }
        let zero = props_with(&[(header::ATTEMPT, AMQPValue::LongInt(0))]);
        assert!(matches!(
            decode("e", &zero, b"1", 64),
            Err(ContractError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn a_forwarded_message_keeps_its_identity_and_headers_but_not_its_dead_letter_history() {
        let original = props_with(&[
            ("x-death", AMQPValue::FieldArray(Default::default())),
            ("x-first-death-queue", long("q")),
            (header::DEAD_REASON, long("timeout")),
            (header::TENANT, long("acme")),
            ("custom", long("kept")),
        ])
        .with_message_id("m-9".into())
        .with_content_type(CONTENT_TYPE_JSON.into());
        let props = forwarded_properties(
            &original,
            "video.process",
            3,
            &[(header::WAKE, "cool_down".into())],
        );
        let headers = props.headers().as_ref().unwrap();
        for gone in ["x-death", "x-first-death-queue", header::DEAD_REASON] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
        assert!(headers.contains_key("custom"));
        // The routing key of a forwarded message is not the event; the header is.
        let env = decode("0.1.task.video.process", &props, b"{}", 64).unwrap();
        assert_eq!(env.event, "video.process");
        assert_eq!(env.attempt, 3);
        assert_eq!(env.message_id.as_deref(), Some("m-9"));
        assert_eq!(env.tenant.as_deref(), Some("acme"));
        assert_eq!(env.wake.as_deref(), Some("cool_down"));
    }

    #[test]
    fn event_names_are_topic_words_without_wildcards() {
        for ok in ["video.process", "player.dump", "a", "report_daily-v2"] {
            assert!(validate_event_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "video.*", "a..b", ".a", "a.", "has space", "#"] {
            assert!(validate_event_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outgoing_properties_round_trip_through_decode() {
        let out = Outgoing {
            idempotency_key: Some("k".into()),
            tenant: Some("t".into()),
            attempt: 2,
            ..Outgoing::new()
        }
        .with_header("x-custom", "v");
        let props = out.properties();
        assert_eq!(props.delivery_mode(), &Some(2));
        let env = decode("e.v", &props, b"{}", 64).unwrap();
        assert_eq!(env.message_id.as_deref(), Some(out.message_id.as_str()));
        assert_eq!(env.idempotency_key.as_deref(), Some("k"));
        assert_eq!(env.tenant.as_deref(), Some("t"));
        assert_eq!(env.attempt, 2);
        assert_eq!(
            env.published_at.map(format_time),
            Some(format_time(out.published_at))
        );
    }

    #[test]
    fn a_first_attempt_is_sent_without_an_attempt_header_and_read_as_one() {
        let props = Outgoing::new().properties();
        let headers = props.headers().as_ref().unwrap();
        assert!(headers.inner().get(header::ATTEMPT).is_none());
        assert_eq!(decode("e", &props, b"{}", 64).unwrap().attempt, 1);
    }
}
