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
    /// What it authenticated with, to check again on a long-lived request.
    credential: Credential,
}

/// A bearer token or a session cookie's value.
#[derive(Clone)]
enum Credential {
    Bearer(String),
    Session(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Bearer(_) => "Bearer(..)",
            Credential::Session(_) => "Session(..)",
        })
    }
}

impl Principal {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }

    /// Is the credential still good (the token not revoked, the session not ended)? A live
    /// stream asks this now and then, so that a revocation or a logout ends it too.
    pub async fn still_valid(&self, pool: &deadpool_postgres::Pool) -> bool {
        let Ok(client) = pool.get().await else {
            // Postgres away: keep the stream; the next check decides.
            return true;
        };
        let valid = match &self.credential {
            Credential::Bearer(token) => tokens::authenticate(&client, token)
                .await
                .map(|holder| holder.is_some()),
            Credential::Session(cookie) => sessions::find(&client, cookie)
                .await
                .map(|found| found.is_some()),
        };
        valid.unwrap_or(true)
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

/// Compares two secrets in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// Refuses a request whose `Origin`, when the browser sends one, is not this host.
pub(crate) fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let hosts = [header::HOST.as_str(), "x-forwarded-host"];
    let same = hosts
        .iter()
        .any(|name| headers.get(*name).and_then(|v| v.to_str().ok()) == Some(authority));
    if same {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "a cross-site request from {origin} was refused"
        )))
    }
}

/// A cookie-authenticated request that changes state must come from a console page: it carries
/// the session's CSRF value, and its `Origin`, when the browser sends one, is this host.
fn check_same_site(parts: &Parts, csrf: &str) -> Result<(), ApiError> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !sent.is_some_and(|sent| same_secret(sent, csrf)) {
        return Err(ApiError::Forbidden(
            "a cross-site request was refused: the X-Warren-CSRF header is missing or wrong".into(),
        ));
    }
    check_origin(&parts.headers)
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
                    credential: Credential::Bearer(token.to_owned()),
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
                credential: Credential::Session(cookie),
            });
        }
        Err(ApiError::Unauthenticated(
            "authentication required: send `Authorization: Bearer <token>` (see `warren tokens create`) or log in to the console".into(),
        ))
    }
}
