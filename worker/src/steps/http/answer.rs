//! What an endpoint's answer makes of the step: the table of `docs/steps.md`, as one pure
//! function of the status, a few headers and the body read (up to the limit).
//!
//! Every answer becomes a reply or a [`StepError`] whose message a person can act on (what the
//! endpoint answered, and a readable glimpse of the body); none is a panic. An answer that a
//! retry can fix (the endpoint says so, or the status is 408, 425, 429 or 5xx) is retryable;
//! an answer that shows the endpoint or its address is wrong is not, since the same request
//! would get the same answer.

use super::super::StepReply;
use crate::step::{ErrorClass, StepError, code};
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured: an endpoint cannot park a run for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The most of an endpoint's error message kept (the run's record is no place for a dump).
const MAX_MESSAGE_CHARS: usize = 2000;
/// The most of an endpoint's error code kept (codes are metric labels too).
const MAX_CODE_CHARS: usize = 64;
/// The most of an unexpected body quoted in a failure's message.
const MAX_QUOTE_CHARS: usize = 200;

/// An endpoint's answer, as far as it was read.
#[derive(Debug)]
pub(super) struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// `Retry-After`, already read (see [`retry_after`]).
    pub retry_after: Option<Duration>,
    /// `Location`, for a redirect that was not followed.
    pub location: Option<String>,
    /// The body.
    pub body: Body,
}

/// A body, read up to the limit.
#[derive(Debug)]
pub(super) enum Body {
    /// All of it.
    Complete(Vec<u8>),
    /// More than the limit: reading stopped there.
    OverLimit,
}

/// `{"error": {"code", "message", "retryable"}, "logs": [...]}`: an endpoint's own account of
/// its failure, and the lines it logged on the way.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
    #[serde(default)]
    logs: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    retryable: Option<bool>,
}

/// What `answer` from `endpoint` (a URL fit to show: no query, no credentials) makes of the
/// step; `limit` is the body size limit, for the message when it was passed.
pub(super) fn reply(endpoint: &str, answer: &Answer, limit: usize) -> Result<StepReply, StepError> {
    let status = answer.status;
    let said = format!("{endpoint} answered {}", status_text(status));
    let retry_after = answer.retry_after;
    let error = match (&answer.body, status) {
        (Body::Complete(bytes), 200..=299) => return success(&said, answer, bytes),
        (Body::OverLimit, 200..=299) => StepError::fatal(
            "response_too_large",
            format!("{said} with a body over the {limit}-byte limit (max_response_bytes)"),
        ),
        (Body::Complete(bytes), _) => match endpoint_error(bytes) {
            Some(error) => own_error(&said, status, error),
            None => status_error(&said, answer, quote(answer.content_type.as_deref(), bytes)),
        },
        (Body::OverLimit, _) => {
            status_error(&said, answer, format!("a body over the {limit}-byte limit"))
        }
    };
    Err(match retry_after {
        Some(delay) if error.class == ErrorClass::Retryable => error.retry_after(delay),
        _ => error,
    })
}

/// A 2xx answer: an empty body is a reply with no output (a `204 No Content` is a fine way to
/// say "done"); otherwise it must be a JSON reply, or an error body.
fn success(said: &str, answer: &Answer, bytes: &[u8]) -> Result<StepReply, StepError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(StepReply::default());
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|_| {
        StepError::fatal(
            "invalid_reply",
            format!(
                "{said} with a body that is not JSON ({}): {}",
                answer.content_type.as_deref().unwrap_or("no Content-Type"),
                quote(answer.content_type.as_deref(), bytes)
            ),
        )
    })?;
    if let Some(error) = error_of(&value) {
        return Err(own_error(said, answer.status, error));
    }
    StepReply::deserialize(value).map_err(|e| {
        StepError::fatal(
            "invalid_reply",
            format!("{said} with JSON that is not a step reply: {e}"),
        )
    })
}

/// The `logs` of an answer's error body (none when it has no error body, or no `logs`): read
/// only once the answer failed the step, so a reply pays nothing for it.
pub(super) fn error_logs(answer: &Answer) -> Vec<String> {
    let Body::Complete(bytes) = &answer.body else {
        return Vec::new();
    };
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .filter(|value| value.get("error").is_some())
        .and_then(|value| ErrorBody::deserialize(value).ok())
        .map(|body| body.logs)
        .unwrap_or_default()
}

