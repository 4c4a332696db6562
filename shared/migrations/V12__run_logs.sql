-- Per-run logs (docs/steps.md, "Logging from a step"): the lines a step writes to its run
-- (`ctx.log` in Rust, an HTTP step's `logs`, a command step's standard error), written in the
-- group commit of the step's checkpoint or failure.
--
-- `seq` numbers every line the run ever logged, from 1, including the lines dropped: a run keeps
-- at most its newest N lines (the worker's `--max-log-lines`), the older ones are deleted as new
-- ones come, and a line dropped before it was ever stored still takes its number. So the lines
-- kept are always the numbers after the first one kept, and the count of lines dropped is that
-- first number minus one: no counter row to update in the hot path.
--
-- No foreign key, as for steps and transitions since V6: retention deletes a pruned run's lines
-- by `run_id`, through the primary key.
CREATE TABLE IF NOT EXISTS run_logs (
    run_id  uuid        NOT NULL,
    seq     bigint      NOT NULL,
    step    text        NOT NULL,
    attempt integer     NOT NULL,
    at      timestamptz NOT NULL,
    line    text        NOT NULL,
    PRIMARY KEY (run_id, seq)
);
