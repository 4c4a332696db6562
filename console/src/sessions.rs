//! Browser sessions: the console's login exchanges a token for an HttpOnly, SameSite=Strict
//! cookie holding a random session id. The session acts with its token's scopes, is kept in
//! Postgres (any copy of the console knows it), and ends at logout, after
//! [`SESSION_LIFETIME`], or when its token is revoked.
//!
//! Cross-site requests: SameSite=Strict keeps the cookie off requests started by other sites,
//! and every state-changing request made with the cookie must also carry the session's CSRF
//! value in `X-Warren-CSRF`, which only a page of the console can read (double submit).

use crate::tokens::{self, Holder};
use deadpool_postgres::GenericClient;
use rand::RngCore;
use std::time::Duration;
use warren_shared::signature::{hex, sha256_hex};

/// The cookie's name.
pub const COOKIE: &str = "warren_session";
/// The header a page sends its CSRF value in.
pub const CSRF_HEADER: &str = "x-warren-csrf";
/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// A session just opened: the cookie value is known only to the browser that logged in.
pub struct Opened {
    /// The cookie's value.
    pub cookie: String,
    /// The CSRF value the page sends back.
    pub csrf: String,
    /// The token it acts as.
    pub holder: Holder,
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex(&buffer)
}

/// Opens a session for the holder of `token`; `None` when the token is unknown or revoked.
pub async fn open(
    client: &impl GenericClient,
    token: &str,
) -> Result<Option<Opened>, tokio_postgres::Error> {
    let Some(holder) = tokens::authenticate(client, token).await? else {
        return Ok(None);
    };
    let cookie = random_hex(32);
    let csrf = random_hex(16);
    client
        .execute(
            "INSERT INTO console_sessions (id_hash, token_id, csrf, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            &[
                &sha256_hex(cookie.as_bytes()),
                &holder.id,
                &csrf,
                &SESSION_LIFETIME.as_secs_f64(),
            ],
        )
        .await?;
    // Expired sessions go as new ones come: the table stays the size of the live ones.
    client
        .execute("DELETE FROM console_sessions WHERE expires_at < now()", &[])
        .await?;
    Ok(Some(Opened {
        cookie,
        csrf,
        holder,
    }))
}

/// The live session with this cookie value: its token and its CSRF value.
pub async fn find(
    client: &impl GenericClient,
    cookie: &str,
) -> Result<Option<(Holder, String)>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT t.id, t.name, t.scopes, s.csrf
             FROM console_sessions s JOIN api_tokens t ON t.id = s.token_id
             WHERE s.id_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
        )
        .await?;
    Ok(client
        .query_opt(&stmt, &[&sha256_hex(cookie.as_bytes())])
        .await?
        .map(|row| {
            let scopes: Vec<String> = row.get(2);
            (
                Holder {
                    id: row.get(0),
                    name: row.get(1),
                    scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
                },
                row.get(3),
            )
        }))
}

/// Ends the session with this cookie value.
pub async fn close(client: &impl GenericClient, cookie: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM console_sessions WHERE id_hash = $1",
            &[&sha256_hex(cookie.as_bytes())],
        )
        .await?;
    Ok(())
}
