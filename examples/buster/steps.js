#!/usr/bin/env node
'use strict';
/**
 * Buster's background work as Warren HTTP steps (tasks.toml declares the tasks), served with
 * clients/node. Buster keeps its own small tables in Postgres (schema.sql, applied when this
 * server starts) and reaches them with `psql`; Node.js 20 and the PostgreSQL client, no npm.
 *
 *   /steps/sync     buster.crm.sync: push a new customer's contact to the CRM (crm.js). A 429
 *                   from the CRM is a retryable RATE_LIMIT failure that carries its Retry-After
 *   /steps/usage    buster.usage.hourly: each customer's CRM calls in the hour before the slot
 *   /steps/health   buster.health: probe the CRM, record whether it answered and how fast
 *   /steps/report   buster.report.daily: the day before the slot, in the report's time zone:
 *                   usage per customer and health, kept in buster.daily_reports
 *
 * A scheduled run knows its slot (`run.scheduled_for`): each step works on the slot's hour or
 * day, not on the time it happens to run, so a late or repeated run records the same thing.
 * A run started by hand (`warren publish`) has no slot and works on now.
 *
 *   WARREN_STEP_SECRET=... node examples/buster/steps.js
 *
 * Environment: PORT (8790), HOST (127.0.0.1), BUSTER_DATABASE_URL (Buster's database,
 * postgres://postgres@127.0.0.1:5432/warren), BUSTER_CRM_API (http://127.0.0.1:8789) and
 * BUSTER_CRM_KEY (the CRM's API key).
 */

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { createServer, StepError } = require(path.join(__dirname, '..', '..', 'clients', 'node'));

const PORT = Number(process.env.PORT ?? 8790);
const HOST = process.env.HOST ?? '127.0.0.1';
const DATABASE_URL = process.env.BUSTER_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/warren';
const CRM = process.env.BUSTER_CRM_API ?? 'http://127.0.0.1:8789';
const CRM_KEY = process.env.BUSTER_CRM_KEY ?? 'buster-demo-key';
/** A health probe slower than this is a failed check. */
const PROBE_TIMEOUT_MS = 2000;

/**
 * Runs `script` with psql in one transaction, each of `vars` a psql variable (`:'name'` in
 * the script, quoted by psql), and resolves to what it printed (unaligned, tuples only).
 * Times are in UTC. A database that cannot be reached is worth retrying.
 */
function sql(script, vars = {}) {
  const args = ['-X', '-q', '-A', '-t', '--single-transaction', '-v', 'ON_ERROR_STOP=1'];
  for (const [name, value] of Object.entries(vars)) args.push('-v', `${name}=${value}`);
  args.push('-d', DATABASE_URL);
  return new Promise((resolve, reject) => {
    const psql = spawn('psql', args, { env: { ...process.env, PGTZ: 'UTC' } });
    let out = '';
    let err = '';
    psql.stdout.on('data', (chunk) => (out += chunk));
    psql.stderr.on('data', (chunk) => (err += chunk));
    psql.on('error', (error) => reject(new StepError('database', `psql: ${error.message}`)));
    psql.on('close', (code) =>
      code === 0 ? resolve(out.trim()) : reject(new StepError('database', `psql exited ${code}: ${err.trim()}`)),
    );
    psql.stdin.end(script);
  });
}

/** The run's slot, or now for a run started by hand. */
function slotOf(run) {
  return run.scheduled_for ?? new Date().toISOString();
}

/** The CRM's answer to `POST /contacts`, a 429 turned into a retryable RATE_LIMIT failure. */
async function pushContact(idempotencyKey, contact) {
  let response;
  try {
    response = await fetch(`${CRM}/contacts`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-api-key': CRM_KEY,
        'idempotency-key': idempotencyKey,
        'user-agent': 'buster-steps',
      },
      body: JSON.stringify(contact),
    });
  } catch (error) {
    throw new StepError('network', `${CRM}: ${error.cause?.code ?? error.message}`);
  }
  const said = `the CRM answered ${response.status} ${response.statusText}`;
  if (response.status === 429) {
    // Warren retries the step no sooner than the CRM asked (Retry-After, in whole seconds).
    const after = Number(response.headers.get('retry-after'));
    throw new StepError('RATE_LIMIT', `${said} (retry after ${after} s)`, {
      retryAfterSeconds: Number.isFinite(after) ? after : 1,
    });
  }
  if (response.status >= 500) throw new StepError('upstream_error', said);
  if (!response.ok) throw new StepError('crm_refused', `${said}: ${await response.text()}`, { retryable: false });
  return response.json();
}

