-- Fleet-wide rate limits (docs/rate-limits.md): one row per limited key, holding the earliest
-- time the next start may take (the "theoretical arrival time" of the generic cell rate
-- algorithm). Starts are spaced `interval` apart, whatever the number of replicas, on
-- Postgres's one clock.
CREATE TABLE IF NOT EXISTS rate_limits (
    key text        PRIMARY KEY,
    tat timestamptz NOT NULL
);

-- Reserves the next start of `key`, if it comes within `hold` of now: returns the start and
-- true, and moves the key's next free time on by `interval`. Otherwise returns the next free
-- time and false, and reserves nothing. One round trip; the row lock orders the callers.
CREATE OR REPLACE FUNCTION warren_reserve_start(k text, step interval, hold interval)
RETURNS TABLE (start timestamptz, reserved boolean, db_now timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    next   timestamptz;
BEGIN
    INSERT INTO rate_limits (key, tat) VALUES (k, now_ts) ON CONFLICT (key) DO NOTHING;
    SELECT greatest(r.tat, now_ts) INTO next FROM rate_limits r WHERE r.key = k FOR UPDATE;
    IF next <= now_ts + hold THEN
        UPDATE rate_limits SET tat = next + step WHERE key = k;
        RETURN QUERY SELECT next, true, now_ts;
    ELSE
        RETURN QUERY SELECT next, false, now_ts;
    END IF;
END;
$$;
