//! Schedules: list, one with its recent fires, and pause, resume and trigger. A schedule's
//! name holds a `/` (`{task}/{name}`): send it percent-encoded (`%2F`) in the path.

use crate::audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::json;
use warren_shared::store::schedules::{self, Fire, Schedule};

fn missing(name: &str) -> ApiError {
    ApiError::NotFound(format!("no schedule named {name:?}"))
}

/// `GET /api/v1/schedules`.
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<Schedule>>> {
    principal.require(Scope::Read)?;
    let client = state.pool.get().await?;
    Ok(Json(schedules::list(&client).await?))
}

#[derive(Serialize)]
pub(super) struct Shown {
    #[serde(flatten)]
    schedule: Schedule,
    recent_fires: Vec<Fire>,
}

/// `GET /api/v1/schedules/{name}`.
pub(super) async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Shown>> {
    principal.require(Scope::Read)?;
    let client = state.pool.get().await?;
    let schedule = schedules::get(&client, &name)
        .await?
        .ok_or_else(|| missing(&name))?;
    let recent_fires = schedules::recent_fires(&client, &name, 20).await?;
    Ok(Json(Shown {
        schedule,
        recent_fires,
    }))
}

/// Pause or resume, with its audit record, in one transaction.
async fn set_paused(
    state: &AppState,
    principal: &Principal,
    name: &str,
    paused: bool,
) -> ApiResult<Json<serde_json::Value>> {
    principal.require(Scope::Admin)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let schedule = schedules::get(&tx, name)
        .await?
        .ok_or_else(|| missing(name))?;
    let next = if paused {
        None
    } else {
        let timing = schedule
            .definition
            .timing()
            .map_err(|e| ApiError::Conflict(format!("schedule {name:?}: {e}")))?;
        timing.next_after(chrono::Utc::now())
    };
    if !schedules::set_paused(&tx, name, paused, next).await? {
        return Err(missing(name));
    }
    let answer = json!({ "name": name, "paused": paused, "next_fire_at": next });
    let action = if paused {
        "schedule.pause"
    } else {
        "schedule.resume"
    };
    audit::record(&tx, &principal.actor(), action, Some(name), json!({})).await?;
    tx.commit().await?;
    Ok(Json(answer))
}

/// `POST /api/v1/schedules/{name}/pause`.
pub(super) async fn pause(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    set_paused(&state, &principal, &name, true).await
}

/// `POST /api/v1/schedules/{name}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    set_paused(&state, &principal, &name, false).await
}

/// `POST /api/v1/schedules/{name}/trigger`: a manual slot now, fired by the next scheduler
/// pass of a replica that runs the task; recorded in the same transaction.
pub(super) async fn trigger(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    principal.require(Scope::Admin)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let slot = schedules::request_trigger(&tx, &name)
        .await?
        .ok_or_else(|| missing(&name))?;
    audit::record(
        &tx,
        &principal.actor(),
        "schedule.trigger",
        Some(&name),
        json!({ "slot": slot }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({ "name": name, "slot": slot })))
}
