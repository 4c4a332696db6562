-- Runs that start runs (docs/children.md), the transactional outbox, and cancellation.

-- A child run names its parent; `runs list --parent` and the cancellation of a parent's tree go
-- through the partial index (parent_id never changes, so updates of a run stay HOT).
-- `join_step` names the step whose children the run waits for (or has just been woken from),
-- so a claim learns it from the row it reads anyway.
ALTER TABLE runs
    ADD COLUMN IF NOT EXISTS parent_id    uuid,
    ADD COLUMN IF NOT EXISTS join_step    text,
    ADD COLUMN IF NOT EXISTS cancelled_by text,
    ADD COLUMN IF NOT EXISTS cancelled_at timestamptz;
CREATE INDEX IF NOT EXISTS runs_parent_idx ON runs (parent_id, created_at) WHERE parent_id IS NOT NULL;

-- Messages that commit together with the write that causes them (emitted events, child
-- triggers, a parent's wake-up, a retried run's message). A relay in every replica publishes
-- the rows whose time has come with confirms and deletes them: a row exists only until its
-- message is confirmed. `available_at` is when it may be sent: now for most rows, the join's
-- deadline for a parent's wake-up (brought forward when its last child ends), later after a
-- failed publish. `properties` is the AMQP basic properties as JSON.
CREATE TABLE IF NOT EXISTS outbox (
    id           bigserial   PRIMARY KEY,
    run_id       uuid        NOT NULL,
    kind         text        NOT NULL,   -- event | child | wake | retry
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    body         bytea       NOT NULL,
    properties   jsonb       NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- The relay takes due rows oldest first (`WHERE available_at <= now() ORDER BY available_at, id
-- LIMIT 500`): in this index's order it reads one batch's rows and stops, where an index on
-- `available_at` alone made Postgres read and sort every due row for each batch (a 10,000-child
-- fan-out's 13 MB, sorted on disk twenty times).
CREATE INDEX IF NOT EXISTS outbox_due_idx ON outbox (available_at, id);
CREATE INDEX IF NOT EXISTS outbox_run_idx ON outbox (run_id);

-- A run waiting for its children: one open join per run. Children start in list order, at most
-- `max_running` at a time: `started` children have a run (and a message), the rest wait here.
CREATE TABLE IF NOT EXISTS run_joins (
    parent_id    uuid        PRIMARY KEY,
    step         text        NOT NULL,
    position     integer     NOT NULL,
    total        integer     NOT NULL,
    started      integer     NOT NULL,
    ended        integer     NOT NULL DEFAULT 0,
    max_running  integer,
    single       boolean     NOT NULL,
    wake_id      bigint      NOT NULL,   -- the parent's wake-up in the outbox
    deadline     timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The children of an open join, in list order, each with the message that starts it (kept only
-- until the child starts: then its run exists and its message is in the outbox or sent).
CREATE TABLE IF NOT EXISTS run_children (
    parent_id   uuid        NOT NULL,
    position    integer     NOT NULL,
    child_id    uuid        NOT NULL,
    task        text        NOT NULL,
    event       text        NOT NULL,
    message_id  text        NOT NULL,
    routing_key text        NOT NULL,
    body        bytea,
    properties  jsonb,
    ended_at    timestamptz,
    PRIMARY KEY (parent_id, position)
);
CREATE UNIQUE INDEX IF NOT EXISTS run_children_child_idx ON run_children (child_id);
