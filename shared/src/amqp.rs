//! Connecting to RabbitMQ, and letting go of it.
//!
//! The URL may list several nodes of a cluster, separated by commas
//! (`amqp://u:p@node-1:5672/%2f,amqp://u:p@node-2:5672/%2f`): a connection goes to the first
//! that answers, starting from a node chosen by the connection's name, so that replicas spread
//! over the nodes; a reconnection tries them again in the same order.
//!
//! `amqps://` URLs are TLS: the broker's certificate must chain to the system's trust store or to
//! the CA file named by `WARREN_AMQP_CA_FILE` (a private CA, a self-signed broker), and must name
//! the URL's host. An `amqps://` URL never falls back to plain text: a broker that does not speak
//! TLS on that port is an error.

use crate::config::ENV_AMQP_CA_FILE;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a close waits for the broker's answer. A close that does not complete in time is
/// abandoned: dropping the connection has the same effect for the broker (unsettled messages
/// return to their queues), and a process must never hang on its way out.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a connection named `name` (shown in the broker's connection list), so an operator can
/// tell replicas, producers and the CLI apart. Over `amqps://`, trusts the system's roots and the
/// CA file named by `WARREN_AMQP_CA_FILE`, if set.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let ca_file = std::env::var_os(ENV_AMQP_CA_FILE)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    connect_trusting(url, name, ca_file.as_deref()).await
}

/// [`connect`] with the extra CA file given rather than read from the environment.
pub async fn connect_trusting(
    url: &str,
    name: &str,
    ca_file: Option<&Path>,
) -> lapin::Result<Connection> {
    let nodes = crate::redact::split_list(url);
    if nodes.len() <= 1 {
        return connect_node(url, name, ca_file).await;
    }
    let first = first_node(name, nodes.len());
    let mut last = None;
    for i in 0..nodes.len() {
        let (_, node) = nodes[(first + i) % nodes.len()];
        // A node cut off by a partition swallows the attempt instead of refusing it: bounded,
        // so that the next node is tried before the operating system's TCP timeout (minutes).
        let attempt = tokio::time::timeout(NODE_CONNECT_TIMEOUT, connect_node(node, name, ca_file))
            .await
            .unwrap_or_else(|_| {
                Err(lapin::Error::from(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {}s", NODE_CONNECT_TIMEOUT.as_secs()),
                )))
            });
        match attempt {
            Ok(connection) => return Ok(connection),
            Err(e) => {
                tracing::warn!(node = %crate::redact::url(node), error = %e, "broker node did not answer; trying the next");
                last = Some(e);
            }
        }
    }
    let reason = last.map_or_else(String::new, |e| e.to_string());
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "none of the {} broker nodes answered; the last said: {reason}",
            nodes.len()
        ),
    )
    .into())
}

/// How long one node of several gets to complete a connection (TCP, TLS and the AMQP
/// handshake) before the next is tried. A single address has no such limit of its own: the
/// caller's timeout applies.
pub const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Which of `nodes` a connection named `name` tries first: the same for the same name, spread
/// evenly over names (each replica's name holds its own id).
pub fn first_node(name: &str, nodes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    usize::try_from(hasher.finish() % nodes as u64).unwrap_or(0)
}

/// One node's connection.
async fn connect_node(url: &str, name: &str, ca_file: Option<&Path>) -> lapin::Result<Connection> {
    // The URL is not echoed in errors: it may carry a password.
    let uri: AMQPUri = url.parse().map_err(|e: String| {
        lapin::Error::from(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid AMQP URL: {e}"),
        ))
    })?;
    let tls = match (&uri.scheme, ca_file) {
        (AMQPScheme::AMQPS, Some(path)) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(read_ca_file(path)?),
        },
        _ => OwnedTLSConfig::default(),
    };
    let secure = uri.scheme == AMQPScheme::AMQPS;
    let endpoint = format!("{}:{}", uri.authority.host, uri.authority.port);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_uri_with_config(uri, properties, tls, runtime)
        .await
        .map_err(|e| match e.kind() {
            // rustls's own words ("invalid peer certificate: UnknownIssuer", "received corrupt
            // message") do not say that it was TLS that failed, nor where.
            ErrorKind::IOError(cause) if secure => lapin::Error::from(io::Error::new(
                cause.kind(),
                format!(
                    "TLS connection to {endpoint} failed (amqps://): {cause}{}",
                    if not_tls(cause) {
                        " (the server does not speak TLS on this port; RabbitMQ's TLS port is \
                         usually 5671)"
                    } else {
                        ""
                    }
                ),
            )),
            _ => e,
        })
}

/// Whether the handshake failed on bytes that are not TLS at all: a plain listener answering.
fn not_tls(cause: &io::Error) -> bool {
    cause
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_)))
}

/// The PEM text of an extra CA file, checked to hold at least one certificate, so that a wrong
/// path or file says so rather than surfacing later as an unknown issuer.
fn read_ca_file(path: &Path) -> lapin::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read the AMQP CA file {}: {e}", path.display()),
        )
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the AMQP CA file {} holds no PEM certificate",
                path.display()
            ),
        )
        .into());
    }
    Ok(text)
}

/// Closes a connection politely, within [`CLOSE_TIMEOUT`].
pub async fn close(connection: &Connection, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "connection close failed"),
        Err(_) => tracing::debug!("connection close timed out; dropping it"),
    }
}

/// Closes a channel within [`CLOSE_TIMEOUT`]; what it had not settled returns to its queues.
pub async fn close_channel(channel: &Channel, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "channel close failed"),
        Err(_) => tracing::debug!("channel close timed out; dropping it"),
    }
}

#[cfg(test)]
mod tests {
    use super::first_node;

    #[test]
    fn replicas_spread_over_the_nodes_and_each_keeps_its_first() {
        let firsts: Vec<usize> = (0..300)
            .map(|i| first_node(&format!("warren-worker pod-{i}"), 3))
            .collect();
        for node in 0..3 {
            let n = firsts.iter().filter(|f| **f == node).count();
            assert!((60..=140).contains(&n), "node {node} first for {n} of 300");
        }
        assert_eq!(
            first_node("warren-worker pod-7", 3),
            first_node("warren-worker pod-7", 3)
        );
    }
}
