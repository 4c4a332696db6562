//! `warren` with the demo tasks plus test fixtures that cannot live in-process: a task whose
//! message kills the worker process, and the fault suite's ledger tasks, whose every step
//! execution appends a row to a side-effect ledger in the run's own database, and a chain of two
//! tasks joined by an event the first one's step emits, a ledgered parent that fans out to
//! ledgered children (`ledger.fan`), and a ledgered task with a concurrency key per tenant
//! (`ledger.keyed`).

use deadpool_postgres::Pool;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::OnceCell;
use warren_worker::children::Children;
use warren_worker::concurrency_key::ConcurrencyKey;
use warren_worker::{Registry, StepContext, StepError, StepOutcome, Task, code, step};

#[derive(Deserialize)]
struct LedgerJob {
    #[serde(default)]
    ms: u64,
}

static LEDGER: OnceCell<Pool> = OnceCell::const_new();

async fn ledger() -> Result<&'static Pool, StepError> {
    LEDGER
        .get_or_try_init(|| async {
            let url = std::env::var("WARREN_DATABASE_URL").unwrap_or_default();
            warren_shared::db::connect(&url, 4).await
        })
        .await
        .map_err(|e| StepError::new(code::NETWORK, e.to_string()))
}

/// One ledger step: record the execution (the side effect), then pretend to work.
async fn ledger_step(
    ctx: StepContext<LedgerJob>,
    name: &'static str,
) -> Result<StepOutcome, StepError> {
    record(&ctx, name).await?;
    tokio::time::sleep(Duration::from_millis(ctx.input().ms)).await;
    Ok(StepOutcome::next(json!({ "step": name })))
}

fn ledger_task(steps: usize) -> Task<LedgerJob> {
    const NAMES: [&str; 4] = ["one", "two", "three", "four"];
    NAMES[..steps].iter().fold(
        Task::new(format!("ledger.{steps}")).concurrency(8),
        |task, name| task.step(step(*name, move |ctx| ledger_step(ctx, name))),
    )
}

/// `ledger.keyed`: two ledgered steps, at most 3 runs of one tenant at once across the fleet.
fn ledger_keyed() -> Task<LedgerJob> {
    ["one", "two"].into_iter().fold(
        Task::new("ledger.keyed")
            .concurrency(8)
            .concurrency_key(ConcurrencyKey::per_tenant(3)),
        |task, name| task.step(step(name, move |ctx| ledger_step(ctx, name))),
    )
}

/// `ledger.fan`: fans out `children` runs of `ledger.2`, at most 5 at once, then records a
/// ledgered `collect` step; its `fan` step is ledgered when it executes, like every step.
fn ledger_fan() -> Task<Value> {
    Task::<Value>::new("ledger.fan")
        .concurrency(8)
        .step(step("fan", |ctx: StepContext<Value>| async move {
            record(&ctx, "fan").await?;
            let n = ctx.input()["children"].as_u64().unwrap_or(10);
            let inputs = (0..n).map(|i| json!({ "ms": 5 + (i % 4) * 5 }));
            let children = Children::each("ledger.2", inputs)?.at_most(5);
            Ok(StepOutcome::WaitForChildren(children))
        }))
        .step(step("collect", |ctx: StepContext<Value>| async move {
            record(&ctx, "collect").await?;
            let joined = ctx.children("fan")?;
            Ok(StepOutcome::next(json!({
                "succeeded": joined.succeeded,
                "failed": joined.failed,
            })))
        }))
}

/// Appends the step's execution to the ledger.
async fn record<I>(ctx: &StepContext<I>, name: &str) -> Result<(), StepError> {
    let worker = std::env::var("WARREN_WORKER_ID").unwrap_or_default();
    let mut tries = 0;
    loop {
        let result = async {
            let client = ledger()
                .await?
                .get()
                .await
                .map_err(|e| StepError::new(code::NETWORK, e.to_string()))?;
            client
                .execute(
                    "INSERT INTO ledger (run_id, step, worker) VALUES ($1, $2, $3)",
                    &[&ctx.run_id, &name, &worker],
                )
                .await
                .map_err(|e| StepError::new(code::NETWORK, e.to_string()))
        }
        .await;
        match result {
            Ok(_) => return Ok(()),
            // A terminated session: the pool hands out a fresh one next time.
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() -> std::process::ExitCode {
    let poison = Task::<Value>::new("poison.pill").step(step(
        "swallow",
        |ctx: StepContext<Value>| async move {
            if ctx.input()["crash"] == json!(true) {
                // What a segfault or an out-of-memory kill looks like from outside.
                std::process::abort();
            }
            Ok(StepOutcome::next(json!("harmless")))
        },
    ));
    // A chain of tasks: the first one's step publishes the event that starts the second.
    let first = Task::<Value>::new("chain.first")
        .on("chain.start")
        .step(step("hand_off", |ctx: StepContext<Value>| async move {
            ctx.emit("chain.next", &json!({ "from": ctx.run_id }))?;
            Ok(StepOutcome::next(json!("handed off")))
        }));
    let second = Task::<Value>::new("chain.second")
        .on("chain.next")
        .step(step("finish", |_ctx: StepContext<Value>| async move {
            Ok(StepOutcome::next(json!("done")))
        }));
    let registry: Registry = warren_worker::demo::registry()
        .register(poison)
        .register(first)
        .register(second)
        .register(ledger_task(2))
        .register(ledger_task(3))
        .register(ledger_task(4))
        .register(ledger_fan())
        .register(ledger_keyed());
    warren_cli::main(registry)
}
