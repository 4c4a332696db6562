//! Connecting to RabbitMQ, and letting go of it.

use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// How long a close waits for the broker's answer. A close that does not complete in time is
/// abandoned: dropping the connection has the same effect for the broker (unsettled messages
/// return to their queues), and a process must never hang on its way out.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a connection named `name` (shown in the broker's connection list), so an operator can
/// tell replicas, producers and the CLI apart.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
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
