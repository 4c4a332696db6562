//! Dead letters: how many wait per task, a task's letters with their reasons, one letter with
//! its run, and the two actions, replay (one, or all) and purge.

use super::tasks::known_tasks;
use crate::audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract;
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use warren_shared::store::{self, RunDetail};
use warren_shared::topology::inspect_queues;
use warren_worker::dlq::{DeadLetter, DeadLetterQueue, DlqError, ReplayReport};

impl From<DlqError> for ApiError {
    fn from(error: DlqError) -> Self {
        match error {
            DlqError::NoQueue(queue) => ApiError::NotFound(format!(
                "no dead-letter queue {queue} (no worker has declared the task yet?)"
            )),
            DlqError::Store(e) => ApiError::database(e),
            DlqError::Pool(e) => ApiError::database(e),
            e @ (DlqError::Broker(_) | DlqError::Publish(_)) => ApiError::broker(e),
        }
    }
}

#[derive(Serialize)]
pub(super) struct TaskLetters {
    task: String,
    queue: String,
    /// `None`: no such queue yet.
    count: Option<u32>,
}

/// `GET /api/v1/dead-letters`: per task, how many dead letters wait.
pub(super) async fn summary(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<TaskLetters>>> {
    principal.require(Scope::Read)?;
    let client = state.pool.get().await?;
    let tasks: Vec<String> = known_tasks(&client).await?.into_keys().collect();
    drop(client);
    let queues: Vec<String> = tasks
        .iter()
        .map(|t| state.topology.dead_letter_queue(t))
        .collect();
    let connection = state.broker().await?;
    let stats = inspect_queues(&connection, &queues)
        .await
        .map_err(ApiError::broker)?;
    Ok(Json(
        tasks
            .into_iter()
            .zip(queues)
            .zip(stats)
            .map(|((task, queue), stats)| TaskLetters {
                task,
                queue,
                count: stats.map(|s| s.messages),
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub(super) struct ListParams {
    limit: Option<usize>,
}

#[derive(Serialize)]
pub(super) struct Listed {
    task: String,
    count: u32,
    dead_letters: Vec<DeadLetter>,
}

/// `GET /api/v1/dead-letters/{task}`: the oldest letters (they stay in the queue).
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(task): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<Listed>> {
    principal.require(Scope::Read)?;
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let connection = state.broker().await?;
    let dlq = DeadLetterQueue::new(&connection, &state.topology, &task);
    let count = dlq.count().await?;
    let dead_letters = dlq.peek(limit).await?;
    Ok(Json(Listed {
        task,
        count,
        dead_letters,
    }))
}

#[derive(Serialize)]
pub(super) struct Shown {
    task: String,
    dead_letter: DeadLetter,
    runs: Vec<RunDetail>,
}

/// `GET /api/v1/dead-letters/{task}/{id}`: one letter by message id or run id, with its run.
pub(super) async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((task, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Shown>> {
    principal.require(Scope::Read)?;
    let connection = state.broker().await?;
    let dlq = DeadLetterQueue::new(&connection, &state.topology, &task);
    let Some(letter) = dlq.find(&id).await? else {
        return Err(ApiError::NotFound(format!(
            "no dead letter with message id or run id {id:?} in {}",
            state.topology.dead_letter_queue(&task)
        )));
    };
    let key = letter
        .run_id
        .clone()
        .unwrap_or_else(|| letter.message_id.clone());
    let client = state.pool.get().await?;
    let runs = store::find_runs(&client, &key)
        .await?
        .into_iter()
        .filter(|r| r.summary.task == task)
        .collect();
    Ok(Json(Shown {
        task,
        dead_letter: letter,
        runs,
    }))
}

#[derive(Deserialize)]
pub(super) struct ReplayBody {
    /// One letter, by message id or run id.
    id: Option<String>,
    /// Every letter (at most `limit`).
    #[serde(default)]
    all: bool,
    limit: Option<usize>,
}

/// `POST /api/v1/dead-letters/{task}/replay`: `{"id": "..."}` or `{"all": true}`. The broker
/// does the work, letter by letter: the audit log records what was replayed, and, when the
/// replay stopped partway, that it was attempted and why it stopped.
pub(super) async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(task): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ReplayReport>> {
    principal.require(Scope::Admin)?;
    let body: ReplayBody = extract::json(&headers, body, extract::SMALL_BODY).await?;
    let actor = principal.actor();
    let connection = state.broker().await?;
    let dlq = DeadLetterQueue::new(&connection, &state.topology, &task);
    let replayed = match (&body.id, body.all) {
        (Some(id), false) => dlq.replay(&state.pool, |l| l.is(id), 1, &actor).await,
        (None, true) => {
            let limit = body.limit.unwrap_or(usize::MAX);
            dlq.replay(&state.pool, |_| true, limit, &actor).await
        }
        _ => {
            return Err(ApiError::BadRequest(
                "say which: {\"id\": \"<message id or run id>\"} or {\"all\": true}".into(),
            ));
        }
    };
    let client = state.pool.get().await?;
    let detail = match &replayed {
        Ok(report) => json!({ "replayed": report.replayed, "id": body.id }),
        Err(e) => json!({ "stopped": e.to_string(), "id": body.id, "all": body.all }),
    };
    audit::record(&client, &actor, "dead_letters.replay", Some(&task), detail).await?;
    let report = replayed?;
    if let (Some(id), true) = (&body.id, report.replayed.is_empty()) {
        return Err(ApiError::NotFound(format!(
            "no dead letter with message id or run id {id:?} in {}",
            state.topology.dead_letter_queue(&task)
        )));
    }
    Ok(Json(report))
}

#[derive(Deserialize)]
pub(super) struct PurgeBody {
    /// Only letters dead-lettered longer ago than this (`1h`, `7d`).
    older_than: Option<String>,
}

/// `POST /api/v1/dead-letters/{task}/purge`: deletes dead letters for good.
pub(super) async fn purge(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(task): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    principal.require(Scope::Admin)?;
    let body: PurgeBody = extract::json(&headers, body, extract::SMALL_BODY).await?;
    let older_than: Option<Duration> = body
        .older_than
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("older_than: {e}")))?;
    let connection = state.broker().await?;
    let purged = DeadLetterQueue::new(&connection, &state.topology, &task)
        .purge(older_than)
        .await?;
    let client = state.pool.get().await?;
    audit::record(
        &client,
        &principal.actor(),
        "dead_letters.purge",
        Some(&task),
        json!({ "purged": purged, "older_than": body.older_than }),
    )
    .await?;
    Ok(Json(json!({ "purged": purged })))
}
