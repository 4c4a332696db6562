//! Connection strings without their passwords, for anything a person or a log will read.
//!
//! A password can sit in three places of the connection strings Warren takes: the userinfo of a
//! URL (`amqp://app:secret@host/vhost`, `postgres://app:secret@host/db`), a query parameter
//! (`postgres://app@host/db?password=secret`), and libpq's key=value form
//! (`host=db user=app password='se cret'`). [`url`] masks all three, for the strings Warren
//! itself prints. [`Secrets`] is the net under it: the passwords themselves, to strip from text
//! that someone else built from the string (a library's error message, a log line), whatever
//! shape it quoted them in (as written, or percent-decoded, or unquoted).
//!
//! URLs must percent-encode `@`, `/`, `?` and `#` in a password; a raw one is cut where the
//! drivers would cut it, and the part after the cut is not recognised as a password.

use std::borrow::Cow;

/// What a password is replaced with.
pub const MASK: &str = "***";

/// Parameter names whose values are secrets, in URL queries and key=value strings.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// `s` with every password replaced by [`MASK`]; everything else as written.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for span in secret_spans(s) {
        out.push_str(&s[last..span.start]);
        out.push_str(MASK);
        last = span.end;
    }
    out.push_str(&s[last..]);
    out
}

/// The passwords of some connection strings, to remove from any text before it is shown.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The passwords `strings` carry, as written and as the drivers decode them.
    pub fn of<'a>(strings: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets = Vec::new();
        for s in strings {
            for span in secret_spans(s) {
                let raw = &s[span.clone()];
                for secret in [raw.to_owned(), percent_decode(raw), unquote(raw)] {
                    // As a JSON log line or a `{:?}` would escape it.
                    let escaped = serde_json::to_string(&secret).unwrap_or_default();
                    let escaped = escaped.trim_matches('"').to_owned();
                    secrets.extend([secret, escaped]);
                }
            }
        }
        secrets.retain(|secret| !secret.is_empty());
        // Longest first, so that a password containing another is masked whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Secrets(secrets)
    }

    /// `text` with every occurrence of a password replaced by [`MASK`].
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut text = Cow::Borrowed(text);
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = Cow::Owned(text.replace(secret.as_str(), MASK));
            }
        }
        text
    }
}

/// Byte ranges of `s` that hold a password.
fn secret_spans(s: &str) -> Vec<std::ops::Range<usize>> {
    if !s.contains("://") {
        return key_value_spans(s);
    }
    split_list(s)
        .into_iter()
        .flat_map(|(offset, one)| {
            let start = one.find("://").map_or(0, |scheme| scheme + 3);
            url_spans(one, start)
                .into_iter()
                .map(move |span| offset + span.start..offset + span.end)
        })
        .collect()
}

/// The URLs of a list of them (`amqp://a:5672,amqp://b:5672`), each with its offset in `s`. A
/// comma starts the next URL only where a scheme and `://` follow it, so that a comma in a
/// password or a query stays in its URL. A string that is no list is one URL.
pub fn split_list(s: &str) -> Vec<(usize, &str)> {
    let mut starts = vec![0];
    let mut from = 0;
    while let Some(found) = s[from..].find("://") {
        let at = from + found;
        let scheme = s[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        if scheme > 0 && s[..scheme].ends_with(',') && scheme < at {
            starts.push(scheme);
        }
        from = at + 3;
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts.get(i + 1).map_or(s.len(), |next| next - 1);
            (start, s[start..end].trim())
        })
        .filter(|(_, one)| !one.is_empty())
        .collect()
}

/// The userinfo password and the secret query parameters of a URL whose authority starts at
/// `start`.
fn url_spans(s: &str, start: usize) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let rest = &s[start..];
    let query = rest.find('?').unwrap_or(rest.len());
    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The host cannot hold an `@`: the last one before the path ends the userinfo. A raw `/` in
    // the password ends the authority early, so look as far as the query for it then.
    let at = rest[..authority]
        .rfind('@')
        .or_else(|| rest[..query].rfind('@'));
    if let Some(at) = at
        && let Some(colon) = rest[..at].find(':')
    {
        spans.push(start + colon + 1..start + at);
    }
    let after_userinfo = at.map_or(0, |at| at + 1);
    if let Some(question) = rest[after_userinfo..].find('?') {
        let mut offset = start + after_userinfo + question + 1;
        let end = s[offset..].find('#').map_or(s.len(), |hash| offset + hash);
        for pair in s[offset..end].split('&') {
            if let Some((key, _)) = pair.split_once('=')
                && is_secret_key(key)
            {
                spans.push(offset + key.len() + 1..offset + pair.len());
            }
            offset += pair.len() + 1;
        }
    }
    spans.retain(|span| !span.is_empty());
    spans
}

