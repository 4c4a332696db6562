//! `video.process`: validate, ingest, transcribe, insights, drafts, QA review, deliver. Each step
//! moves the job to a named stage; a low-quality transcript ends the run as `NEEDS_USER_INPUT`.
//!
//! Input (documented in `docs/protocol.md`):
//! `{"job_id", "job_run_id", "workspace_id", "user_id"}` (UUIDs), and optionally
//! `source_url` (http, https or s3; anything else is a non-retryable `invalid_input`),
//! `transcript_quality` (`"normal"` or `"low"`: low ends the run in `NEEDS_USER_INPUT`),
//! `language` (default `"en"`), `step_ms` (simulated work per step, default 10).

use super::work;
use crate::step::{StepContext, StepError, StepOutcome, StepResult, step};
use crate::task::Task;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// The task id and event.
pub const TASK: &str = "video.process";
/// The halting outcome of a transcript too poor to go on with.
pub const NEEDS_USER_INPUT: &str = "NEEDS_USER_INPUT";
/// The stages, in pipeline order.
pub const STAGES: [&str; 7] = [
    "VALIDATED",
    "INGESTED",
    "TRANSCRIBED",
    "INSIGHTS",
    "DRAFTED",
    "REVIEWED",
    "DELIVERED",
];

/// Transcript quality the simulated transcriber produces.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptQuality {
    /// Good enough to go on.
    #[default]
    Normal,
    /// Too poor: the user must act.
    Low,
}

/// The payload the video pipeline takes.
#[derive(Debug, Clone, Deserialize)]
pub struct VideoInput {
    /// The job.
    pub job_id: Uuid,
    /// This run of the job.
    pub job_run_id: Uuid,
    /// The workspace (tenant).
    pub workspace_id: Uuid,
    /// The user who asked.
    pub user_id: Uuid,
    /// Where the video is.
    #[serde(default)]
    pub source_url: Option<String>,
    /// Simulated transcript quality.
    #[serde(default)]
    pub transcript_quality: TranscriptQuality,
    /// Transcript language.
    #[serde(default)]
    pub language: Option<String>,
    /// Simulated work per step, in milliseconds.
    #[serde(default)]
    pub step_ms: Option<u64>,
}

type Ctx = StepContext<VideoInput>;

async fn pause(ctx: &Ctx) {
    work(ctx.input().step_ms.unwrap_or(10)).await;
}

async fn validate(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let input = ctx.input();
    let source = input.source_url.clone().unwrap_or_else(|| {
        format!(
            "s3://warren-demo/{}/{}.mp4",
            input.workspace_id, input.job_id
        )
    });
    let scheme_ok = ["http://", "https://", "s3://"]
        .iter()
        .any(|scheme| source.starts_with(scheme));
    if !scheme_ok {
        return Err(StepError::fatal(
            "invalid_input",
            format!("source_url {source:?} is not an http, https or s3 URL"),
        ));
    }
    Ok(StepOutcome::next(json!({ "source_url": source })))
}

async fn ingest(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let input = ctx.input();
    let source: String = ctx.output_as::<serde_json::Value>("validate")?["source_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(StepOutcome::next(json!({
        "asset_uri": format!("warren-demo://{}/{}/source.mp4", input.workspace_id, input.job_id),
        "from": source,
        "duration_seconds": 312,
    })))
}

async fn transcribe(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let input = ctx.input();
    let asset = ctx.output_as::<serde_json::Value>("ingest")?["asset_uri"].clone();
    if input.transcript_quality == TranscriptQuality::Low {
        return Ok(StepOutcome::halt(
            NEEDS_USER_INPUT,
            json!({
                "asset_uri": asset,
                "confidence": 0.42,
                "reason": "transcript confidence 0.42 is below 0.80: upload better audio or a transcript",
            }),
        ));
    }
    Ok(StepOutcome::next(json!({
        "transcript_uri": format!("warren-demo://{}/{}/transcript.json", input.workspace_id, input.job_id),
        "language": input.language.clone().unwrap_or_else(|| "en".into()),
        "confidence": 0.93,
        "words": 1843,
    })))
}

async fn insights(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let words = ctx.output_as::<serde_json::Value>("transcribe")?["words"].clone();
    Ok(StepOutcome::next(json!({
        "topics": ["onboarding", "pricing", "roadmap"],
        "highlights": 3,
        "words_analysed": words,
    })))
}

async fn drafts(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let job = ctx.input().job_id;
    Ok(StepOutcome::next(json!({
        "drafts": [format!("{job}-summary"), format!("{job}-social"), format!("{job}-blog")],
    })))
}

async fn qa_review(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let drafts = ctx.output_as::<serde_json::Value>("drafts")?["drafts"].clone();
    Ok(StepOutcome::next(
        json!({ "approved": drafts, "rejected": [] }),
    ))
}

async fn deliver(ctx: Ctx) -> StepResult {
    pause(&ctx).await;
    let input = ctx.input();
    Ok(StepOutcome::next(json!({
        "delivered_to": format!("workspace/{}/user/{}", input.workspace_id, input.user_id),
        "job_run_id": input.job_run_id,
    })))
}

/// The task definition.
pub fn task() -> Task<VideoInput> {
    Task::new(TASK)
        .concurrency(32)
        .step(step("validate", validate).stage(STAGES[0]))
        .step(step("ingest", ingest).stage(STAGES[1]))
        .step(step("transcribe", transcribe).stage(STAGES[2]))
        .step(step("insights", insights).stage(STAGES[3]))
        .step(step("drafts", drafts).stage(STAGES[4]))
        .step(step("qa_review", qa_review).stage(STAGES[5]))
        .step(step("deliver", deliver).stage(STAGES[6]))
}
