'use strict';
/**
 * ClipInsight's seven steps as Warren HTTP steps (tasks.toml declares the task). A stand-in
 * for the real service: every answer is worked out from the run's input and the earlier
 * steps' outputs, so that a run's trail says which path it took:
 *
 * - `source_url` not http, https or s3: `validate` fails for good with `invalid_input`;
 * - `transcript_quality: "low"`: `transcribe` halts the run with `NEEDS_USER_INPUT`;
 * - `flaky: true`: `insights` fails, retryably, the first time it is called for a run, and
 *   succeeds when Warren retries it (the steps before it are not called again: checkpoints);
 * - `review: "manual"`: `qa_review` halts the run with `REQUIRES_MANUAL_REVIEW`;
 * - otherwise all seven steps succeed and the run ends at DELIVERED.
 *
 * Each step's output feeds the next ones (`outputs.transcribe.transcript_id` is echoed by
 * `insights`, and so on). Node.js 20, no dependencies beyond clients/node.
 *
 *   WARREN_STEP_SECRET=... node examples/clipinsight/server.js    # PORT (8787), HOST (127.0.0.1)
 */

const path = require('node:path');
const { createServer, StepError } = require(path.join(__dirname, '..', '..', 'clients', 'node'));

const PORT = Number(process.env.PORT ?? 8787);
const HOST = process.env.HOST ?? '127.0.0.1';

/**
 * Executions of each step per idempotency key (`{run id}/{step}`): what lets the flaky step
 * fail only its first execution for a run. In memory, as a stand-in for the flaky upstream
 * itself; a restarted service would fail once more, which Warren would retry again.
 */
const executions = new Map();

function countExecution({ run, step }) {
  const key = `${run.id}/${step}`;
  const count = (executions.get(key) ?? 0) + 1;
  executions.set(key, count);
  return count;
}

const routes = {
  '/steps/validate': async ({ input }) => {
    const url = String(input.source_url);
    const scheme = /^(https?|s3):\/\/./.exec(url);
    if (!scheme) {
      // Retrying cannot fix the input: the run is dead-lettered at once with this code.
      throw new StepError('invalid_input', `source_url ${JSON.stringify(url)} is not an http, https or s3 URL`,
        { retryable: false });
    }
    return { source_url: url, scheme: scheme[1] };
  },

  '/steps/ingest': async ({ input, outputs }) => ({
    asset_id: `asset-${input.job_id}`,
    from: outputs.validate.source_url,
    duration_seconds: 312,
  }),

  '/steps/transcribe': async ({ input, outputs }) => {
    const { asset_id } = outputs.ingest;
    if (input.transcript_quality === 'low') {
      // Not a failure: the run ends here, with an outcome the product shows the user.
      return {
        output: { asset_id, confidence: 0.42, reason: 'transcript confidence 0.42 is below 0.80: upload better audio' },
        halt: 'NEEDS_USER_INPUT',
      };
    }
    return { transcript_id: `tr-${input.job_id}`, asset_id, language: input.language ?? 'en', words: 1843 };
  },

  '/steps/insights': async (request) => {
    const { input, outputs } = request;
    const execution = countExecution(request);
    if (input.flaky === true && execution === 1) {
      // Any error other than a StepError with retryable: false is retried by Warren, with
      // this step's own retry budget (tasks.toml).
      throw new StepError('upstream_error', 'the insights model is overloaded, try again', { retryable: true });
    }
    return {
      transcript_id: outputs.transcribe.transcript_id,
      topics: ['onboarding', 'pricing', 'roadmap'],
      highlights: 3,
      execution,
    };
  },

  '/steps/drafts': async ({ input, outputs }) => ({
    transcript_id: outputs.insights.transcript_id,
    drafts: outputs.insights.topics.map((topic) => `${input.job_id}-${topic}`),
  }),

  '/steps/qa_review': async ({ input, outputs }) => {
    const { drafts } = outputs.drafts;
    if (input.review === 'manual') {
      return { output: { pending: drafts, queue: `review/${input.workspace_id}` }, halt: 'REQUIRES_MANUAL_REVIEW' };
    }
    return { approved: drafts, rejected: [] };
  },

  '/steps/deliver': async ({ input, outputs }) => ({
    delivered_to: `workspace/${input.workspace_id}/user/${input.user_id}`,
    items: outputs.qa_review.approved,
    transcript_id: outputs.transcribe.transcript_id,
  }),
};

const server = createServer(routes); // the secret: WARREN_STEP_SECRET, the worker's too
server.listen(PORT, HOST, () => {
  const { address, port } = server.address();
  console.log(`clipinsight steps listening on http://${address}:${port}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
