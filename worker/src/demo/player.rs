//! `player.dump`: dump a player's profile from an API; only if that succeeded, dump their teams
//! and their matches. One stored result per activity (step).
//!
//! Input: `{"playerId": "..."}`. The player id [`MISSING_PLAYER`] makes the simulated profile
//! call answer 404, a non-retryable `not_found`: the run is dead-lettered and teams and matches
//! never run.

use super::work;
use crate::step::{StepContext, StepError, StepOutcome, StepResult, step};
use crate::task::Task;
use serde::Deserialize;
use serde_json::json;

/// The task id and event.
pub const TASK: &str = "player.dump";
/// The player id for which the simulated profile API answers 404.
pub const MISSING_PLAYER: &str = "missing-player";

/// The payload.
#[derive(Debug, Clone, Deserialize)]
pub struct PlayerDumpInput {
    /// The player.
    #[serde(rename = "playerId")]
    pub player_id: String,
}

type Ctx = StepContext<PlayerDumpInput>;

async fn profile(ctx: Ctx) -> StepResult {
    work(5).await;
    let id = &ctx.input().player_id;
    if id.is_empty() {
        return Err(StepError::fatal("invalid_input", "playerId is empty"));
    }
    if id == MISSING_PLAYER {
        return Err(StepError::fatal(
            "not_found",
            format!("profile API answered 404 Not Found for player {id}"),
        ));
    }
    Ok(StepOutcome::next(json!({
        "playerId": id,
        "name": format!("Player {id}"),
        "teamIds": [format!("{id}-team-a"), format!("{id}-team-b")],
    })))
}

async fn teams(ctx: Ctx) -> StepResult {
    work(5).await;
    let profile = ctx.output_as::<serde_json::Value>("profile")?;
    Ok(StepOutcome::next(
        json!({ "teams": profile["teamIds"], "count": 2 }),
    ))
}

async fn matches(ctx: Ctx) -> StepResult {
    work(5).await;
    let id = &ctx.input().player_id;
    Ok(StepOutcome::next(json!({
        "matches": [format!("{id}-m1"), format!("{id}-m2"), format!("{id}-m3")],
        "count": 3,
    })))
}

/// The task definition.
pub fn task() -> Task<PlayerDumpInput> {
    Task::new(TASK)
        .concurrency(32)
        .step(step("profile", profile).stage("PROFILE_DUMPED"))
        .step(step("teams", teams).stage("TEAMS_DUMPED"))
        .step(step("matches", matches).stage("MATCHES_DUMPED"))
}
