#!/usr/bin/env node
'use strict';
// A stand-in for the CRM that Buster pushes its new customers' contacts to: a third party's
// API with a quota of LIMIT calls a second per API key (default 10), shared by everything that
// uses the key. A call over the quota answers 429 Too Many Requests with Retry-After, as real
// APIs do.
//
//   POST /contacts   {customer, email, name?} with x-api-key: a contact (201); the same
//                    Idempotency-Key again answers the same contact (200), as a real CRM does
//   GET  /health     {"status": "ok"} (no key, outside the quota)
//   GET  /calls      every answered call of /contacts, by arrival: {at (ms since the epoch), key, client (the
//                    User-Agent), status, idempotency_key}, for the tests
//
// Listens on HOST:PORT (default 127.0.0.1:8789). Node.js 20, no dependencies.

const http = require('node:http');

const LIMIT = Number(process.env.LIMIT ?? 10);
const WINDOW_MS = 1000;

/** The times of each key's accepted calls in the last second (a sliding window). */
const accepted = new Map();
/** Contacts by idempotency key. */
const contacts = new Map();
const calls = [];

/** `null` when `key` may call now, else the milliseconds until it may. */
function overQuota(key, now) {
  const times = (accepted.get(key) ?? []).filter((at) => at > now - WINDOW_MS);
  accepted.set(key, times);
  if (times.length < LIMIT) {
    times.push(now);
    return null;
  }
  return times[0] + WINDOW_MS - now;
}

function answer(response, status, body, headers = {}) {
  response.writeHead(status, { 'content-type': 'application/json', ...headers });
  response.end(JSON.stringify(body));
}

function readJson(request) {
  return new Promise((resolve) => {
    let text = '';
    request.setEncoding('utf8');
    request.on('data', (chunk) => (text += chunk));
    request.on('end', () => {
      try {
        resolve(JSON.parse(text));
      } catch {
        resolve(null);
      }
    });
  });
}

async function createContact(request, response) {
  const now = Date.now();
  const key = request.headers['x-api-key'];
  const idempotencyKey = request.headers['idempotency-key'] ?? null;
  const call = { at: now, key: key ?? null, client: request.headers['user-agent'] ?? null, idempotency_key: idempotencyKey };
  // Logged once answered, so that /calls never shows a call without its status.
  const reply = (status, body, headers) => {
    call.status = status;
    calls.push(call);
    answer(response, status, body, headers);
  };
  const body = await readJson(request);
  if (!key) return reply(401, { error: 'x-api-key is required' });
  const wait = overQuota(key, now);
  if (wait !== null) {
    const seconds = Math.max(1, Math.ceil(wait / 1000));
    return reply(429, { error: `over the quota of ${LIMIT} calls a second` }, { 'retry-after': String(seconds) });
  }
  if (!body || typeof body.customer !== 'string' || typeof body.email !== 'string') {
    return reply(400, { error: 'customer and email are required' });
  }
  const known = idempotencyKey && contacts.get(idempotencyKey);
  if (known) return reply(200, known);
  const contact = { id: `ct-${contacts.size + 1}`, customer: body.customer, email: body.email, name: body.name ?? null };
  if (idempotencyKey) contacts.set(idempotencyKey, contact);
  // A little latency, as a real API has.
  setTimeout(() => reply(201, contact), 10);
}

const server = http.createServer((request, response) => {
  const path = new URL(request.url, 'http://crm').pathname;
  if (request.method === 'GET' && path === '/health') return answer(response, 200, { status: 'ok' });
  if (request.method === 'GET' && path === '/calls') return answer(response, 200, [...calls].sort((a, b) => a.at - b.at));
  if (request.method === 'POST' && path === '/contacts') return createContact(request, response);
  return answer(response, 404, { error: `no such path ${request.method} ${path}` });
});

const port = Number(process.env.PORT ?? 8789);
const host = process.env.HOST ?? '127.0.0.1';
server.listen(port, host, () => console.log(`CRM API listening on http://${host}:${port}`));
