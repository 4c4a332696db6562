'use strict';
// node --test clients/node/test/

const test = require('node:test');
const assert = require('node:assert/strict');
const { StepError, createServer, sign, verifySignature, wrap } = require('..');

// The worked example of docs/steps.md (and of Warren's own signer's tests).
const SECRET = 'whsec_test_secret';
const T = 1767225600;
const BODY = '{"run":{"id":"0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11","task":"video.process","event":"video.process","attempt":1,"message_id":"m-1","tenant":null},"step":"validate","input":{"url":"https://example.com/a.mp4"},"outputs":{}}';
const EXPECTED = '27f4ac158c98705621e398a8c139d2b35be7483b90fda7bc4024b680d9bafe13';

test('the documented example signs to the documented hex', () => {
  assert.equal(sign(SECRET, T, BODY), `t=${T},v1=${EXPECTED}`);
});

test('a signature made with the secret verifies, from a string or the raw bytes', () => {
  const header = `t=${T},v1=${EXPECTED}`;
  assert.equal(verifySignature(SECRET, header, BODY, { now: T }), true);
  assert.equal(verifySignature(SECRET, header, Buffer.from(BODY), { now: T + 10 }), true);
});

test('another secret, another body or a tampered signature does not verify', () => {
  const header = `t=${T},v1=${EXPECTED}`;
  assert.equal(verifySignature('other', header, BODY, { now: T }), false);
  assert.equal(verifySignature(SECRET, header, BODY.replace('a.mp4', 'b.mp4'), { now: T }), false);
  assert.equal(verifySignature(SECRET, `t=${T},v1=${'0'.repeat(64)}`, BODY, { now: T }), false);
  assert.equal(verifySignature(SECRET, `t=${T + 1},v1=${EXPECTED}`, BODY, { now: T }), false);
});

test('a stale or future timestamp is refused, by the tolerance given', () => {
  const header = `t=${T},v1=${EXPECTED}`;
  assert.equal(verifySignature(SECRET, header, BODY, { now: T + 301 }), false);
  assert.equal(verifySignature(SECRET, header, BODY, { now: T - 301 }), false);
  assert.equal(verifySignature(SECRET, header, BODY, { now: T + 301, toleranceSeconds: 600 }), true);
});

test('a missing or malformed header is refused, never thrown on', () => {
  for (const header of [undefined, '', 'garbage', `t=${T}`, `v1=${EXPECTED}`, `t=x,v1=${EXPECTED}`, `t=${T},v1=zz`]) {
    assert.equal(verifySignature(SECRET, header, BODY, { now: T }), false, String(header));
  }
});

test('while rotating, either of two secrets verifies', () => {
  const header = `t=${T},v1=${EXPECTED}`;
  assert.equal(verifySignature(['new-secret', SECRET], header, BODY, { now: T }), true);
  assert.equal(verifySignature(['new-secret', ''], header, BODY, { now: T }), false);
});

test('a returned value is the output', async () => {
  const answer = await wrap(async () => ({ frames: 3 }))({});
  assert.equal(answer.status, 200);
  assert.deepEqual(JSON.parse(answer.body), { output: { frames: 3 } });
  assert.deepEqual(JSON.parse((await wrap(async () => undefined)({})).body), { output: null });
});

test('a returned reply sets the stage, a halt, a wait and events', async () => {
  const answer = await wrap(async () => ({
    output: { ok: true },
    stage: 'VALIDATED',
    halt: 'NEEDS_USER_INPUT',
    waitSeconds: 2.5,
    emit: [{ event: 'video.validated', payload: { id: 1 } }],
  }))({});
  assert.deepEqual(JSON.parse(answer.body), {
    output: { ok: true },
    stage: 'VALIDATED',
    halt: 'NEEDS_USER_INPUT',
    wait_seconds: 3,
    emit: [{ event: 'video.validated', payload: { id: 1 } }],
  });
});

test('a reply or a StepError may carry lines for the run\'s log', async () => {
  const answer = await wrap(async () => ({ output: 1, logs: ['fetched', 42] }))({});
  assert.deepEqual(JSON.parse(answer.body), { output: 1, logs: ['fetched', '42'] });
  const failed = await wrap(async () => {
    throw new StepError('bad_clip', 'no audio', { retryable: false, logs: ['probed'] });
  })({});
  assert.deepEqual(JSON.parse(failed.body), {
    error: { code: 'bad_clip', message: 'no audio', retryable: false },
    logs: ['probed'],
  });
});

test('an output that looks like a reply is returned wrapped in { output }', async () => {
  const answer = await wrap(async () => ({ output: { output: 1, stage: 'x' } }))({});
  assert.deepEqual(JSON.parse(answer.body), { output: { output: 1, stage: 'x' } });
  // An object with other keys is an output, even if it has a `stage`.
  const plain = await wrap(async () => ({ stage: 'draft', title: 't' }))({});
  assert.deepEqual(JSON.parse(plain.body), { output: { stage: 'draft', title: 't' } });
});

