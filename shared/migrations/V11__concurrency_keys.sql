-- Concurrency keys (docs/concurrency-keys.md): at most N runs of one key (a tenant, a user, a
-- value of the input) running at once across the fleet, and keys taking turns.
--
-- A run holds a slot of its key while it runs. A run that finds its key full waits in
-- `waiting_for_key`: no worker slot, no unacked message. Its message waits in the outbox, held
-- (available_at far in the future), and a row in key_waiters keeps its place in its key's line.
-- When a slot frees (the holder leaves `running`, whatever the reason), the trigger below hands
-- it to the oldest waiter of that key: the slot is reserved for the waiter and its message
-- released to the relay. Each key's line moves on its own, so a key with 5,000 waiting runs does
-- not hold up a key with 50.

ALTER TABLE runs ADD COLUMN IF NOT EXISTS concurrency_key text;

-- One row per key: the lock that orders the claims of one key, and its limit as the task that
-- last claimed a run of it declared.
CREATE TABLE IF NOT EXISTS concurrency_keys (
    key         text    PRIMARY KEY,
    max_running integer NOT NULL
);

-- The slots in use. A slot with a worker counts while that worker is alive (a replica killed
-- with runs in hand frees its slots when its heartbeat lapses; the runs re-take one when their
-- messages come back). A slot without a worker is reserved for a waiter whose message is on
-- its way (`reserved_at` says since when), and counts while that run still waits.
CREATE TABLE IF NOT EXISTS concurrency_slots (
    run_id      uuid        PRIMARY KEY,
    key         text        NOT NULL,
    worker      text,
    reserved_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS concurrency_slots_key_idx ON concurrency_slots (key);

-- The runs waiting for a slot, in order of arrival per key; `outbox_id` is their held message.
CREATE TABLE IF NOT EXISTS key_waiters (
    id        bigserial   PRIMARY KEY,
    key       text        NOT NULL,
    run_id    uuid        NOT NULL UNIQUE,
    outbox_id bigint      NOT NULL,
    since     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS key_waiters_key_idx ON key_waiters (key, id);

CREATE INDEX IF NOT EXISTS runs_waiting_for_key_idx ON runs (task) WHERE status = 'waiting_for_key';

-- How long a replica's heartbeat keeps what it holds its own: the same 15 s as the Rust
-- constant `store::OWNER_LEASE` (a test checks that they agree).
CREATE OR REPLACE FUNCTION warren_owner_lease() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '15 seconds' $$;

-- The slots of `k` in use, `except_run`'s own left out: those of live replicas, and those
-- reserved for runs still waiting for their key (their message is on its way, however long the
-- queue in front of it).
CREATE OR REPLACE FUNCTION warren_key_slots_in_use(k text, except_run uuid)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT count(*)
    FROM concurrency_slots s LEFT JOIN workers w ON w.id = s.worker
    WHERE s.key = k AND s.run_id IS DISTINCT FROM except_run
      AND CASE WHEN s.worker IS NULL
               THEN EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'waiting_for_key')
               ELSE w.stopped_at IS NULL AND w.last_heartbeat > now() - warren_owner_lease() END
$$;

-- Takes a slot of `k` for `run` on `me`, if one is free, or keeps the run's own (reserved for it
-- when its turn came, or held on `me` already): true when the run has its slot. A slot another
-- live replica holds for the run is left alone and counts as the run's (this delivery is a
-- duplicate, which the claim then finds busy). The key's row lock orders the claims of one key.
CREATE OR REPLACE FUNCTION warren_take_slot(run uuid, k text, max_running integer, me text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    held   boolean := false;
    holder text;
    alive  boolean;
BEGIN
    INSERT INTO concurrency_keys (key, max_running) VALUES (k, max_running)
    ON CONFLICT (key) DO UPDATE SET max_running = EXCLUDED.max_running
        WHERE concurrency_keys.max_running <> EXCLUDED.max_running;
    PERFORM 1 FROM concurrency_keys WHERE key = k FOR UPDATE;
    SELECT true, s.worker, w.stopped_at IS NULL AND w.last_heartbeat > now() - warren_owner_lease()
      INTO held, holder, alive
      FROM concurrency_slots s LEFT JOIN workers w ON w.id = s.worker
     WHERE s.run_id = run;
    IF coalesce(held, false) THEN
        IF holder IS NULL OR holder = me THEN
            UPDATE concurrency_slots SET key = k, worker = me WHERE run_id = run;
            RETURN true;
        ELSIF coalesce(alive, false) THEN
            RETURN true;
        END IF;
    END IF;
    IF warren_key_slots_in_use(k, run) < max_running THEN
        INSERT INTO concurrency_slots (run_id, key, worker) VALUES (run, k, me)
        ON CONFLICT (run_id) DO UPDATE SET key = EXCLUDED.key, worker = EXCLUDED.worker,
                                           reserved_at = now();
        RETURN true;
    END IF;
    -- What is left here is a slot the run held on a replica that died: not its own any more.
    DELETE FROM concurrency_slots WHERE run_id = run;
    RETURN false;
END;
$$;

-- Hands free slots of `k` to its oldest waiters, up to `free` of them (all its free slots when
-- null): reserves each a slot and releases its held message. Returns how many went.
-- `SKIP LOCKED`: two replicas releasing at once take different waiters, and never wait on
-- each other.
CREATE OR REPLACE FUNCTION warren_release_waiters(k text, free integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    w record;
    released integer := 0;
BEGIN
    FOR w IN
        SELECT id, run_id, outbox_id FROM key_waiters
        WHERE key = k ORDER BY id LIMIT greatest(free, 0)
        FOR UPDATE SKIP LOCKED
    LOOP
        DELETE FROM key_waiters WHERE id = w.id;
        INSERT INTO concurrency_slots (run_id, key, worker) VALUES (w.run_id, k, NULL)
        ON CONFLICT (run_id) DO UPDATE SET key = EXCLUDED.key, worker = NULL, reserved_at = now();
        UPDATE outbox SET available_at = now() WHERE id = w.outbox_id;
        released := released + 1;
    END LOOP;
    RETURN released;
END;
$$;

-- The safety net (each replica, every second, one key per transaction): a key with free slots
-- and waiters releases them. It catches what the trigger cannot see: a slot freed while a
-- claim of the same key was enqueueing its run, and slots of a replica that died.
CREATE OR REPLACE FUNCTION warren_release_free_slots(k text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    max_running integer;
BEGIN
    SELECT c.max_running INTO max_running FROM concurrency_keys c WHERE c.key = k FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    RETURN warren_release_waiters(k, max_running - warren_key_slots_in_use(k, NULL)::integer);
END;
$$;

-- A run leaving `running` gives up its slot; a run leaving `waiting_for_key` (it started, or was
-- cancelled) leaves the line, its held message dropped if it was still held, and a slot
-- reserved for it given up unless it is starting in it. A slot given up goes to the oldest
-- waiter of its key if the key has room: a slot of a replica that died, or one over a lowered
-- limit, frees no room. No key lock is taken here (run ends of many keys in one group commit
-- never wait on each other); what a concurrent claim or release adds is each justified by a
-- count that still included this slot, so the limit holds.
CREATE OR REPLACE FUNCTION warren_key_run_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    freed text;
    max_running integer;
BEGIN
    IF OLD.status = 'running' AND NEW.status <> 'running' AND OLD.concurrency_key IS NOT NULL THEN
        DELETE FROM concurrency_slots WHERE run_id = OLD.id RETURNING key INTO freed;
        NEW.concurrency_key := NULL;
    END IF;
    IF OLD.status = 'waiting_for_key' AND NEW.status <> 'waiting_for_key' THEN
        WITH left_line AS (DELETE FROM key_waiters WHERE run_id = OLD.id RETURNING outbox_id)
        DELETE FROM outbox o USING left_line l
        WHERE o.id = l.outbox_id AND o.available_at > now() + interval '1 year';
        IF NEW.status <> 'running' THEN
            DELETE FROM concurrency_slots WHERE run_id = OLD.id AND worker IS NULL
            RETURNING key INTO freed;
        END IF;
    END IF;
    IF freed IS NOT NULL THEN
        SELECT c.max_running INTO max_running FROM concurrency_keys c WHERE c.key = freed;
        IF warren_key_slots_in_use(freed, NULL) < coalesce(max_running, 0) THEN
            PERFORM warren_release_waiters(freed, 1);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS runs_key_moved ON runs;
CREATE TRIGGER runs_key_moved
    BEFORE UPDATE OF status ON runs
    FOR EACH ROW
    WHEN ((OLD.status = 'running' AND NEW.status <> 'running' AND OLD.concurrency_key IS NOT NULL)
          OR (OLD.status = 'waiting_for_key' AND NEW.status <> 'waiting_for_key'))
    EXECUTE FUNCTION warren_key_run_moved();
