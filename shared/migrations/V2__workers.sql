-- The fleet: every replica registers itself and heartbeats. A run's owner (runs.worker) is alive
-- while its heartbeat is fresh; only then does a duplicate delivery of the run wait instead of
-- taking it over. One row per replica, updated every few seconds: no hot rows per run.

CREATE TABLE workers (
    id             text        PRIMARY KEY,
    host           text        NOT NULL,
    pid            integer     NOT NULL,
    tasks          text[]      NOT NULL,
    version        text        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    stopped_at     timestamptz
);
