//! `GET /api/v1/fleet`: every replica, its heartbeat and the runs it holds.

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::ApiQuery;
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use warren_shared::store::{self, WorkerRecord};

#[derive(Deserialize)]
pub(super) struct Params {
    /// Stopped and long-silent replicas too.
    #[serde(default)]
    all: bool,
}

pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<Params>,
) -> ApiResult<Json<Vec<WorkerRecord>>> {
    principal.require(Scope::Read)?;
    let client = state.pool.get().await?;
    Ok(Json(store::list_workers(&client, params.all).await?))
}
