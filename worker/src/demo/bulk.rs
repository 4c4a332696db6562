//! `players.dump`: the bulk dump. Fans out one `player.dump` child run per player, at most
//! `limit` (default 10) running at once, and keeps the results of the players that worked when
//! some fail: a failed child is data the `collect` step sorts, not a failure of the bulk dump.
//!
//! Input: `{"playerIds": ["...", ...], "limit": 10}`.

use super::player;
use crate::children::Children;
use crate::step::{StepContext, StepOutcome, StepResult, step};
use crate::task::Task;
use serde::Deserialize;
use serde_json::json;

/// The task id and event.
pub const TASK: &str = "players.dump";

/// How many players are dumped at once when the input does not say.
pub const DEFAULT_LIMIT: u32 = 10;

/// The payload.
#[derive(Debug, Clone, Deserialize)]
pub struct BulkDumpInput {
    /// The players.
    #[serde(rename = "playerIds")]
    pub player_ids: Vec<String>,
    /// At most this many dumps at once.
    #[serde(default)]
    pub limit: Option<u32>,
}

type Ctx = StepContext<BulkDumpInput>;

async fn dump_each(ctx: Ctx) -> StepResult {
    let input = ctx.input();
    let players = input.player_ids.iter().map(|id| json!({ "playerId": id }));
    let children =
        Children::each(player::TASK, players)?.at_most(input.limit.unwrap_or(DEFAULT_LIMIT));
    Ok(StepOutcome::WaitForChildren(children))
}

async fn collect(ctx: Ctx) -> StepResult {
    let joined = ctx.children("dump_each")?;
    let ids = &ctx.input().player_ids;
    let mut dumped = Vec::new();
    let mut failed = Vec::new();
    for (id, child) in ids.iter().zip(&joined.children) {
        if child.succeeded() {
            dumped.push(json!({ "playerId": id, "matches": child.output.as_ref().and_then(|o| o.get("count")) }));
        } else {
            failed.push(json!({
                "playerId": id,
                "status": child.status,
                "code": child.error.as_ref().map(|e| e.code.clone()),
            }));
        }
    }
    Ok(StepOutcome::next(json!({
        "dumped": dumped,
        "failed": failed,
        "succeeded": joined.succeeded,
        "total": ids.len(),
    })))
}

/// The task definition.
pub fn task() -> Task<BulkDumpInput> {
    Task::new(TASK)
        .concurrency(32)
        .step(step("dump_each", dump_each).stage("DUMPS_STARTED"))
        .step(step("collect", collect).stage("COLLECTED"))
}