const routes = {
  '/steps/sync': async ({ run, step, input }) => {
    const contact = await pushContact(`${run.id}/${step}`, input);
    // What the hourly usage counts: one row per run, however often the step is repeated.
    await sql(
      `INSERT INTO buster.crm_calls (run_id, customer, called_at, attempt)
       VALUES (:'run', :'customer', now(), :'attempt') ON CONFLICT (run_id) DO NOTHING`,
      { run: run.id, customer: input.customer, attempt: run.attempt },
    );
    return { contact: contact.id, customer: input.customer };
  },

  '/steps/usage': async ({ run }) => {
    // The whole hour before the slot's: the 10:00 slot counts 09:00 to 10:00.
    const counted = await sql(
      `WITH hour AS (SELECT date_trunc('hour', :'slot'::timestamptz) - interval '1 hour' AS start),
            counts AS (
              SELECT hour.start AS hour, customer, count(*)::int AS crm_calls
              FROM buster.crm_calls, hour
              WHERE called_at >= hour.start AND called_at < hour.start + interval '1 hour'
              GROUP BY hour.start, customer),
            recorded AS (
              INSERT INTO buster.usage (hour, customer, crm_calls) SELECT * FROM counts
              ON CONFLICT (hour, customer) DO UPDATE SET crm_calls = EXCLUDED.crm_calls
              RETURNING customer, crm_calls)
       SELECT json_build_object(
         'hour', (SELECT start FROM hour),
         'crm_calls', (SELECT coalesce(json_object_agg(customer, crm_calls ORDER BY customer), '{}') FROM recorded),
         'total', (SELECT coalesce(sum(crm_calls), 0) FROM recorded))`,
      { slot: slotOf(run) },
    );
    return JSON.parse(counted);
  },

  '/steps/health': async ({ run }) => {
    const started = performance.now();
    let ok = false;
    let status = null;
    let detail = null;
    try {
      const response = await fetch(`${CRM}/health`, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
      status = response.status;
      ok = response.ok;
      detail = (await response.text()).slice(0, 200);
    } catch (error) {
      // A CRM that does not answer is what the check is for: a failed check, not a failed step.
      detail = error.name === 'TimeoutError' ? `no answer within ${PROBE_TIMEOUT_MS} ms` : String(error.cause?.code ?? error.message);
    }
    const latency = Math.round(performance.now() - started);
    const checkedAt = slotOf(run);
    await sql(
      `INSERT INTO buster.health_checks (checked_at, ok, status, latency_ms, detail)
       VALUES (:'at', :'ok', nullif(:'status', '')::int, :'latency', :'detail')
       ON CONFLICT (checked_at) DO UPDATE
         SET ok = EXCLUDED.ok, status = EXCLUDED.status, latency_ms = EXCLUDED.latency_ms, detail = EXCLUDED.detail`,
      { at: checkedAt, ok, status: status ?? '', latency, detail: detail ?? '' },
    );
    return { checked_at: checkedAt, ok, status, latency_ms: latency };
  },

  '/steps/report': async ({ run, input }) => {
    const timezone = input.timezone ?? 'UTC';
    // The day that ended before the slot, on the zone's wall clock: 23 or 25 hours when the
    // clocks change that day. Kept in buster.daily_reports (made again, it replaces itself).
    const report = await sql(
      `WITH day AS (
              SELECT d AS day,
                     d::timestamp AT TIME ZONE :'tz' AS start,
                     (d + 1)::timestamp AT TIME ZONE :'tz' AS stop
              FROM (SELECT (:'slot'::timestamptz AT TIME ZONE :'tz')::date - 1 AS d) AS slot_day),
            usage AS (
              SELECT customer, sum(crm_calls)::int AS crm_calls
              FROM buster.usage, day WHERE hour >= day.start AND hour < day.stop
              GROUP BY customer),
            health AS (
              SELECT count(*)::int AS checks,
                     count(*) FILTER (WHERE NOT ok)::int AS failed,
                     round(avg(latency_ms) FILTER (WHERE ok))::int AS mean_latency_ms
              FROM buster.health_checks, day WHERE checked_at >= day.start AND checked_at < day.stop),
            report AS (
              SELECT day.day, json_build_object(
                'day', day.day,
                'timezone', :'tz',
                'from', day.start,
                'to', day.stop,
                'hours', (extract(epoch FROM day.stop - day.start) / 3600)::int,
                'crm_calls', (SELECT coalesce(json_object_agg(customer, crm_calls ORDER BY customer), '{}') FROM usage),
                'total_crm_calls', (SELECT coalesce(sum(crm_calls), 0) FROM usage),
                'health', (SELECT json_build_object(
                  'checks', checks,
                  'expected_checks', (extract(epoch FROM day.stop - day.start) / 300)::int,
                  'failed', failed,
                  'mean_latency_ms', mean_latency_ms) FROM health)
              )::jsonb AS body
              FROM day)
       INSERT INTO buster.daily_reports (day, timezone, slot, report)
       SELECT day, :'tz', :'slot', body FROM report
       ON CONFLICT (day) DO UPDATE
         SET timezone = EXCLUDED.timezone, slot = EXCLUDED.slot, report = EXCLUDED.report, made_at = now()
       RETURNING report`,
      { slot: slotOf(run), tz: timezone },
    );
    return JSON.parse(report);
  },
};

async function main() {
  await sql(fs.readFileSync(path.join(__dirname, 'schema.sql'), 'utf8'));
  const server = createServer(routes); // the secret: WARREN_STEP_SECRET, the worker's too
  server.listen(PORT, HOST, () => {
    const { address, port } = server.address();
    console.log(`buster steps listening on http://${address}:${port}`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error) => {
  console.error(`buster steps: ${error.message}`);
  process.exit(1);
});
