-- Ownership belongs to a process incarnation, not to a replica id. Every start of a replica
-- registers a new row here, named `{replica id}#{incarnation}` (`id`), and that name is what
-- its runs' owner column (`runs.worker`) and its steps and transitions carry. Registering a new
-- incarnation of an id marks the previous ones stopped, so a replica restarted under the same
-- id (a container restarted in its pod) frees the runs its predecessor held at once, and two
-- live processes sharing an id are two owners to the fence, never one.
--
-- The numbers come from a sequence, so they are never reused, even after old rows are pruned.
CREATE SEQUENCE IF NOT EXISTS worker_incarnations;

-- `replica` is the configured id (`--worker-id`) and `incarnation` the number of this start.
-- Rows registered before this migration (and by replicas of an older release still rolling
-- out) have neither: their `id` is the replica id.
ALTER TABLE workers
    ADD COLUMN IF NOT EXISTS replica     text,
    ADD COLUMN IF NOT EXISTS incarnation bigint;

-- Retention (`warren prune`, and the worker's scheduled prune) deletes idempotency keys by age.
-- Keys are written only by runs that carry one, through the claim's slow path: the index costs
-- the hot path nothing. Runs are pruned through `runs_created_idx` and their steps and
-- transitions through their primary keys: no index is added to the tables the hot path writes.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);
