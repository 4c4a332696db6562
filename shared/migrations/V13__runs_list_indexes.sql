-- Listing runs fast over a large history (`store::runs::page_runs`: `warren runs list` and the
-- console's runs table). A page is the newest runs matching a filter, ordered by
-- (created_at DESC, id DESC), and the next page starts strictly after the last run of the
-- previous one (keyset pagination: no OFFSET, no run missed or repeated when many runs share a
-- creation time, as a fan-out's children do). Each index below serves one filter in exactly
-- that order, so a page reads its rows and stops, whatever the filter selects.
--
-- V5 dropped the index on `status` so that a run's updates stay HOT (in place, touching no
-- index), and listing by status walked the creation index and filtered: for a rare status that
-- reads most of the table, and for a status no run has, all of it (on 1,000,000 runs, a
-- parallel sequential scan of 80 to 120 ms for `cancelled`). Since V11, though, the partial index
-- `runs_waiting_for_key_idx ... WHERE status = 'waiting_for_key'` names `status` in its
-- predicate, and Postgres counts the columns of index predicates as indexed: every UPDATE that
-- changes `status` is already non-HOT, whatever the value. Measured on Postgres 15
-- (`pg_stat_user_tables.n_tup_hot_upd`, 2,000 rows with a 1 KiB input, V1-V11 schema, a VACUUM
-- between the updates):
--
--   2,000 updates keeping the status (a step's checkpoint):          2,000 HOT
--   2,000 updates running -> succeeded, with runs_waiting_for_key_idx:    0 HOT
--   the same without runs_waiting_for_key_idx:                       2,000 HOT
--   with the indexes below added: keeping the status 2,000 HOT, changing it 0 HOT
--
-- So an index on (status, ...) takes no HOT update away: an update that changes the status (a
-- run's end, a retry, a wait; a new run is inserted as `running`, and the checkpoints in
-- between keep the status) already writes a new entry into every index of the table; now it
-- writes one more. A run's `tenant` is set when it is inserted and never changes, so its index
-- costs an entry at insert and at each status change, and breaks no HOT update either; the
-- same for `parent_id`. In Postgres's CPU per run (inserted, then its status changed once;
-- docs/benchmarks.md): the status index about 3 us, the tenant index about 5 us for a run with
-- a tenant, against 35-47 us without them.
--
-- The creation and task indexes gain `id`, so that runs sharing a creation time come in a
-- fixed order from the index itself, and replace the old ones (the prune's scan by age uses
-- the creation index as before). On a large history each CREATE INDEX below reads `runs` and
-- blocks writes meanwhile: create them first, without blocking, and the migration skips them
-- (docs/operations.md, "Listing runs (migration V13)").
--
-- The indexes are ascending and read backwards for newest first (the same plan, but for the
-- direction). A new run's entry then goes at the right end of its range, where Postgres fills
-- a page before it starts the next; in a descending index on a growing time each new entry
-- goes at the left end, and every full page is split in half. Measured for the creation index,
-- 400,000 runs inserted in creation order: 28 MB descending, 15 MB ascending.
CREATE INDEX IF NOT EXISTS runs_created_page_idx ON runs (created_at, id);
CREATE INDEX IF NOT EXISTS runs_task_page_idx ON runs (task, created_at, id);
CREATE INDEX IF NOT EXISTS runs_status_page_idx ON runs (status, created_at, id);
CREATE INDEX IF NOT EXISTS runs_tenant_page_idx ON runs (tenant, created_at, id)
    WHERE tenant IS NOT NULL;
-- A parent's children are listed oldest first (the order they were started in).
CREATE INDEX IF NOT EXISTS runs_parent_page_idx ON runs (parent_id, created_at, id)
    WHERE parent_id IS NOT NULL;

DROP INDEX IF EXISTS runs_created_idx;
DROP INDEX IF EXISTS runs_task_created_idx;
DROP INDEX IF EXISTS runs_parent_idx;
