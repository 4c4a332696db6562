//! Event ingress for services that cannot speak AMQP: `POST /api/v1/events/{event}` publishes
//! the body as the event, persistent and mandatory, and answers 202 with the message id only
//! after the broker confirmed it. A verified webhook (`POST /api/v1/webhooks/{source}`) is
//! published the same way, as its source's event.

use crate::audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes_body::read_limited;
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use warren_producer::{PublishError, PublishOptions};
use warren_shared::contract;
use warren_shared::priority::Priority;
use warren_shared::signature::{self, sha256_hex};

/// Request headers the ingress reads (the HTTP spellings of the protocol's headers).
pub(crate) mod headers {
    /// Deduplicates triggers: the same key within its window starts no second run.
    pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// The tenant or workspace the run belongs to.
    pub(crate) const TENANT: &str = "warren-tenant";
    /// The message's identity (a fresh UUIDv7 otherwise): publishing again with the same id
    /// after a timeout makes no second run.
    pub(crate) const MESSAGE_ID: &str = "warren-message-id";
    /// `high`, `normal` or `low`.
    pub(crate) const PRIORITY: &str = "warren-priority";
    /// W3C trace context.
    pub(crate) const TRACEPARENT: &str = "traceparent";
}

mod bytes_body {
    use crate::error::ApiError;
    use axum::body::Body;
    use axum::http::{HeaderMap, header};

    /// The body, refused with 413 beyond `limit` bytes (before reading it when its length is
    /// announced).
    pub(crate) async fn read_limited(
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<axum::body::Bytes, ApiError> {
        let too_large = || {
            ApiError::TooLarge(format!(
                "the body is larger than the ingress limit of {limit} bytes"
            ))
        };
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if announced.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_large())
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("header {name}: not printable ASCII")))
        })
        .transpose()
        .map(|v| v.map(str::trim).filter(|v| !v.is_empty()))
}

fn options(headers: &HeaderMap) -> ApiResult<PublishOptions> {
    let owned = |name| Ok::<_, ApiError>(text(headers, name)?.map(str::to_owned));
    let priority = match text(headers, headers::PRIORITY)? {
        None => Priority::default(),
        Some(p) => p.parse().map_err(|e: String| ApiError::BadRequest(e))?,
    };
    Ok(PublishOptions {
        message_id: owned(headers::MESSAGE_ID)?,
        idempotency_key: owned(headers::IDEMPOTENCY_KEY)?,
        tenant: owned(headers::TENANT)?,
        traceparent: owned(headers::TRACEPARENT)?,
        priority,
        ..PublishOptions::default()
    })
}

fn require_json(body: &[u8]) -> ApiResult<()> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
}

/// Publishes and maps each failure to what the caller can do about it.
async fn send(
    state: &AppState,
    event: &str,
    body: &[u8],
    options: PublishOptions,
) -> ApiResult<String> {
    let producer = state.producer().await?;
    match producer.publish_json(event, body, options).await {
        Ok(published) => Ok(published.message_id),
        Err(PublishError::Unroutable { .. }) => Err(ApiError::Unroutable(format!(
            "no task listens to event {event:?}: nothing was published"
        ))),
        Err(PublishError::InvalidEvent(e)) => Err(ApiError::BadRequest(e.to_string())),
        Err(PublishError::Payload(e)) => {
            Err(ApiError::BadRequest(format!("the body is not JSON: {e}")))
        }
        Err(e @ (PublishError::Broker(_) | PublishError::Nacked { .. })) => {
            Err(ApiError::broker(e))
        }
    }
}

/// `POST /api/v1/events/{event}`.
pub(super) async fn publish(
    State(state): State<AppState>,
    principal: Principal,
    Path(event): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    principal.require(Scope::Publish)?;
    contract::validate_event_name(&event).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let options = options(&headers)?;
    let body = read_limited(&headers, body, state.config.max_body_bytes).await?;
    require_json(&body)?;
    let message_id = send(&state, &event, &body, options).await?;
    let client = state.pool.get().await?;
    audit::record(
        &client,
        &principal.actor(),
        "event.publish",
        Some(&event),
        json!({ "message_id": message_id }),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message_id": message_id })),
    ))
}

/// `POST /api/v1/webhooks/{source}`: authenticated by its signature, not by a token.
pub(super) async fn webhook(
    State(state): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Some(webhook) = state.webhooks.get(&source) else {
        return Err(ApiError::NotFound(format!(
            "no webhook source named {source:?}"
        )));
    };
    let body = read_limited(&headers, body, state.config.max_body_bytes).await?;
    let sent = text(&headers, &webhook.header)?.unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    signature::verify(&webhook.secret, sent, &body, now, webhook.tolerance).map_err(|e| {
        tracing::info!(source, reason = %e, "webhook refused");
        ApiError::Unauthenticated(format!("webhook {source:?} refused: {e}"))
    })?;
    // A signature is accepted once. Remembered after the publish, so that a publish that
    // fails leaves the sender free to send it again; two copies racing both publish under
    // the same message id, which makes one run.
    let signature_hash = sha256_hex(sent.as_bytes());
    let client = state.pool.get().await?;
    let seen = client
        .query_opt(
            "SELECT 1 FROM webhook_deliveries WHERE source = $1 AND signature_hash = $2",
            &[&source, &signature_hash],
        )
        .await?;
    if seen.is_some() {
        tracing::info!(source, "webhook refused: replayed");
        return Err(ApiError::Unauthenticated(format!(
            "webhook {source:?} refused: this signed request was already accepted (a replay)"
        )));
    }
    require_json(&body)?;
    let options = PublishOptions {
        message_id: Some(format!("webhook-{source}-{}", &signature_hash[..32])),
        ..PublishOptions::default()
    };
    let message_id = send(&state, &webhook.event, &body, options).await?;
    client
        .execute(
            "INSERT INTO webhook_deliveries (source, signature_hash) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&source, &signature_hash],
        )
        .await?;
    client
        .execute(
            "DELETE FROM webhook_deliveries WHERE source = $1
             AND received_at < now() - make_interval(secs => $2)",
            &[&source, &(webhook.tolerance.as_secs_f64() * 2.0)],
        )
        .await?;
    audit::record(
        &client,
        &format!("webhook:{source}"),
        "event.publish",
        Some(&webhook.event),
        json!({ "message_id": message_id }),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message_id": message_id })),
    ))
}
