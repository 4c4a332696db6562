-- The relay takes due rows oldest first (`WHERE available_at <= now() ORDER BY available_at, id
-- LIMIT 500`). With an index on `available_at` alone, Postgres read and sorted every due row for
-- each batch: a 10,000-child fan-out's rows (13 MB with their bodies, sorted on disk), again for
-- each of its 20 batches. In this order it reads the batch's rows and stops.
CREATE INDEX IF NOT EXISTS outbox_due_idx ON outbox (available_at, id);
DROP INDEX IF EXISTS outbox_available_idx;
