//! Settling a channel's deliveries, with consecutive acks coalesced into one `basic.ack` that
//! carries `multiple`.
//!
//! Every ack is a frame the broker parses and, on a quorum queue, a command through the queue's
//! log: with one ack per message, acks were close to a third of the broker's work (the raw
//! broker moved 35 % more messages per second when its consumer acked fifty at a time). A
//! group commit settles hundreds of runs at once, so their acks come in bursts: the settler
//! takes each burst and sends one frame for every run of consecutive settled deliveries.
//!
//! A `multiple` ack covers every delivery up to its tag, so it is only sent for a prefix of the
//! channel's deliveries that are all settled. A delivery settled while an earlier one is still
//! running waits for it, but never longer than [`HOLD`]: then it is acked alone, so that a long
//! run does not keep the acks of the runs after it from the broker (whose prefetch would stop
//! deliveries meanwhile). Requeues (negative acks) are sent one by one, in order with the acks.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest a settled delivery waits for an earlier one before it is settled alone.
pub const HOLD: Duration = Duration::from_millis(20);

/// Hands deliveries' fates to the channel's settling task. Cheap to clone.
#[derive(Clone)]
pub struct Settler {
    events: mpsc::UnboundedSender<Event>,
}

enum Event {
    Delivered(u64),
    Settled(u64, Fate),
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
    unsettled: BTreeSet<u64>,
    /// Settled deliveries, with what becomes of them and when they were settled.
    settled: BTreeMap<u64, (Fate, Instant)>,
}

impl Ledger {
    fn apply(&mut self, event: Event, now: Instant) {
        match event {
            Event::Delivered(tag) => {
                self.unsettled.insert(tag);
            }
            Event::Settled(tag, fate) => {
                self.unsettled.remove(&tag);
                self.settled.insert(tag, (fate, now));
            }
        }
    }

    /// When the longest-held settled delivery was settled (after [`frames`], every settled
    /// delivery left waits behind an unsettled one).
    fn oldest_held(&self) -> Option<Instant> {
        self.settled.values().map(|(_, at)| *at).min()
    }
}

impl Settler {
    /// Starts the task that settles `channel`'s deliveries. It ends, having sent everything it
    /// was given, once every `Settler` of it is dropped.
    pub fn start(channel: Channel) -> (Settler, JoinHandle<()>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(channel, receiver));
        (Settler { events }, task)
    }

    /// A delivery was taken from the consumer. Must be called in delivery order, before the
    /// delivery is settled.
    pub fn delivered(&self, tag: u64) {
        let _ = self.events.send(Event::Delivered(tag));
    }

    /// The delivery is done with: acknowledge it.
    pub fn ack(&self, tag: u64) {
        let _ = self.events.send(Event::Settled(tag, Fate::Ack));
    }

    /// The delivery goes back to the queue.
    pub fn requeue(&self, tag: u64) {
        let _ = self.events.send(Event::Settled(tag, Fate::Requeue));
    }
}

async fn run(channel: Channel, mut receiver: mpsc::UnboundedReceiver<Event>) {
    let mut ledger = Ledger::default();
    let mut events = Vec::with_capacity(1024);
    loop {
        let wake = ledger.oldest_held().map(|at| at + HOLD);
        let open = tokio::select! {
            taken = receiver.recv_many(&mut events, 1024) => taken > 0,
            () = sleep_until(wake) => true,
        };
        let now = Instant::now();
        for event in events.drain(..) {
            ledger.apply(event, now);
        }
        // Once nothing more can come, whatever is left is settled at once.
        let cutoff = if open {
            now.checked_sub(HOLD)
        } else {
            Some(now)
        };
        for frame in frames(&mut ledger, cutoff) {
            if let Err(e) = send(&channel, frame).await {
                tracing::warn!(error = %e, ?frame, "settling deliveries failed; the broker redelivers them");
            }
        }
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

/// The frames that settle what can be settled now, removing it from the ledger: the settled
/// deliveries before the first unsettled one (consecutive acks as one frame), then those behind
/// it that were settled at or before `cutoff`, one by one.
fn frames(ledger: &mut Ledger, cutoff: Option<Instant>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let floor = ledger.unsettled.first().copied();
    let mut acked_up_to = None;
    while let Some((&tag, &(fate, _))) = ledger.settled.first_key_value() {
        if floor.is_some_and(|floor| tag > floor) {
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
    if let Some(cutoff) = cutoff
        && ledger.oldest_held().is_some_and(|at| at <= cutoff)
    {
        ledger.settled.retain(|&tag, &mut (fate, at)| {
            if at > cutoff {
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

    fn ledger(states: &[(u64, Option<Fate>)], at: Instant) -> Ledger {
        let mut ledger = Ledger::default();
        for &(tag, fate) in states {
            ledger.apply(Event::Delivered(tag), at);
            if let Some(fate) = fate {
                ledger.apply(Event::Settled(tag, fate), at);
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
        assert_eq!(frames(&mut s, None), [Frame::AckUpTo(3)]);
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
            frames(&mut s, None),
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
        assert_eq!(frames(&mut s, now.checked_sub(HOLD)), [Frame::AckUpTo(1)]);
        assert_eq!(pending(&s), 2);
        // Once delivery 2 is settled, everything goes in one frame.
        s.apply(Event::Settled(2, Fate::Ack), now);
        assert_eq!(frames(&mut s, None), [Frame::AckUpTo(3)]);
    }

    #[test]
    fn acks_held_too_long_behind_an_unsettled_delivery_go_alone() {
        let now = Instant::now();
        let mut s = ledger(
            &[(1, None), (2, Some(Fate::Ack)), (3, Some(Fate::Requeue))],
            now,
        );
        assert_eq!(
            frames(&mut s, Some(now)),
            [Frame::Ack(2), Frame::Requeue(3)]
        );
        assert_eq!(pending(&s), 1, "the unsettled delivery stays");
    }

    #[test]
    fn nothing_is_acked_before_it_is_settled() {
        let now = Instant::now();
        let mut s = ledger(&[(1, None), (2, None)], now);
        assert!(frames(&mut s, Some(now)).is_empty());
        assert_eq!(pending(&s), 2);
    }
}
