//! A publisher-confirm channel and the one function that turns a confirm into a result.

use lapin::PublisherConfirm;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;
use std::time::Instant;
use warren_shared::metrics as names;

/// Why a publish did not succeed. The message may or may not have reached the broker unless the
/// variant says otherwise; publishing again with the same message id is safe (runs are keyed by it).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker could not be reached, or the connection or channel failed.
    #[error("broker unavailable: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (negative confirm).
    #[error("the broker refused (nacked) message {message_id} to {routing_key:?}")]
    Nacked {
        /// The message.
        message_id: String,
        /// Where it was sent.
        routing_key: String,
    },
    /// No queue is bound to the routing key: no task listens to this event.
    #[error(
        "no task listens to {routing_key:?} on exchange {exchange:?}: message {message_id} was returned unrouted"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key (the event).
        routing_key: String,
        /// The message.
        message_id: String,
    },
    /// The event name is not valid, or the message breaks the wire contract (a short string
    /// longer than AMQP allows).
    #[error(transparent)]
    InvalidEvent(#[from] warren_shared::contract::ContractError),
    /// The payload could not be serialised as JSON.
    #[error("payload is not valid JSON: {0}")]
    Payload(#[from] serde_json::Error),
}

/// A channel in confirm mode. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// Keeps the connection open as long as the publisher lives, when the publisher owns it.
    _connection: Option<Arc<Connection>>,
}

/// A publish the broker has not confirmed yet. Await [`PendingConfirm::wait`] to learn its fate;
/// keeping many pending lets the broker confirm them in batches (pipelining).
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
    message_id: String,
    sent: Instant,
    labels: [metrics::Label; 2],
}

impl PendingConfirm {
    /// Waits for the broker's answer: `Ok` only for an ack of a routed message.
    pub async fn wait(self) -> Result<(), PublishError> {
        let confirmation = self.confirm.await?;
        let label = self.labels;
        metrics::histogram!(names::PUBLISH_CONFIRM_LATENCY, label.to_vec())
            .record(self.sent.elapsed().as_secs_f64());
        if confirmation.is_nack() {
            metrics::counter!(names::PUBLISH_NACKS, label.to_vec()).increment(1);
            return Err(PublishError::Nacked {
                message_id: self.message_id,
                routing_key: self.routing_key,
            });
        }
        if confirmation.take_message().is_some() {
            metrics::counter!(names::PUBLISH_RETURNS, label.to_vec()).increment(1);
            return Err(PublishError::Unroutable {
                exchange: self.exchange,
                routing_key: self.routing_key,
                message_id: self.message_id,
            });
        }
        metrics::counter!(names::PUBLISH_CONFIRMS, label.to_vec()).increment(1);
        Ok(())
    }
}

/// The metric labels of a publish: the kind of route and where it leads, never the raw routing
/// key, which for a delayed message holds its delay in seconds (one time series per delay ever
/// used). `route` is `event` (to the events exchange), `delay` (into the delay cascade) or
/// `queue` (straight to a queue: dead letters, sub-second retries); `destination` is the event,
/// the delayed message's `task.{task}` or `event.{event}`, or the queue, so the set of values
/// is bounded by the tasks and events a namespace has.
fn route_labels(exchange: &str, routing_key: &str) -> [metrics::Label; 2] {
    let (route, destination) = if exchange.is_empty() {
        ("queue", routing_key)
    } else if let Some(destination) = warren_shared::topology::delayed_destination(routing_key) {
        ("delay", destination)
    } else {
        ("event", routing_key)
    };
    [
        metrics::Label::new("route", route),
        metrics::Label::new("destination", destination.to_owned()),
    ]
}

impl Publisher {
    /// Opens a connection of its own, named `name`, and a confirming channel on it.
    pub async fn connect(url: &str, name: &str) -> Result<Self, PublishError> {
        let connection = warren_shared::amqp::connect(url, name).await?;
        let mut publisher = Self::open(&connection).await?;
        publisher._connection = Some(Arc::new(connection));
        Ok(publisher)
    }

    /// Closes the connection the publisher owns, if it owns one (a publisher opened on someone
    /// else's connection leaves it to them). Confirms still pending fail.
    pub async fn close(&self) {
        if let Some(connection) = &self._connection {
            warren_shared::amqp::close(connection, "publisher closed").await;
        }
    }

    /// Opens a confirming channel on an existing connection.
    pub async fn open(connection: &Connection) -> Result<Self, PublishError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            _connection: None,
        })
    }

    /// The underlying channel (to declare topology on it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends a message, `mandatory`, and returns without waiting for the confirm.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, PublishError> {
        warren_shared::contract::check_short_strings(exchange, routing_key, &properties)?;
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?;
        let labels = route_labels(exchange, routing_key);
        metrics::counter!(names::PUBLISHES, labels.to_vec()).increment(1);
        Ok(PendingConfirm {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id,
            sent: Instant::now(),
            labels,
        })
    }

    /// Sends a message and waits until the broker has confirmed and routed it.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.start(exchange, routing_key, body, properties)
            .await?
            .wait()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::route_labels;
    use std::collections::BTreeSet;
    use std::time::Duration;
    use warren_shared::topology::{Destination, QueueType, Topology};

    fn labels(exchange: &str, routing_key: &str) -> Vec<(String, String)> {
        route_labels(exchange, routing_key)
            .iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect()
    }

    #[test]
    fn delayed_publishes_of_any_delay_share_one_label_set_per_destination() {
        let t = Topology::new("w", QueueType::Quorum);
        let mut seen = BTreeSet::new();
        for seconds in 1..=10_000 {
            for destination in [
                Destination::Task("video.process"),
                Destination::Event("player.dump"),
            ] {
                let (exchange, key) = t
                    .delayed_route(Duration::from_secs(seconds), destination)
                    .unwrap();
                seen.insert(labels(&exchange, &key));
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [
                labels(
                    "w.delay.0",
                    &format!("{}event.player.dump", "0.".repeat(27) + "1.")
                ),
                labels(
                    "w.delay.0",
                    &format!("{}task.video.process", "0.".repeat(27) + "1.")
                ),
            ]
        );
    }

    #[test]
    fn events_and_queues_are_labelled_by_their_name() {
        assert_eq!(
            labels("w.events", "player.dump"),
            [
                ("route".into(), "event".into()),
                ("destination".into(), "player.dump".into())
            ]
        );
        assert_eq!(
            labels("", "w.dlq.video.process"),
            [
                ("route".into(), "queue".into()),
                ("destination".into(), "w.dlq.video.process".into())
            ]
        );
    }
}
