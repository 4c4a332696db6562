-- Runs, their step checkpoints, and the append-only log of every status change.
-- The legal status changes are defined in shared/src/state.rs (docs/state-machine.md).

CREATE TABLE runs (
    id              uuid PRIMARY KEY,
    message_id      text        NOT NULL,
    task            text        NOT NULL,
    event           text        NOT NULL,
    status          text        NOT NULL,
    stage           text,
    outcome         text,
    attempt         integer     NOT NULL,
    input           jsonb,
    output          jsonb,
    error_code      text,
    error_message   text,
    idempotency_key text,
    tenant          text,
    worker          text,
    published_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_created_idx ON runs (created_at DESC);
CREATE INDEX runs_task_created_idx ON runs (task, created_at DESC);
CREATE INDEX runs_status_created_idx ON runs (status, created_at DESC);
CREATE INDEX runs_message_idx ON runs (message_id);

-- One row per step of a run: the checkpoint a retry or redelivery resumes from.
CREATE TABLE run_steps (
    run_id        uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step          text        NOT NULL,
    position      integer     NOT NULL,
    status        text        NOT NULL,   -- succeeded | halted | failed
    attempt       integer     NOT NULL,
    executions    integer     NOT NULL DEFAULT 1,
    output        jsonb,
    error_code    text,
    error_message text,
    worker        text,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE run_transitions (
    id          bigserial   PRIMARY KEY,
    run_id      uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    from_status text,
    to_status   text        NOT NULL,
    stage       text,
    step        text,
    attempt     integer     NOT NULL,
    worker      text,
    reason      text,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_transitions_run_idx ON run_transitions (run_id, id);
