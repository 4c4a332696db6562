//! The HTTP client every HTTP step of a process shares: one connection pool (keep-alive, so a
//! pipeline's steps reuse their connections to an endpoint), HTTP/1.1, TLS by rustls with ring
//! (the provider Warren uses for RabbitMQ and Postgres; no OpenSSL), and a redirect policy
//! that keeps a POST a POST.
//!
//! Steps that trust their own certificate authorities (`ca_file`) get a client per CA file:
//! a pool cannot mix trust roots. Clients are built on the first HTTP step's construction,
//! so a worker without HTTP steps builds none.

use reqwest::redirect::{Attempt, Policy};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// The most redirects followed for one request; more is taken for a loop.
pub const MAX_REDIRECTS: usize = 3;
/// How long establishing a connection (TCP and TLS) may take, within the step's own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept: under Node.js's default keep-alive timeout
/// (5 s), so that the client lets a connection go before the server closes it under a request
/// (a busy pipeline keeps its connections warm anyway).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

static CLIENTS: LazyLock<Mutex<HashMap<Option<PathBuf>, reqwest::Client>>> =
    LazyLock::new(Mutex::default);

/// The shared client trusting `ca_file`'s authorities, or the system's when `None`.
pub(super) fn shared(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let key = ca_file.map(Path::to_path_buf);
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let client = build(ca_file)?;
    clients.insert(key, client.clone());
    Ok(client)
}

fn build(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls(ca_file)?)
        .redirect(Policy::custom(redirect))
        .referer(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

fn tls(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("ca_file {}: cannot read it: {e}", path.display()))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!("ca_file {}: a certificate is invalid: {e}", path.display())
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "ca_file {}: holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "HTTP steps: a system root certificate could not be read");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                // Plain-http endpoints still work; https ones fail each call with an unknown
                // issuer, which says what is missing.
                tracing::warn!(
                    "HTTP steps: the system trust store has no certificate; https endpoints \
                     will be refused (install ca-certificates, or give the step a ca_file)"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Follows only what keeps the request intact: a 307 or 308 (which repeat the POST with its
/// body) to the same host, never from https down to http, at most [`MAX_REDIRECTS`] times.
/// Any other redirect is not followed: its answer fails the step, saying where it pointed (a
/// 301/302/303 would turn the POST into a bodiless GET; another host would receive the
/// signature and the run's data).
fn redirect(attempt: Attempt<'_>) -> reqwest::redirect::Action {
    let Some(from) = attempt.previous().last() else {
        return attempt.stop();
    };
    let to = attempt.url();
    let keeps_the_post = matches!(attempt.status().as_u16(), 307 | 308);
    let same_host = from.host_str() == to.host_str();
    let downgrade = from.scheme() == "https" && to.scheme() != "https";
    if !keeps_the_post || !same_host || downgrade {
        return attempt.stop();
    }
    if attempt.previous().len() > MAX_REDIRECTS {
        let chain: Vec<String> = attempt
            .previous()
            .iter()
            .chain(std::iter::once(to))
            .map(super::shown)
            .collect();
        let loop_error = RedirectLoop(chain.join(" -> "));
        return attempt.error(loop_error);
    }
    attempt.follow()
}

/// A chain of redirects longer than [`MAX_REDIRECTS`].
#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_REDIRECTS} redirects (a redirect loop?): {0}")]
struct RedirectLoop(String);