/// The values of secret keys in libpq's `key=value key='quoted value'` form. A quoted value
/// that never closes runs to the end (the driver would refuse it; the rest is hidden anyway).
fn key_value_spans(s: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = s.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let key = &s[key_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(bytes.len());
        }
        if is_secret_key(key) && i > value_start {
            spans.push(value_start..i);
        }
    }
    spans
}

fn is_secret_key(key: &str) -> bool {
    let key = percent_decode(key.trim());
    SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

/// `%XX` sequences decoded (as URL drivers do); anything malformed left as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A key=value value as libpq reads it: quotes removed, backslash escapes resolved.
fn unquote(s: &str) -> String {
    let inner = s
        .strip_prefix('\'')
        .map(|rest| rest.strip_suffix('\'').unwrap_or(rest))
        .unwrap_or(s);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_password_is_masked_and_the_rest_kept() {
        assert_eq!(
            url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            url("amqps://app:s%40cret@mq.example:5671/prod?heartbeat=10"),
            "amqps://app:***@mq.example:5671/prod?heartbeat=10"
        );
        assert_eq!(url("postgres://postgres@h/db"), "postgres://postgres@h/db");
        assert_eq!(url("postgres:///db"), "postgres:///db");
        assert_eq!(url("postgres://h:5432/db"), "postgres://h:5432/db");
    }

    #[test]
    fn a_raw_slash_in_a_url_password_is_still_masked() {
        assert_eq!(url("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn a_password_query_parameter_is_masked() {
        assert_eq!(
            url("postgres://app@h/db?sslmode=require&password=hunter22&connect_timeout=5"),
            "postgres://app@h/db?sslmode=require&password=***&connect_timeout=5"
        );
        assert_eq!(
            url("postgres://app:one@h/db?PASSWORD=two#frag"),
            "postgres://app:***@h/db?PASSWORD=***#frag"
        );
        assert_eq!(
            url("postgres://h/db?sslpassword=k3y"),
            "postgres://h/db?sslpassword=***"
        );
    }

    #[test]
    fn a_key_value_password_is_masked_quoted_or_not() {
        assert_eq!(
            url("host=db port=5432 user=app password=hunter22 dbname=warren"),
            "host=db port=5432 user=app password=*** dbname=warren"
        );
        assert_eq!(
            url("host=db password = 'it\\'s secret' dbname=warren"),
            "host=db password = *** dbname=warren"
        );
        assert_eq!(url("password='never closed"), "password=***");
        assert_eq!(url("host=db user=app"), "host=db user=app");
    }

    #[test]
    fn secrets_are_scrubbed_in_every_shape_a_library_may_quote_them() {
        let secrets = Secrets::of([
            "amqp://app:s%40cret@mq/%2f",
            "host=db password='it\\'s'",
            "postgres://u@h/db?password=qp",
        ]);
        let text = "s%40cret s@cret 'it\\'s' it's qp";
        assert_eq!(secrets.scrub(text), "*** *** *** *** ***");
        let json = Secrets::of(["amqp://app:a%22b@mq/%2f"]);
        assert_eq!(
            json.scrub(r#"{"uri":"amqp://app:a\"b@mq"}"#),
            r#"{"uri":"amqp://app:***@mq"}"#
        );
        assert_eq!(secrets.scrub("nothing here"), "nothing here");
        assert!(matches!(secrets.scrub("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn strings_without_passwords_have_no_secrets() {
        let secrets = Secrets::of(["postgres://postgres@127.0.0.1:5432/warren", "amqp://h/"]);
        assert!(secrets.0.is_empty(), "{secrets:?}");
    }

    #[test]
    fn a_list_of_urls_is_split_where_a_scheme_follows_a_comma_and_each_password_masked() {
        let list = "amqp://app:s3cr,et@node-1:5672/%2f,amqp://app:other@node-2:5672/%2f";
        let urls: Vec<&str> = split_list(list).into_iter().map(|(_, u)| u).collect();
        assert_eq!(
            urls,
            vec![
                "amqp://app:s3cr,et@node-1:5672/%2f",
                "amqp://app:other@node-2:5672/%2f"
            ]
        );
        assert_eq!(
            url(list),
            "amqp://app:***@node-1:5672/%2f,amqp://app:***@node-2:5672/%2f"
        );
        assert_eq!(split_list("amqp://h:5672").len(), 1);
    }
}
