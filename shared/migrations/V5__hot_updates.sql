-- Keep the hot path cheap. A run's row is updated at every step; an index on `status` made every
-- such update write a new entry into each of the table's indexes. Without it, and with room
-- left on each page, Postgres updates the row in place (a HOT update) and touches no index.
-- Listing runs by status walks the created_at index and filters instead.
DROP INDEX IF EXISTS runs_status_created_idx;
ALTER TABLE runs SET (fillfactor = 80);

-- Transitions are read per run in order: make that the primary key and drop the second index,
-- one index entry per transition instead of two.
ALTER TABLE run_transitions DROP CONSTRAINT run_transitions_pkey;
ALTER TABLE run_transitions ADD PRIMARY KEY (run_id, id);
DROP INDEX IF EXISTS run_transitions_run_idx;

-- Replicas report their runs in flight with each heartbeat, so that listing the fleet need not
-- scan the runs.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS in_flight integer NOT NULL DEFAULT 0;
