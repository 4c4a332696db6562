//! What Warren takes from a Postgres connection string beyond what tokio-postgres reads, and the
//! defaults it adds.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` but not libpq's `verify-ca`
//! and `verify-full`, nor `sslrootcert`, and refuses a string that has them. Warren takes those
//! two parameters out of the string (both forms: `postgres://…?k=v&…` and `k=v k=v`), hands the
//! rest to tokio-postgres, and does the TLS itself ([`super::tls`]).
//!
//! Every timeout a connection needs has a default unless the string sets it: a replica must
//! never wait forever on a Postgres that does not answer, nor on a row lock someone forgot.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How long a new connection may take, TCP connect, TLS and authentication together: a
/// Postgres that has not answered in 10 s is down or drowning, and the caller is better told.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side bound on one statement. Warren's statements take milliseconds; the slowest are
/// the CLI's listings, well under this. Long migrations are exempt ([`super::migrate`]).
pub const DEFAULT_STATEMENT_TIMEOUT: &str = "30s";
/// Server-side bound on waiting for a lock. Warren holds its row locks for one commit batch
/// (milliseconds): a wait of seconds means a stray transaction holds them, and an error that
/// says so beats a replica whose writes queue up behind it.
pub const DEFAULT_LOCK_TIMEOUT: &str = "5s";
/// TCP keepalive: an idle connection is probed after 10 s of silence, every 5 s, and dropped
/// after 3 unanswered probes, so a connection whose peer vanished (a failover, a dropped route)
/// is noticed in about 25 s rather than the kernel's two hours.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
/// See [`DEFAULT_KEEPALIVES_IDLE`].
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
/// See [`DEFAULT_KEEPALIVES_IDLE`].
pub const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;
/// Data sent but not acknowledged for this long drops the connection (Linux `TCP_USER_TIMEOUT`):
/// a commit written into a connection whose packets are lost fails in 20 s instead of the
/// kernel's ~15 minutes of retransmissions, during which every write of the replica waits.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// libpq's `sslmode`, all five of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// TLS if the server offers it, plain otherwise; the certificate is not checked (libpq's
    /// default, and Warren's).
    Prefer,
    /// TLS or nothing; the certificate is not checked, unless a root certificate is given,
    /// which makes it `verify-ca` (as libpq does).
    Require,
    /// TLS, the certificate must chain to a trusted root; its name is not checked.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "unsupported sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Where the roots a server certificate must chain to come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The system's trust store (`sslrootcert=system`, or no root certificate given).
    System,
    /// Only the certificates of this PEM file.
    File(PathBuf),
}

/// What the server's certificate must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the connection is encrypted, not authenticated.
    None,
    /// It chains to one of the roots.
    Chain(RootCerts),
    /// It chains to one of the roots and names the host.
    ChainAndName(RootCerts),
}

/// A connection string understood.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What tokio-postgres connects with (its `ssl_mode` set from [`Settings::ssl_mode`]).
    pub config: tokio_postgres::Config,
    /// The `sslmode` asked for.
    pub ssl_mode: SslMode,
    /// What the server's certificate is checked for.
    pub verification: Verification,
    /// The bound on making a new connection, handshakes included.
    pub connect_timeout: Duration,
}