fn endpoint_error(bytes: &[u8]) -> Option<ErrorDetail> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|value| error_of(&value))
}

fn error_of(value: &Value) -> Option<ErrorDetail> {
    value.get("error")?;
    ErrorBody::deserialize(value).ok().map(|body| body.error)
}

/// The endpoint's own error: its code and message, retryable as it says (or as its status
/// says, when it does not).
fn own_error(said: &str, status: u16, error: ErrorDetail) -> StepError {
    let code = clean_code(&error.code).unwrap_or_else(|| status_code(status).0.to_owned());
    let message = match error.message.trim() {
        "" => format!("{said} with error {code}"),
        message => truncate(message, MAX_MESSAGE_CHARS),
    };
    if error.retryable.unwrap_or_else(|| retries(status)) {
        StepError::retryable(code, message)
    } else {
        StepError::fatal(code, message)
    }
}

/// An answer without an error body: its status decides.
fn status_error(said: &str, answer: &Answer, body: String) -> StepError {
    let status = answer.status;
    if (300..=399).contains(&status) {
        let to = answer
            .location
            .as_deref()
            .unwrap_or("nowhere (no Location)");
        return StepError::fatal(
            "unexpected_redirect",
            format!(
                "{said}, redirecting to {to}: HTTP steps follow only 307 and 308 redirects on \
                 the same host (they keep the POST and its body); set the step's url to the \
                 final address"
            ),
        );
    }
    let (code, retryable) = status_code(status);
    let message = format!("{said}: {body}");
    if retryable {
        StepError::retryable(code, message)
    } else {
        StepError::fatal(code, message)
    }
}

/// Whether a status without an error body is worth retrying: the server was busy, slow or
/// broken, not the request wrong.
fn retries(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500..=599)
}

/// The code of a status, and whether it retries.
fn status_code(status: u16) -> (&'static str, bool) {
    let code = match status {
        408 => code::TIMEOUT,
        425 => "too_early",
        429 => code::RATE_LIMITED,
        500..=599 => code::UPSTREAM,
        401 | 403 => code::INVALID_CREDENTIALS,
        402 => code::QUOTA_EXCEEDED,
        404 => code::NOT_FOUND,
        400..=499 => code::INVALID_INPUT,
        _ => "unexpected_status",
    };
    (code, retries(status))
}

fn status_text(status: u16) -> String {
    match http_reason(status) {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

fn http_reason(status: u16) -> Option<&'static str> {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
}

/// A code fit to record: trimmed, at most 64 characters, letters, digits and `_.-:` only (a
/// code is a metric label: it must not carry ids or free text).
fn clean_code(code: &str) -> Option<String> {
    let code: String = code
        .trim()
        .chars()
        .take(MAX_CODE_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!code.is_empty()).then_some(code)
}

/// A readable glimpse of a body that is not what was expected: an HTML page's title, or the
/// start of the text on one line.
fn quote(content_type: Option<&str>, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "an empty body".to_owned();
    }
    let html = content_type.is_some_and(|t| t.to_ascii_lowercase().contains("html"))
        || text.starts_with('<');
    if html {
        return match html_title(text) {
            Some(title) => format!("an HTML page titled {title:?}"),
            None => "an HTML page".to_owned(),
        };
    }
    format!("{:?}", truncate(&one_line(text), MAX_QUOTE_CHARS))
}

