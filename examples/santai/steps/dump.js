#!/usr/bin/env node
// The steps of the Santai dump, as command steps (docs/steps.md): the step request on standard
// input, the step's output on standard output. `profile`, `teams` and `matches` each call the
// player API at SANTAI_API and return what it answered (one stored result per step); `collect`
// sorts the bulk dump's children into the players dumped and the players that failed.
//
// A failure is the last line of standard error, {"code", "message"}: exit 1 when retrying
// cannot help (the player does not exist: 404), exit 75 when it may (the API is down or busy).

const api = process.env.SANTAI_API ?? 'http://127.0.0.1:8788';

class Failure extends Error {
  constructor(code, message, retryable) {
    super(message);
    this.code = code;
    this.retryable = retryable;
  }
}

async function get(path) {
  let response;
  try {
    response = await fetch(api + path);
  } catch (error) {
    throw new Failure('network', `${api}${path}: ${error.cause?.code ?? error.cause?.message ?? error.message}`, true);
  }
  if (response.ok) return response.json();
  const said = `the player API answered ${path} with ${response.status} ${response.statusText}`;
  if (response.status === 404) throw new Failure('not_found', said, false);
  if (response.status === 429 || response.status >= 500) throw new Failure('upstream_error', said, true);
  throw new Failure('invalid_input', said, false);
}

/** A player given as {"playerId": "p-1"}, or as an item of a fan-out over ids: {"item": "p-1"}. */
function playerOf(input) {
  const id = input.playerId ?? input.item;
  if (typeof id !== 'string' || id === '') throw new Failure('invalid_input', 'no playerId in the input', false);
  return encodeURIComponent(id);
}

const steps = {
  profile: ({ input }) => get(`/players/${playerOf(input)}`),
  teams: ({ input }) => get(`/players/${playerOf(input)}/teams`),
  // The dump's result: the run's output is its last step's.
  matches: async ({ input, outputs }) => ({
    playerId: outputs.profile.playerId,
    name: outputs.profile.name,
    teams: outputs.teams.teams.length,
    ...(await get(`/players/${playerOf(input)}/matches`)),
  }),
  collect: ({ input, outputs }) => {
    const dumped = [];
    const failed = [];
    outputs.dump_each.children.forEach((child, i) => {
      const playerId = input.playerIds[i];
      if (child.status === 'succeeded') {
        const { name, teams, matches } = child.output;
        dumped.push({ playerId, name, teams, matches: matches.length });
      } else {
        failed.push({ playerId, status: child.status, code: child.error?.code ?? null, message: child.error?.message ?? null });
      }
    });
    return { total: input.playerIds.length, dumped, failed };
  },
};

let text = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => (text += chunk));
process.stdin.on('end', async () => {
  try {
    const step = steps[process.argv[2]];
    if (!step) throw new Failure('no_such_step', `no step named ${process.argv[2]}`, false);
    process.stdout.write(JSON.stringify(await step(JSON.parse(text))) + '\n');
  } catch (error) {
    process.stderr.write(JSON.stringify({ code: error.code ?? 'step_error', message: error.message }) + '\n');
    process.exit(error.retryable === false ? 1 : 75);
  }
});
