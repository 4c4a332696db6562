//! Event ingress for services that cannot speak AMQP: `POST /api/v1/events/{event}` publishes
//! the body as the event, persistent and mandatory, and answers 202 with the message id only
//! after the broker confirmed it. A verified webhook (`POST /api/v1/webhooks/{source}`) is
//! published the same way, as its source's event.

use crate::audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract;
use crate::extract::ApiPath;
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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

fn text<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| {
            // UTF-8, as the protocol's headers are (a tenant may be named in any script).
            std::str::from_utf8(v.as_bytes())
                .map_err(|_| ApiError::BadRequest(format!("header {name}: not UTF-8")))
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
    ApiPath(event): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    principal.require(Scope::Publish)?;
    contract::validate_event_name(&event).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let options = options(&headers)?;
    let body = extract::bytes(&headers, body, state.config.max_body_bytes).await?;
    require_json(&body)?;
    let message_id = send(&state, &event, &body, options).await?;
    record_publish(&state, &principal.actor(), &event, &message_id).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message_id": message_id })),
    ))
}

/// Records a confirmed publish. The message is the broker's by now: a failure to record it is
/// logged, and the caller still gets its 202 (a 503 would make it publish again).
async fn record_publish(state: &AppState, actor: &str, event: &str, message_id: &str) {
    let recorded = async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        audit::record(
            &client,
            actor,
            "event.publish",
            Some(event),
            json!({ "message_id": message_id }),
        )
        .await
        .map_err(|e| e.to_string())
    };
    if let Err(error) = recorded.await {
        tracing::warn!(%error, actor, event, message_id, "a confirmed publish was not recorded in the audit log");
    }
}

/// `POST /api/v1/webhooks/{source}`: authenticated by its signature, not by a token.
///
/// A signature is accepted once: its matched timestamp and `v1` value (not the header's text,
/// which can be written many ways for one signature) are claimed in Postgres before the
/// publish, and the claim is released if the publish fails, so that the sender may send again.
/// Two copies racing each other: one claims, the other is a replay.
pub(super) async fn webhook(
    State(state): State<AppState>,
    ApiPath(source): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Some(webhook) = state.webhooks.get(&source) else {
        return Err(ApiError::NotFound(format!(
            "no webhook source named {source:?}"
        )));
    };
    let body = extract::bytes(&headers, body, state.config.max_body_bytes).await?;
    let sent = text(&headers, &webhook.header)?.unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verified = signature::verify(&webhook.secret, sent, &body, now, webhook.tolerance)
        .map_err(|e| {
            tracing::info!(source, reason = %e, "webhook refused");
            ApiError::Unauthenticated(format!("webhook {source:?} refused: {e}"))
        })?;
    require_json(&body)?;
    let claim = sha256_hex(verified.canonical().as_bytes());
    let client = state.pool.get().await?;
    client
        .execute(
            "DELETE FROM webhook_deliveries WHERE source = $1
             AND received_at < now() - make_interval(secs => $2)",
            &[&source, &(webhook.tolerance.as_secs_f64() * 2.0)],
        )
        .await?;
    let claimed = client
        .execute(
            "INSERT INTO webhook_deliveries (source, signature_hash) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&source, &claim],
        )
        .await?;
    if claimed == 0 {
        tracing::info!(source, "webhook refused: replayed");
        return Err(ApiError::Unauthenticated(format!(
            "webhook {source:?} refused: this signed request was already accepted (a replay)"
        )));
    }
    let options = PublishOptions {
        message_id: Some(format!("webhook-{source}-{}", &claim[..32])),
        ..PublishOptions::default()
    };
    let message_id = match send(&state, &webhook.event, &body, options).await {
        Ok(id) => id,
        Err(e) => {
            let released = client
                .execute(
                    "DELETE FROM webhook_deliveries WHERE source = $1 AND signature_hash = $2",
                    &[&source, &claim],
                )
                .await;
            if let Err(error) = released {
                tracing::warn!(%error, source, "a failed webhook's claim was not released: the sender's retries are refused until it expires");
            }
            return Err(e);
        }
    };
    drop(client);
    let actor = format!("webhook:{source}");
    record_publish(&state, &actor, &webhook.event, &message_id).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message_id": message_id })),
    ))
}
