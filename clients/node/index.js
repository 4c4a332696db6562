'use strict';
/**
 * Warren HTTP steps for Node.js (>= 20), without dependencies: verify the signature of the
 * request Warren sends, run your handler, and turn what it returns or throws into the answer
 * Warren expects. The wire format is docs/steps.md in the Warren repository.
 *
 * CommonJS; `import { createServer } from './index.js'` works from ES modules too.
 */

const crypto = require('node:crypto');
const http = require('node:http');

/** How far a request's timestamp may be from this machine's clock, unless told otherwise. */
const DEFAULT_TOLERANCE_SECONDS = 300;
/** The largest request body read by `handle`, unless told otherwise. */
const DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024;
/** The keys of a reply object (anything else returned is the step's output). */
const REPLY_KEYS = new Set(['output', 'stage', 'halt', 'waitSeconds', 'emit', 'logs']);

/**
 * A step failure with a code and whether a retry can help. Throw it from a handler:
 * `throw new StepError('invalid_input', 'no url', { retryable: false })`; `logs` (an array of
 * strings) go to the run's log with the failure.
 * Other thrown errors are retryable, with their `code` and `retryable` properties if they
 * have them.
 */
class StepError extends Error {
  constructor(code, message, { retryable = true, retryAfterSeconds, logs } = {}) {
    super(message);
    this.name = 'StepError';
    this.code = code;
    this.retryable = retryable;
    this.retryAfterSeconds = retryAfterSeconds;
    this.logs = logs;
  }
}

/**
 * The `Warren-Signature` value for `rawBody` sent at `timestamp` (Unix seconds):
 * `t={timestamp},v1={hex HMAC-SHA256(secret, "{timestamp}.{rawBody}")}`.
 */
function sign(secret, timestamp, rawBody) {
  const mac = crypto.createHmac('sha256', secret);
  mac.update(`${timestamp}.`);
  mac.update(rawBody);
  return `t=${timestamp},v1=${mac.digest('hex')}`;
}

function parseSignature(header) {
  if (typeof header !== 'string') return null;
  let timestamp = null;
  const signatures = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't' && /^\d{1,12}$/.test(value)) timestamp = Number(value);
    if (key === 'v1' && /^[0-9a-f]{64}$/.test(value)) signatures.push(Buffer.from(value, 'hex'));
  }
  return timestamp === null || signatures.length === 0 ? null : { timestamp, signatures };
}

/**
 * Whether `header` (the `Warren-Signature` request header) signs `rawBody` (the request's
 * bytes as received: a Buffer or string, before any JSON parsing) with `secret`, and was made
 * within `toleranceSeconds` of now. `secret` may be an array, to accept an old and a new one
 * while rotating. Comparisons are constant-time.
 */
function verifySignature(secret, header, rawBody, { toleranceSeconds = DEFAULT_TOLERANCE_SECONDS, now } = {}) {
  const parsed = parseSignature(header);
  if (!parsed) return false;
  const current = now === undefined ? Math.floor(Date.now() / 1000) : now;
  if (Math.abs(current - parsed.timestamp) > toleranceSeconds) return false;
  const body = typeof rawBody === 'string' ? Buffer.from(rawBody, 'utf8') : rawBody;
  const secrets = Array.isArray(secret) ? secret : [secret];
  let valid = false;
  for (const key of secrets) {
    if (key === undefined || key === null || key.length === 0) continue;
    const expected = crypto.createHmac('sha256', key).update(`${parsed.timestamp}.`).update(body).digest();
    for (const candidate of parsed.signatures) {
      // No early exit: every candidate is compared, in constant time each.
      if (crypto.timingSafeEqual(expected, candidate)) valid = true;
    }
  }
  return valid;
}

function isReply(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const keys = Object.keys(value);
  return keys.includes('output') && keys.every((key) => REPLY_KEYS.has(key));
}

/**
 * The answer for what a handler returned: `{ status, headers, body }` with a JSON body.
 * A plain value is the step's output; an object with an `output` key and only the keys
 * `output`, `stage`, `halt`, `waitSeconds`, `emit`, `logs` is a reply (to return such an object as
 * an output, return `{ output: it }`).
 */
function replyResponse(value) {
  const reply = isReply(value) ? value : { output: value };
  const body = { output: reply.output === undefined ? null : reply.output };
  if (reply.stage !== undefined && reply.stage !== null) body.stage = String(reply.stage);
  if (reply.halt !== undefined && reply.halt !== null) body.halt = String(reply.halt);
  if (reply.waitSeconds !== undefined && reply.waitSeconds !== null) {
    body.wait_seconds = Math.max(0, Math.ceil(Number(reply.waitSeconds)));
  }
  if (reply.emit !== undefined && reply.emit !== null) {
    body.emit = reply.emit.map(({ event, payload }) => ({ event, payload: payload === undefined ? {} : payload }));
  }
  if (reply.logs !== undefined && reply.logs !== null) body.logs = reply.logs.map(String);
  return json(200, body);
}

/** The answer for a thrown error: its code, message and whether to retry it. */
function errorResponse(error) {
  const code = typeof error?.code === 'string' && error.code.length > 0 ? error.code : 'handler_error';
  const message = typeof error?.message === 'string' ? error.message : String(error);
  const retryable = typeof error?.retryable === 'boolean' ? error.retryable : true;
  const body = { error: { code, message, retryable } };
  if (Array.isArray(error?.logs)) body.logs = error.logs.map(String);
  const response = json(retryable ? 500 : 422, body);
  const after = error?.retryAfterSeconds;
  if (retryable && Number.isFinite(after) && after >= 0) response.headers['retry-after'] = String(Math.ceil(after));
  return response;
}

