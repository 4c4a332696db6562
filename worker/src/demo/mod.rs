//! Demo tasks taken from real pipelines, with simulated work (short sleeps, deterministic
//! outputs). `warren worker` runs them; the tests use them as specimens.

pub mod bulk;
pub mod player;
pub mod video;

use crate::task::Registry;
use std::time::Duration;

/// The demo tasks.
pub fn registry() -> Registry {
    Registry::new()
        .register(video::task())
        .register(player::task())
        .register(bulk::task())
}

/// Simulated work: a short sleep, `ms` long.
async fn work(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
