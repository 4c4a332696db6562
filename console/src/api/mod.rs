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

/// Declares every route once: the router, and [`ROUTES`], the list the documentation is
/// checked against (`docs/openapi.yaml`). A route added here and not documented fails a test.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route of `/api/v1` as (method, path), in the router's spelling.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// Every route of `/api/v1`.
        pub(crate) fn routes() -> Router<AppState> {
            let router = Router::new();
            $(let router = router.route($path, axum::routing::$method($handler));)*
            router
        }
    };
}

routes! {
    get "/session" => session::current,
    post "/session" => session::login,
    delete "/session" => session::logout,
    get "/runs" => runs::list,
    get "/runs/search" => runs::search,
    get "/runs/live" => runs::live,
    get "/runs/{id}" => runs::show,
    post "/runs/{id}/cancel" => runs::cancel,
    post "/runs/{id}/retry" => runs::retry,
    get "/tasks" => tasks::list,
    get "/tasks/{task}/stats" => tasks::stats,
    get "/fleet" => fleet::list,
    get "/dead-letters" => dead_letters::summary,
    get "/dead-letters/{task}" => dead_letters::list,
    post "/dead-letters/{task}/replay" => dead_letters::replay,
    post "/dead-letters/{task}/purge" => dead_letters::purge,
    get "/dead-letters/{task}/{id}" => dead_letters::show,
    get "/schedules" => schedules::list,
    get "/schedules/{name}" => schedules::show,
    post "/schedules/{name}/pause" => schedules::pause,
    post "/schedules/{name}/resume" => schedules::resume,
    post "/schedules/{name}/trigger" => schedules::trigger,
    get "/audit" => audit::list,
    post "/events/{event}" => events::publish,
    post "/webhooks/{source}" => events::webhook,
}