fn html_title(page: &str) -> Option<String> {
    let lower = page.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title = truncate(&one_line(page.get(start..end)?), MAX_QUOTE_CHARS);
    (!title.is_empty()).then_some(title)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `Retry-After` (seconds, or an HTTP date) as a delay from `now`, at most
/// [`MAX_RETRY_AFTER`]; `None` when it cannot be read.
pub(super) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let at = SystemTime::from(at.with_timezone(&chrono::Utc));
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ENDPOINT: &str = "http://127.0.0.1:9/steps/a";

    fn answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Answer {
        Answer {
            status,
            content_type: content_type.map(str::to_owned),
            retry_after: None,
            location: None,
            body: Body::Complete(body.to_vec()),
        }
    }

    fn json_answer(status: u16, body: Value) -> Answer {
        answer(
            status,
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    }

    fn error(answer: Answer) -> StepError {
        reply(ENDPOINT, &answer, 1024).expect_err("a failure")
    }

    #[test]
    fn a_2xx_json_reply_is_the_steps_reply() {
        let got = reply(
            ENDPOINT,
            &json_answer(
                200,
                json!({"output": {"n": 1}, "stage": "DONE", "emit": [{"event": "a.b", "payload": {}}]}),
            ),
            1024,
        )
        .unwrap();
        assert_eq!(got.output, json!({"n": 1}));
        assert_eq!(got.stage.as_deref(), Some("DONE"));
        assert_eq!(got.emit.len(), 1);
    }

    #[test]
    fn a_reply_and_an_error_body_carry_log_lines() {
        let got = reply(
            ENDPOINT,
            &json_answer(200, json!({"output": 1, "logs": ["fetched", "parsed"]})),
            1024,
        )
        .unwrap();
        assert_eq!(got.logs, ["fetched", "parsed"]);
        let failed = json_answer(
            503,
            json!({"error": {"code": "busy"}, "logs": ["queue full"]}),
        );
        assert_eq!(error(failed).code, "busy");
        let failed = json_answer(
            503,
            json!({"error": {"code": "busy"}, "logs": ["queue full"]}),
        );
        assert_eq!(error_logs(&failed), ["queue full"]);
        assert!(error_logs(&answer(502, None, b"<html></html>")).is_empty());
        assert!(error_logs(&json_answer(500, json!({"error": "down"}))).is_empty());
    }

    #[test]
    fn an_empty_2xx_body_is_a_reply_without_output() {
        let got = reply(ENDPOINT, &answer(204, None, b""), 1024).unwrap();
        assert_eq!(got, StepReply::default());
        assert_eq!(got.output, Value::Null);
    }

    #[test]
    fn a_non_json_200_fails_for_good_quoting_the_body() {
        let e = error(answer(200, Some("text/plain"), b"all good!\n  really"));
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "invalid_reply")
        );
        assert!(e.message.contains("not JSON (text/plain)"), "{}", e.message);
        assert!(e.message.contains("\"all good! really\""), "{}", e.message);
    }

    #[test]
    fn json_that_is_not_a_reply_fails_for_good_saying_why() {
        let e = error(json_answer(200, json!({"outptu": 1})));
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "invalid_reply")
        );
        assert!(
            e.message.contains("unknown field `outptu`"),
            "{}",
            e.message
        );
        let e = error(json_answer(200, json!([1, 2])));
        assert_eq!(e.code, "invalid_reply");
    }

    #[test]
    fn an_html_error_page_retries_by_its_status_and_names_its_title() {
        let page = b"<!DOCTYPE html><html><head><TITLE>502 Bad\n Gateway</TITLE></head><body>nginx</body></html>";
        let e = error(answer(502, Some("text/html; charset=utf-8"), page));
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Retryable, "upstream_error")
        );
        assert_eq!(
            e.message,
            format!("{ENDPOINT} answered 502 Bad Gateway: an HTML page titled \"502 Bad Gateway\"")
        );
    }

    #[test]
    fn an_html_200_fails_for_good() {
        let e = error(answer(
            200,
            Some("text/html"),
            b"<html><title>Login</title></html>",
        ));
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "invalid_reply")
        );
        assert!(
            e.message.contains("an HTML page titled \"Login\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn statuses_without_an_error_body_retry_only_when_the_server_was_busy_or_broken() {
        for (status, code, class) in [
            (408, "timeout", ErrorClass::Retryable),
            (425, "too_early", ErrorClass::Retryable),
            (429, "rate_limited", ErrorClass::Retryable),
            (500, "upstream_error", ErrorClass::Retryable),
            (503, "upstream_error", ErrorClass::Retryable),
            (400, "invalid_input", ErrorClass::Fatal),
            (401, "invalid_credentials", ErrorClass::Fatal),
            (403, "invalid_credentials", ErrorClass::Fatal),
            (404, "not_found", ErrorClass::Fatal),
            (405, "invalid_input", ErrorClass::Fatal),
            (422, "invalid_input", ErrorClass::Fatal),
        ] {
            let e = error(answer(status, None, b""));
            assert_eq!((e.class, e.code.as_str()), (class, code), "status {status}");
            assert!(e.message.contains("an empty body"), "{}", e.message);
        }
    }

    #[test]
    fn an_error_body_gives_the_code_message_and_retryability() {
        let e = error(json_answer(
            422,
            json!({"error": {"code": "invalid_input", "message": "no url", "retryable": false}}),
        ));
        assert_eq!(e, StepError::fatal("invalid_input", "no url"));
        // The endpoint may say a 4xx is worth retrying, and a 5xx is not.
        let e = error(json_answer(
            409,
            json!({"error": {"code": "locked", "retryable": true}}),
        ));
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Retryable, "locked")
        );
        assert!(e.message.contains("with error locked"), "{}", e.message);
        let e = error(json_answer(
            500,
            json!({"error": {"code": "bad_model", "message": "m", "retryable": false}}),
        ));
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "bad_model"));
    }

    #[test]
    fn an_error_body_without_retryable_follows_its_status() {
        let e = error(json_answer(
            503,
            json!({"error": {"code": "warming_up", "message": "m"}}),
        ));
        assert_eq!(e.class, ErrorClass::Retryable);
        let e = error(json_answer(
            400,
            json!({"error": {"code": "bad", "message": "m"}}),
        ));
        assert_eq!(e.class, ErrorClass::Fatal);
        // An error body on a 2xx is honoured too, and is not retryable unless it says so.
        let e = error(json_answer(
            200,
            json!({"error": {"code": "bad", "message": "m"}}),
        ));
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "bad"));
    }

    #[test]
    fn an_error_body_that_is_not_the_documented_shape_is_quoted_and_the_status_decides() {
        let e = error(json_answer(500, json!({"error": "database down"})));
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Retryable, "upstream_error")
        );
        assert!(e.message.contains("database down"), "{}", e.message);
    }

    #[test]
    fn an_error_code_is_kept_short_and_plain() {
        let e = error(json_answer(
            400,
            json!({"error": {"code": format!("bad input {}", "x".repeat(100)), "message": "m"}}),
        ));
        assert_eq!(e.code.len(), 64);
        assert!(e.code.starts_with("bad_input_x"));
        let e = error(json_answer(
            400,
            json!({"error": {"code": "  ", "message": "m"}}),
        ));
        assert_eq!(e.code, "invalid_input");
    }

    #[test]
    fn a_body_over_the_limit_fails_a_2xx_for_good_and_leaves_a_5xx_to_its_status() {
        let mut over = answer(200, None, b"");
        over.body = Body::OverLimit;
        let e = reply(ENDPOINT, &over, 1024).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "response_too_large")
        );
        assert!(
            e.message.contains("over the 1024-byte limit"),
            "{}",
            e.message
        );
        let mut over = answer(502, None, b"");
        over.body = Body::OverLimit;
        let e = reply(ENDPOINT, &over, 1024).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Retryable, "upstream_error")
        );
    }

    #[test]
    fn a_redirect_not_followed_fails_for_good_naming_where_it_pointed() {
        let mut moved = answer(302, None, b"");
        moved.location = Some("http://elsewhere/x".to_owned());
        let e = error(moved);
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "unexpected_redirect")
        );
        assert!(
            e.message
                .contains("302 Found, redirecting to http://elsewhere/x"),
            "{}",
            e.message
        );
    }

    #[test]
    fn retry_after_is_kept_only_on_retryable_failures() {
        let mut busy = answer(429, None, b"");
        busy.retry_after = Some(Duration::from_secs(2));
        assert_eq!(error(busy).retry_after, Some(Duration::from_secs(2)));
        let mut bad = answer(400, None, b"");
        bad.retry_after = Some(Duration::from_secs(2));
        assert_eq!(error(bad).retry_after, None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-1", now), None);
    }
}
