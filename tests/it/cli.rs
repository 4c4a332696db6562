//! The `warren` binary as an operator uses it.

use std::process::Output;
use warren_tests::{TestEnv, video_payload};
use warren_worker::demo::{self, player, video};

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `warren publish` starts a run; `warren runs show` prints its steps and timeline;
/// `warren runs list` and `warren tasks` answer in tables and in JSON.
#[tokio::test(flavor = "multi_thread")]
async fn publish_then_inspect_a_video_run_from_the_command_line() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;

    let output = env
        .warren()
        .args([
            "publish",
            video::TASK,
            "--message-id",
            "cli-video-1",
            "--data",
        ])
        .arg(video_payload(serde_json::json!({})).to_string())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("published video.process as message cli-video-1"),
        "{stdout}"
    );
    env.wait_finished("cli-video-1").await;

    let output = env
        .warren()
        .args(["runs", "show", "cli-video-1"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("status     succeeded"), "{stdout}");
    assert!(stdout.contains("timeline"), "{stdout}");
    let timeline = stdout.find("timeline").unwrap();
    let mut last = timeline;
    for stage in video::STAGES {
        let at = timeline
            + stdout[timeline..]
                .find(stage)
                .unwrap_or_else(|| panic!("{stage} missing:\n{stdout}"));
        assert!(at > last, "{stage} out of order:\n{stdout}");
        last = at;
    }

    let output = env
        .warren()
        .args(["runs", "list", "--json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(1));
    assert_eq!(runs[0]["status"], "succeeded");

    let output = env
        .warren()
        .args(["runs", "list", "--status", "dead"])
        .output()
        .unwrap();
    assert!(text(&output).0.contains("0 run(s)"));

    let output = env.warren().args(["tasks", "--json"]).output().unwrap();
    let tasks: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let video_row = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == video::TASK)
        .unwrap();
    assert_eq!(video_row["consumers"], 1);
    assert_eq!(video_row["ready"], 0);
    worker.shutdown().await.unwrap();
}

/// NDJSON on standard input publishes one event per line.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_publish_from_ndjson() {
    use std::io::Write;
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let mut child = env
        .warren()
        .args(["publish", player::TASK])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..25 {
        writeln!(stdin, "{{\"playerId\": \"bulk-{i}\"}}").unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("published 25 player.dump events"),
        "{stdout}"
    );
    let runs = env
        .wait_for_finished_runs(25, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(runs.len(), 25);
    worker.shutdown().await.unwrap();
}

/// Mistakes get one clear line on standard error and a non-zero exit.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_one_line_and_a_non_zero_exit() {
    let env = TestEnv::new().await;
    /// Arguments, environment overrides, and what standard error must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &["runs", "list", "--bogus"],
            &[],
            "unexpected argument '--bogus'",
        ),
        (
            &["runs", "list", "--status", "done"],
            &[],
            "unknown run status \"done\"",
        ),
        (
            &["tasks"],
            &[("WARREN_AMQP_URL", "amqp://guest:secret@127.0.0.1:1/%2f")],
            "cannot reach the broker at amqp://guest:***@127.0.0.1:1/%2f",
        ),
        (
            &["runs", "list"],
            &[(
                "WARREN_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/warren",
            )],
            "cannot reach Postgres",
        ),
        (
            &["publish", "video.process", "--data", "{oops"],
            &[],
            "the payload is not valid JSON",
        ),
        (
            &["runs", "show", "no-such-run"],
            &[],
            "no run with id or message id",
        ),
    ];
    for (args, vars, expected) in cases {
        env.assert_fails_in_one_line(args, vars, expected);
    }
}

/// A reader that stops reading (`warren … | head`) ends the command quietly: no panic message,
/// success, as the tools output is usually piped from do.
#[test]
fn a_closed_pipe_on_standard_output_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.toml");
    // A file with many mistakes: `tasks validate` prints one line for each.
    let mut source = String::new();
    for i in 0..2000 {
        source.push_str(&format!("[[task]]\nname = \"t{i}\"\nbogus{i} = 1\n"));
    }
    std::fs::write(&file, source).unwrap();
    let mut child = std::process::Command::new(warren_tests::warren_binary())
        .args(["tasks", "validate", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then hang up.
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `warren tasks --tasks FILE` lists the tasks a file declares beside the built-in ones, with
/// the limits and lanes the file gives them, as `warren worker --tasks FILE` runs them.
#[tokio::test(flavor = "multi_thread")]
async fn warren_tasks_shows_a_task_files_limits_and_lanes() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.toml");
    std::fs::write(
        &file,
        r#"
[[task]]
name = "limits.shown"
rate_limit = { limit = 20, key = "tenant" }
concurrency_key = { limit = 5, key = "/userId" }
priority_lanes = true
[[task.step]]
name = "s"
kind = "wait"
duration = "1s"
"#,
    )
    .unwrap();
    let output = env
        .warren()
        .args(["tasks", "--json", "--tasks"])
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let row = rows
        .iter()
        .find(|row| row["task"] == "limits.shown")
        .unwrap_or_else(|| panic!("the declared task is listed: {stdout}"));
    assert_eq!(row["rate_limit"], "20/s per tenant");
    assert_eq!(row["concurrency_key"], "5 per /userId");
    let lanes: Vec<&str> = row["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lane| lane["lane"].as_str().unwrap())
        .collect();
    assert_eq!(lanes, vec!["high", "normal", "low"], "{row}");
    assert!(rows.iter().any(|row| row["task"] == "video.process"));

    let missing = env
        .warren()
        .args(["tasks", "--tasks", "/nonexistent/tasks.toml"])
        .output()
        .unwrap();
    let (_, stderr) = text(&missing);
    assert!(!missing.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
