-- Keep every write of the hot path cheap (measured with warren-bench: docs/benchmarks.md).
--
-- A run's row is updated at least once after its insert (at its last step). V5 left 20 % of
-- each page free, room for one in five rows to be updated in place (HOT): with a 1 KiB input
-- inside the row, most updates copied the whole row to another page and wrote a new entry into
-- every index. Now the input is kept out of line (TOAST: it is written once and never copied by
-- an update), which leaves the row a few hundred bytes, and half of each page is free, so that
-- every run's updates stay on its page and touch no index.
ALTER TABLE runs ALTER COLUMN input SET STORAGE EXTERNAL;
ALTER TABLE runs SET (toast_tuple_target = 128, fillfactor = 50);

-- Step checkpoints and transitions no longer carry foreign keys to their run. Checking them took
-- about a third of Postgres's time on the hot path (a lookup and a row lock on `runs` per row
-- written), and they guarded nothing that Warren's writes can get wrong: every checkpoint and
-- transition is written in the transaction that creates or fences its run's row
-- (`shared/src/store`), and nothing deletes runs.
ALTER TABLE run_steps DROP CONSTRAINT IF EXISTS run_steps_run_id_fkey;
ALTER TABLE run_transitions DROP CONSTRAINT IF EXISTS run_transitions_run_id_fkey;
