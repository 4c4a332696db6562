//! API tokens: a name, scopes, and a secret shown once at creation. Only the secret's SHA-256
//! is stored (`api_tokens.hash`); a request's token is hashed and looked up by that index.
//!
//! Scopes are deliberately few: `read` (everything an operator looks at), `publish` (event
//! ingress, for a service that must not read other teams' runs) and `admin` (every action,
//! including replay, purge, cancel, retry and schedule changes; it implies the other two).

use crate::audit;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use rand::RngCore;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;
use warren_shared::signature::{hex, sha256_hex};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read runs, tasks, the fleet, dead letters, schedules and the audit log.
    Read,
    /// Publish events through `POST /api/v1/events/{event}`.
    Publish,
    /// Everything, including state-changing actions.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are documented.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Publish, Scope::Admin];

    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| TokenError::UnknownScope(s.to_owned()))
    }
}

/// Does a token with `scopes` have `needed`? `admin` has every scope.
pub fn allows(scopes: &[Scope], needed: Scope) -> bool {
    scopes.contains(&needed) || scopes.contains(&Scope::Admin)
}

/// Token errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not one of `read`, `publish`, `admin`.
    #[error("unknown scope {0:?}: the scopes are read, publish and admin")]
    UnknownScope(String),
    /// A token needs at least one scope.
    #[error("a token needs at least one scope (read, publish, admin)")]
    NoScope,
    /// Names are for people: short, printable, unique.
    #[error("a token name is 1 to 100 characters of letters, digits, '.', '_', '-' or '@'")]
    BadName,
    /// The name is taken (revoked tokens keep theirs, so that the audit log stays readable).
    #[error("a token named {0:?} already exists")]
    Exists(String),
    /// Postgres failed.
    #[error("Postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    /// Its id.
    pub id: Uuid,
    /// Its name, which the audit log records as the actor (`token:{name}`).
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Its last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just created: the secret exists only in this value and in its holder's hands.
#[derive(Debug, Clone, Serialize)]
pub struct NewToken {
    /// The secret to send as `Authorization: Bearer ...` or to log in with.
    pub token: String,
    /// Its record.
    pub record: TokenRecord,
}

/// The prefix of every token, so that a leaked one is recognisable by secret scanners.
pub const PREFIX: &str = "wrn_";

/// Who a valid token is.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Token id.
    pub id: Uuid,
    /// Token name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

fn parse_scopes(stored: &[String]) -> Vec<Scope> {
    // A scope the database holds but this build does not know grants nothing.
    stored.iter().filter_map(|s| s.parse().ok()).collect()
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok { Ok(()) } else { Err(TokenError::BadName) }
}

/// Creates a token named `name` with `scopes` on behalf of `by`, and records it in the audit
/// log in the same transaction.
pub async fn create(
    client: &mut deadpool_postgres::Client,
    name: &str,
    scopes: &[Scope],
    by: &str,
) -> Result<NewToken, TokenError> {
    check_name(name)?;
    if scopes.is_empty() {
        return Err(TokenError::NoScope);
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{PREFIX}{}", hex(&secret));
    let id = Uuid::now_v7();
    let stored: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "INSERT INTO api_tokens (id, name, hash, scopes, created_by) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING RETURNING created_at",
            &[&id, &name, &sha256_hex(token.as_bytes()), &stored, &by],
        )
        .await?;
    let Some(row) = row else {
        return Err(TokenError::Exists(name.to_owned()));
    };
    audit::record(
        &tx,
        by,
        "token.create",
        Some(name),
        serde_json::json!({ "scopes": stored }),
    )
    .await?;
    tx.commit().await?;
    Ok(NewToken {
        token,
        record: TokenRecord {
            id,
            name: name.to_owned(),
            scopes,
            created_by: by.to_owned(),
            created_at: row.get(0),
            last_used_at: None,
            revoked_at: None,
        },
    })
}

/// Every token, newest first.
pub async fn list(client: &impl GenericClient) -> Result<Vec<TokenRecord>, TokenError> {
    let rows = client
        .query(
            "SELECT id, name, scopes, created_by, created_at, last_used_at, revoked_at
             FROM api_tokens ORDER BY created_at DESC",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| TokenRecord {
            id: row.get(0),
            name: row.get(1),
            scopes: parse_scopes(&row.get::<_, Vec<String>>(2)),
            created_by: row.get(3),
            created_at: row.get(4),
            last_used_at: row.get(5),
            revoked_at: row.get(6),
        })
        .collect())
}

/// Revokes the token named `name` (its sessions end with it); `false` when there is no such
/// live token.
pub async fn revoke(
    client: &mut deadpool_postgres::Client,
    name: &str,
    by: &str,
) -> Result<bool, TokenError> {
    let tx = client.transaction().await?;
    let revoked = tx
        .query_opt(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
             RETURNING id",
            &[&name],
        )
        .await?;
    let Some(row) = revoked else {
        return Ok(false);
    };
    let id: Uuid = row.get(0);
    tx.execute("DELETE FROM console_sessions WHERE token_id = $1", &[&id])
        .await?;
    audit::record(&tx, by, "token.revoke", Some(name), serde_json::json!({})).await?;
    tx.commit().await?;
    Ok(true)
}

/// The live token whose secret is `secret`, if any. Its last use is written at most once a
/// minute, so that a busy ingress does not write a row per request.
pub async fn authenticate(
    client: &impl GenericClient,
    secret: &str,
) -> Result<Option<Holder>, tokio_postgres::Error> {
    if !secret.starts_with(PREFIX) {
        return Ok(None);
    }
    let stmt = client
        .prepare_cached(
            "SELECT id, name, scopes, last_used_at IS NULL OR last_used_at < now() - interval '1 minute'
             FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .await?;
    let Some(row) = client
        .query_opt(&stmt, &[&sha256_hex(secret.as_bytes())])
        .await?
    else {
        return Ok(None);
    };
    let holder = Holder {
        id: row.get(0),
        name: row.get(1),
        scopes: parse_scopes(&row.get::<_, Vec<String>>(2)),
    };
    if row.get::<_, bool>(3) {
        client
            .execute(
                "UPDATE api_tokens SET last_used_at = now() WHERE id = $1",
                &[&holder.id],
            )
            .await?;
    }
    Ok(Some(holder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_has_every_scope_and_the_others_only_their_own() {
        assert!(allows(&[Scope::Admin], Scope::Read));
        assert!(allows(&[Scope::Admin], Scope::Publish));
        assert!(allows(&[Scope::Read], Scope::Read));
        assert!(!allows(&[Scope::Read], Scope::Admin));
        assert!(!allows(&[Scope::Read], Scope::Publish));
        assert!(!allows(&[Scope::Publish], Scope::Read));
    }

    #[test]
    fn scopes_parse_from_their_names_only() {
        assert_eq!("read".parse::<Scope>().ok(), Some(Scope::Read));
        assert!("root".parse::<Scope>().is_err());
        assert_eq!(
            parse_scopes(&["admin".into(), "later".into()]),
            vec![Scope::Admin]
        );
    }

    #[test]
    fn names_are_short_and_printable() {
        assert!(check_name("ci-deploy@team.x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("two words").is_err());
        assert!(check_name(&"n".repeat(101)).is_err());
    }
}
