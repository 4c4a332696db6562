//! Webhook sources: a payment provider or a Git host posts to `/api/v1/webhooks/{name}`,
//! signed with a shared secret in the `Warren-Signature` scheme (`t=...,v1=...`, HMAC-SHA256
//! of `{t}.{body}`; see `warren_shared::signature`), which is also Stripe's. A verified body is
//! published as the source's event. A forged signature, one outside the timestamp tolerance, or
//! one already accepted (a replay) is answered 401 and publishes nothing.
//!
//! Declared in the console's configuration file:
//!
//! ```toml
//! [[webhook]]
//! name = "payments"                 # the URL's last segment
//! event = "payment.received"        # what the body is published as
//! secret_env = "PAYMENTS_SECRET"    # the environment variable holding the shared secret
//! header = "Stripe-Signature"       # default: Warren-Signature
//! tolerance = "5m"                  # default: 5m
//! ```

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use warren_shared::signature::Secret;

/// A declared webhook source.
#[derive(Debug, Clone)]
pub struct WebhookSource {
    /// Its name, the last segment of its URL.
    pub name: String,
    /// The event its bodies are published as.
    pub event: String,
    /// The shared secret.
    pub secret: Secret,
    /// The header carrying the signature (lower case).
    pub header: String,
    /// How far the signature's timestamp may be from now.
    pub tolerance: Duration,
}

/// The default signature header.
pub const DEFAULT_HEADER: &str = "warren-signature";
/// The default timestamp tolerance.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not the expected TOML.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with its place.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    webhook: Vec<Declared>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    name: String,
    event: String,
    secret_env: String,
    header: Option<String>,
    tolerance: Option<String>,
}

/// Reads the webhook sources of the configuration file at `path`. Each secret is read from its
/// environment variable now: a missing one is an error at start, not a 401 at the first call.
pub fn load(path: &Path) -> Result<Vec<WebhookSource>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown, |name| std::env::var(name).ok())
}

fn parse(
    text: &str,
    path: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<WebhookSource>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let mut sources: Vec<WebhookSource> = Vec::new();
    for declared in file.webhook {
        let name = declared.name;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(invalid(format!(
                "webhook name {name:?}: use letters, digits, '-', '_' or '.'"
            )));
        }
        if sources.iter().any(|s| s.name == name) {
            return Err(invalid(format!("webhook {name:?} is declared twice")));
        }
        warren_shared::contract::validate_event_name(&declared.event)
            .map_err(|e| invalid(format!("webhook {name:?}: {e}")))?;
        let secret = env(&declared.secret_env)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "webhook {name:?}: the environment variable {} (its secret) is not set",
                    declared.secret_env
                ))
            })?;
        let tolerance = match declared.tolerance {
            None => DEFAULT_TOLERANCE,
            Some(text) => humantime::parse_duration(&text)
                .map_err(|e| invalid(format!("webhook {name:?}: tolerance {text:?}: {e}")))?,
        };
        sources.push(WebhookSource {
            name,
            event: declared.event,
            secret: Secret::new(secret.as_bytes()),
            header: declared
                .header
                .map_or_else(|| DEFAULT_HEADER.to_owned(), |h| h.to_ascii_lowercase()),
            tolerance,
        });
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cret".to_owned())
    }

    #[test]
    fn a_source_takes_defaults_for_its_header_and_tolerance() {
        let text =
            "[[webhook]]\nname = \"pay\"\nevent = \"payment.received\"\nsecret_env = \"SECRET\"\n";
        let sources = parse(text, "c.toml", env).expect("valid");
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].header, "warren-signature");
        assert_eq!(sources[0].tolerance, DEFAULT_TOLERANCE);
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            (
                "[[webhook]]\nname = \"a b\"\nevent = \"e\"\nsecret_env = \"SECRET\"\n",
                "webhook name",
            ),
            (
                "[[webhook]]\nname = \"a\"\nevent = \"e\"\nsecret_env = \"NOPE\"\n",
                "NOPE",
            ),
            (
                "[[webhook]]\nname = \"a\"\nevent = \"e\"\nsecret_env = \"SECRET\"\ntolerance = \"soon\"\n",
                "tolerance",
            ),
            (
                "[[webhook]]\nname = \"a\"\nevent = \"e\"\nsecret_env = \"SECRET\"\nsecrt = 1\n",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text, "c.toml", env).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(expected)),
                "{text}: {error:?}"
            );
        }
    }
}
