// Warren console: a small single-page client of /api/v1, written without a framework so that
// the console is one binary with no build step. Every element is built with the DOM API (text
// goes in as text, never as HTML), which is also what the page's Content-Security-Policy asks.
'use strict';

const TERMINAL = ['succeeded', 'halted', 'dead', 'cancelled'];
const STATUSES = ['queued', 'running', 'retrying', 'waiting', 'waiting_for_children',
  'waiting_for_key', 'succeeded', 'halted', 'dead', 'cancelled'];
const session = { me: null, stream: null, timers: [] };

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child) el.append(child);
  return el;
}

function main(...children) {
  const root = document.getElementById('main');
  root.replaceChildren(...children);
  return root;
}

function time(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
}

function badge(status) {
  return h('span', { class: `badge status-${status}`, 'data-status': status, text: status });
}

function json(value) {
  return h('pre', { class: 'json' }, value === undefined || value === null ? '–' : JSON.stringify(value, null, 2));
}

function table(headers, rows, attrs) {
  return h('table', attrs || {},
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { text: t })))),
    h('tbody', {}, rows));
}

function flash(message, kind) {
  const note = h('div', { class: `flash ${kind || 'info'}`, role: 'status', 'data-test': 'flash', text: message });
  document.getElementById('main').prepend(note);
  return note;
}

function canPublish() {
  return !!session.me && (session.me.scopes.includes('publish') || session.me.scopes.includes('admin'));
}

// Publishes an event as a producer would (POST /api/v1/events/{event}): a quick way to start a
// run by hand. The new run shows up in the table below through the live updates.
function publishForm() {
  const event = h('input', { name: 'event', id: 'publish-event', placeholder: 'event, e.g. video.process', required: true });
  const payload = h('textarea', { name: 'payload', id: 'publish-payload', rows: 3, text: '{}' });
  const form = h('form', { class: 'publish', id: 'publish-form' },
    h('details', {}, h('summary', { id: 'publish-toggle', text: 'Publish an event' }),
      h('div', { class: 'publish-fields' }, event, payload,
        h('button', { type: 'submit', id: 'publish-button', text: 'Publish' }))));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let body;
    try { body = JSON.parse(payload.value); } catch (err) { flash(`The payload is not JSON: ${err.message}`, 'error'); return; }
    try {
      const published = await api('POST', `/events/${encodeURIComponent(event.value.trim())}`, body);
      flash(`Published message ${published.message_id}`, 'ok');
    } catch (err) { flash(err.message, 'error'); }
  });
  return form;
}

function canAdmin() {
  return !!session.me && session.me.scopes.includes('admin');
}

// A confirmation in the page (a <dialog>), so that a destructive click is always two clicks.
function confirmAction(text) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
  });
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    if (session.me) headers['X-Warren-CSRF'] = session.me.csrf;
  }
  const response = await fetch(`/api/v1${path}`, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || `${response.status} ${response.statusText}`;
    if (response.status === 401) {
      session.me = null;
      location.hash = '#/login';
    }
    throw new ApiError(response.status, message);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : '';
}

// ---------------------------------------------------------------- live updates

function stopLive() {
  if (session.stream) session.stream.close();
  session.stream = null;
  for (const t of session.timers) clearInterval(t);
  session.timers = [];
}

function live(params, onRun, onResync) {
  stopLive();
  const stream = new EventSource(`/api/v1/runs/live${query(params)}`);
  stream.addEventListener('run', (e) => onRun(JSON.parse(e.data)));
  stream.addEventListener('resync', () => onResync());
  // The browser reconnects by itself; a closed stream (logged out) is not retried.
  stream.onerror = () => { if (stream.readyState === EventSource.CLOSED) stopLive(); };
  session.stream = stream;
}

// ---------------------------------------------------------------- pages

