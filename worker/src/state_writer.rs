//! Group commit: the state writes of many concurrent runs share one Postgres transaction.
//!
//! Every run hands its writes (claim, step checkpoint, failure) to one writer and awaits the
//! commit. A committer takes whatever has queued up, up to a batch limit, applies it in one
//! transaction and commits it. At low load a batch is a single write and nothing waits for
//! company; at high load one commit serves hundreds of runs. A message is acked only after the
//! batch holding its write has committed.
//!
//! A few committers, each with its own connection, take turns: the committer holding the turn
//! takes a batch and keeps the turn until its statements are applied, then hands it on while
//! its commit travels to the disk. So commits overlap the next batch's work, but batches are
//! applied one at a time, each holding everything that queued up during the one before: the
//! busier the worker, the larger the batches and the fewer the transactions (about 160 writes,
//! 80 jobs, per transaction at full load, where committers that each grabbed what was there
//! made one per 26 writes and spent Postgres's time on per-transaction overhead). A batch
//! retried after a failure goes without the turn. Writes of one run never race each other (a
//! run awaits each write before it makes the next).
//!
//! If a batch fails, each of its writes is retried alone, so one bad write fails only its own run.
//!
//! If Postgres cannot be reached, the writer holds its batch and tries again with backoff until
//! it can: runs wait with their messages in hand (nothing is handed back in a tight loop, no
//! retry budget is spent), and [`StateWriter::healthy`] tells the consumers to take no new
//! messages meanwhile.

use crate::writes::Batchable;
use deadpool_postgres::{Pool, Transaction};
use futures::future::{BoxFuture, join_all};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use warren_shared::metrics as names;
use warren_shared::store::StoreError;

/// The most writes one transaction carries.
pub(crate) const MAX_BATCH: usize = 512;

/// Committers taking turns (each on its own pooled connection): one applying a batch, the
/// others committing theirs.
pub(crate) const COMMITTERS: usize = 3;

/// Why a write did not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The write itself was refused (illegal transition, conflicting run state, query error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Postgres could not be reached or the transaction could not commit.
    #[error("cannot commit to Postgres: {0}")]
    Unavailable(String),
    /// The writer has stopped (the worker is shutting down).
    #[error("the state writer has stopped")]
    Stopped,
}

/// One write: a few statements on the batch's transaction, and what they return.
pub(crate) trait Write: Send + 'static {
    type Output: Send + 'static;
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
    ) -> BoxFuture<'a, Result<Self::Output, StoreError>>;

    /// The write as one of the set-based forms of the hot path, if it has one.
    fn batchable(&self) -> Option<Batchable<'_>> {
        None
    }

    /// Its output once the set-based form has recorded it.
    fn batched_output(&self) -> Option<Self::Output> {
        None
    }

    /// A row other runs' writes lock too (a parent's join, for a child's end): writes are
    /// applied in this order within a batch, so that replicas lock such rows in one order and
    /// do not deadlock each other's batches.
    fn lock_key(&self) -> Option<uuid::Uuid> {
        None
    }

    /// The concurrency key whose row the write locks (a keyed claim), with the key's limit: a
    /// batch locks all its keys' rows first, in one order (the writes' statements are
    /// pipelined, so each would otherwise take its lock whenever its turn in the pipeline came).
    fn key_row(&self) -> Option<(&str, i32)> {
        None
    }
}

/// A queued write with its reply channel, type-erased so one queue carries every kind.
trait Queued: Send {
    fn apply<'a>(&'a mut self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<(), ()>>;
    fn batchable(&self) -> Option<Batchable<'_>>;
    fn lock_key(&self) -> Option<uuid::Uuid>;
    fn key_row(&self) -> Option<(&str, i32)>;
    /// The set-based form recorded it.
    fn batched(&mut self);
    /// Recorded in this transaction already.
    fn settled(&self) -> bool;
    /// Forgets what a rolled-back transaction recorded.
    fn reset(&mut self);
    fn committed(self: Box<Self>);
    fn failed(self: Box<Self>, error: WriteError);
}

struct Entry<W: Write> {
    write: W,
    result: Option<Result<W::Output, StoreError>>,
    reply: oneshot::Sender<Result<W::Output, WriteError>>,
}

impl<W: Write> Queued for Entry<W> {
    fn apply<'a>(&'a mut self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<(), ()>> {
        Box::pin(async move {
            let result = self.write.apply(tx).await;
            let ok = result.is_ok();
            self.result = Some(result);
            if ok { Ok(()) } else { Err(()) }
        })
    }

