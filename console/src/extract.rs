//! The request parts handlers read, with every rejection answered in the API's own error
//! format (`{"error": {...}}`, 400) instead of axum's plain-text ones, and bodies read only
//! after the caller's scope was checked (a handler takes [`Body`] and calls [`json`]).

use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// A path parameter; a malformed one (a run id that is not a UUID) is a 400.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The query string; a malformed one is a 400.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// The body, at most `limit` bytes: 413 beyond it (before reading when the length is
/// announced, as soon as the count passes it otherwise), 400 when the body cannot be read.
pub(crate) async fn bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::TooLarge(format!(
            "the body is larger than the limit of {limit} bytes"
        ))
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut read = Vec::with_capacity(announced.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
        if read.len() + chunk.len() > limit {
            return Err(too_large());
        }
        read.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(read))
}

/// The body parsed as `T` (an empty body as `{}`, for actions with no parameters).
pub(crate) async fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let read = bytes(headers, body, limit).await?;
    let text: &[u8] = if read.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &read
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::BadRequest(format!("the body is not what this route takes: {e}")))
}

/// Bodies of the routes that are not event ingress: small JSON objects.
pub(crate) const SMALL_BODY: usize = 64 * 1024;