async function loginPage() {
  document.getElementById('top').hidden = true;
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', placeholder: 'wrn_…', required: true });
  const error = h('p', { class: 'error', id: 'login-error' });
  const form = h('form', { class: 'login', id: 'login-form' },
    h('h1', {}, h('img', { src: '/icon.svg', alt: '', width: 28, height: 28 }), ' Warren console'),
    h('label', { for: 'token', text: 'API token' }), input,
    h('button', { type: 'submit', id: 'login-button', text: 'Log in' }), error,
    h('p', { class: 'hint', text: 'Create one with: warren tokens create NAME --scopes read,admin' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      session.me = await api('POST', '/session', { token: input.value });
      location.hash = '#/runs';
    } catch (err) {
      error.textContent = err.message;
    }
  });
  main(form);
  input.focus();
}

function runRow(run) {
  return h('tr', { 'data-run': run.id, class: run.new ? 'fresh' : '' },
    h('td', { class: 'time', text: time(run.created_at) }),
    h('td', {}, h('a', { href: `#/runs/${run.id}`, class: 'mono', text: run.id.slice(0, 8) })),
    h('td', { text: run.task }),
    h('td', {}, badge(run.status)),
    h('td', { text: run.outcome || run.stage || '–' }),
    h('td', { class: 'num', text: run.attempt }),
    h('td', { text: run.tenant || '–' }),
    h('td', { class: 'error-code', text: run.error_code || '' }));
}

async function runsPage(params) {
  const tasks = await api('GET', '/tasks').catch(() => []);
  const filter = {
    task: params.get('task') || '', status: params.get('status') || '',
    tenant: params.get('tenant') || '', window: params.get('window') || '',
  };
  const WINDOWS = { '15m': 15 * 60e3, '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 };
  const select = (name, options, value) => h('select', { name, id: `filter-${name}` },
    h('option', { value: '', text: `any ${name}` }),
    options.map((o) => h('option', { value: o, text: o, selected: o === value })));
  const filters = h('form', { class: 'filters', id: 'run-filters' },
    select('task', tasks.map((t) => t.task), filter.task),
    select('status', STATUSES, filter.status),
    h('input', { name: 'tenant', placeholder: 'tenant', value: filter.tenant }),
    h('select', { name: 'window', id: 'filter-window' },
      h('option', { value: '', text: 'any time' }),
      Object.keys(WINDOWS).map((w) => h('option', { value: w, text: `last ${w}`, selected: w === filter.window }))),
    h('button', { type: 'submit', text: 'Filter' }));
  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(filters);
    location.hash = `#/runs${query(Object.fromEntries(data.entries()))}`;
  });
  const searchBox = h('input', { name: 'q', id: 'search', placeholder: 'run id or message id' });
  const search = h('form', { class: 'search', id: 'run-search' }, searchBox, h('button', { type: 'submit', text: 'Find' }));
  search.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const found = await api('GET', `/runs/search${query({ q: searchBox.value })}`);
      if (found.runs.length === 1) location.hash = `#/runs/${found.runs[0].id}`;
      else if (found.runs.length === 0) flash(`No run with id or message id ${searchBox.value}`, 'error');
      else body.replaceChildren(...found.runs.map(runRow));
    } catch (err) { flash(err.message, 'error'); }
  });
  const body = h('tbody', { id: 'runs-body' });
  const publisher = canPublish() ? publishForm() : null;
  const more = h('button', { type: 'button', id: 'more', hidden: true, text: 'Older runs' });
  const counter = h('span', { class: 'count', id: 'runs-count' });
  const liveNote = h('span', { class: 'live', id: 'live-state', text: '● live' });
  main(h('section', {},
    h('div', { class: 'bar' }, h('h1', { text: 'Runs' }), liveNote, counter),
    h('div', { class: 'bar' }, filters, search),
    publisher,
    h('table', { id: 'runs' },
      h('thead', {}, h('tr', {}, ['Created', 'Run', 'Task', 'Status', 'Stage', 'Attempt', 'Tenant', 'Error'].map((t) => h('th', { text: t })))),
      body),
    more));
  let next = null;
  const load = async (after) => {
    const since = WINDOWS[filter.window] ? new Date(Date.now() - WINDOWS[filter.window]).toISOString() : '';
    const page = await api('GET', `/runs${query({ task: filter.task, status: filter.status, tenant: filter.tenant, since, after, limit: 50 })}`);
    for (const run of page.runs) body.append(runRow(run));
    next = page.next || null;
    more.hidden = !next;
    counter.textContent = `${body.children.length} shown`;
  };
  more.addEventListener('click', () => load(next));
  await load();
  live({ task: filter.task }, (run) => {
    const matches = (!filter.status || filter.status === run.status)
      && (!filter.tenant || filter.tenant === run.tenant);
    const existing = body.querySelector(`tr[data-run="${run.id}"]`);
    if (existing) {
      if (matches) existing.replaceWith(runRow({ ...run, new: false }));
      return;
    }
    if (run.new && matches) {
      body.prepend(runRow(run));
      counter.textContent = `${body.children.length} shown`;
    }
  }, () => route());
}