    fn batchable(&self) -> Option<Batchable<'_>> {
        self.write.batchable()
    }

    fn lock_key(&self) -> Option<uuid::Uuid> {
        self.write.lock_key()
    }

    fn key_row(&self) -> Option<(&str, i32)> {
        self.write.key_row()
    }

    fn batched(&mut self) {
        self.result = self.write.batched_output().map(Ok);
    }

    fn settled(&self) -> bool {
        self.result.is_some()
    }

    fn reset(&mut self) {
        self.result = None;
    }

    fn committed(self: Box<Self>) {
        let result = match self.result {
            Some(Ok(output)) => Ok(output),
            Some(Err(e)) => Err(WriteError::Store(e)),
            None => Err(WriteError::Unavailable("write was not applied".into())),
        };
        let _ = self.reply.send(result);
    }

    fn failed(self: Box<Self>, error: WriteError) {
        let error = match self.result {
            Some(Err(e)) => WriteError::Store(e),
            _ => error,
        };
        let _ = self.reply.send(Err(error));
    }
}

/// The handle runs use to write; cheap to clone.
#[derive(Clone)]
pub(crate) struct StateWriter {
    queue: mpsc::UnboundedSender<Box<dyn Queued>>,
    healthy: watch::Receiver<bool>,
}

impl StateWriter {
    /// Starts the committers on `pool`. They stop when every handle is dropped.
    pub(crate) fn start(pool: Pool) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let (health, healthy) = watch::channel(true);
        let receiver = Arc::new(Mutex::new(receiver));
        let health = Arc::new(health);
        let committers: Vec<_> = (0..COMMITTERS)
            .map(|_| {
                tokio::spawn(run(
                    pool.clone(),
                    Arc::clone(&receiver),
                    Arc::clone(&health),
                ))
            })
            .collect();
        let task = tokio::spawn(async move {
            join_all(committers).await;
        });
        (StateWriter { queue, healthy }, task)
    }

    /// Whether Postgres is reachable, as far as the last commit knows, for readers that must
    /// not keep the writer alive (the writer stops when the last `StateWriter` is dropped).
    pub(crate) fn health(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// Returns once Postgres is reachable (at once, unless the last commit found it down).
    pub(crate) async fn healthy(&self) {
        let mut healthy = self.healthy.clone();
        let _ = healthy.wait_for(|up| *up).await;
    }

    /// Queues a write and waits until its transaction has committed.
    pub(crate) async fn write<W: Write>(&self, write: W) -> Result<W::Output, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(Entry {
                write,
                result: None,
                reply,
            }))
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn run(
    pool: Pool,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Box<dyn Queued>>>>,
    health: Arc<watch::Sender<bool>>,
) {
    let mut batch: Vec<Box<dyn Queued>> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Whoever holds the receiver takes what has queued up, and keeps it (the turn) until
        // its batch's statements are applied.
        let mut queue = receiver.lock().await;
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        let mut turn = Some(queue);
        let size = batch.len();
        let mut pause = OUTAGE_FIRST_PAUSE;
        let outcome = loop {
            match commit(&pool, &mut batch, turn.take()).await {
                Err(CommitError::Unreachable(reason)) => {
                    if *health.borrow() {
                        tracing::error!(%reason, "Postgres unreachable: holding {size} write(s) and pausing consumption");
                        let _ = health.send(false);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(OUTAGE_MAX_PAUSE);
                }
                other => break other,
            }
        };
        if !*health.borrow() {
            tracing::info!("Postgres reachable again: consuming");
            let _ = health.send(true);
        }
        if let Err(CommitError::Ambiguous(reason)) = &outcome {
            // The transaction may have committed: applying it again would record its writes
            // twice. Its runs hand their messages back instead, and their redeliveries find
            // whatever Postgres holds (a committed checkpoint is never run again).
            tracing::warn!(%reason, size, "commit outcome unknown; the batch's messages go back to the queue");
            let error =
                WriteError::Unavailable(format!("the commit's outcome is unknown: {reason}"));
            batch
                .drain(..)
                .for_each(|entry| entry.failed(error.clone_for_reply()));
            // Postgres failed mid-commit: until it answers again the replica is not ready and
            // takes no new messages. There is no batch left to retry, so probe for it.
            wait_until_reachable(&pool, &health, reason).await;
            continue;
        }
        match outcome.map_err(|e| WriteError::Unavailable(e.to_string())) {
            Ok(()) => batch.drain(..).for_each(|entry| entry.committed()),
            Err(error) if size == 1 => {
                batch
                    .drain(..)
                    .for_each(|entry| entry.failed(error.clone_for_reply()));
            }
            Err(error) => {
                tracing::debug!(size, %error, "batch failed; committing its writes one by one");
                for entry in batch.drain(..) {
                    let mut single = vec![entry];
                    match commit(&pool, &mut single, None)
                        .await
                        .map_err(|e| WriteError::Unavailable(e.to_string()))
                    {
                        Ok(()) => single.drain(..).for_each(|e| e.committed()),
                        Err(error) => single
                            .drain(..)
                            .for_each(|e| e.failed(error.clone_for_reply())),
                    }
                }
            }
        }
    }
}

