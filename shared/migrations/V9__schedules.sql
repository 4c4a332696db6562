-- Schedules (docs/schedules.md): cron expressions in a time zone, or fixed intervals, that start
-- runs of a task. Every replica's scheduler takes the due rows with FOR UPDATE SKIP LOCKED; one
-- transaction records each slot it fires in `schedule_fires` (whose primary key makes a slot
-- fire once) together with the run's message in the outbox, and moves `next_fire_at` on.
CREATE TABLE IF NOT EXISTS schedules (
    name           text        PRIMARY KEY,
    task           text        NOT NULL,
    payload        jsonb       NOT NULL DEFAULT '{}',
    cron           text,
    every_secs     bigint      CHECK (every_secs > 0),
    timezone       text        NOT NULL DEFAULT 'UTC',
    missed         text        NOT NULL DEFAULT 'latest' CHECK (missed IN ('skip', 'latest', 'all')),
    catch_up_limit integer     NOT NULL DEFAULT 10 CHECK (catch_up_limit >= 0),
    paused         boolean     NOT NULL DEFAULT false,
    source         text        NOT NULL CHECK (source IN ('task', 'cli')),
    next_fire_at   timestamptz,
    -- `warren schedules trigger`: a manual slot at this time, fired by the next scheduler pass of
    -- a replica that runs the task.
    triggered_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every_secs IS NULL))
);
-- The scheduler's poll: cheap when nothing is due.
CREATE INDEX IF NOT EXISTS schedules_due_idx ON schedules (next_fire_at) WHERE NOT paused;
CREATE INDEX IF NOT EXISTS schedules_triggered_idx ON schedules (triggered_at) WHERE triggered_at IS NOT NULL;

-- One row per slot fired (or triggered by hand: `manual`), kept for `warren schedules show`.
CREATE TABLE IF NOT EXISTS schedule_fires (
    schedule   text        NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    slot       timestamptz NOT NULL,
    message_id text        NOT NULL,
    run_id     uuid        NOT NULL,
    manual     boolean     NOT NULL DEFAULT false,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, slot)
);
