//! The benchmark still runs: `warren-bench --quick` end to end against the real services. Its
//! figures are not checked (shared, noisy machines); speed is judged by the benchmark's own
//! ratios, in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_benchmark_runs_in_quick_mode() {
    // Its ceilings, probes and scenarios all name their queues `bench...`.
    let queues_before = warren_tests::broker_queues("bench");
    let output = Command::new(warren_tests::workspace_binary("warren-bench"))
        .arg("--quick")
        .env_remove("RUST_LOG")
        .output()
        .expect("warren-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "warren-bench --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "ceiling (raw broker",
        "with one ack per message instead:",
        "with Warren's messages",
        "CPU per job: broker",
        "1-step no-op, 1 replica:",
        "3-step no-op, 1 replica:",
        "1-step no-op, 2 replicas:",
        "at half rate",
        // The broker's own latency under that load, from the probe (which may fail without
        // failing the run, so it is looked for here).
        "meanwhile, the broker alone",
        "I/O-bound (50 ms step), concurrency 1000, 1 replica:",
        "idle worker afterwards",
        "1-step bare spawn of `echo {}`",
        "1-step command `echo {}`, concurrency 4, 1 replica:",
        "Command step: its own time",
        "1-step HTTP step to a local no-op endpoint",
        "HTTP step: its own time",
        "1 replica (fan-out baseline):",
        "fan-out: 1 parent, 500 children, 1 replica:",
        "join wake: 20 parents of 5 children at 20 parents/s, 1 replica: last child's end to the parent's wake",
        "priority: 2000 normal jobs waiting, 100 high at 50/s, 1 replica: high jobs' publish to start",
        "1-step no-op logging one line, 1 replica (round 1):",
        "Logging one line per step (`ctx.log`)",
        "runs query: 20000 runs seeded",
        "10th page, through the 9th's cursor",
        "done",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // Whatever it measured, it left no queue of its own on the broker.
    let left: Vec<_> = warren_tests::broker_queues("bench")
        .into_iter()
        .filter(|queue| !queues_before.contains(queue))
        .collect();
    assert!(
        left.is_empty(),
        "the benchmark left queues behind: {left:?}"
    );
    println!("{stdout}");
}