impl WriteError {
    /// A copy to send to each write of a failed batch (the store error, if any, is per write).
    fn clone_for_reply(&self) -> WriteError {
        match self {
            WriteError::Stopped => WriteError::Stopped,
            other => WriteError::Unavailable(other.to_string()),
        }
    }
}

/// After a commit whose outcome is unknown (Postgres stopped answering, or the connection
/// dropped, during its `COMMIT`): says the replica is unhealthy at once when Postgres had
/// stopped answering (it has been silent for [`WRITE_TIMEOUT`] already), or once a probe fails,
/// and healthy again once a probe answers.
async fn wait_until_reachable(pool: &Pool, health: &watch::Sender<bool>, reason: &str) {
    let silent = reason.contains("did not answer");
    let mut pause = OUTAGE_FIRST_PAUSE;
    let mut first = true;
    loop {
        if !(first && silent) {
            let probe = async {
                let client = pool.get().await.ok()?;
                client.simple_query("SELECT 1").await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(WRITE_TIMEOUT, probe).await {
                break;
            }
        }
        first = false;
        if *health.borrow() {
            tracing::error!(%reason, "Postgres unreachable after a commit of unknown outcome: pausing consumption");
            let _ = health.send(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(OUTAGE_MAX_PAUSE);
    }
    if !*health.borrow() {
        tracing::info!("Postgres reachable again: consuming");
        let _ = health.send(true);
    }
}

/// First and longest pause between attempts to reach Postgres during an outage.
const OUTAGE_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
const OUTAGE_MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum CommitError {
    /// Postgres could not be reached or dropped the connection: try the same batch again later.
    #[error("{0}")]
    Unreachable(String),
    /// The connection was lost during the COMMIT itself: the transaction may or may not have
    /// committed, so it must not be applied again.
    #[error("{0}")]
    Ambiguous(String),
    /// Postgres refused a write: commit the writes one by one to find it.
    #[error("{0}")]
    Refused(String),
}

impl CommitError {
    fn from_db(error: tokio_postgres::Error) -> Self {
        let connection_lost = error.is_closed()
            || match error.code() {
                // Class 08 (connection exception) and 57P01..57P03 (shutdown, crash, starting up).
                Some(code) => code.code().starts_with("08") || code.code().starts_with("57P0"),
                None => error.as_db_error().is_none(),
            };
        if connection_lost {
            CommitError::Unreachable(error.to_string())
        } else {
            CommitError::Refused(error.to_string())
        }
    }

    fn from_store(error: warren_shared::store::StoreError) -> Self {
        match error {
            warren_shared::store::StoreError::Db(e) => CommitError::from_db(e),
            other => CommitError::Refused(other.to_string()),
        }
    }
}

/// The receiver, held by the committer whose turn it is to take a batch.
type Turn<'a> = tokio::sync::MutexGuard<'a, mpsc::UnboundedReceiver<Box<dyn Queued>>>;

/// How long a batch may wait for Postgres: for a connection, then for its statements and its
/// commit. Commits take milliseconds; a Postgres that has not answered one in 10 s is not
/// serving (paused, or its packets lost), and the replica must say so (unready, consuming
/// nothing) rather than wait with it. Postgres's own statement timeout cannot do this: a
/// server that does not run does not time anything out, and its kernel still acknowledges
/// the packets, so TCP timeouts do not fire either.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Applies every write of the batch in one transaction and commits it, within
/// [`WRITE_TIMEOUT`]. A connection that has not answered in time is closed rather than handed
/// back to the pool, where the next batch would wait on it too; the transaction then counts as
/// never applied, or as of unknown outcome if its `COMMIT` had been sent.
async fn commit(
    pool: &Pool,
    batch: &mut [Box<dyn Queued>],
    turn: Option<Turn<'_>>,
) -> Result<(), CommitError> {
    let unanswered = || {
        format!(
            "Postgres did not answer within {}s",
            WRITE_TIMEOUT.as_secs()
        )
    };
    let mut client = tokio::time::timeout(WRITE_TIMEOUT, pool.get())
        .await
        .map_err(|_| CommitError::Unreachable(unanswered()))?
        .map_err(|e| CommitError::Unreachable(e.to_string()))?;
    let committing = std::sync::atomic::AtomicBool::new(false);
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        apply_and_commit(&mut client, batch, turn, &committing),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(if committing.load(std::sync::atomic::Ordering::Relaxed) {
                CommitError::Ambiguous(unanswered())
            } else {
                CommitError::Unreachable(unanswered())
            })
        }
    }
}

/// [`commit`]'s transaction, on `client`; `committing` is set once the `COMMIT` is sent.
async fn apply_and_commit(
    client: &mut deadpool_postgres::Client,
    batch: &mut [Box<dyn Queued>],
    turn: Option<Turn<'_>>,
    committing: &std::sync::atomic::AtomicBool,
) -> Result<(), CommitError> {
    // Whatever an earlier, rolled-back try recorded is void.
    batch.iter_mut().for_each(|entry| entry.reset());
    let tx = client.transaction().await.map_err(CommitError::from_db)?;
    let writes = batch.len() as u64;
    // Every write at once, so that tokio-postgres pipelines the statements: the hot path's
    // set-based forms, and the plain form for the rest. A single write takes the plain path, so
    // that its own error (a conflict, say) reaches it as such.
    let sets = batch.len() > 1;
    let (recorded, mut failed) = {
        let (set_based, mut plain): (Vec<_>, Vec<_>) = batch
            .iter_mut()
            .enumerate()
            .partition(|(_, entry)| sets && entry.batchable().is_some());
        plain.sort_by_key(|(_, entry)| entry.lock_key());
        let mut claims = Vec::new();
        let mut steps = Vec::new();
        for (i, entry) in &set_based {
            match entry.batchable() {
                Some(Batchable::Claim(run)) => claims.push((*i, run)),
                Some(Batchable::Step(step)) => steps.push((*i, step)),
                None => {}
            }
        }
        let runs: Vec<_> = claims.iter().map(|(_, run)| *run).collect();
        let done: Vec<_> = steps.iter().map(|(_, step)| *step).collect();
        let keys: Vec<(&str, i32)> = plain.iter().filter_map(|(_, e)| e.key_row()).collect();
        if keys.len() > 1 {
            warren_shared::store::concurrency::lock_keys(&tx, &keys)
                .await
                .map_err(CommitError::from_store)?;
        }
        let (recorded, plain_results) = futures::join!(
            crate::writes::apply_batched(&tx, &runs, &done),
            join_all(plain.iter_mut().map(|(_, entry)| entry.apply(&tx))),
        );
        // The entries the set-based forms recorded: new runs' claims, and every step.
        let recorded = recorded.map(|inserted| {
            let claimed = claims
                .iter()
                .zip(inserted)
                .filter(|(_, inserted)| *inserted)
                .map(|((i, _), _)| *i);
            claimed
                .chain(steps.iter().map(|(i, _)| *i))
                .collect::<Vec<_>>()
        });
        (recorded, plain_results.iter().any(Result::is_err))
    };
    match recorded {
        Ok(indices) => indices.into_iter().for_each(|i| batch[i].batched()),
        Err(_) => failed = true,
    }
    if !failed {
        // Claims whose run was there already take the full claim.
        let results = join_all(
            batch
                .iter_mut()
                .filter(|entry| !entry.settled())
                .map(|entry| entry.apply(&tx)),
        )
        .await;
        failed = results.iter().any(Result::is_err);
    }
    // The statements are applied (or failed): the next batch may start.
    drop(turn);
    if failed {
        // A rollback that fails too means the connection itself is gone.
        let lost = tx.rollback().await.is_err();
        return Err(if lost {
            CommitError::Unreachable("the connection was lost mid-transaction".into())
        } else {
            CommitError::Refused("a write in the batch failed".into())
        });
    }
    committing.store(true, std::sync::atomic::Ordering::Relaxed);
    tx.commit()
        .await
        .map_err(|e| match CommitError::from_db(e) {
            CommitError::Unreachable(reason) => CommitError::Ambiguous(reason),
            other => other,
        })?;
    metrics::counter!(names::STATE_COMMITS).increment(1);
    metrics::counter!(names::STATE_WRITES).increment(writes);
    Ok(())
}
