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
/// The longest AMQP short string (message ids, routing keys, exchange and header names).
pub const MAX_SHORT_STRING_LEN: usize = 255;
/// The longest message id, idempotency key or tenant: they are indexed in Postgres, whose
/// btree entries have a size limit far below what an AMQP long string can carry.
pub const MAX_ID_LEN: usize = 255;
/// The deepest nesting of arrays and objects a payload may have. Deeper documents exhaust
/// Postgres's stack when stored as `jsonb` (and serde's recursion limit when decoded), so they
/// are refused at the door, like the limit serde applies to a tree.
pub const MAX_JSON_DEPTH: usize = 128;
/// The longest number literal a payload may hold, and the largest decimal exponent: Postgres's
/// `numeric` (inside `jsonb`) overflows far beyond what any real input carries.
pub const MAX_JSON_NUMBER_LEN: usize = 64;
/// See [`MAX_JSON_NUMBER_LEN`]: the same bound as an `f64`'s.
pub const MAX_JSON_EXPONENT: i64 = 308;

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
    /// On a retry of a step that has its own retry policy: that step, and how many times it
    /// has been executed in its budget so far, as `{n}/{step}` (e.g. `2/transcribe`). Set by
    /// Warren.
    pub const STEP_ATTEMPT: &str = "warren-step-attempt";
    /// On a child run's message: the id of the run that started it (set by Warren). The child's
    /// end counts towards that parent's join.
    pub const PARENT_RUN: &str = "warren-parent-run";
    /// When a message that went through the delay queues was due (RFC 3339): a retry, a
    /// wake-up or a delayed publish. Queue wait is measured from here rather than from the
    /// publish. Set by Warren; producers need not set it.
    pub const DUE_AT: &str = "warren-due-at";
    /// On a run a schedule fired: the slot it fired for (RFC 3339, UTC), which the run sees as
    /// `RunInfo::scheduled_for` (a daily report reports its slot's day, however late it runs).
    /// Set by Warren.
    pub const SCHEDULED_FOR: &str = "warren-scheduled-for";
    /// `high`, `normal` or `low`: which lane of its task a message goes to (absent or any other
    /// value: `normal`). See [`crate::priority`].
    pub const PRIORITY: &str = "warren-priority";
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
    /// The body is JSON, but not a JSON object: a task's input is always an object, and an
    /// array would otherwise be read into a struct field by field.
    #[error("body must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The body is JSON that Postgres cannot store or that no decoder should be asked to read.
    #[error("body is JSON Warren does not accept: {0}")]
    UnstorableJson(String),
    /// The body is compressed or otherwise encoded; Warren reads plain UTF-8 JSON only.
    #[error(
        "unsupported content encoding {0:?}: Warren reads the body as plain UTF-8 JSON; publish it uncompressed"
    )]
    UnsupportedContentEncoding(String),
    /// An AMQP short string (routing key, exchange, message id, header name) is longer than the
    /// protocol allows; sending it would corrupt the frame.
    #[error("{what} is {len} bytes long; AMQP allows at most 255")]
    ShortStringTooLong {
        /// Which string.
        what: String,
        /// Its length in bytes.
        len: usize,
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
    /// On a retry of a step with its own retry policy: the step, and its executions so far.
    pub step_attempt: Option<(String, u32)>,
    /// On a child run's message: the run that started it.
    pub parent: Option<uuid::Uuid>,
    /// On a run a schedule fired: the slot it fired for.
    pub scheduled_for: Option<DateTime<Utc>>,
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
    check_content_encoding(properties)?;
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
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| stored_id("message id", id.as_str()))
                .transpose()?,
            event: routing_key.to_owned(),
            payload: serde_json::from_slice(body)
                .map_err(|e| ContractError::MalformedJson(e.to_string()))?,
            idempotency_key: id_header(headers, header::IDEMPOTENCY_KEY)?,
            tenant: id_header(headers, header::TENANT)?,
            published_at: published_at(headers, properties)?,
            attempt: 1,
            traceparent: string_header(headers, header::TRACEPARENT)?,
            tracestate: string_header(headers, header::TRACESTATE)?,
            wake: None,
            first_failed_at: None,
            due_at: None,
            step_attempt: None,
            parent: None,
            scheduled_for: None,
        },
        Some(CONTENT_TYPE_CLOUDEVENTS) => decode_cloudevent(routing_key, headers, body)?,
        Some(other) => return Err(ContractError::UnsupportedContentType(other.to_owned())),
    };
    validate_event_name(&envelope.event)?;
    check_payload(envelope.payload.get())?;
    envelope.wake = string_header(headers, header::WAKE)?;
    envelope.parent = string_header(headers, header::PARENT_RUN)?
        .map(|text| {
            uuid::Uuid::parse_str(&text).map_err(|_| ContractError::InvalidHeader {
                name: header::PARENT_RUN,
                detail: format!("{text:?} is not a run id"),
            })
        })
        .transpose()?;
    envelope.first_failed_at = time_header(headers, header::FIRST_FAILED_AT)?;
    envelope.due_at = time_header(headers, header::DUE_AT)?;
    envelope.scheduled_for = time_header(headers, header::SCHEDULED_FOR)?;
    envelope.step_attempt = string_header(headers, header::STEP_ATTEMPT)?
        .map(|text| {
            text.split_once('/')
                .and_then(|(n, step)| Some((step.to_owned(), n.parse::<u32>().ok()?)))
                .filter(|(_, n)| *n >= 1)
                .ok_or_else(|| ContractError::InvalidHeader {
                    name: header::STEP_ATTEMPT,
                    detail: format!("{text:?} is not {{executions}}/{{step}}"),
                })
        })
        .transpose()?;
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
    let id = stored_id("CloudEvents id", &id)?;
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
    // An event without data is a task input without fields.
    let payload = match ce.data {
        Some(data) => data,
        None => RawValue::from_string("{}".to_owned())
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
        idempotency_key: match ce.idempotencykey {
            Some(key) => Some(stored_id(header::IDEMPOTENCY_KEY, &key)?),
            None => id_header(headers, header::IDEMPOTENCY_KEY)?,
        },
        tenant: match ce.tenant {
            Some(tenant) => Some(stored_id(header::TENANT, &tenant)?),
            None => id_header(headers, header::TENANT)?,
        },
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
        step_attempt: None,
        parent: None,
        scheduled_for: None,
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
            .map_err(|_| ContractError::InvalidHeader {
                name,
                detail: "not UTF-8".into(),
            })
            .and_then(|text| without_nul(name, text))
            .map(Some),
        Some(AMQPValue::ShortString(s)) => without_nul(name, s.as_str().to_owned()).map(Some),
        Some(other) => Err(ContractError::InvalidHeader {
            name,
            detail: format!("expected a string, got {other:?}"),
        }),
    }
}

