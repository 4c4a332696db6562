//! What a delivery passes before its run starts, fleet-wide: its turn under the task's rate
//! limit (reserved before the claim, see [`crate::rate_limit`]) and a slot of its concurrency
//! key (taken in the claim's transaction, see [`crate::concurrency_key`]); and what a run
//! passes before a step with a rate limit of its own.

use crate::execute::{Executor, Requeue, copy_properties, keep_wake, later};
use crate::rate_limit::{self, RateLimit};
use crate::writes::{KeyTurn, ReserveStart, RunFields, WaitForStepTurn};
use chrono::Utc;
use lapin::message::Delivery;
use std::sync::Arc;
use std::time::Duration;
use warren_shared::contract::header;
use warren_shared::store::outbox;

impl Executor {
    /// A rate-limited task's delivery reserves its start (fleet-wide, in Postgres) before it
    /// claims its run: it sleeps until a start within [`rate_limit::HOLD`] and goes on
    /// (`true`), or, when the next free start is later, goes back through the delay queues until
    /// its turn is near and is acknowledged here (`false`). It holds no run yet either way.
    pub(crate) async fn wait_for_turn(
        &self,
        delivery: &Delivery,
        run: &Arc<RunFields>,
        limit: &RateLimit,
    ) -> Result<bool, Requeue> {
        let key = limit.key(&self.task_id, run.tenant.as_deref(), run.input.as_deref());
        let Some(back) = self.reserve_or_leave(key, limit).await? else {
            return Ok(true);
        };
        tracing::debug!(run = %run.id, ?back, "rate limited: back later");
        let attempt = u32::try_from(run.attempt).unwrap_or(1);
        let properties = copy_properties(delivery, run, attempt, &keep_wake(run));
        self.send_later(back, &delivery.data, properties).await?;
        Ok(false)
    }

    /// Before a step with a rate limit of its own: the same reservation, keyed by task and
    /// step (`task#step=name`, which no task's own key can be). A turn within the hold is slept for (`true`: run the step now); a later one parks
    /// the run in `waiting` until it is near, its earlier steps' checkpoints kept, as a `wait`
    /// step does: the copy that will wake it goes out first, then the wait commits (`false`:
    /// acknowledge the delivery).
    pub(crate) async fn wait_for_step_turn(
        &self,
        delivery: &Delivery,
        run: &Arc<RunFields>,
        step: &str,
        limit: &RateLimit,
    ) -> Result<bool, Requeue> {
        let counted = format!("{}#step={step}", self.task_id);
        let key = limit.key(&counted, run.tenant.as_deref(), run.input.as_deref());
        let Some(back) = self.reserve_or_leave(key, limit).await? else {
            return Ok(true);
        };
        if !self.still_owned(run).await? {
            return Ok(false);
        }
        tracing::debug!(run = %run.id, step, ?back, "step rate limited: the run waits for its turn");
        // Each wait its own token: only this wait's copy wakes the run.
        let token = format!("{step}#turn-{}", Utc::now().timestamp_micros());
        let wake = [(header::WAKE, token.clone())];
        let attempt = u32::try_from(run.attempt).unwrap_or(1);
        let properties = copy_properties(delivery, run, attempt, &wake);
        self.send_later(back, &delivery.data, properties).await?;
        self.writer
            .write(WaitForStepTurn {
                run: Arc::clone(run),
                step: step.to_owned(),
                token,
                until: later(back),
            })
            .await?;
        Ok(false)
    }

    /// Reserves a start of `key`: sleeps until it when it is within the hold (`None`), or says
    /// how much later to come back for it (`Some`).
    async fn reserve_or_leave(
        &self,
        key: String,
        limit: &RateLimit,
    ) -> Result<Option<Duration>, Requeue> {
        let reservation = self
            .writer
            .write(ReserveStart {
                key,
                interval: limit.interval(),
                hold: rate_limit::HOLD,
            })
            .await?;
        let wait = reservation.wait();
        if reservation.reserved {
            self.metrics.rate_limited(wait);
            tokio::time::sleep(wait).await;
            return Ok(None);
        }
        self.metrics.rate_limit_parked();
        // Back when its turn is near: a new reservation then finds a start within the hold.
        Ok(Some(
            wait.saturating_sub(rate_limit::HOLD / 2)
                .max(Duration::from_secs(1)),
        ))
    }

    /// The run's part in its task's concurrency key, if the task has one: its key, the key's
    /// limit, and the copy of its message to hold while it waits for a slot (back to this
    /// task, in the lane it came from).
    pub(crate) fn key_turn(&self, delivery: &Delivery, run: &Arc<RunFields>) -> Option<KeyTurn> {
        let limit = self.concurrency_key.as_ref()?;
        let key = limit.key(&self.task_id, run.tenant.as_deref(), run.input.as_deref());
        let attempt = u32::try_from(run.attempt).unwrap_or(1);
        // Back into its lane (its `warren-priority` header is copied with the rest).
        let (exchange, routing_key) = self.topology.task_route(&self.task_id);
        let held = outbox::Message {
            run_id: run.id,
            kind: outbox::Kind::KeyTurn,
            exchange,
            routing_key,
            body: delivery.data.clone(),
            properties: copy_properties(delivery, run, attempt, &[]),
        };
        Some(KeyTurn {
            key,
            max_running: i32::try_from(limit.limit()).unwrap_or(i32::MAX),
            held,
        })
    }
}