// The steps of a run on a time axis: one bar per step from its start to its end, the waits
// between attempts (retrying, waiting, waiting for children or a key slot) as hatched bars, and
// a marker where each new attempt began.
function timeline(run) {
  const at = (iso) => new Date(iso).getTime();
  const start = at(run.created_at);
  const end = run.finished_at ? at(run.finished_at)
    : Math.max(Date.now(), ...run.steps.map((s) => at(s.finished_at)));
  const span = Math.max(end - start, 1);
  const waits = [];
  run.transitions.forEach((t, i) => {
    if (['retrying', 'waiting', 'waiting_for_children', 'waiting_for_key', 'queued'].includes(t.to_status)) {
      const next = run.transitions[i + 1];
      waits.push({ status: t.to_status, from: at(t.at), to: next ? at(next.at) : end, reason: t.reason });
    }
  });
  const attempts = [];
  run.transitions.forEach((t, i) => {
    if (i > 0 && t.attempt > run.transitions[i - 1].attempt) attempts.push({ at: at(t.at), attempt: t.attempt });
  });
  const rows = [...run.steps.map((s) => ({ kind: 'step', s })), ...(waits.length ? [{ kind: 'waits' }] : [])];
  const width = 900; const label = 170; const rowH = 26; const top = 24;
  const x = (t) => label + ((t - start) / span) * (width - label - 170);
  const height = top + rows.length * rowH + 10;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'timeline', id: 'timeline', role: 'img', 'aria-label': 'step timeline' });
  for (let i = 0; i <= 4; i += 1) {
    const t = start + (span * i) / 4;
    chart.append(svg('line', { x1: x(t), x2: x(t), y1: 16, y2: height - 6, class: 'grid' }),
      svg('text', { x: x(t), y: 12, class: 'axis', 'text-anchor': 'middle', text: `+${duration(t - start)}` }));
  }
  rows.forEach((row, i) => {
    const y = top + i * rowH;
    if (row.kind === 'step') {
      const s = row.s;
      const from = at(s.started_at); const to = at(s.finished_at);
      const bar = svg('rect', { x: x(from), y: y + 4, width: Math.max(x(to) - x(from), 2), height: rowH - 10, rx: 3, class: `bar step-${s.status}`, 'data-step': s.step },
        svg('title', { text: `${s.step}: ${s.status}, attempt ${s.attempt}, executed ${s.executions}×, ${duration(to - from)}` }));
      chart.append(svg('text', { x: 4, y: y + rowH / 2 + 4, class: 'label', text: `${s.position + 1}. ${s.step}` }), bar,
        svg('text', { x: x(to) + 6, y: y + rowH / 2 + 4, class: 'value', text: `${duration(to - from)}${s.executions > 1 ? ` · ${s.executions} runs` : ''} · a${s.attempt}` }));
    } else {
      chart.append(svg('text', { x: 4, y: y + rowH / 2 + 4, class: 'label', text: 'waits' }));
      for (const w of waits) {
        chart.append(svg('rect', { x: x(w.from), y: y + 4, width: Math.max(x(w.to) - x(w.from), 2), height: rowH - 10, class: `bar wait wait-${w.status}` },
          svg('title', { text: `${w.status} ${duration(w.to - w.from)}${w.reason ? `: ${w.reason}` : ''}` })));
      }
    }
  });
  for (const a of attempts) {
    chart.append(svg('line', { x1: x(a.at), x2: x(a.at), y1: 16, y2: height - 6, class: 'attempt' }),
      svg('text', { x: x(a.at) + 3, y: height - 8, class: 'axis', text: `attempt ${a.attempt}` }));
  }
  return chart;
}