test('a thrown StepError answers its code and retryability', async () => {
  const fatal = await wrap(async () => { throw new StepError('invalid_input', 'no url', { retryable: false }); })({});
  assert.equal(fatal.status, 422);
  assert.deepEqual(JSON.parse(fatal.body), { error: { code: 'invalid_input', message: 'no url', retryable: false } });
  const busy = await wrap(async () => { throw new StepError('busy', 'try later', { retryAfterSeconds: 2 }); })({});
  assert.equal(busy.status, 500);
  assert.equal(busy.headers['retry-after'], '2');
  assert.equal(JSON.parse(busy.body).error.retryable, true);
});

test('any other thrown error is retryable, with its code if it has one', async () => {
  const bug = await wrap(async () => { throw new TypeError('x is undefined'); })({});
  assert.deepEqual(JSON.parse(bug.body), { error: { code: 'handler_error', message: 'x is undefined', retryable: true } });
  const refused = await wrap(async () => { throw Object.assign(new Error('connect refused'), { code: 'ECONNREFUSED' }); })({});
  assert.equal(JSON.parse(refused.body).error.code, 'ECONNREFUSED');
  const thrownString = await wrap(async () => { throw 'plain'; })({});
  assert.equal(JSON.parse(thrownString.body).error.message, 'plain');
});

test('a server without a secret refuses to start', () => {
  const saved = process.env.WARREN_STEP_SECRET;
  delete process.env.WARREN_STEP_SECRET;
  try {
    assert.throws(() => createServer(async () => null), /no secret/);
  } finally {
    if (saved !== undefined) process.env.WARREN_STEP_SECRET = saved;
  }
});

async function withServer(routes, fn) {
  const server = createServer(routes, { secret: SECRET });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    await fn(base);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

function signedPost(url, body, secret = SECRET) {
  const t = Math.floor(Date.now() / 1000);
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'warren-signature': sign(secret, t, body) },
    body,
  });
}

test('the server answers a signed request with the handler\'s reply, routed by path', async () => {
  await withServer({ '/steps/validate': async (request) => ({ output: { step: request.step }, stage: 'VALIDATED' }) }, async (base) => {
    const response = await signedPost(`${base}/steps/validate`, BODY);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { output: { step: 'validate' }, stage: 'VALIDATED' });
    const unknown = await signedPost(`${base}/steps/other`, BODY);
    assert.equal(unknown.status, 404);
    assert.equal((await unknown.json()).error.retryable, false);
  });
});

test('the server refuses an unsigned or wrongly signed request with 401, not retryable', async () => {
  let called = false;
  await withServer(async () => { called = true; return 1; }, async (base) => {
    const unsigned = await fetch(base, { method: 'POST', body: BODY });
    assert.equal(unsigned.status, 401);
    assert.deepEqual((await unsigned.json()).error.code, 'invalid_signature');
    const forged = await signedPost(base, BODY, 'not-the-secret');
    assert.equal(forged.status, 401);
    assert.equal((await forged.json()).error.retryable, false);
  });
  assert.equal(called, false);
});

test('the server refuses other methods and bodies that are not JSON', async () => {
  await withServer(async () => 1, async (base) => {
    const get = await fetch(base);
    assert.equal(get.status, 405);
    const notJson = await signedPost(base, 'not json');
    assert.equal(notJson.status, 400);
    assert.equal((await notJson.json()).error.code, 'invalid_request');
  });
});

test('publishOptions marks high and low work and leaves normal work unmarked', () => {
  const { publishOptions } = require('..');
  const now = new Date('2026-11-23T10:00:00.250Z');
  const high = publishOptions({ messageId: 'm-1', tenant: 'acme', priority: 'high', now });
  assert.deepEqual(high, {
    contentType: 'application/json',
    persistent: true,
    mandatory: true,
    messageId: 'm-1',
    headers: {
      'warren-published-at': '2026-11-23T10:00:00.250Z',
      'warren-tenant': 'acme',
      'warren-priority': 'high',
    },
  });
  assert.equal(publishOptions({ priority: 'low' }).headers['warren-priority'], 'low');
  assert.equal('warren-priority' in publishOptions({ priority: 'normal' }).headers, false);
  assert.equal('warren-priority' in publishOptions().headers, false);
  assert.match(publishOptions().messageId, /^[0-9a-f-]{36}$/);
});

test('publishOptions refuses a priority the broker would read as normal', () => {
  const { publishOptions } = require('..');
  assert.throws(() => publishOptions({ priority: 'HIGH' }), /unknown priority "HIGH" \(expected high, normal or low\)/);
  assert.throws(() => publishOptions({ priority: 'urgent' }), /urgent/);
});
