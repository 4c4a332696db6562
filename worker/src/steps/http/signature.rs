//! The `Warren-Signature` header: `t={unix seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`.
//!
//! The timestamp is inside the signed text so that an endpoint can refuse a request replayed
//! long after it was made; the body is signed byte for byte, so an endpoint must verify the raw
//! bytes it received, before parsing them. `v1` names the scheme, so that a later one can be
//! sent alongside it while endpoints move over.

use ring::hmac;

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
pub(super) fn header(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let mut context = hmac::Context::with_key(&secret.0);
    context.update(t.as_bytes());
    context.update(b".");
    context.update(body);
    format!("t={t},v1={}", hex(context.sign().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
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
            header(&secret, 1_767_225_600, body),
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
}