/// Text Warren stores must not hold NUL: Postgres `text` cannot.
fn without_nul(name: &'static str, text: String) -> Result<String, ContractError> {
    if text.contains('\0') {
        return Err(ContractError::InvalidHeader {
            name,
            detail: "contains a NUL character".into(),
        });
    }
    Ok(text)
}

/// A text header that is stored and indexed (idempotency key, tenant): bounded in length.
fn id_header(
    headers: Option<&FieldTable>,
    name: &'static str,
) -> Result<Option<String>, ContractError> {
    string_header(headers, name)?
        .map(|text| stored_id(name, &text))
        .transpose()
}

/// An identity Warren stores and indexes: at most [`MAX_ID_LEN`] bytes, without NUL.
fn stored_id(name: &'static str, text: &str) -> Result<String, ContractError> {
    let detail = if text.len() > MAX_ID_LEN {
        format!("{} bytes long; at most {MAX_ID_LEN}", text.len())
    } else if text.contains('\0') {
        "contains a NUL character".to_owned()
    } else {
        return Ok(text.to_owned());
    };
    Err(ContractError::InvalidHeader { name, detail })
}

/// Refuses a body that is compressed or otherwise transformed: decoding it as plain JSON would
/// either fail with a misleading message or, worse, succeed on the wrong bytes.
fn check_content_encoding(properties: &BasicProperties) -> Result<(), ContractError> {
    let Some(encoding) = properties.content_encoding().as_ref() else {
        return Ok(());
    };
    let encoding = encoding.as_str().trim();
    let plain = ["", "identity", "utf-8", "utf8", "7bit", "8bit", "binary"];
    if plain.iter().any(|p| encoding.eq_ignore_ascii_case(p)) {
        Ok(())
    } else {
        Err(ContractError::UnsupportedContentEncoding(
            encoding.to_owned(),
        ))
    }
}

