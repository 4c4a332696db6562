//! Settling a channel's deliveries, with consecutive acks coalesced into one `basic.ack` that
//! carries `multiple`.
//!
//! Every ack is a frame the broker parses and, on a quorum queue, a command through the queue's
//! log: with one ack per message, acks were close to a third of the broker's work (the raw
//! broker moves about 40 % more messages per second when its consumer coalesces its acks:
//! `docs/benchmarks.md`). A
//! group commit settles hundreds of runs at once, so their acks come in bursts: the settler
//! takes each burst and sends one frame for every run of consecutive settled deliveries.
//!
//! A `multiple` ack covers every delivery up to its tag, so it is only sent for a prefix of the
//! channel's deliveries that are all settled. A delivery settled while an earlier one is still
//! running waits for it, but never longer than [`HOLD`], and not at all once the earlier one has
//! run for longer than that: then it is acked alone, so that a long run does not keep the acks
//! of the runs after it from the broker (whose prefetch would stop deliveries meanwhile).
//! Requeues (negative acks) are sent one by one, in order with the acks. A delivery whose
//! [`Pending`] is dropped unsettled (its handler panicked) is requeued, so it never pins the
//! channel's acks behind it.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a settled delivery waits for an earlier one before it is settled alone.
pub const HOLD: Duration = Duration::from_millis(20);

/// Hands deliveries' fates to the channel's settling task. Cheap to clone.
#[derive(Clone)]
pub struct Settler {
    events: mpsc::UnboundedSender<Event>,
}

/// A delivery taken from the consumer and not settled yet. Dropping it unsettled requeues it.
pub struct Pending {
    settler: Settler,
    tag: u64,
    settled: bool,
}

enum Event {
    Delivered(u64),
    Settled(u64, Fate),
    /// Send everything settled now, held or not, and say when it is sent.
    Flush(oneshot::Sender<()>),
}

/// What becomes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ack,
    Requeue,
}

/// The deliveries the task knows of and has not sent a frame for yet.
#[derive(Debug, Default)]
struct Ledger {
    /// Unsettled deliveries, with when they were taken from the consumer.
    unsettled: BTreeMap<u64, Instant>,
    /// Settled deliveries, with what becomes of them and when they were settled.
    settled: BTreeMap<u64, (Fate, Instant)>,
}

impl Ledger {
    fn deliver(&mut self, tag: u64, now: Instant) {
        self.unsettled.insert(tag, now);
    }

    fn settle(&mut self, tag: u64, fate: Fate, now: Instant) {
        self.unsettled.remove(&tag);
        self.settled.insert(tag, (fate, now));
    }

    /// When the held deliveries (settled, behind an unsettled one) must go out alone: once the
    /// first of them has waited [`HOLD`], or the unsettled one has run for that long.
    fn deadline(&self) -> Option<Instant> {
        let oldest_held = self.settled.values().map(|(_, at)| *at).min()?;
        let floor = self.unsettled.values().next().copied();
        Some(floor.map_or(oldest_held, |at| at.min(oldest_held)) + HOLD)
    }
}

impl Settler {
    /// Starts the task that settles `channel`'s deliveries (`label` names it in logs). It ends,
    /// having sent everything it was given, once every `Settler` and [`Pending`] of it is
    /// dropped. It holds a handle of the channel: the channel stays open until then.
    pub fn start(channel: Channel, label: &str) -> (Settler, JoinHandle<()>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(channel, receiver, label.to_owned()));
        (Settler { events }, task)
    }

    /// A delivery was taken from the consumer. Must be called in delivery order.
    pub fn delivered(&self, tag: u64) -> Pending {
        let _ = self.events.send(Event::Delivered(tag));
        Pending {
            settler: self.clone(),
            tag,
            settled: false,
        }
    }

    /// Sends every settled delivery's frame now, including those held behind a running one
    /// (before a connection is closed with runs still in flight). Returns once they are sent.
    pub async fn flush(&self) {
        let (sent, done) = oneshot::channel();
        if self.events.send(Event::Flush(sent)).is_ok() {
            let _ = done.await;
        }
    }

    fn settle(&self, tag: u64, fate: Fate) {
        let _ = self.events.send(Event::Settled(tag, fate));
    }
}