function runActions(run) {
  if (!canAdmin()) return null;
  const act = async (verb, text) => {
    if (!(await confirmAction(text))) return;
    try {
      await api('POST', `/runs/${run.id}/${verb}`);
      flash(`${verb === 'cancel' ? 'Cancelled' : 'Queued again'}: ${run.id}`, 'ok');
      route();
    } catch (err) { flash(err.message, 'error'); }
  };
  return h('div', { class: 'actions' },
    TERMINAL.includes(run.status) ? null
      : h('button', { type: 'button', id: 'cancel-run', class: 'danger', text: 'Cancel run', onclick: () => act('cancel', `Cancel run ${run.id} and its unfinished children?`) }),
    ['dead', 'cancelled'].includes(run.status)
      ? h('button', { type: 'button', id: 'retry-run', text: 'Retry from the first step', onclick: () => act('retry', `Run ${run.id} again from its first step?`) }) : null);
}

// A failed run's error in red; a run that got past an earlier failure (a retry, a replay) says
// so quietly.
function failureNote(run, failed) {
  const code = run.error_code || (failed && failed.error_code) || '';
  const message = run.error_message || (failed && failed.error_message) || '';
  if (!code && !message) return null;
  if (run.status === 'dead' || failed) {
    return h('div', { class: 'failure', id: 'run-error' },
      h('h2', { text: `Failed${failed ? ` at step ${failed.step}` : ''}: ${code}` }), h('pre', { text: message }));
  }
  return h('p', { class: 'earlier-failure', id: 'run-error', text: `An earlier attempt failed: ${code}: ${message}` });
}

