//! The `Warren-Signature` header: `t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`.
//!
//! One scheme both ways: workers sign the requests of HTTP steps with it, and the console
//! verifies incoming webhooks with it (the same format as Stripe's `Stripe-Signature`, so such
//! a provider's webhooks verify as they are).
//!
//! The timestamp is inside the signed text so that a receiver can refuse a request replayed
//! long after it was made; the body is signed byte for byte, so a receiver must verify the raw
//! bytes it received, before parsing them. `v1` names the scheme, so that a later one can be
//! sent alongside it while endpoints move over.

use ring::{digest, hmac};
use std::time::Duration;

/// A signing secret, kept out of `Debug` output and logs.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    /// The secret `bytes` (the value of the secret's environment variable, as bytes).
    pub fn new(bytes: &[u8]) -> Self {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", hex(signed(secret, &t, body).as_ref()))
}

fn signed(secret: &Secret, t: &str, body: &[u8]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(&secret.0);
    context.update(t.as_bytes());
    context.update(b".");
    context.update(body);
    context.sign()
}

/// Why a signature was refused. Each says what a sender would need to fix, none reveals the
/// expected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No header, or not `t=...,v1=...`.
    #[error("the signature header is missing or not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    /// The timestamp is further from now than the tolerance: a replay, or a clock far off.
    #[error("the signature's timestamp is {0}s away from now, beyond the tolerance")]
    Stale(u64),
    /// No `v1` value matches the body and the secret.
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// A signature that verified: the timestamp and the `v1` value that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed timestamp (Unix seconds).
    pub timestamp: u64,
    /// The matching `v1` value, lower case.
    pub v1: String,
}

impl Verified {
    /// One text per signature however its header was written (extra `v1` values, other parts,
    /// spaces, order), for remembering which signatures were already accepted.
    pub fn canonical(&self) -> String {
        format!("t={},v1={}", self.timestamp, self.v1)
    }
}

/// Checks `header` (as sent) for `body` at `now` (Unix seconds): its timestamp within
/// `tolerance` of now, and one of its `v1` values (several are allowed while a secret is
/// rotated) the HMAC of the timestamp and the body. Compared in constant time. A header with
/// two timestamps is refused as malformed.
pub fn verify(
    secret: &Secret,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<Verified, SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", _)) if timestamp.is_some() => return Err(SignatureError::Malformed),
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let (Some(t), false) = (timestamp, candidates.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let seconds: u64 = t.parse().map_err(|_| SignatureError::Malformed)?;
    let skew = now.abs_diff(seconds);
    if skew > tolerance.as_secs() {
        return Err(SignatureError::Stale(skew));
    }
    let mut message = Vec::with_capacity(t.len() + 1 + body.len());
    message.extend_from_slice(t.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    let matches = |candidate: &&str| {
        unhex(candidate).is_some_and(|bytes| hmac::verify(&secret.0, &message, &bytes).is_ok())
    };
    match candidates.into_iter().find(matches) {
        Some(v1) => Ok(Verified {
            timestamp: seconds,
            v1: v1.to_ascii_lowercase(),
        }),
        None => Err(SignatureError::Mismatch),
    }
}

/// The SHA-256 of `bytes` in lowercase hex (API token hashes, remembered webhook signatures).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/steps.md and of the client modules' tests: if this changes,
    /// every endpoint's verification breaks.
    #[test]
    fn the_documented_example_signs_to_the_documented_hex() {
        let secret = Secret::new(b"whsec_test_secret");
        let body = br#"{"run":{"id":"0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11","task":"video.process","event":"video.process","attempt":1,"message_id":"m-1","tenant":null},"step":"validate","input":{"url":"https://example.com/a.mp4"},"outputs":{}}"#;
        assert_eq!(
            sign(&secret, 1_767_225_600, body),
            "t=1767225600,v1=27f4ac158c98705621e398a8c139d2b35be7483b90fda7bc4024b680d9bafe13"
        );
    }

    #[test]
    fn the_digest_is_hmac_sha256_in_lowercase_hex() {
        // RFC 4231, test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            hex(hmac::sign(&key, b"what do ya want for nothing?").as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_secret_does_not_show_in_debug_output() {
        assert_eq!(format!("{:?}", Secret::new(b"hunter2")), "Secret(..)");
    }

    #[test]
    fn a_signature_verifies_within_the_tolerance_and_not_after() {
        let secret = Secret::new(b"whsec");
        let header = sign(&secret, 1_000, b"{}");
        let five_minutes = Duration::from_secs(300);
        let verified = verify(&secret, &header, b"{}", 1_200, five_minutes).map(|v| v.timestamp);
        assert_eq!(verified, Ok(1_000));
        assert_eq!(
            verify(&secret, &header, b"{}", 1_400, five_minutes),
            Err(SignatureError::Stale(400))
        );
    }

    #[test]
    fn a_forged_body_secret_or_header_is_refused() {
        let secret = Secret::new(b"whsec");
        let header = sign(&secret, 1_000, b"{}");
        let tolerance = Duration::from_secs(300);
        let refused = |secret: &Secret, header: &str, body: &[u8]| {
            verify(secret, header, body, 1_000, tolerance)
        };
        assert_eq!(
            refused(&secret, &header, b"{ }"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            refused(&Secret::new(b"other"), &header, b"{}"),
            Err(SignatureError::Mismatch)
        );
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "garbage"] {
            assert_eq!(
                refused(&secret, bad, b"{}"),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // A second, wrong v1 beside the right one (a secret being rotated), other parts and
        // spaces: it verifies, as the same signature as the plain header.
        let rotated = format!("v1=00ff, {header} ,v0=x");
        let plain = refused(&secret, &header, b"{}").map(|v| v.canonical());
        assert_eq!(
            refused(&secret, &rotated, b"{}").map(|v| v.canonical()),
            plain
        );
        assert_eq!(
            refused(&secret, &format!("{header},t=999"), b"{}"),
            Err(SignatureError::Malformed)
        );
    }
}
