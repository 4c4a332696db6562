//! Serialises the deliveries of one run inside a replica: a duplicate that arrives while the
//! original is executing waits for it, then finds the run finished and is simply acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// One lock per run id in flight on this replica.
#[derive(Default)]
pub(crate) struct RunLocks {
    slots: Mutex<HashMap<Uuid, Slot>>,
}

/// Holds a run's lock; dropping it releases the lock and forgets the run when nobody waits.
pub(crate) struct RunGuard<'a> {
    locks: &'a RunLocks,
    run: Uuid,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RunLocks {
    /// Waits until no other delivery of `run` is being processed here, and takes the lock.
    pub(crate) async fn lock(&self, run: Uuid) -> RunGuard<'_> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(slots.entry(run).or_default())
        };
        let guard = slot.lock_owned().await;
        RunGuard {
            locks: self,
            run,
            guard: Some(guard),
        }
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let mut slots = self.locks.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.guard.take();
        // The map's own reference is the last one: nobody holds or awaits this run.
        if slots
            .get(&self.run)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_delivery_of_a_run_waits_for_the_first_and_the_map_empties() {
        let locks = Arc::new(RunLocks::default());
        let run = Uuid::new_v4();
        let first = locks.lock(run).await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _second = locks.lock(run).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the duplicate must wait");
        drop(first);
        waiter.await.unwrap();
        assert!(locks.slots.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn different_runs_do_not_wait_for_each_other() {
        let locks = RunLocks::default();
        let _a = locks.lock(Uuid::new_v4()).await;
        let _b = tokio::time::timeout(Duration::from_millis(50), locks.lock(Uuid::new_v4()))
            .await
            .expect("no waiting");
    }
}
