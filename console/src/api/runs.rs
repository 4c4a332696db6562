//! Runs: the filtered, paginated list; one run with its steps, transitions, family and logs;
//! search by run id or message id; live updates; cancel and retry.

use crate::audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::live::Update;
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;
use warren_shared::state::RunStatus;
use warren_shared::store::cancel::{Cancelled, Retried};
use warren_shared::store::{self, RunCursor, RunDetail, RunFilter, RunSummary, children, logs};
use warren_worker::control;

/// How often a live stream checks that its token or session is still good: a revocation or a
/// logout ends the streams it authenticated within this long.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The most a page holds.
pub(crate) const MAX_PAGE: i64 = 500;
const DEFAULT_PAGE: i64 = 50;

#[derive(Deserialize, Default)]
pub(super) struct ListParams {
    task: Option<String>,
    status: Option<String>,
    tenant: Option<String>,
    parent: Option<Uuid>,
    /// Created at or after (RFC 3339).
    since: Option<String>,
    /// Created before (RFC 3339).
    until: Option<String>,
    /// The previous page's `next`.
    after: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct Page {
    runs: Vec<RunSummary>,
    /// Pass as `after` for the next page; `None` on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<RunCursor>,
}

fn time(name: &str, text: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::BadRequest(format!("{name} {t:?}: not an RFC 3339 time ({e})"))
                })
        })
        .transpose()
}

fn nonempty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.is_empty())
}

fn status(text: Option<&str>) -> ApiResult<Option<RunStatus>> {
    text.filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<RunStatus>().map_err(|_| {
                let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!("unknown status {s:?}: one of {}", known.join(", ")))
            })
        })
        .transpose()
}

fn page_size(limit: Option<i64>) -> ApiResult<i64> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit {n}: between 1 and {MAX_PAGE}"
        ))),
    }
}

/// `GET /api/v1/runs`: newest first (a parent's children oldest first), one page at a time.
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<Page>> {
    principal.require(Scope::Read)?;
    let after = nonempty(params.after)
        .map(|token| {
            RunCursor::parse(&token).map_err(|e| ApiError::BadRequest(format!("after: {e}")))
        })
        .transpose()?;
    let filter = RunFilter {
        task: nonempty(params.task),
        status: status(params.status.as_deref())?,
        tenant: nonempty(params.tenant),
        created_after: time("since", params.since.as_deref())?,
        created_before: time("until", params.until.as_deref())?,
        parent: params.parent,
        after,
        limit: page_size(params.limit)?,
    };
    let client = state.pool.get().await?;
    let page = store::page_runs(&client, &filter).await?;
    Ok(Json(Page {
        runs: page.runs,
        next: page.next,
    }))
}

#[derive(Deserialize)]
pub(super) struct SearchParams {
    q: String,
}

