//! What every handler shares: the Postgres pool, the namespace's topology, a producer for
//! ingress, a broker connection for queue statistics and dead letters, the live-update hub and
//! the webhook sources. Broker connections are made on first use and again after a loss, so
//! the console starts, and serves everything Postgres holds, while the broker is away.

use crate::ConsoleConfig;
use crate::error::ApiError;
use crate::live::Hub;
use crate::webhooks::WebhookSource;
use lapin::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;
use warren_producer::Producer;
use warren_shared::topology::Topology;

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The shared parts.
pub struct Inner {
    /// Postgres.
    pub pool: deadpool_postgres::Pool,
    /// The namespace's names.
    pub topology: Topology,
    /// How the console was started.
    pub config: ConsoleConfig,
    /// Live updates of runs.
    pub live: Hub,
    /// Webhook sources by name.
    pub webhooks: HashMap<String, WebhookSource>,
    producer: Mutex<Option<Producer>>,
    broker: Mutex<Option<Arc<Connection>>>,
}

impl AppState {
    pub(crate) fn new(
        pool: deadpool_postgres::Pool,
        topology: Topology,
        config: ConsoleConfig,
        live: Hub,
        webhooks: Vec<WebhookSource>,
    ) -> AppState {
        AppState(Arc::new(Inner {
            pool,
            topology,
            config,
            live,
            webhooks: webhooks.into_iter().map(|w| (w.name.clone(), w)).collect(),
            producer: Mutex::new(None),
            broker: Mutex::new(None),
        }))
    }

    /// The ingress producer (it reconnects by itself after a loss, on its next publish).
    pub(crate) async fn producer(&self) -> Result<Producer, ApiError> {
        let mut slot = self.producer.lock().await;
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let producer = Producer::connect_named(
            &self.config.amqp_url,
            self.topology.clone(),
            "warren-console ingress",
        )
        .await
        .map_err(ApiError::broker)?;
        *slot = Some(producer.clone());
        Ok(producer)
    }

    /// A connection for reading queues and dead letters, made again when the last one is gone.
    pub(crate) async fn broker(&self) -> Result<Arc<Connection>, ApiError> {
        let mut slot = self.broker.lock().await;
        if let Some(connection) = slot.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let connection = warren_shared::amqp::connect(&self.config.amqp_url, "warren-console")
            .await
            .map_err(ApiError::broker)?;
        let connection = Arc::new(connection);
        *slot = Some(connection.clone());
        Ok(connection)
    }
}
