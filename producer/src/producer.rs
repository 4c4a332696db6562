//! The event API: publish a task's input under an event name.

use crate::publisher::{PendingConfirm, PublishError, Publisher};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use warren_shared::contract::{self, Outgoing, header};
use warren_shared::priority::Priority;
use warren_shared::topology::{DelayLevels, Destination, Topology};
use warren_shared::trace_context;

/// Optional metadata of a publish; every field has a sensible default.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The message identity (a fresh UUIDv7 when `None`). Publishing twice with the same id
    /// makes one run per task.
    pub message_id: Option<String>,
    /// Deduplicates triggers (see `docs/protocol.md`).
    pub idempotency_key: Option<String>,
    /// Tenant or workspace.
    pub tenant: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// Further headers, as text.
    pub headers: Vec<(String, String)>,
    /// Deliver after this long (held by the broker's delay queues, whole seconds). The message
    /// is confirmed when it enters the delay queues; an event no task listens to by the time
    /// it is due lands in the namespace's `unrouted` queue.
    pub delay: Option<Duration>,
    /// Which lane of each task that listens the message goes to (the `warren-priority`
    /// header): `high` starts before the normal backlog on tasks with priority lanes. Tasks
    /// without lanes run it as normal.
    pub priority: Priority,
}

/// What a successful publish returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id, which `warren runs show` accepts.
    pub message_id: String,
}

/// Publishes events to a namespace's exchange. Cheap to clone; clones share the connection.
///
/// When the broker connection is lost, publishes waiting for their confirms fail with
/// [`PublishError::Broker`] (their fate is unknown: publish them again with the same message id,
/// which makes no second run), and the next publish reconnects.
#[derive(Clone)]
pub struct Producer {
    url: Arc<str>,
    name: Arc<str>,
    publisher: Arc<tokio::sync::Mutex<Publisher>>,
    topology: Topology,
    /// The delay levels declared so far.
    delay_levels: Arc<DelayLevels>,
}

impl Producer {
    /// Connects to the broker and declares the events exchange (idempotent).
    pub async fn connect(url: &str, topology: Topology) -> Result<Self, PublishError> {
        Self::connect_named(url, topology, "warren-producer").await
    }

    /// Like [`Producer::connect`], naming the connection as the broker will show it.
    pub async fn connect_named(
        url: &str,
        topology: Topology,
        name: &str,
    ) -> Result<Self, PublishError> {
        let publisher = Self::open(url, name, &topology).await?;
        Ok(Producer {
            url: Arc::from(url),
            name: Arc::from(name),
            publisher: Arc::new(tokio::sync::Mutex::new(publisher)),
            topology,
            delay_levels: Arc::new(DelayLevels::default()),
        })
    }

    /// Closes the producer's connection (for every clone). Wait for the confirms you care about
    /// first: those still pending fail. A publish after this reconnects.
    pub async fn close(&self) {
        self.publisher.lock().await.close().await;
    }

    async fn open(url: &str, name: &str, topology: &Topology) -> Result<Publisher, PublishError> {
        let publisher = Publisher::connect(url, name).await?;
        topology.declare_exchange(publisher.channel()).await?;
        Ok(publisher)
    }

    /// The publisher, reconnected first if its channel is gone.
    async fn publisher(&self) -> Result<Publisher, PublishError> {
        let mut current = self.publisher.lock().await;
        if !current.channel().status().connected() {
            tracing::info!(name = %self.name, "producer connection lost; reconnecting");
            *current = Self::open(&self.url, &self.name, &self.topology).await?;
        }
        Ok(current.clone())
    }

    /// Publishes `payload` as event `event` and waits for the broker's confirm.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &T,
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let body = serde_json::to_vec(payload)?;
        self.publish_json(event, &body, options).await
    }

    /// Publishes a body that is already JSON text and waits for the confirm.
    pub async fn publish_json(
        &self,
        event: &str,
        body: &[u8],
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        let (published, pending) = self.start_json(event, body, options).await?;
        pending.wait().await?;
        Ok(published)
    }

    /// Sends a JSON body without waiting for its confirm, for pipelined bulk publishing: keep a
    /// window of pending confirms and wait for each.
    pub async fn start_json(
        &self,
        event: &str,
        body: &[u8],
        options: PublishOptions,
    ) -> Result<(Published, PendingConfirm), PublishError> {
        contract::validate_event_name(event)?;
        serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
        let mut outgoing = Outgoing::new();
        if let Some(id) = options.message_id {
            outgoing.message_id = id;
        }
        outgoing.idempotency_key = options.idempotency_key;
        outgoing.tenant = options.tenant;
        // The caller's trace context, or else this publish's own span (when traces are
        // exported): the worker's run span becomes its child.
        let span = tracing::info_span!("publish", event, message_id = %outgoing.message_id);
        match (options.traceparent, trace_context::of_span(&span)) {
            (Some(traceparent), _) => outgoing.traceparent = Some(traceparent),
            (None, Some(ours)) => {
                outgoing.traceparent = Some(ours.traceparent);
                outgoing.tracestate = ours.tracestate;
            }
            (None, None) => {}
        }
        for (name, value) in options.headers {
            outgoing = outgoing.with_header(name, value);
        }
        outgoing = outgoing.with_priority(options.priority);
        let publisher = self.publisher().await?;
        let delayed = options
            .delay
            .and_then(|d| self.topology.delayed_route(d, Destination::Event(event)));
        let (exchange, routing_key) = match delayed {
            Some(route) => {
                self.delay_levels
                    .ensure(&self.topology, publisher.channel(), &route.0)
                    .await?;
                let due = chrono::Utc::now()
                    + options
                        .delay
                        .and_then(|d| chrono::Duration::from_std(d).ok())
                        .unwrap_or_default();
                outgoing = outgoing
                    .with_header(header::EVENT, event)
                    .with_header(header::DUE_AT, contract::format_time(due));
                route
            }
            None => (self.topology.events_exchange(), event.to_owned()),
        };
        let pending = publisher
            .start(&exchange, &routing_key, body, outgoing.properties()?)
            .instrument(span)
            .await?;
        Ok((
            Published {
                message_id: outgoing.message_id,
            },
            pending,
        ))
    }
}
