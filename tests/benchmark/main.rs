//! The benchmark still runs: `warren-bench --quick` end to end against the real services. Its
//! figures are not checked (shared, noisy machines); speed is judged by the benchmark's own
//! ratios, in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_benchmark_runs_in_quick_mode() {
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
        "1-step no-op, 1 replica:",
        "3-step no-op, 1 replica:",
        "1-step no-op, 2 replicas:",
        "at half rate",
        "I/O-bound (50 ms step), concurrency 1000, 1 replica:",
        "idle worker afterwards",
        "done",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    println!("{stdout}");
}
