//! The console's login: a token in, an HttpOnly, SameSite=Strict session cookie out.

use crate::audit;
use crate::auth::{self, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract;
use crate::sessions::{self, COOKIE, SESSION_LIFETIME};
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
pub(super) struct Login {
    token: String,
}

fn who(name: &str, scopes: &[crate::tokens::Scope], csrf: &str) -> Value {
    json!({ "authenticated": true, "name": name, "scopes": scopes, "csrf": csrf })
}

fn set_cookie(
    state: &AppState,
    value: &str,
    max_age: std::time::Duration,
) -> ApiResult<HeaderValue> {
    let age = cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(0));
    let cookie = Cookie::build((COOKIE, value.to_owned()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.config.secure_cookies)
        .path("/")
        .max_age(age)
        .build();
    HeaderValue::from_str(&cookie.to_string())
        .map_err(|_| ApiError::BadRequest("cannot set the session cookie".into()))
}

/// `POST /api/v1/session`: logs in with a token. Refused from another site's page (its
/// `Origin`), so that no page elsewhere can log a browser in as someone else.
pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    auth::check_origin(&headers)?;
    let body: Login = extract::json(&headers, body, extract::SMALL_BODY).await?;
    let client = state.pool.get().await?;
    let Some(opened) = sessions::open(&client, body.token.trim()).await? else {
        return Err(ApiError::Unauthenticated(
            "this token is unknown or revoked".into(),
        ));
    };
    audit::record(
        &client,
        &format!("token:{}", opened.holder.name),
        "session.login",
        None,
        json!({}),
    )
    .await?;
    let cookie = set_cookie(&state, &opened.cookie, SESSION_LIFETIME)?;
    let body = who(&opened.holder.name, &opened.holder.scopes, &opened.csrf);
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `GET /api/v1/session`: who the browser is logged in as. Answers 200 either way, so that the
/// console's first look does not show as a failed request.
pub(super) async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let Some(cookie) = auth::session_cookie(&headers) else {
        return Ok(Json(json!({ "authenticated": false })));
    };
    let client = state.pool.get().await?;
    Ok(Json(match sessions::find(&client, &cookie).await? {
        Some((holder, csrf)) => who(&holder.name, &holder.scopes, &csrf),
        None => json!({ "authenticated": false }),
    }))
}

/// `DELETE /api/v1/session`: logs out.
pub(super) async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(cookie) = auth::session_cookie(&headers) {
        let client = state.pool.get().await?;
        sessions::close(&client, &cookie).await?;
        audit::record(
            &client,
            &principal.actor(),
            "session.logout",
            None,
            json!({}),
        )
        .await?;
    }
    let expired = set_cookie(&state, "", std::time::Duration::ZERO)?;
    Ok((
        [(header::SET_COOKIE, expired)],
        Json(json!({ "authenticated": false })),
    )
        .into_response())
}
