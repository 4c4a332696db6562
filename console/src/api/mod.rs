//! The HTTP API, versioned under `/api/v1` (described in `docs/api.md` and
//! `docs/openapi.yaml`). One module per resource; each handler states the scope it needs.

mod audit;
mod dead_letters;
mod events;
mod fleet;
mod runs;
mod schedules;
mod session;
mod tasks;

use crate::state::AppState;
use axum::Router;
use axum::routing::{get, post};

/// Every route of `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/session",
            get(session::current)
                .post(session::login)
                .delete(session::logout),
        )
        .route("/runs", get(runs::list))
        .route("/runs/search", get(runs::search))
        .route("/runs/live", get(runs::live))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/retry", post(runs::retry))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{task}/stats", get(tasks::stats))
        .route("/fleet", get(fleet::list))
        .route("/dead-letters", get(dead_letters::summary))
        .route("/dead-letters/{task}", get(dead_letters::list))
        .route("/dead-letters/{task}/replay", post(dead_letters::replay))
        .route("/dead-letters/{task}/purge", post(dead_letters::purge))
        .route("/dead-letters/{task}/{id}", get(dead_letters::show))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::show))
        .route("/schedules/{name}/pause", post(schedules::pause))
        .route("/schedules/{name}/resume", post(schedules::resume))
        .route("/schedules/{name}/trigger", post(schedules::trigger))
        .route("/audit", get(audit::list))
        .route("/events/{event}", post(events::publish))
        .route("/webhooks/{source}", post(events::webhook))
}