async function runPage(id) {
  const run = await api('GET', `/runs/${encodeURIComponent(id)}`);
  const failed = run.steps.find((s) => s.status === 'failed');
  const fact = (name, value) => [h('dt', { text: name }), h('dd', {}, value)];
  const logs = run.logs || { lines: [], dropped: 0 };
  main(h('section', { id: 'run', 'data-status': run.status },
    h('div', { class: 'bar' }, h('h1', {}, `${run.task} `, h('span', { class: 'mono', text: run.id })), badge(run.status)),
    runActions(run),
    h('dl', { class: 'facts' },
      fact('Event', run.event), fact('Message id', h('span', { class: 'mono', text: run.message_id })),
      fact('Attempt', String(run.attempt)), fact('Stage', run.outcome || run.stage || '–'),
      fact('Tenant', run.tenant || '–'), fact('Worker', run.worker || '–'),
      fact('Created', time(run.created_at)), fact('Finished', time(run.finished_at)),
      fact('Duration', run.finished_at ? duration(new Date(run.finished_at) - new Date(run.created_at)) : '–'),
      run.parent_id ? fact('Parent', h('a', { href: `#/runs/${run.parent_id}`, class: 'mono', text: run.parent_id })) : null,
      run.cancelled_by ? fact('Cancelled by', run.cancelled_by) : null),
    failureNote(run, failed),
    h('h2', { text: 'Timeline' }), timeline(run),
    h('div', { class: 'columns' },
      h('div', {}, h('h2', { text: 'Input' }), json(run.input)),
      h('div', {}, h('h2', { text: 'Output' }), json(run.output))),
    h('h2', { text: 'Steps' }),
    table(['#', 'Step', 'Status', 'Attempt', 'Executions', 'Duration', 'Output / error'], run.steps.map((s) => h('tr', {},
      h('td', { class: 'num', text: s.position + 1 }), h('td', { text: s.step }), h('td', {}, badge(s.status)),
      h('td', { class: 'num', text: s.attempt }), h('td', { class: 'num', text: s.executions }),
      h('td', { class: 'num', text: duration(new Date(s.finished_at) - new Date(s.started_at)) }),
      h('td', {}, s.error_message ? h('span', { class: 'error', text: `${s.error_code}: ${s.error_message}` }) : json(s.output)))), { id: 'steps' }),
    h('h2', { text: `Logs${logs.dropped ? ` (${logs.dropped} older lines dropped)` : ''}` }),
    h('pre', { class: 'logs', id: 'logs' }, logs.lines.length
      ? logs.lines.map((l) => `${time(l.at)} [${l.step} a${l.attempt}] ${l.line}\n`).join('') : 'No log lines.'),
    h('h2', { text: 'Transitions' }),
    table(['When', 'From', 'To', 'Stage', 'Step', 'Attempt', 'Worker', 'Reason'], run.transitions.map((t) => h('tr', {},
      h('td', { class: 'time', text: time(t.at) }), h('td', { text: t.from_status || '–' }), h('td', {}, badge(t.to_status)),
      h('td', { text: t.stage || '' }), h('td', { text: t.step || '' }), h('td', { class: 'num', text: t.attempt }),
      h('td', { text: t.worker || '' }), h('td', { text: t.reason || '' }))), { id: 'transitions' })));
  if (!TERMINAL.includes(run.status) || run.status === 'dead' || run.status === 'cancelled') {
    live({ run: run.id }, (change) => { if (change.id === run.id) route(); }, () => route());
  }
}

// Per-minute bars of the last hour: started runs, with the dead ones in red on top.
function minuteChart(minutes) {
  const width = 360; const height = 70;
  const max = Math.max(1, ...minutes.map((m) => m.started));
  const w = width / Math.max(minutes.length, 1);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height + 12}`, class: 'minutes', role: 'img', 'aria-label': 'runs per minute, last hour' });
  minutes.forEach((m, i) => {
    const ok = (m.succeeded / max) * height; const bad = (m.failed / max) * height;
    const all = (m.started / max) * height;
    chart.append(svg('rect', { x: i * w, y: height - all, width: Math.max(w - 1, 1), height: all, class: 'started' },
      svg('title', { text: `${new Date(m.minute).toLocaleTimeString()}: ${m.started} started, ${m.succeeded} succeeded, ${m.failed} dead, ${m.retried} retried` })));
    chart.append(svg('rect', { x: i * w, y: height - ok, width: Math.max(w - 1, 1), height: ok, class: 'succeeded' }));
    if (bad > 0) chart.append(svg('rect', { x: i * w, y: height - bad, width: Math.max(w - 1, 1), height: bad, class: 'failed' }));
  });
  chart.append(svg('text', { x: 0, y: height + 11, class: 'axis', text: '−60 min' }),
    svg('text', { x: width, y: height + 11, class: 'axis', 'text-anchor': 'end', text: `now · max ${max}/min` }));
  return chart;
}

async function tasksPage() {
  const tasks = await api('GET', '/tasks');
  const dash = (v) => (v === null || v === undefined ? '–' : String(v));
  const rows = tasks.map((t) => {
    const chart = h('td', { class: 'chart', 'data-chart': t.task });
    api('GET', `/tasks/${encodeURIComponent(t.task)}/stats?minutes=60`).then((m) => chart.append(minuteChart(m))).catch(() => {});
    return h('tr', { 'data-task': t.task },
      h('td', {}, h('a', { href: `#/runs${query({ task: t.task })}`, text: t.task })),
      h('td', { class: 'num', text: dash(t.ready) }), h('td', { class: 'num', text: dash(t.consumers) }),
      h('td', { class: 'num', text: dash(t.replicas) }),
      h('td', { class: 'num' }, h('a', { href: `#/dead-letters/${encodeURIComponent(t.task)}`, text: dash(t.dead_letters) })),
      h('td', { class: 'num', text: `${t.started_last_minute} / ${t.succeeded_last_minute} / ${t.dead_last_minute}` }),
      chart);
  });
  main(h('section', {}, h('h1', { text: 'Tasks' }),
    table(['Task', 'Ready', 'Consumers', 'Replicas', 'Dead letters', 'Last minute: started / succeeded / dead', 'Last hour (per minute)'], rows, { id: 'tasks' })));
}

