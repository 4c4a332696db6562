#!/usr/bin/env node
// A stand-in for the game's player API, the one the Santai dump reads:
//
//   GET /players/ID           the player's profile
//   GET /players/ID/teams     the teams the player is in
//   GET /players/ID/matches   the player's recent matches
//   GET /calls                how often each path above was asked for (for the tests)
//
// Player p-404 does not exist: every path of it answers 404. What the others answer follows
// from their id, so a dump can be checked. Listens on HOST:PORT (default 127.0.0.1:8788).

const http = require('node:http');

const MISSING = 'p-404';
const calls = {};

/** A number from the id, the same every time. */
function seed(id) {
  return [...id].reduce((sum, c) => sum + c.charCodeAt(0), 0);
}

function profile(id) {
  const n = seed(id);
  return { playerId: id, name: `Player ${id.toUpperCase()}`, level: 1 + (n % 60), region: ['eu', 'na', 'asia'][n % 3] };
}

function teams(id) {
  const n = seed(id);
  return { teams: Array.from({ length: 1 + (n % 3) }, (_, i) => ({ teamId: `t-${(n + i) % 17}`, role: i === 0 ? 'captain' : 'member' })) };
}

function matches(id) {
  const n = seed(id);
  return {
    matches: Array.from({ length: 2 + (n % 4) }, (_, i) => ({ matchId: `m-${n}-${i}`, result: (n + i) % 2 ? 'win' : 'loss' })),
  };
}

function answer(response, status, body) {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(JSON.stringify(body));
}

const server = http.createServer((request, response) => {
  const path = new URL(request.url, 'http://api').pathname;
  if (path === '/calls') return answer(response, 200, calls);
  calls[path] = (calls[path] ?? 0) + 1;
  const found = path.match(/^\/players\/([^/]+)(\/teams|\/matches)?$/);
  if (!found || request.method !== 'GET') return answer(response, 404, { error: `no such path ${path}` });
  const id = decodeURIComponent(found[1]);
  if (id === MISSING) return answer(response, 404, { error: `no player ${id}` });
  const body = { '': profile, '/teams': teams, '/matches': matches }[found[2] ?? ''](id);
  // A little latency, as a real API has.
  setTimeout(() => answer(response, 200, body), 20);
});

const port = Number(process.env.PORT ?? 8788);
const host = process.env.HOST ?? '127.0.0.1';
server.listen(port, host, () => console.log(`player API listening on http://${host}:${port}`));
