-- Idempotency keys: publishes of one task with the same key within the window make one run.
-- A dead run does not hold its key: publishing again with the key makes a new run.
CREATE TABLE idempotency_keys (
    task       text        NOT NULL,
    key        text        NOT NULL,
    run_id     uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, key)
);
