-- Buster's own tables, in the schema `buster` of its database. app.js applies this file when it
-- starts (in one transaction, under an advisory lock, so that several copies starting at once
-- do not trip over each other); every statement is a no-op the second time.

SELECT pg_advisory_xact_lock(hashtext('buster.schema'));

CREATE SCHEMA IF NOT EXISTS buster;

-- One row per contact pushed to the CRM (buster.crm.sync): what the hourly usage counts. The
-- run's id is the key, so a step repeated after a crash does not count twice.
CREATE TABLE IF NOT EXISTS buster.crm_calls (
    run_id    uuid PRIMARY KEY,
    customer  text NOT NULL,
    called_at timestamptz NOT NULL,
    attempt   integer NOT NULL
);
CREATE INDEX IF NOT EXISTS crm_calls_called_at ON buster.crm_calls (called_at);

-- The hourly usage metric (buster.usage.hourly): each customer's CRM calls in one hour, the
-- hour given by its start.
CREATE TABLE IF NOT EXISTS buster.usage (
    hour      timestamptz NOT NULL,
    customer  text NOT NULL,
    crm_calls integer NOT NULL,
    PRIMARY KEY (hour, customer)
);

-- The five-minute health checks (buster.health), one per slot.
CREATE TABLE IF NOT EXISTS buster.health_checks (
    checked_at timestamptz PRIMARY KEY,
    ok         boolean NOT NULL,
    status     integer,
    latency_ms integer NOT NULL,
    detail     text
);

-- The daily reports (buster.report.daily), one per day reported.
CREATE TABLE IF NOT EXISTS buster.daily_reports (
    day      date PRIMARY KEY,
    timezone text NOT NULL,
    slot     timestamptz NOT NULL,
    report   jsonb NOT NULL,
    made_at  timestamptz NOT NULL DEFAULT now()
);
