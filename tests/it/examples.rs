//! The runnable examples of `examples/`, end to end: the real `warren` binary with the
//! example's task file, on the real broker and database, with the real tools the example uses.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use warren_producer::PublishOptions;
use warren_tests::{TestEnv, TestWorker};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

/// One value of `ffprobe -show_entries ENTRY` for `file` (e.g. `format=duration`).
fn ffprobe(file: &str, entry: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "0",
            "-show_entries",
            entry,
        ])
        .args(["-of", "default=noprint_wrappers=1:nokey=1", file])
        .output()
        .expect("ffprobe runs (scripts/test.sh installs Debian's ffmpeg)");
    assert!(out.status.success(), "ffprobe {file}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn file_size(path: &Value) -> u64 {
    std::fs::metadata(path.as_str().unwrap()).unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn media_track_extracts_a_clips_audio_then_a_thumbnail_with_the_real_ffmpeg() {
    let env = TestEnv::new().await;
    let example = repository().join("examples/media-track");
    let scratch = tempfile::tempdir().unwrap();
    let made = Command::new(example.join("make-clip.sh"))
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "make-clip.sh: {made:?}");
    let clip = scratch.path().join("clip.mp4");
    let out_dir = scratch.path().join("out");

    env.declared("media.track");
    let _worker = TestWorker::from(
        env.warren()
            .args(["worker", "--tasks"])
            .arg(example.join("tasks.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    env.wait_consuming(&["media.track"]).await;
    let input = json!({"clip": clip, "out_dir": out_dir});
    env.producer()
        .await
        .publish(
            "media.track",
            &input,
            PublishOptions {
                message_id: Some("track-1".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    let run = env.wait_finished("track-1").await;

    // The trail in Postgres: both steps, in order, each reaching its stage.
    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    assert_eq!(run.summary.stage.as_deref(), Some("THUMBNAIL_READY"));
    let steps: Vec<(&str, &str)> = run
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        steps,
        [("extract_audio", "succeeded"), ("thumbnail", "succeeded")]
    );
    let stages: Vec<&str> = run
        .transitions
        .iter()
        .filter_map(|t| t.stage.as_deref())
        .collect();
    assert!(
        stages.contains(&"AUDIO_EXTRACTED") && stages.contains(&"THUMBNAIL_READY"),
        "{stages:?}"
    );

    // extract_audio: a real audio file as long as the clip.
    let audio = run.steps[0].output.clone().unwrap();
    let audio_path = audio["audio"].as_str().unwrap();
    assert_eq!(Path::new(audio_path), out_dir.join("clip.m4a"));
    assert_eq!(ffprobe(audio_path, "stream=codec_name"), "aac");
    let seconds: f64 = ffprobe(audio_path, "format=duration").parse().unwrap();
    assert!((2.9..=3.3).contains(&seconds), "{seconds} s of audio");
    assert_eq!(audio["bytes"], file_size(&audio["audio"]));
    assert!(file_size(&audio["audio"]) > 10_000);

    // thumbnail: a real 320-pixel JPEG, of the clip named by the run's input, taken halfway
    // through the audio named by the step before.
    let thumbnail = run.steps[1].output.clone().unwrap();
    let thumbnail_path = thumbnail["thumbnail"].as_str().unwrap();
    assert_eq!(Path::new(thumbnail_path), out_dir.join("clip.jpg"));
    assert_eq!(ffprobe(thumbnail_path, "stream=codec_name"), "mjpeg");
    assert_eq!(ffprobe(thumbnail_path, "stream=width"), "320");
    assert_eq!(thumbnail["bytes"], file_size(&thumbnail["thumbnail"]));
    assert!(file_size(&thumbnail["thumbnail"]) > 1_000);
    assert_eq!(thumbnail["audio"], audio["audio"]);
    let half = audio["seconds"].as_f64().unwrap() / 2.0;
    assert!(
        (thumbnail["at"].as_f64().unwrap() - half).abs() < 1e-6,
        "{thumbnail}"
    );
}