function json(status, body) {
  return { status, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}

/**
 * Wraps `handler` (`async (request) => output | reply`, where `request` is the parsed step
 * request: `{ run, step, input, outputs }`) into `async (request) => { status, headers, body }`.
 * It never throws: a thrown error becomes an error answer.
 */
function wrap(handler) {
  return async (request) => {
    try {
      return replyResponse(await handler(request));
    } catch (error) {
      return errorResponse(error);
    }
  };
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new StepError('request_too_large', `request body over ${limit} bytes`, { retryable: false }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res, { status, headers, body }) {
  res.writeHead(status, { ...headers, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function refuse(res, status, code, message) {
  send(res, json(status, { error: { code, message, retryable: false } }));
}

function resolveSecret(options) {
  const secret = options.secret ?? process.env.WARREN_STEP_SECRET;
  const missing = secret === undefined || secret === null || secret.length === 0
    || (Array.isArray(secret) && secret.every((s) => !s));
  if (missing) {
    throw new Error('warren-step: no secret (pass { secret } or set WARREN_STEP_SECRET) to verify requests with');
  }
  return secret;
}

/**
 * Serves one Warren step request on node:http's `req`/`res` with `handler`: checks the
 * method, reads the body (up to `maxBodyBytes`), verifies the signature with `secret`
 * (default: `process.env.WARREN_STEP_SECRET`; a request that fails is refused with 401, not
 * retried), parses it and answers with what the handler returns or throws.
 */
async function handle(req, res, handler, options = {}) {
  const secret = resolveSecret(options);
  const respond = wrap(handler);
  const { toleranceSeconds = DEFAULT_TOLERANCE_SECONDS, maxBodyBytes = DEFAULT_MAX_BODY_BYTES } = options;
  try {
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return refuse(res, 405, 'method_not_allowed', `Warren step endpoints take POST, not ${req.method}`);
    }
    const raw = await readBody(req, maxBodyBytes);
    if (!verifySignature(secret, req.headers['warren-signature'], raw, { toleranceSeconds })) {
      return refuse(res, 401, 'invalid_signature',
        'Warren-Signature is missing, does not match the secret, or is older than the tolerance');
    }
    let request;
    try {
      request = JSON.parse(raw.toString('utf8'));
    } catch (error) {
      return refuse(res, 400, 'invalid_request', `the body is not JSON: ${error.message}`);
    }
    return send(res, await respond(request));
  } catch (error) {
    if (!res.headersSent) send(res, errorResponse(error));
    else res.destroy();
  }
}

/**
 * An `http.Server` answering Warren step requests. `routes` is a handler (every path), or an
 * object of handlers by URL path (`{ '/steps/validate': async (request) => ... }`); an unknown
 * path answers 404, which fails the step for good. `options` as for `handle`. Call
 * `.listen(port)` on it.
 */
function createServer(routes, options = {}) {
  resolveSecret(options); // refuse at start, not at the first request
  return http.createServer((req, res) => {
    let path = req.url;
    try {
      path = new URL(req.url, 'http://localhost').pathname;
    } catch {
      // Not a path a route can match: answered 404 below.
    }
    let handler = routes;
    if (typeof routes !== 'function') {
      handler = Object.prototype.hasOwnProperty.call(routes, path) ? routes[path] : undefined;
    }
    if (typeof handler !== 'function') {
      return refuse(res, 404, 'not_found', `no step is served at ${path}`);
    }
    return handle(req, res, handler, options);
  });
}

// ---- Publishing (docs/protocol.md) ----

/** The priorities a message may carry in its `warren-priority` header. */
const PRIORITIES = ['high', 'normal', 'low'];

/**
 * The options of an amqplib `publish` of one Warren event on a confirm channel:
 * `ch.publish('warren.events', event, Buffer.from(JSON.stringify(input)), publishOptions({...}))`.
 * Persistent, mandatory (a return means no task listens), JSON, with a message id (a fresh UUID
 * unless given) and the Warren headers asked for. `priority` ('high', 'normal' or 'low') picks
 * the lane of each task with priority lanes (docs/priorities.md); the broker reads any other
 * value as normal, so it is refused here, where the typo is made.
 */
function publishOptions({ messageId, tenant, idempotencyKey, priority, headers = {}, now = new Date() } = {}) {
  const all = { ...headers, 'warren-published-at': now.toISOString() };
  if (tenant !== undefined && tenant !== null) all['warren-tenant'] = String(tenant);
  if (idempotencyKey !== undefined && idempotencyKey !== null) all['warren-idempotency-key'] = String(idempotencyKey);
  if (priority !== undefined && priority !== null) {
    if (!PRIORITIES.includes(priority)) {
      throw new Error(`warren: unknown priority ${JSON.stringify(priority)} (expected high, normal or low)`);
    }
    if (priority !== 'normal') all['warren-priority'] = priority;
  }
  return {
    contentType: 'application/json',
    persistent: true,
    mandatory: true,
    messageId: messageId ?? crypto.randomUUID(),
    headers: all,
  };
}

module.exports = {
  DEFAULT_TOLERANCE_SECONDS,
  PRIORITIES,
  publishOptions,
  StepError,
  createServer,
  handle,
  sign,
  verifySignature,
  wrap,
};
