//! A task's consumers, one per lane (only the normal one for a task without lanes), and taking
//! the next delivery for a free run slot from the lane [`crate::lane_pick`] chooses.
//!
//! Each lane consumes on a channel of its own, with its own [`Settler`]: acks are per channel,
//! and the settler coalesces them into `multiple` acks that cover every delivery of the channel
//! up to a tag. On one channel shared by several consumers, such an ack would also settle a
//! delivery of another lane that was pushed but not taken yet.
//!
//! Every lane gets the task's whole prefetch and its concurrency on top (see `runtime`'s
//! `message_budget`): the lane's runs in flight count against the prefetch until they are
//! acked, so a lane with less could not fill the task's run slots when it is the only one with
//! work, nor have a delivery ready when a slot frees while all its deliveries run. The message
//! memory budget counts each lane (see `budget`).

use crate::lane_pick::LanePicker;
use crate::settle::{Pending, Settler};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use warren_shared::metrics as names;
use warren_shared::priority::Priority;
use warren_shared::topology::{Topology, inspect_queue};

/// The lanes a task consumes, highest first.
pub(crate) fn of_task(lanes: bool) -> &'static [Priority] {
    if lanes {
        &Priority::HIGHEST_FIRST
    } else {
        &[Priority::Normal]
    }
}

/// The lanes of `task` to consume, highest first: all three for a task with lanes. For a task
/// without, the normal one, and any lane queue left from when it had lanes: unbound here, so
/// that nothing new reaches it, and consumed, so that no message marked high or low is
/// stranded there until someone deletes the queue. `channel` declares; each look at a lane
/// queue takes a channel of its own (a missing queue closes the channel that asked).
pub(crate) async fn to_consume(
    connection: &Connection,
    channel: &Channel,
    topology: &Topology,
    (task, lanes): (&str, bool),
) -> Result<Vec<Priority>, lapin::Error> {
    if lanes {
        return Ok(Priority::HIGHEST_FIRST.to_vec());
    }
    let mut consume = Vec::new();
    for priority in Priority::HIGHEST_FIRST {
        if priority != Priority::Normal {
            let queue = topology.lane_queue(task, priority);
            let probe = connection.create_channel().await?;
            let Some(left) = inspect_queue(&probe, &queue).await? else {
                continue;
            };
            warren_shared::amqp::close_channel(&probe, "inspected").await;
            topology.unbind_lane(channel, task, priority).await?;
            tracing::warn!(
                %queue,
                messages = left.messages,
                "task has no priority lanes, but this lane queue is left from when it had: unbound, and consumed; delete it once empty (docs/priorities.md)"
            );
        }
        consume.push(priority);
    }
    Ok(consume)
}

struct Lane {
    priority: Priority,
    channel: Channel,
    consumer: Consumer,
    settler: Settler,
    /// Deliveries taken from this lane for a run slot.
    taken: metrics::Counter,
    /// A delivery taken from the consumer's stream to see that the lane has work, not yet
    /// handed to a run (not yet known to the settler: nothing acks it meanwhile).
    ready: Option<Delivery>,
}

/// One task's lane consumers.
pub(crate) struct Lanes {
    lanes: Vec<Lane>,
    picker: LanePicker,
}

/// A delivery for a free run slot.
pub(crate) struct Taken {
    /// The delivery.
    pub(crate) delivery: Delivery,
    /// Its settlement, on its lane's channel.
    pub(crate) pending: Pending,
}

impl Lanes {
    /// Opens a channel per lane of `task`, sets its prefetch before `basic.consume` (a prefetch
    /// set afterwards would not apply to the consumer), and consumes the lane's queue. Returns
    /// the lanes and their settlers (flushed before the connection closes).
    pub(crate) async fn attach(
        connection: &Connection,
        topology: &Topology,
        (task, lanes): (&str, &[Priority]),
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<(Lanes, Vec<Settler>), lapin::Error> {
        let mut attached = Vec::new();
        let mut settlers = Vec::new();
        for &priority in lanes {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let queue = topology.lane_queue(task, priority);
            let tag = match priority {
                Priority::Normal => consumer_tag.to_owned(),
                other => format!("{consumer_tag}/{other}"),
            };
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            // The settling task holds a handle of the channel, which keeps it open for the
            // acks of runs that finish after their consumer has stopped (a drain).
            let (settler, _settling) = Settler::start(channel.clone(), &queue);
            settlers.push(settler.clone());
            attached.push(Lane {
                priority,
                channel,
                consumer,
                settler,
                taken: metrics::counter!(
                    names::LANE_DELIVERIES,
                    "task" => task.to_owned(),
                    "lane" => priority.as_str()
                ),
                ready: None,
            });
        }
        Ok((
            Lanes {
                lanes: attached,
                picker: LanePicker::default(),
            },
            settlers,
        ))
    }

    /// The next delivery for a free run slot: from the lane the picking rule chooses among
    /// those with a delivery ready, or else the first to arrive. An error when the broker took
    /// a consumer away.
    pub(crate) async fn next(&mut self) -> Result<Taken, String> {
        loop {
            for lane in &mut self.lanes {
                if lane.ready.is_none()
                    && let Some(item) = lane.consumer.next().now_or_never()
                {
                    lane.ready = Some(arrived(item)?);
                }
            }
            let lanes = &self.lanes;
            let chosen = self.picker.pick(|priority| {
                lanes
                    .iter()
                    .any(|l| l.priority == priority && l.ready.is_some())
            });
            if let Some(taken) = chosen.and_then(|priority| self.take(priority)) {
                return Ok(taken);
            }
            let arrivals = self.lanes.iter_mut().map(|lane| lane.consumer.next());
            let (item, index, _) = futures::future::select_all(arrivals).await;
            let delivery = arrived(item)?;
            if let Some(lane) = self.lanes.get_mut(index) {
                lane.ready = Some(delivery);
            }
        }
    }

    fn take(&mut self, priority: Priority) -> Option<Taken> {
        let lane = self.lanes.iter_mut().find(|l| l.priority == priority)?;
        let delivery = lane.ready.take()?;
        let pending = lane.settler.delivered(delivery.delivery_tag);
        lane.taken.increment(1);
        Some(Taken { delivery, pending })
    }

    /// Stops the broker from pushing more; what it already pushed (taken or not) is returned
    /// when the channels close, after the in-flight runs have settled theirs.
    pub(crate) async fn cancel(self) {
        for lane in self.lanes {
            let cancel = lane
                .channel
                .basic_cancel(lane.consumer.tag(), BasicCancelOptions::default());
            let _ = tokio::time::timeout(warren_shared::amqp::CLOSE_TIMEOUT, cancel).await;
        }
    }
}

/// What a consumer's stream gave: a delivery, or why the consumer is gone.
fn arrived(item: Option<Result<Delivery, lapin::Error>>) -> Result<Delivery, String> {
    match item {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the broker cancelled the consumer".into()),
    }
}
