//! How the API answers a request it cannot serve: a status and a JSON body
//! `{"error": {"code": "...", "message": "..."}}` whose message a person can act on. Failures of
//! Postgres or the broker are logged here with their detail and answered without it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use warren_shared::store::StoreError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (a bad filter, a body that is not JSON).
    #[error("{0}")]
    BadRequest(String),
    /// No token, an unknown or revoked one, an expired session, a bad webhook signature.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but the token lacks the scope, or a cross-site request was refused.
    #[error("{0}")]
    Forbidden(String),
    /// No such run, task, dead letter or schedule.
    #[error("{0}")]
    NotFound(String),
    /// The action does not apply to the thing's current state.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the ingress limit.
    #[error("{0}")]
    TooLarge(String),
    /// A well-formed event that no task listens to.
    #[error("{0}")]
    Unroutable(String),
    /// Postgres or the broker cannot be reached right now: try again.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Unroutable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unroutable"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// Postgres failed: the detail goes to the log, the caller learns it may retry.
    pub(crate) fn database(error: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %error, "Postgres failed while serving a request");
        ApiError::Unavailable("the database is unavailable; try again".into())
    }

    /// The broker failed: the detail goes to the log, the caller learns it may retry.
    pub(crate) fn broker(error: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %error, "the broker failed while serving a request");
        ApiError::Unavailable("the broker is unavailable; try again".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::database(error)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        ApiError::database(error)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        ApiError::database(error)
    }
}

/// What every handler returns.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
