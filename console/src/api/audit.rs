//! `GET /api/v1/audit`: every state-changing action, newest first.

use crate::audit::{self, Entry};
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::ApiQuery;
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub(super) struct Params {
    limit: Option<i64>,
    before: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct Page {
    entries: Vec<Entry>,
    /// Pass as `before` for the next page.
    next: Option<i64>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<Params>,
) -> ApiResult<Json<Page>> {
    principal.require(Scope::Read)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1_000);
    let client = state.pool.get().await?;
    let entries = audit::list(&client, limit, params.before).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(Page { entries, next }))
}
