//! # warren-producer: publishing events that are never silently lost
//!
//! Every publish is persistent, `mandatory` and confirmed by the broker. It succeeds only when
//! the broker has taken responsibility for the message *and* routed it to at least one task queue:
//! a nack, a return (no task listens to the event) or a lost connection is an error the caller
//! sees. The worker uses the same [`Publisher`] for dead letters, so there is one publishing path.
//!
//! # Layout
//!
//! * [`Publisher`]: a confirming channel that sends a prepared message anywhere.
//! * [`Producer`]: the event API on top: `publish("video.process", &payload, options)`.
//! * [`relay`]: sends the transactional outbox's messages once the writes that caused them
//!   have committed (every worker replica runs one; the CLI relays what it wrote itself).

mod producer;
mod publisher;
pub mod relay;

pub use producer::{Producer, PublishOptions, Published};
pub use publisher::{PendingConfirm, PublishError, Publisher};