/// `GET /api/v1/runs/search?q=`: the runs with this run id or message id.
pub(super) async fn search(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> ApiResult<Json<Page>> {
    principal.require(Scope::Read)?;
    let q = params.q.trim();
    if q.is_empty() {
        return Err(ApiError::BadRequest("q: a run id or a message id".into()));
    }
    let client = state.pool.get().await?;
    let runs = store::find_runs(&client, q).await?;
    Ok(Json(Page {
        runs: runs.into_iter().map(|r| r.summary).collect(),
        next: None,
    }))
}

/// A run as its page shows it.
#[derive(Serialize)]
pub(super) struct Shown {
    #[serde(flatten)]
    run: RunDetail,
    family: children::Family,
    /// The lines its steps logged (the newest, up to the workers' bound) and how many older
    /// ones were dropped.
    logs: logs::RunLogs,
}

async fn find(client: &deadpool_postgres::Client, id: Uuid) -> ApiResult<RunDetail> {
    store::find_runs(client, &id.to_string())
        .await?
        .into_iter()
        .find(|run| run.summary.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no run with id {id}")))
}

/// `GET /api/v1/runs/{id}`.
pub(super) async fn show(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Shown>> {
    principal.require(Scope::Read)?;
    let client = state.pool.get().await?;
    let run = find(&client, id).await?;
    let family = children::family(&client, id).await?;
    let logs = logs::run_logs(&client, id).await?;
    Ok(Json(Shown { run, family, logs }))
}

/// `POST /api/v1/runs/{id}/cancel`: the cancellation and its audit record in one transaction.
pub(super) async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<serde_json::Value>> {
    principal.require(Scope::Admin)?;
    let actor = principal.actor();
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let result = control::cancel_in(&tx, id, &actor)
        .await
        .map_err(ApiError::database)?;
    let answer = match result {
        Cancelled::NotFound => return Err(ApiError::NotFound(format!("no run with id {id}"))),
        Cancelled::AlreadyFinished(status) => {
            return Err(ApiError::Conflict(format!(
                "run {id} already finished ({status}); nothing changed"
            )));
        }
        Cancelled::Cancelled(runs) => json!({ "cancelled": runs }),
    };
    audit::record(
        &tx,
        &actor,
        "run.cancel",
        Some(&id.to_string()),
        answer.clone(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(answer))
}

/// `POST /api/v1/runs/{id}/retry`: a dead or cancelled run again from its first step. Its
/// message is in the outbox; the fleet's relays send it within a second. The retry and its
/// audit record are one transaction.
pub(super) async fn retry(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<serde_json::Value>> {
    principal.require(Scope::Admin)?;
    let actor = principal.actor();
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let result = control::retry_in(&tx, &state.topology, id, &actor)
        .await
        .map_err(ApiError::database)?;
    let answer = match result {
        Retried::NotFound => return Err(ApiError::NotFound(format!("no run with id {id}"))),
        Retried::NotRetryable(status) => {
            return Err(ApiError::Conflict(format!(
                "run {id} is {status}: only a dead or cancelled run can be retried"
            )));
        }
        Retried::Queued { attempt, .. } => json!({ "queued": id, "attempt": attempt }),
    };
    audit::record(
        &tx,
        &actor,
        "run.retry",
        Some(&id.to_string()),
        answer.clone(),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct LiveParams {
    task: Option<String>,
    run: Option<Uuid>,
}

/// `GET /api/v1/runs/live`: server-sent events, `run` for each new or changed run (of `task`,
/// or the one `run`), `resync` when this subscriber fell behind and should reload.
pub(super) async fn live(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<LiveParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    principal.require(Scope::Read)?;
    let receiver = state.live.subscribe();
    let watch = params.run.map(|run| state.live.watch(run));
    let task = params.task.filter(|t| !t.is_empty());
    let run = params.run;
    let stopped = state.live.stopped().clone();
    let pool = state.pool.clone();
    let principal = Arc::new(principal);
    let checks = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    let stream = futures::stream::unfold(
        (receiver, watch, checks),
        move |(mut receiver, watch, mut checks)| {
            let task = task.clone();
            let stopped = stopped.clone();
            let pool = pool.clone();
            let principal = Arc::clone(&principal);
            async move {
                loop {
                    let received = tokio::select! {
                        () = stopped.cancelled() => return None,
                        _ = checks.tick() => {
                            if principal.still_valid(&pool).await {
                                continue;
                            }
                            return None;
                        }
                        received = receiver.recv() => received,
                    };
                    match received {
                        Ok(Update::Run(change)) => {
                            let wanted = task.as_ref().is_none_or(|t| *t == change.task)
                                && run.is_none_or(|r| r == change.id);
                            if !wanted {
                                continue;
                            }
                            let event = Event::default()
                                .event("run")
                                .json_data(&*change)
                                .unwrap_or_else(|_| Event::default().event("resync"));
                            return Some((Ok(event), (receiver, watch, checks)));
                        }
                        Err(RecvError::Lagged(_)) => {
                            let event = Event::default().event("resync").data("{}");
                            return Some((Ok(event), (receiver, watch, checks)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