/// Checks a payload (already valid JSON) for what Postgres's `jsonb` refuses or what would
/// exhaust a decoder: a body that is not an object, nesting deeper than [`MAX_JSON_DEPTH`], a
/// `\u0000` escape in a string, or a number literal beyond [`MAX_JSON_NUMBER_LEN`] characters
/// or [`MAX_JSON_EXPONENT`]. One pass over the bytes, no tree: the hot path keeps the payload
/// as raw text.
pub fn check_payload(json: &str) -> Result<(), ContractError> {
    let bytes = json.as_bytes();
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {}
        Some(b'[') => return Err(ContractError::NotAnObject("an array")),
        Some(b'"') => return Err(ContractError::NotAnObject("a string")),
        Some(b't' | b'f') => return Err(ContractError::NotAnObject("a boolean")),
        Some(b'n') => return Err(ContractError::NotAnObject("null")),
        _ => return Err(ContractError::NotAnObject("a number")),
    }
    let unstorable = |what: String| Err(ContractError::UnstorableJson(what));
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        if bytes.get(i + 1..i + 6) == Some(b"u0000".as_slice()) {
                            return unstorable(
                                "a string holds \\u0000, which Postgres cannot store".into(),
                            );
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return unstorable(format!(
                        "arrays and objects nest deeper than {MAX_JSON_DEPTH} levels"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                check_number(&json[start..=i])?;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn check_number(literal: &str) -> Result<(), ContractError> {
    let shown: String = literal.chars().take(24).collect();
    if literal.len() > MAX_JSON_NUMBER_LEN {
        return Err(ContractError::UnstorableJson(format!(
            "the number {shown}... has more than {MAX_JSON_NUMBER_LEN} characters"
        )));
    }
    let exponent = literal
        .find(['e', 'E'])
        .map(|at| literal[at + 1..].trim_start_matches('+'))
        .map(|e| e.parse::<i64>().unwrap_or(i64::MAX));
    match exponent {
        Some(e) if e.saturating_abs() > MAX_JSON_EXPONENT => Err(ContractError::UnstorableJson(
            format!("the number {shown} has an exponent beyond ±{MAX_JSON_EXPONENT}"),
        )),
        _ => Ok(()),
    }
}

/// Namespace of the ids [`bounded_id`] derives (UUIDv5).
const BOUNDED_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5741_5252_454e_4000_8000_0000_0000_0002);

/// A deterministic id Warren derives from parts (an emitted event's `{run}/{step}/{event}/{n}`):
/// kept as it is when it fits [`MAX_ID_LEN`], else replaced by a UUIDv5 of it, so that a long
/// step or event name still gives the same id every time and a valid AMQP message id.
pub fn bounded_id(id: String) -> String {
    if id.len() <= MAX_ID_LEN && !id.contains('\0') {
        id
    } else {
        uuid::Uuid::new_v5(&BOUNDED_ID_NAMESPACE, id.as_bytes()).to_string()
    }
}

/// Checks that what AMQP carries as short strings fits in one: a longer one cannot be encoded,
/// and a client library may write it as a corrupt frame rather than refuse it.
pub fn check_short_strings(
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
) -> Result<(), ContractError> {
    let check = |what: &dyn Fn() -> String, len: usize| {
        if len > MAX_SHORT_STRING_LEN {
            Err(ContractError::ShortStringTooLong { what: what(), len })
        } else {
            Ok(())
        }
    };
    check(
        &|| format!("exchange name {:?}", truncated(exchange)),
        exchange.len(),
    )?;
    check(
        &|| format!("routing key {:?}", truncated(routing_key)),
        routing_key.len(),
    )?;
    if let Some(id) = properties.message_id() {
        check(
            &|| format!("message id {:?}", truncated(id.as_str())),
            id.as_str().len(),
        )?;
    }
    for (name, value) in [
        ("content type", properties.content_type()),
        ("content encoding", properties.content_encoding()),
        ("correlation id", properties.correlation_id()),
        ("reply-to", properties.reply_to()),
        ("type", properties.kind()),
        ("app id", properties.app_id()),
    ] {
        if let Some(value) = value {
            check(&|| name.to_owned(), value.as_str().len())?;
        }
    }
    if let Some(headers) = properties.headers() {
        for (key, value) in headers.inner() {
            check(
                &|| format!("header name {:?}", truncated(key.as_str())),
                key.as_str().len(),
            )?;
            if let AMQPValue::ShortString(text) = value {
                check(
                    &|| format!("header {:?}", truncated(key.as_str())),
                    text.as_str().len(),
                )?;
            }
        }
    }
    Ok(())
}

/// The start of a long string, for an error message.
fn truncated(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &text[..end])
    } else {
        text.to_owned()
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

    /// Marks the message with a priority (the `warren-priority` header); `normal` adds
    /// nothing, since a message without the header is normal.
    pub fn with_priority(self, priority: crate::priority::Priority) -> Self {
        match priority {
            crate::priority::Priority::Normal => self,
            other => self.with_header(header::PRIORITY, other.as_str()),
        }
    }

    /// Adds an integer header.
    pub fn with_int_header(mut self, name: impl Into<String>, value: i64) -> Self {
        self.extra_headers
            .push((name.into(), AMQPValue::LongLongInt(value)));
        self
    }

    /// The AMQP properties for a JSON body: persistent, with identity, timestamps and headers.
    /// Fails, rather than panicking in the AMQP library, on a message id or header name longer
    /// than a short string allows.
    pub fn properties(&self) -> Result<BasicProperties, ContractError> {
        let too_long = |what: String, len: usize| ContractError::ShortStringTooLong { what, len };
        if self.message_id.len() > MAX_SHORT_STRING_LEN {
            return Err(too_long(
                format!("message id {:?}", truncated(&self.message_id)),
                self.message_id.len(),
            ));
        }
        if let Some((name, _)) = self
            .extra_headers
            .iter()
            .find(|(name, _)| name.len() > MAX_SHORT_STRING_LEN)
        {
            return Err(too_long(
                format!("header name {:?}", truncated(name)),
                name.len(),
            ));
        }
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
        Ok(BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(2)
            .with_message_id(self.message_id.as_str().into())
            .with_timestamp(timestamp)
            .with_headers(headers))
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
    fn a_scheduled_message_carries_its_slot_and_a_malformed_slot_is_refused() {
        let props = props_with(&[(header::SCHEDULED_FOR, long("2026-03-29T01:00:00.000Z"))]);
        let env = decode("report.daily", &props, b"{}", 1024).unwrap();
        assert_eq!(
            env.scheduled_for.map(format_time).as_deref(),
            Some("2026-03-29T01:00:00.000Z")
        );
        let props = props_with(&[(header::SCHEDULED_FOR, long("tomorrow"))]);
        let err = decode("report.daily", &props, b"{}", 1024).unwrap_err();
        assert!(err.to_string().contains(header::SCHEDULED_FOR), "{err}");
        let plain = decode("report.daily", &BasicProperties::default(), b"{}", 1024).unwrap();
        assert_eq!(plain.scheduled_for, None);
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
            let env = decode("e", &props_with(&[(header::ATTEMPT, value)]), b"{}", 64).unwrap();
            assert_eq!(env.attempt, 3);
        }
        let zero = props_with(&[(header::ATTEMPT, AMQPValue::LongInt(0))]);
        assert!(matches!(
            decode("e", &zero, b"{}", 64),
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
        let props = out.properties().unwrap();
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
        let props = Outgoing::new().properties().unwrap();
        let headers = props.headers().as_ref().unwrap();
        assert!(headers.inner().get(header::ATTEMPT).is_none());
        assert_eq!(decode("e", &props, b"{}", 64).unwrap().attempt, 1);
    }
    #[test]
    fn a_body_must_be_a_json_object() {
        let props = BasicProperties::default();
        for (body, what) in [
            (&br#"["p-arr"]"#[..], "an array"),
            (br#""text""#, "a string"),
            (b"42", "a number"),
            (b"null", "null"),
            (b" true", "a boolean"),
        ] {
            let err = decode("player.dump", &props, body, 1024).unwrap_err();
            assert_eq!(err, ContractError::NotAnObject(what));
            assert_eq!(err.code(), "malformed_message");
        }
        assert!(decode("player.dump", &props, b" {\"a\":[1]} ", 1024).is_ok());
    }

    #[test]
    fn json_that_postgres_cannot_store_is_refused_at_the_door() {
        let props = BasicProperties::default();
        let nul = decode("e", &props, br#"{"a":"x\u0000y"}"#, 1024).unwrap_err();
        assert!(matches!(&nul, ContractError::UnstorableJson(m) if m.contains("u0000")));
        assert_eq!(nul.code(), "malformed_message");
        // An escaped backslash followed by the text u0000 is no NUL.
        assert!(decode("e", &props, br#"{"a":"\\u0000","\u0000x":1}"#, 1024).is_err());
        assert!(decode("e", &props, br#"{"a":"\\u0000"}"#, 1024).is_ok());
        for number in ["1e999999", "-1E-400", "1e+309", &"9".repeat(65)] {
            let body = format!(r#"{{"n":{number}}}"#);
            let err = decode("e", &props, body.as_bytes(), 1024).unwrap_err();
            assert!(matches!(err, ContractError::UnstorableJson(_)), "{number}");
        }
        for number in ["1e308", "-0.5E-20", "12345678901234567890"] {
            let body = format!(r#"{{"n":{number}}}"#);
            assert!(
                decode("e", &props, body.as_bytes(), 1024).is_ok(),
                "{number}"
            );
        }
    }

    #[test]
    fn nesting_is_limited_to_the_documented_depth() {
        let props = BasicProperties::default();
        let nested = |depth: usize| {
            format!(
                "{{\"a\":{}{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(decode("e", &props, nested(MAX_JSON_DEPTH).as_bytes(), 1 << 20).is_ok());
        let err = decode("e", &props, nested(MAX_JSON_DEPTH + 1).as_bytes(), 1 << 20).unwrap_err();
        assert!(matches!(err, ContractError::UnstorableJson(m) if m.contains("nest")));
        // Far deeper than any stack: refused, not crashed.
        let deep = nested(200_000);
        assert!(decode("e", &props, deep.as_bytes(), 1 << 20).is_err());
    }

    #[test]
    fn stored_identities_are_bounded_and_free_of_nul() {
        let with = |name: &str, value: AMQPValue| {
            decode("e", &props_with(&[(name, value)]), b"{}", 64).unwrap_err()
        };
        for name in [header::TENANT, header::IDEMPOTENCY_KEY] {
            let err = with(name, long("a\0b"));
            assert!(err.to_string().contains("NUL"), "{err}");
            let err = with(name, long(&"k".repeat(MAX_ID_LEN + 1)));
            assert!(err.to_string().contains("at most 255"), "{err}");
        }
        assert!(
            decode(
                "e",
                &props_with(&[(header::TENANT, long(&"t".repeat(255)))]),
                b"{}",
                64
            )
            .is_ok()
        );
        let nul_id = BasicProperties::default().with_message_id("m\0".into());
        assert!(decode("e", &nul_id, b"{}", 64).is_err());

        let ce = BasicProperties::default().with_content_type(CONTENT_TYPE_CLOUDEVENTS.into());
        let body = format!(
            r#"{{"specversion":"1.0","type":"e","id":"{}","source":"s","data":{{}}}}"#,
            "i".repeat(300)
        );
        let err = decode("e", &ce, body.as_bytes(), 4096).unwrap_err();
        assert!(err.to_string().contains("300 bytes"), "{err}");
    }

    #[test]
    fn a_cloudevent_without_data_is_an_empty_input() {
        let ce = BasicProperties::default().with_content_type(CONTENT_TYPE_CLOUDEVENTS.into());
        let body = br#"{"specversion":"1.0","type":"e","id":"1","source":"s"}"#;
        assert_eq!(decode("e", &ce, body, 4096).unwrap().payload.get(), "{}");
        let array = br#"{"specversion":"1.0","type":"e","id":"1","source":"s","data":[1]}"#;
        assert!(matches!(
            decode("e", &ce, array, 4096),
            Err(ContractError::NotAnObject(_))
        ));
    }

    #[test]
    fn an_encoded_body_is_refused_rather_than_misread() {
        let gzip = BasicProperties::default().with_content_encoding("gzip".into());
        let err = decode("e", &gzip, b"{}", 64).unwrap_err();
        assert_eq!(
            err,
            ContractError::UnsupportedContentEncoding("gzip".into())
        );
        assert_eq!(err.code(), "malformed_message");
        for plain in ["utf-8", "UTF-8", "identity", ""] {
            let props = BasicProperties::default().with_content_encoding(plain.into());
            assert!(decode("e", &props, b"{}", 64).is_ok(), "{plain}");
        }
    }

    #[test]
    fn short_strings_longer_than_amqp_allows_are_refused_before_sending() {
        let long_key = "k".repeat(256);
        let props = BasicProperties::default();
        let err = check_short_strings("x", &long_key, &props).unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
        // The AMQP library panics on a longer short string: the properties refuse to build.
        let long_id = Outgoing {
            message_id: long_key.clone(),
            ..Outgoing::new()
        };
        assert!(matches!(
            long_id.properties(),
            Err(ContractError::ShortStringTooLong { len: 256, .. })
        ));
        let long_header = Outgoing::new().with_header(long_key.as_str(), "v");
        assert!(long_header.properties().is_err());
        let fine = Outgoing::new().properties().unwrap();
        assert!(check_short_strings("x", &"k".repeat(255), &fine).is_ok());
    }

    #[test]
    fn derived_ids_stay_valid_message_ids_and_deterministic() {
        let short = "run/step/event/0".to_owned();
        assert_eq!(bounded_id(short.clone()), short);
        let long = format!("run/step/{}/0", "e".repeat(300));
        let id = bounded_id(long.clone());
        assert!(id.len() <= MAX_ID_LEN);
        assert_eq!(id, bounded_id(long));
    }
}

/// Property tests: whatever bytes and headers arrive, decoding answers with an envelope or a
/// coded error, and never panics.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const CODES: [&str; 2] = ["malformed_message", "message_too_large"];

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(header::ATTEMPT.to_owned()),
            Just(header::EVENT.to_owned()),
            Just(header::TENANT.to_owned()),
            Just(header::IDEMPOTENCY_KEY.to_owned()),
            Just(header::PUBLISHED_AT.to_owned()),
            Just(header::FIRST_FAILED_AT.to_owned()),
            Just(header::DUE_AT.to_owned()),
            Just(header::SCHEDULED_FOR.to_owned()),
            Just(header::WAKE.to_owned()),
            Just(header::TRACEPARENT.to_owned()),
            "[a-z-]{1,12}",
        ]
    }

    fn header_value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<Vec<u8>>().prop_map(|b| AMQPValue::LongString(b.into())),
            ".{0,40}".prop_map(|s| AMQPValue::LongString(s.into_bytes().into())),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<f64>().prop_map(AMQPValue::Double),
            Just(AMQPValue::Void),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any::<Vec<u8>>(),
            // Mostly-JSON bytes reach the deeper checks.
            r#"[\{\}\[\]":,0-9eE.+\-a-z\\ ]{0,64}"#.prop_map(String::into_bytes),
            r#"\{"[a-z\\]{0,6}":("[a-z\\u0]{0,8}"|-?[0-9]{1,4}(e-?[0-9]{1,6})?|\[\[\]\])\}"#
                .prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn decoding_never_panics_and_every_refusal_has_a_code(
            routing_key in ".{0,20}",
            headers in proptest::collection::vec((header_name(), header_value()), 0..6),
            content_type in prop_oneof![Just(None), Just(Some(CONTENT_TYPE_CLOUDEVENTS)), Just(Some("application/json; charset=utf-8")), Just(Some("text/plain"))],
            message_id in proptest::option::of(".{0,20}"),
            body in body(),
        ) {
            let mut table = FieldTable::default();
            for (name, value) in headers {
                table.insert(name.as_str().into(), value);
            }
            let mut props = BasicProperties::default().with_headers(table);
            if let Some(ct) = content_type {
                props = props.with_content_type(ct.into());
            }
            if let Some(id) = message_id {
                props = props.with_message_id(id.as_str().into());
            }
            match decode(&routing_key, &props, &body, 4096) {
                Ok(envelope) => {
                    prop_assert!(envelope.attempt >= 1);
                    prop_assert!(check_payload(envelope.payload.get()).is_ok());
                    prop_assert!(!envelope.tenant.unwrap_or_default().contains('\0'));
                }
                Err(e) => prop_assert!(CODES.contains(&e.code())),
            }
        }

        #[test]
        fn the_payload_check_never_panics_on_any_text(text in ".{0,200}") {
            let _ = check_payload(&text);
        }
    }
}
