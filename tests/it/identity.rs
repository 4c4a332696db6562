//! A message published without a message id gets one identity from Warren on its first delivery,
//! and every copy Warren makes of it (a wake-up, a retry, a dead letter) carries that identity:
//! the run resumes, it never starts again.

use lapin::BasicProperties;
use serde_json::{Value, json};
use std::time::Duration;
use warren_producer::Publisher;
use warren_tests::{Ledger, TestEnv};
use warren_worker::{
    Registry, RetryPolicy, StepContext, StepError, StepOutcome, Task, code, step, wait_step,
};

fn counting(ledger: &Ledger, name: &'static str) -> warren_worker::StepDef<Value> {
    let ledger = ledger.clone();
    step(name, move |_ctx: StepContext<Value>| {
        let ledger = ledger.clone();
        async move {
            ledger.record(name);
            Ok(StepOutcome::next(json!(name)))
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_published_without_a_message_id_wait_and_retry_as_one_run_each() {
    let env = TestEnv::new().await;
    let ledger = Ledger::default();
    let waiting = Task::<Value>::new("idless.wait")
        .step(counting(&ledger, "a"))
        .step(wait_step("pause", Duration::from_secs(1)))
        .step(counting(&ledger, "b"));
    let flaky_ledger = ledger.clone();
    let retrying = Task::<Value>::new("idless.retry")
        .retry(RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            factor: 1.0,
            jitter: false,
        })
        .step(counting(&ledger, "before"))
        .step(step("flaky", move |_ctx: StepContext<Value>| {
            let ledger = flaky_ledger.clone();
            async move {
                if ledger.record("flaky") == 1 {
                    return Err(StepError::new(code::NETWORK, "connection reset"));
                }
                Ok(StepOutcome::next(json!("ok")))
            }
        }));
    let worker = env
        .start_worker(Registry::new().register(waiting).register(retrying))
        .await;

    let publisher = Publisher::connect(&env.amqp_url, "test-idless")
        .await
        .unwrap();
    let no_id = BasicProperties::default().with_content_type("application/json".into());
    for event in ["idless.wait", "idless.retry"] {
        assert!(no_id.message_id().is_none());
        publisher
            .send(
                &env.topology().events_exchange(),
                event,
                b"{}",
                no_id.clone(),
            )
            .await
            .unwrap();
    }

    let runs = env.wait_for_finished_runs(2, Duration::from_secs(30)).await;
    // Long enough for a copy that lost the identity to have started a second run.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs_now = env.wait_for_finished_runs(2, Duration::from_secs(1)).await;
    assert_eq!(
        runs_now.len(),
        2,
        "exactly one run per message: {runs_now:#?}"
    );
    for run in &runs {
        assert_eq!(run.status, "succeeded", "{run:?}");
    }
    let retried = runs.iter().find(|r| r.task == "idless.retry").unwrap();
    assert_eq!(retried.attempt, 2);
    let counts: Vec<usize> = ["a", "b", "before", "flaky"]
        .iter()
        .map(|s| ledger.count(s))
        .collect();
    assert_eq!(
        counts,
        [1, 1, 1, 2],
        "each step once (the flaky one failed once, then succeeded)"
    );
    publisher.close().await;
    worker.shutdown().await.unwrap();
}
