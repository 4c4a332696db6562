-- Keep every write of the hot path cheap (measured with warren-bench: docs/benchmarks.md).
--
-- A run's row is updated at least once after its insert (at its last step). V5 left 20 % of
-- each page free: room for one in five rows, with a 1 KiB input inside, to be updated in place
-- (HOT). The others were copied to another page with a new entry in every index of the table.
-- With half of each page free, nearly every update stays on its page and touches no index
-- (on pages written from now on: an existing database's older pages keep their fill until
-- rewritten, e.g. by VACUUM FULL).
ALTER TABLE runs SET (fillfactor = 50);

-- Step checkpoints and transitions no longer carry foreign keys to their run. Checking them took
-- about a third of Postgres's time on the hot path (a lookup and a row lock on `runs` per row
-- written), and they guarded nothing that Warren's writes can get wrong: every checkpoint and
-- transition is written in the transaction that creates its run's row or fences on it
-- (`shared/src/store`), and Warren deletes no runs. Their ON DELETE CASCADE goes with them:
-- whoever deletes old runs deletes their steps and transitions too (docs/operations.md).
ALTER TABLE run_steps DROP CONSTRAINT IF EXISTS run_steps_run_id_fkey;
ALTER TABLE run_transitions DROP CONSTRAINT IF EXISTS run_transitions_run_id_fkey;
