//! Who is asking: every API route but login and webhooks takes a [`Principal`], from a bearer
//! token or from the console's session cookie. There is no anonymous access.

use crate::error::ApiError;
use crate::sessions::{self, CSRF_HEADER};
use crate::state::AppState;
use crate::tokens::{self, Scope};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use cookie::Cookie;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The session's CSRF value, when the caller is a logged-in browser.
    pub csrf: Option<String>,
}

impl Principal {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }

    /// Refuses the request unless the caller has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if tokens::allows(&self.scopes, scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} lacks the {scope} scope this needs",
                self.name
            )))
        }
    }
}

/// The value of the session cookie, if the request has one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == sessions::COOKIE)
        .map(|cookie| cookie.value().to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A cookie-authenticated request that changes state must come from a console page: it carries
/// the session's CSRF value, and its `Origin`, when the browser sends one, is this host.
fn check_same_site(parts: &Parts, csrf: &str) -> Result<(), ApiError> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if sent != Some(csrf) {
        return Err(ApiError::Forbidden(
            "a cross-site request was refused: the X-Warren-CSRF header is missing or wrong".into(),
        ));
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        let hosts = [header::HOST.as_str(), "x-forwarded-host"];
        let same = hosts
            .iter()
            .any(|name| parts.headers.get(*name).and_then(|v| v.to_str().ok()) == Some(authority));
        if !same {
            return Err(ApiError::Forbidden(format!(
                "a cross-site request from {origin} was refused"
            )));
        }
    }
    Ok(())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = state.pool.get().await?;
        if let Some(token) = bearer(&parts.headers) {
            return match tokens::authenticate(&client, token).await? {
                Some(holder) => Ok(Principal {
                    name: holder.name,
                    scopes: holder.scopes,
                    csrf: None,
                }),
                None => Err(ApiError::Unauthenticated(
                    "the bearer token is unknown or revoked".into(),
                )),
            };
        }
        if let Some(cookie) = session_cookie(&parts.headers) {
            let Some((holder, csrf)) = sessions::find(&client, &cookie).await? else {
                return Err(ApiError::Unauthenticated(
                    "the session has ended: log in again".into(),
                ));
            };
            check_same_site(parts, &csrf)?;
            return Ok(Principal {
                name: holder.name,
                scopes: holder.scopes,
                csrf: Some(csrf),
            });
        }
        Err(ApiError::Unauthenticated(
            "authentication required: send `Authorization: Bearer <token>` (see `warren tokens create`) or log in to the console".into(),
        ))
    }
}