async function deadLettersPage() {
  const summary = await api('GET', '/dead-letters');
  main(h('section', {}, h('h1', { text: 'Dead letters' }),
    table(['Task', 'Queue', 'Dead letters'], summary.map((s) => h('tr', {},
      h('td', {}, h('a', { href: `#/dead-letters/${encodeURIComponent(s.task)}`, text: s.task })),
      h('td', { class: 'mono', text: s.queue }), h('td', { class: 'num', text: s.count === null ? '–' : s.count }))), { id: 'dead-letter-summary' })));
}

async function deadLetterTaskPage(task) {
  const list = await api('GET', `/dead-letters/${encodeURIComponent(task)}?limit=100`);
  const replay = async (letter) => {
    const id = letter ? (letter.run_id || letter.message_id) : null;
    const text = letter ? `Replay dead letter ${letter.message_id} of ${task}?` : `Replay all ${list.count} dead letters of ${task}?`;
    if (!(await confirmAction(text))) return;
    try {
      const report = await api('POST', `/dead-letters/${encodeURIComponent(task)}/replay`, letter ? { id } : { all: true });
      await deadLetterTaskPage(task);
      const note = flash(`Replayed ${report.replayed.length} dead letter(s). `, 'ok');
      if (letter && letter.run_id) note.append(h('a', { href: `#/runs/${letter.run_id}`, id: 'replayed-run', text: 'Open the run' }));
    } catch (err) { flash(err.message, 'error'); }
  };
  const purge = async () => {
    if (!(await confirmAction(`Delete all ${list.count} dead letters of ${task} for good?`))) return;
    try {
      const result = await api('POST', `/dead-letters/${encodeURIComponent(task)}/purge`, {});
      await deadLetterTaskPage(task);
      flash(`Purged ${result.purged} dead letter(s).`, 'ok');
    } catch (err) { flash(err.message, 'error'); }
  };
  const admin = canAdmin();
  main(h('section', {},
    h('div', { class: 'bar' }, h('h1', { text: `Dead letters of ${task}` }), h('span', { class: 'count', text: `${list.count} waiting` })),
    admin && list.count > 0 ? h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'replay-all', text: 'Replay all', onclick: () => replay(null) }),
      h('button', { type: 'button', id: 'purge', class: 'danger', text: 'Purge', onclick: purge })) : null,
    table(['Dead-lettered', 'Message', 'Run', 'Reason', 'Explanation', 'Attempts', ''], list.dead_letters.map((l) => h('tr', { 'data-message': l.message_id },
      h('td', { class: 'time', text: time(l.last_failed_at) }), h('td', { class: 'mono', text: l.message_id }),
      h('td', {}, l.run_id ? h('a', { href: `#/runs/${l.run_id}`, class: 'mono', text: l.run_id.slice(0, 8) }) : '–'),
      h('td', {}, h('span', { class: 'reason', text: l.reason })), h('td', { class: 'explanation', text: l.message }),
      h('td', { class: 'num', text: l.attempts }),
      h('td', {}, admin ? h('button', { type: 'button', class: 'replay', text: 'Replay', onclick: () => replay(l) }) : null))), { id: 'dead-letters' })));
}

