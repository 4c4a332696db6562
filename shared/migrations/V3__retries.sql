-- Retries, waits and replays.
ALTER TABLE runs
    -- Attempts before this number belong to earlier retry budgets (a replay starts a new one).
    ADD COLUMN attempt_base       integer NOT NULL DEFAULT 0,
    -- The wait a waiting run expects to be woken from; other copies of its message are stale.
    ADD COLUMN wake_token         text,
    -- When a retrying or waiting run is due back.
    ADD COLUMN next_attempt_at    timestamptz,
    -- When the task's failure handler ran for the run's current death.
    ADD COLUMN failure_handled_at timestamptz;