impl Pending {
    /// The delivery is done with: acknowledge it.
    pub fn ack(mut self) {
        self.settled = true;
        self.settler.settle(self.tag, Fate::Ack);
    }

    /// The delivery goes back to the queue.
    pub fn requeue(mut self) {
        self.settled = true;
        self.settler.settle(self.tag, Fate::Requeue);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.settled {
            self.settler.settle(self.tag, Fate::Requeue);
        }
    }
}

async fn run(channel: Channel, mut receiver: mpsc::UnboundedReceiver<Event>, label: String) {
    let mut ledger = Ledger::default();
    let mut events = Vec::with_capacity(1024);
    loop {
        let wake = ledger.deadline();
        let open = tokio::select! {
            taken = receiver.recv_many(&mut events, 1024) => taken > 0,
            () = sleep_until(wake) => true,
        };
        let now = Instant::now();
        let mut flushed = Vec::new();
        for event in events.drain(..) {
            match event {
                Event::Delivered(tag) => ledger.deliver(tag, now),
                Event::Settled(tag, fate) => ledger.settle(tag, fate, now),
                Event::Flush(done) => flushed.push(done),
            }
        }
        // Once nothing more can come, or when asked, nothing settled is held any longer.
        let everything = !open || !flushed.is_empty();
        let frames = frames(&mut ledger, now, everything);
        let mut failed = 0;
        for frame in &frames {
            if let Err(e) = send(&channel, *frame).await {
                if failed == 0 {
                    tracing::warn!(channel = %label, error = %e, ?frame, "settling deliveries failed; the broker redelivers them");
                }
                failed += 1;
            }
        }
        if failed > 1 {
            tracing::warn!(channel = %label, failed, of = frames.len(), "settling frames failed");
        }
        flushed.into_iter().for_each(|done| {
            let _ = done.send(());
        });
        if !open {
            break;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One frame to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Every outstanding delivery up to this tag.
    AckUpTo(u64),
    Ack(u64),
    Requeue(u64),
}

async fn send(channel: &Channel, frame: Frame) -> Result<(), lapin::Error> {
    let (tag, multiple) = match frame {
        Frame::AckUpTo(tag) => (tag, true),
        Frame::Ack(tag) => (tag, false),
        Frame::Requeue(tag) => {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            return channel.basic_nack(tag, requeue).await;
        }
    };
    channel.basic_ack(tag, BasicAckOptions { multiple }).await
}

/// The frames that settle what can be settled at `now`, removing it from the ledger: the
/// settled deliveries before the first unsettled one (consecutive acks as one frame), then,
/// one by one, those behind it that have waited [`HOLD`], or all of them when the unsettled one
/// has run that long or `everything` is asked for.
fn frames(ledger: &mut Ledger, now: Instant, everything: bool) -> Vec<Frame> {
    let mut frames = Vec::new();
    let floor = ledger
        .unsettled
        .first_key_value()
        .map(|(&tag, &at)| (tag, at));
    let mut acked_up_to = None;
    while let Some((&tag, &(fate, _))) = ledger.settled.first_key_value() {
        if floor.is_some_and(|(floor, _)| tag > floor) {
            break;
        }
        match fate {
            Fate::Ack => acked_up_to = Some(tag),
            Fate::Requeue => {
                frames.extend(acked_up_to.take().map(Frame::AckUpTo));
                frames.push(Frame::Requeue(tag));
            }
        }
        ledger.settled.pop_first();
    }
    frames.extend(acked_up_to.map(Frame::AckUpTo));
    let stuck = floor.is_some_and(|(_, since)| now.duration_since(since) >= HOLD);
    let waited = |at: Instant| everything || stuck || now.duration_since(at) >= HOLD;
    if ledger.settled.values().any(|&(_, at)| waited(at)) {
        ledger.settled.retain(|&tag, &mut (fate, at)| {
            if !waited(at) {
                return true;
            }
            frames.push(match fate {
                Fate::Ack => Frame::Ack(tag),
                Fate::Requeue => Frame::Requeue(tag),
            });
            false
        });
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger of deliveries taken at `at`, settled (at `at`) as given.
    fn ledger(states: &[(u64, Option<Fate>)], at: Instant) -> Ledger {
        let mut ledger = Ledger::default();
        for &(tag, fate) in states {
            ledger.deliver(tag, at);
            if let Some(fate) = fate {
                ledger.settle(tag, fate, at);
            }
        }
        ledger
    }

    fn pending(ledger: &Ledger) -> usize {
        ledger.unsettled.len() + ledger.settled.len()
    }

    #[test]
    fn consecutive_acks_become_one_frame() {
        let now = Instant::now();
        let mut s = ledger(
            &[
                (1, Some(Fate::Ack)),
                (2, Some(Fate::Ack)),
                (3, Some(Fate::Ack)),
            ],
            now,
        );
        assert_eq!(frames(&mut s, now, false), [Frame::AckUpTo(3)]);
        assert_eq!(pending(&s), 0);
    }

    #[test]
    fn a_requeue_splits_the_acks_around_it_and_keeps_its_place() {
        let now = Instant::now();
        let mut s = ledger(
            &[
                (1, Some(Fate::Ack)),
                (2, Some(Fate::Requeue)),
                (3, Some(Fate::Ack)),
                (4, Some(Fate::Ack)),
            ],
            now,
        );
        assert_eq!(
            frames(&mut s, now, false),
            [Frame::AckUpTo(1), Frame::Requeue(2), Frame::AckUpTo(4)]
        );
    }

    #[test]
    fn acks_behind_an_unsettled_delivery_wait_for_it() {
        let now = Instant::now();
        let mut s = ledger(
            &[(1, Some(Fate::Ack)), (2, None), (3, Some(Fate::Ack))],
            now,
        );
        // Never past the unsettled delivery 2: a multiple ack would settle it too.
        assert_eq!(frames(&mut s, now, false), [Frame::AckUpTo(1)]);
        assert_eq!(pending(&s), 2);
        // Once delivery 2 is settled, everything goes in one frame.
        s.settle(2, Fate::Ack, now);
        assert_eq!(frames(&mut s, now, false), [Frame::AckUpTo(3)]);
    }

    #[test]
    fn acks_held_too_long_behind_an_unsettled_delivery_go_alone() {
        let start = Instant::now();
        let mut s = ledger(&[(1, None)], start);
        s.deliver(2, start + HOLD / 2);
        s.deliver(3, start + HOLD / 2);
        s.settle(2, Fate::Ack, start + HOLD / 2);
        s.settle(3, Fate::Requeue, start + HOLD / 2);
        assert_eq!(
            s.deadline(),
            Some(start + HOLD),
            "the running one's age counts"
        );
        assert!(frames(&mut s, start + HOLD / 2, false).is_empty());
        assert_eq!(
            frames(&mut s, start + HOLD, false),
            [Frame::Ack(2), Frame::Requeue(3)]
        );
        assert_eq!(pending(&s), 1, "the unsettled delivery stays");
    }

    #[test]
    fn a_flush_sends_held_acks_at_once() {
        let now = Instant::now();
        let mut s = ledger(&[(1, None), (2, Some(Fate::Ack))], now);
        assert_eq!(frames(&mut s, now, true), [Frame::Ack(2)]);
    }

    #[test]
    fn nothing_is_acked_before_it_is_settled() {
        let now = Instant::now();
        let mut s = ledger(&[(1, None), (2, None)], now);
        assert!(frames(&mut s, now + HOLD * 10, true).is_empty());
        assert_eq!(pending(&s), 2);
        assert_eq!(s.deadline(), None);
    }
}