async function fleetPage() {
  const fleet = await api('GET', '/fleet');
  main(h('section', {}, h('h1', { text: 'Fleet' }),
    table(['Replica', 'State', 'Host', 'PID', 'Tasks', 'In flight', 'Started', 'Last heartbeat', 'Version'], fleet.map((w) => h('tr', {},
      h('td', { class: 'mono', text: w.owner }), h('td', {}, badge(w.state)), h('td', { text: w.host }), h('td', { class: 'num', text: w.pid }),
      h('td', { text: w.tasks.join(', ') }), h('td', { class: 'num', text: w.runs_in_flight }),
      h('td', { class: 'time', text: time(w.started_at) }), h('td', { class: 'time', text: time(w.last_heartbeat) }), h('td', { text: w.version }))), { id: 'fleet' })));
}

async function schedulesPage() {
  const schedules = await api('GET', '/schedules');
  const act = async (name, verb) => {
    try {
      await api('POST', `/schedules/${encodeURIComponent(name)}/${verb}`);
      await schedulesPage();
      flash(`${verb}: ${name}`, 'ok');
    } catch (err) { flash(err.message, 'error'); }
  };
  main(h('section', {}, h('h1', { text: 'Schedules' }),
    table(['Name', 'Task', 'When', 'Zone', 'Next fire', 'State', ''], schedules.map((s) => h('tr', {},
      h('td', { class: 'mono', text: s.name }), h('td', { text: s.task }),
      h('td', { class: 'mono', text: s.cron || `every ${s.every_secs} s` }), h('td', { text: s.timezone }),
      h('td', { class: 'time', text: time(s.next_fire_at) }), h('td', {}, badge(s.paused ? 'paused' : 'active')),
      h('td', {}, canAdmin() ? [
        h('button', { type: 'button', text: s.paused ? 'Resume' : 'Pause', onclick: () => act(s.name, s.paused ? 'resume' : 'pause') }),
        h('button', { type: 'button', text: 'Trigger now', onclick: () => act(s.name, 'trigger') })] : null))), { id: 'schedules' })));
}

async function auditPage() {
  const page = await api('GET', '/audit?limit=200');
  main(h('section', {}, h('h1', { text: 'Audit log' }),
    table(['When', 'Who', 'Action', 'Target', 'Detail'], page.entries.map((e) => h('tr', {},
      h('td', { class: 'time', text: time(e.at) }), h('td', { text: e.actor }), h('td', { class: 'mono', text: e.action }),
      h('td', { class: 'mono', text: e.target || '' }), h('td', { class: 'mono detail', text: JSON.stringify(e.detail) }))), { id: 'audit' })));
}

// ---------------------------------------------------------------- routing

async function route() {
  stopLive();
  const [path, search] = (location.hash.slice(1) || '/runs').split('?');
  const params = new URLSearchParams(search || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (!session.me) {
    const me = await api('GET', '/session').catch(() => ({ authenticated: false }));
    session.me = me.authenticated ? me : null;
  }
  if (!session.me || parts[0] === 'login') {
    if (session.me) { location.hash = '#/runs'; return; }
    await loginPage();
    return;
  }
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = `${session.me.name} (${session.me.scopes.join(', ')})`;
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.classList.toggle('active', link.dataset.nav === parts[0]);
  }
  try {
    switch (parts[0]) {
      case 'runs': await (parts[1] ? runPage(parts[1]) : runsPage(params)); break;
      case 'tasks': await tasksPage(); break;
      case 'dead-letters': await (parts[1] ? deadLetterTaskPage(parts[1]) : deadLettersPage()); break;
      case 'fleet': await fleetPage(); break;
      case 'schedules': await schedulesPage(); break;
      case 'audit': await auditPage(); break;
      default: location.hash = '#/runs';
    }
  } catch (err) {
    if (err.status !== 401) main(h('div', { class: 'flash error', 'data-test': 'flash', text: err.message }));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('logout').addEventListener('click', async () => {
    stopLive();
    await api('DELETE', '/session').catch(() => {});
    session.me = null;
    location.hash = '#/login';
  });
  window.addEventListener('hashchange', route);
  route();
});
