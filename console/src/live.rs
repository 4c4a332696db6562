//! Live updates of runs for the console, as server-sent events.
//!
//! One poller per console process, not one per browser, and none of it on the workers' path:
//! while anyone is subscribed, it reads every `interval` the runs created in the last few
//! seconds (newest first, at most [`NEW_PER_POLL`]) and the status of the runs it tracks (the
//! [`TRACKED`] newest it has seen, and any run a subscriber watches by id), and broadcasts
//! what is new or changed. A subscriber that falls behind is told to reload (`resync`) rather
//! than being sent a partial picture. Nobody subscribed: no query at all.
//!
//! Under more than [`NEW_PER_POLL`] new runs per interval the live table shows the newest ones,
//! which are the ones a table sorted newest first shows anyway.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// New runs read per poll at most.
pub const NEW_PER_POLL: i64 = 500;
/// How many of the newest runs seen have their status followed.
pub const TRACKED: usize = 2_000;
/// How far back a poll looks for new runs (runs are created in transactions that commit a
/// little after their `created_at`).
const LOOK_BACK_SECONDS: f64 = 5.0;

/// A run as the live table shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunChange {
    /// First time this process reports the run.
    pub new: bool,
    /// Run id.
    pub id: Uuid,
    /// Task.
    pub task: String,
    /// Event.
    pub event: String,
    /// Status.
    pub status: String,
    /// Stage reached.
    pub stage: Option<String>,
    /// Attempt.
    pub attempt: i32,
    /// Tenant.
    pub tenant: Option<String>,
    /// Error code of a failed run.
    pub error_code: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Update {
    /// A run appeared or changed.
    Run(Arc<RunChange>),
}

/// The broadcast point, and the runs subscribers watch by id.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Update>,
    watched: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Cancelled when the console stops: open streams end, so that a graceful shutdown does
    /// not wait for browsers to leave.
    stopped: CancellationToken,
}

/// Holds a watch on one run for as long as it lives.
pub struct Watch {
    hub: Hub,
    run: Uuid,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = watched.get_mut(&self.run) {
            *count -= 1;
            if *count == 0 {
                watched.remove(&self.run);
            }
        }
    }
}

impl Hub {
    fn new(stopped: CancellationToken) -> Hub {
        Hub {
            sender: broadcast::channel(4_096).0,
            watched: Arc::default(),
            stopped,
        }
    }

    /// Cancelled when the console stops.
    pub fn stopped(&self) -> &CancellationToken {
        &self.stopped
    }

    /// Receives every update from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.sender.subscribe()
    }

    /// Follows `run`'s status even when it is not among the newest runs.
    pub fn watch(&self, run: Uuid) -> Watch {
        *self
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(run)
            .or_default() += 1;
        Watch {
            hub: self.clone(),
            run,
        }
    }

    fn watched(&self) -> Vec<Uuid> {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

/// Starts the poller; it ends with `stop`.
pub fn spawn(pool: deadpool_postgres::Pool, interval: Duration, stop: CancellationToken) -> Hub {
    let hub = Hub::new(stop.clone());
    let poller = Poller {
        hub: hub.clone(),
        pool,
        known: HashMap::new(),
        order: VecDeque::new(),
    };
    tokio::spawn(poller.run(interval, stop));
    hub
}

#[derive(PartialEq)]
struct Seen {
    status: String,
    stage: Option<String>,
    attempt: i32,
}

struct Poller {
    hub: Hub,
    pool: deadpool_postgres::Pool,
    known: HashMap<Uuid, Seen>,
    /// Known runs, oldest seen first, to forget beyond [`TRACKED`].
    order: VecDeque<Uuid>,
}

const COLUMNS: &str =
    "id, task, event, status, stage, attempt, tenant, error_code, created_at, finished_at";

impl Poller {
    async fn run(mut self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if self.hub.sender.receiver_count() == 0 {
                // Nobody to tell: forget, so that a later subscriber is not sent stale news.
                self.known.clear();
                self.order.clear();
                continue;
            }
            if let Err(e) = self.poll().await {
                tracing::debug!(error = %e, "live updates: a poll failed; the next one retries");
            }
        }
    }

    async fn poll(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let client = self.pool.get().await?;
        let fresh = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM runs
                     WHERE created_at > now() - make_interval(secs => $1)
                     ORDER BY created_at DESC LIMIT $2"
                ),
                &[&LOOK_BACK_SECONDS, &NEW_PER_POLL],
            )
            .await?;
        let mut ids: HashSet<Uuid> = self.known.keys().copied().collect();
        ids.extend(self.hub.watched());
        for id in fresh.iter().map(|row| row.get::<_, Uuid>(0)) {
            ids.remove(&id);
        }
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let followed = if ids.is_empty() {
            Vec::new()
        } else {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM runs WHERE id = ANY($1)"),
                    &[&ids],
                )
                .await?
        };
        drop(client);
        // Oldest first, so that a table that prepends shows the newest on top.
        for row in fresh.iter().rev().chain(followed.iter()) {
            let change = RunChange {
                new: false,
                id: row.get(0),
                task: row.get(1),
                event: row.get(2),
                status: row.get(3),
                stage: row.get(4),
                attempt: row.get(5),
                tenant: row.get(6),
                error_code: row.get(7),
                created_at: row.get(8),
                finished_at: row.get(9),
            };
            self.report(change);
        }
        while self.order.len() > TRACKED {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        Ok(())
    }

    fn report(&mut self, mut change: RunChange) {
        let seen = Seen {
            status: change.status.clone(),
            stage: change.stage.clone(),
            attempt: change.attempt,
        };
        match self.known.get(&change.id) {
            Some(before) if *before == seen => return,
            Some(_) => {}
            None => {
                change.new = true;
                self.order.push_back(change.id);
            }
        }
        self.known.insert(change.id, seen);
        // No receiver between the check and now is fine: the update is simply not wanted.
        let _ = self.hub.sender.send(Update::Run(Arc::new(change)));
    }
}