/// Reads a connection string (URL or `key=value` form). `env_root_cert` is the root certificate
/// file named in the environment, used when the string has no `sslrootcert`. Errors never quote
/// the string, which may hold a password.
pub fn parse(conninfo: &str, env_root_cert: Option<&str>) -> Result<Settings, String> {
    let (rest, params) = take_params(conninfo, &["sslmode", "sslrootcert"])?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
    let ssl_mode = match params.get("sslmode") {
        Some(mode) => mode.parse()?,
        None => SslMode::Prefer,
    };
    let root_file = params
        .get("sslrootcert")
        .map(String::as_str)
        .or(env_root_cert)
        .filter(|path| !path.is_empty());
    let roots = match root_file {
        None | Some("system") => RootCerts::System,
        Some(path) => RootCerts::File(PathBuf::from(path)),
    };
    let verification = match ssl_mode {
        SslMode::Disable | SslMode::Prefer => Verification::None,
        SslMode::Require if root_file.is_some() => Verification::Chain(roots),
        SslMode::Require => Verification::None,
        SslMode::VerifyCa => Verification::Chain(roots),
        SslMode::VerifyFull => Verification::ChainAndName(roots),
    };
    config.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });

    let given = |key: &str| keys(conninfo).iter().any(|k| k == key);
    let connect_timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    config.connect_timeout(connect_timeout);
    if !given("keepalives_idle") {
        config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if !given("keepalives_interval") {
        config.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
    }
    if !given("keepalives_retries") {
        config.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
    }
    if !given("tcp_user_timeout") {
        config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
    let options = with_default_timeouts(config.get_options().unwrap_or(""));
    config.options(&options);
    Ok(Settings {
        config,
        ssl_mode,
        verification,
        connect_timeout,
    })
}

/// The server options (`options=-c name=value …`) with Warren's statement and lock timeouts
/// added, unless the options set them already.
fn with_default_timeouts(options: &str) -> String {
    let mut options = options.trim().to_owned();
    for (name, value) in [
        ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
        ("lock_timeout", DEFAULT_LOCK_TIMEOUT),
    ] {
        if !options.contains(name) {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={value}"));
        }
    }
    options
}

/// The parameter names of a connection string.
fn keys(conninfo: &str) -> Vec<String> {
    split(conninfo)
        .map(|(_, params)| params.into_iter().map(|p| p.key).collect())
        .unwrap_or_default()
}

/// One `key=value` of a connection string, decoded, with the text it was written as.
struct Param {
    key: String,
    value: String,
    raw: String,
}

/// Which of the two forms a string is in.
enum Form<'a> {
    /// `postgres://…`: what comes before the `?`.
    Url(&'a str),
    /// `key=value key=value`.
    KeyValue,
}

fn split(conninfo: &str) -> Result<(Form<'_>, Vec<Param>), String> {
    let Some(after_scheme) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| conninfo.strip_prefix(scheme))
    else {
        return Ok((Form::KeyValue, key_value_params(conninfo)?));
    };
    // As tokio-postgres reads it: credentials run to the first `@`, and the parameters start at
    // the first `?` after them.
    let from = conninfo.len() - after_scheme.len() + after_scheme.find('@').unwrap_or(0);
    let Some(query) = conninfo[from..].find('?').map(|i| from + i) else {
        return Ok((Form::Url(conninfo), Vec::new()));
    };
    let params = conninfo[query + 1..]
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                "a parameter of the database URL has no `=`: expected key=value".to_owned()
            })?;
            Ok(Param {
                key: percent_decode(key)?,
                value: percent_decode(value)?,
                raw: pair.to_owned(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((Form::Url(&conninfo[..query]), params))
}

/// Removes the parameters named `taken` from a connection string: returns the rest, in the same
/// form, and the values of those taken.
fn take_params(
    conninfo: &str,
    taken: &[&str],
) -> Result<(String, std::collections::HashMap<String, String>), String> {
    let (form, params) = split(conninfo)?;
    let mut values = std::collections::HashMap::new();
    let mut kept = Vec::new();
    for param in params {
        if taken.contains(&param.key.as_str()) {
            values.insert(param.key, param.value);
        } else {
            kept.push(param.raw);
        }
    }
    let rest = match form {
        Form::Url(base) if kept.is_empty() => base.to_owned(),
        Form::Url(base) => format!("{base}?{}", kept.join("&")),
        Form::KeyValue => kept.join(" "),
    };
    Ok((rest, values))
}

/// The parameters of a `key=value` string, read as libpq and tokio-postgres do: whitespace
/// around `=` allowed, values either bare or single-quoted, `\` escaping the next character.
fn key_value_params(conninfo: &str) -> Result<Vec<Param>, String> {
    let mut params = Vec::new();
    let mut chars = conninfo.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Ok(params);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        skip_ws(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!(
                "connection parameter `{key}` has no `=`: expected key=value"
            ));
        }
        skip_ws(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        loop {
            match chars.peek().map(|&(_, c)| c) {
                None if quoted => {
                    return Err(format!(
                        "the value of connection parameter `{key}` has no closing quote"
                    ));
                }
                None => break,
                Some('\'') if quoted => {
                    chars.next();
                    break;
                }
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => {
                    chars.next();
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                Some(c) => {
                    chars.next();
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(conninfo.len(), |&(i, _)| i);
        params.push(Param {
            key,
            value,
            raw: conninfo[start..end].to_owned(),
        });
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| "the database URL has an invalid %-escape".to_owned())?;
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded)
        .map_err(|_| "the database URL has a %-escape that is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(conninfo: &str) -> Settings {
        parse(conninfo, None).unwrap()
    }

    #[test]
    fn a_url_without_sslmode_prefers_tls_without_checking_the_certificate() {
        let s = settings("postgres://u:p@db.example:5433/warren");
        assert_eq!(s.ssl_mode, SslMode::Prefer);
        assert_eq!(s.verification, Verification::None);
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        assert_eq!(s.config.get_dbname(), Some("warren"));
        assert_eq!(s.config.get_password(), Some(&b"p"[..]));
    }

    #[test]
    fn every_libpq_sslmode_is_understood_and_the_verifying_ones_require_tls() {
        for (mode, expected, verification, wire) in [
            (
                "disable",
                SslMode::Disable,
                Verification::None,
                tokio_postgres::config::SslMode::Disable,
            ),
            (
                "prefer",
                SslMode::Prefer,
                Verification::None,
                tokio_postgres::config::SslMode::Prefer,
            ),
            (
                "require",
                SslMode::Require,
                Verification::None,
                tokio_postgres::config::SslMode::Require,
            ),
            (
                "verify-ca",
                SslMode::VerifyCa,
                Verification::Chain(RootCerts::System),
                tokio_postgres::config::SslMode::Require,
            ),
            (
                "verify-full",
                SslMode::VerifyFull,
                Verification::ChainAndName(RootCerts::System),
                tokio_postgres::config::SslMode::Require,
            ),
        ] {
            for conninfo in [
                format!("postgres://u@h/db?sslmode={mode}"),
                format!("host=h dbname=db sslmode={mode}"),
            ] {
                let s = settings(&conninfo);
                assert_eq!(s.ssl_mode, expected, "{conninfo}");
                assert_eq!(s.verification, verification, "{conninfo}");
                assert_eq!(s.config.get_ssl_mode(), wire, "{conninfo}");
                assert_eq!(s.config.get_dbname(), Some("db"), "{conninfo}");
            }
        }
    }

    #[test]
    fn sslrootcert_names_the_roots_in_both_forms_and_wins_over_the_environment() {
        let url = parse(
            "postgresql://u@h/db?sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&sslmode=verify-full&application_name=w",
            Some("/from/env.pem"),
        )
        .unwrap();
        assert_eq!(
            url.verification,
            Verification::ChainAndName(RootCerts::File("/etc/ca dir/root.pem".into()))
        );
        assert_eq!(url.config.get_application_name(), Some("w"));
        let key_value = parse(
            "host=h sslmode = verify-ca sslrootcert='/etc/ca dir/it\\'s.pem' user=u",
            Some("/from/env.pem"),
        )
        .unwrap();
        assert_eq!(
            key_value.verification,
            Verification::Chain(RootCerts::File("/etc/ca dir/it's.pem".into()))
        );
        assert_eq!(key_value.config.get_user(), Some("u"));
        let system = parse(
            "postgres://h/db?sslmode=verify-full&sslrootcert=system",
            Some("/from/env.pem"),
        )
        .unwrap();
        assert_eq!(
            system.verification,
            Verification::ChainAndName(RootCerts::System)
        );
    }

    #[test]
    fn the_environment_names_the_roots_when_the_string_does_not() {
        let s = parse("postgres://h/db?sslmode=verify-full", Some("/ca.pem")).unwrap();
        assert_eq!(
            s.verification,
            Verification::ChainAndName(RootCerts::File("/ca.pem".into()))
        );
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain_as_libpq_does() {
        let s = parse("postgres://h/db?sslmode=require", Some("/ca.pem")).unwrap();
        assert_eq!(
            s.verification,
            Verification::Chain(RootCerts::File("/ca.pem".into()))
        );
        let s = parse("postgres://h/db?sslmode=prefer", Some("/ca.pem")).unwrap();
        assert_eq!(s.verification, Verification::None);
    }

    #[test]
    fn an_unknown_sslmode_is_refused_with_the_valid_ones_and_without_the_password() {
        let error = parse("postgres://u:s3cret@h/db?sslmode=allow", None).unwrap_err();
        assert!(error.contains("sslmode `allow`"), "{error}");
        assert!(error.contains("verify-full"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn a_password_with_a_question_mark_is_not_taken_for_parameters() {
        let s = settings("postgres://u:a?b@h/db?sslmode=disable");
        assert_eq!(s.config.get_password(), Some(&b"a?b"[..]));
        assert_eq!(s.ssl_mode, SslMode::Disable);
    }

    #[test]
    fn timeouts_have_defaults_when_the_string_sets_none() {
        let s = settings("postgres://h/db");
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(s.config.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            s.config.get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(
            s.config.get_keepalives_retries(),
            Some(DEFAULT_KEEPALIVES_RETRIES)
        );
        assert_eq!(
            s.config.get_tcp_user_timeout(),
            Some(&DEFAULT_TCP_USER_TIMEOUT)
        );
        assert_eq!(
            s.config.get_options(),
            Some("-c statement_timeout=30s -c lock_timeout=5s")
        );
    }

    #[test]
    fn timeouts_set_in_the_string_win_over_the_defaults() {
        let s = settings(
            "postgres://h/db?connect_timeout=3&keepalives_idle=60&keepalives_interval=7\
             &keepalives_retries=9&tcp_user_timeout=45\
             &options=-c%20statement_timeout%3D2min%20-c%20search_path%3Dx",
        );
        assert_eq!(s.connect_timeout, Duration::from_secs(3));
        assert_eq!(s.config.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            s.config.get_keepalives_interval(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(s.config.get_keepalives_retries(), Some(9));
        assert_eq!(
            s.config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(45))
        );
        assert_eq!(
            s.config.get_options(),
            Some("-c statement_timeout=2min -c search_path=x -c lock_timeout=5s")
        );
        let s = settings("host=h options='-c lock_timeout=0' connect_timeout=4");
        assert_eq!(s.connect_timeout, Duration::from_secs(4));
        assert_eq!(
            s.config.get_options(),
            Some("-c lock_timeout=0 -c statement_timeout=30s")
        );
    }

    #[test]
    fn malformed_strings_are_refused_without_echoing_them() {
        for conninfo in [
            "postgres://u:s3cret@h/db?sslmode",
            "postgres://u:s3cret@h/db?sslrootcert=%zz",
            "user=u password=s3cret sslmode='verify-full",
            "user=u password=s3cret sslmode",
        ] {
            let error = parse(conninfo, None).unwrap_err();
            assert!(!error.contains("s3cret"), "{conninfo}: {error}");
        }
    }
}
