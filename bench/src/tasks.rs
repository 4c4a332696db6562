//! The benchmark's tasks: no work at all, so that what is measured is Warren itself, and 50 ms
//! of waiting, for I/O-bound jobs.

use serde_json::{Value, json};
use std::time::Duration;
use warren_worker::{Registry, StepContext, StepOutcome, Task, step};

/// One no-op step.
pub(crate) const NOOP: &str = "bench.noop";
/// Three no-op steps, each passing data on.
pub(crate) const THREE_STEPS: &str = "bench.three";
/// One step that awaits 50 ms (a call to a slow service).
pub(crate) const IO: &str = "bench.io";

/// How long an I/O-bound step waits.
pub(crate) const IO_WAIT: Duration = Duration::from_millis(50);

pub(crate) fn registry() -> Registry {
    let noop = |ctx: StepContext<Value>| async move {
        let _ = ctx.input();
        Ok(StepOutcome::next(Value::Null))
    };
    let pass_on = |ctx: StepContext<Value>| async move {
        let seen = ctx.output("one").is_some() as u8 + ctx.output("two").is_some() as u8;
        Ok(StepOutcome::next(json!(seen)))
    };
    Registry::new()
        .register(Task::<Value>::new(NOOP).step(step("noop", noop)))
        .register(
            Task::<Value>::new(THREE_STEPS)
                .step(step("one", pass_on))
                .step(step("two", pass_on))
                .step(step("three", pass_on)),
        )
        .register(Task::<Value>::new(IO).step(step(
            "call",
            |_ctx: StepContext<Value>| async move {
                tokio::time::sleep(IO_WAIT).await;
                Ok(StepOutcome::next(Value::Null))
            },
        )))
}
