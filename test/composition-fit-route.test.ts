/**
 * NEEDS THE REAL SEARCH (src/compositions/fit.ts): these tests drive `POST /v1/compositions` with
 * `fit` end to end, so they fail while fit.ts holds the placeholder bodies of the contract. They
 * are written against the contract (checkFitSpec's 422 naming the field, fitComposition's
 * outcome) and pass once the search lands; the integrator runs them after the merge.
 *
 * What they check, on a fixture pack with a real engine (and, for queue mode, real processes on
 * the Redis at REDIS_URL): a fit job answers 202 with a job id, GET /v1/jobs/{id} reports its
 * state, progress and result, the fitted composition is stored (provenance 'fitted', weights
 * summing to 1), the before/after scores it reports are what the model really answers (computed
 * here again from /v1/infer), after >= before, bad fit requests get 422 naming the field, a second
 * fit on a busy node gets 429 with retry-after, shutdown cancels a running fit, and in queue mode
 * any API node follows the job and serves the composition.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { checkFitSpec } from '../src/compositions/fit.js';
import { FitJobs, MemoryFitJobStates } from '../src/compositions/fit-jobs.js';
import { MemoryCompositionStore } from '../src/compositions/store.js';
import { buildFixturePack, FIXTURE_TEXTS } from './support/fixture-pack.js';
import { buildTestService, type TestService } from './support/listening-app.js';
import {
  clusterEnv,
  type HttpProc,
  redisCli,
  sleep,
  startApi,
  startWorker,
  stop,
} from './support/processes.js';

const ADMIN_KEY = 'fit-route-test-key-0123456789';
const LIMITS = { maxExamples: 20, maxEvaluations: 200, maxSeconds: 60 };
const EXAMPLES_COUNT = 16; // MAX_INPUTS of the test service

/** A parsed JSON answer (what JSON.parse gives); the tests check it field by field. */
type Json = ReturnType<typeof JSON.parse>;

let root: string;
let packDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-fit-route-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 11 });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function call(url: string, method: string, path: string, body?: unknown) {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${ADMIN_KEY}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  return {
    status: response.status,
    headers: response.headers,
    json: (await response.json()) as Json,
  };
}

/** Poll GET /v1/jobs/{id} until it is finished; every state seen on the way. */
async function finished(url: string, id: string, timeoutMs = 120_000) {
  const end = performance.now() + timeoutMs;
  const states: string[] = [];
  for (;;) {
    const job = await call(url, 'GET', `/v1/jobs/${id}`);
    assert.equal(job.status, 200, JSON.stringify(job.json));
    if (states.at(-1) !== job.json.state) states.push(job.json.state);
    if (job.json.state === 'completed' || job.json.state === 'failed')
      return { job: job.json, states };
    if (performance.now() > end) assert.fail(`fit job ${id} still ${job.json.state}`);
    await sleep(50);
  }
}

/**
 * Labelled examples the language adapters can tell apart: each text labelled with the topic the
 * model predicts when it runs through `de` alone, so a fit that moves weight to `de` can reach
 * every label; the gates' own routing gets some of them wrong.
 */
async function examplesFor(url: string): Promise<{ text: string; label: string }[]> {
  const texts = FIXTURE_TEXTS.slice(0, EXAMPLES_COUNT);
  const answer = await call(url, 'POST', '/v1/infer', {
    inputs: texts,
    task: 'topic',
    adapters: { language: 'de' },
  });
  assert.equal(answer.status, 200, JSON.stringify(answer.json));
  return texts.map((text, i) => ({ text, label: answer.json.results[i].outputs.topic.label }));
}

/** Accuracy and mean cross-entropy of the topic head on `examples` under `routing`. */
async function score(
  url: string,
  examples: readonly { text: string; label: string }[],
  routing: Record<string, unknown>,
): Promise<{ accuracy: number; loss: number }> {
  const answer = await call(url, 'POST', '/v1/infer', {
    inputs: examples.map((e) => e.text),
    task: 'topic',
    return: ['scores'],
    ...routing,
  });
  assert.equal(answer.status, 200, JSON.stringify(answer.json));
  let correct = 0;
  let loss = 0;
  answer.json.results.forEach((result: Json, i: number) => {
    const out = result.outputs.topic;
    if (out.label === examples[i]!.label) correct++;
    loss -= Math.log(out.scores[examples[i]!.label]);
  });
  return { accuracy: correct / examples.length, loss: loss / examples.length };
}

describe('composition fit route (embedded) [needs the real search]', () => {
  let service: TestService;
  let url: string;

  before(async () => {
    service = await buildTestService({
      packDir,
      adapterRoot: root,
      adminApiKey: ADMIN_KEY,
      fitLimits: LIMITS,
    });
    url = await service.app.listen({ host: '127.0.0.1', port: 0 });
  });
  after(async () => {
    await service?.close();
  });

  it('fits, stores and reports truthful before/after scores; after >= before', async () => {
    const examples = await examplesFor(url);
    const accepted = await call(url, 'POST', '/v1/compositions', {
      name: 'fitted',
      description: 'topic through a fitted language mixture',
      fit: {
        examples,
        task: 'topic',
        groups: ['language'],
        budget: { evaluations: 60, seconds: 30 },
      },
    });
    assert.equal(accepted.status, 202, JSON.stringify(accepted.json));
    assert.match(accepted.json.id, /^fit-/);
    assert.equal(accepted.headers.get('location'), `/v1/jobs/${accepted.json.id}`);
    assert.equal(accepted.json.composition, 'fitted');

    const { job } = await finished(url, accepted.json.id);
    assert.equal(job.state, 'completed', JSON.stringify(job));
    const { result } = job;
    assert.equal(result.composition.name, 'fitted');
    assert.equal(result.composition.version, 1);
    assert.ok(result.evaluations >= 1 && result.evaluations <= 60);
    assert.ok(result.after.accuracy >= result.before.accuracy, JSON.stringify(result));
    const weights = result.weights.language;
    const sum = Object.values(weights as Record<string, number>).reduce((s, w) => s + w, 0);
    assert.ok(Math.abs(sum - 1) < 1e-4, `weights sum to ${sum}`);

    // The scores it reports are the model's: before under its own routing, after under the
    // stored composition.
    const before = await score(url, examples, {});
    const afterward = await score(url, examples, { composition: 'fitted' });
    assert.ok(Math.abs(before.accuracy - result.before.accuracy) < 1e-9, JSON.stringify(before));
    assert.ok(Math.abs(before.loss - result.before.loss) < 1e-3, JSON.stringify(before));
    assert.ok(
      Math.abs(afterward.accuracy - result.after.accuracy) < 1e-9,
      JSON.stringify(afterward),
    );
    assert.ok(Math.abs(afterward.loss - result.after.loss) < 1e-3, JSON.stringify(afterward));

    const stored = await call(url, 'GET', '/v1/compositions/fitted');
    assert.equal(stored.status, 200);
    assert.equal(stored.json.provenance.kind, 'fitted');
    assert.equal(stored.json.provenance.job_id, accepted.json.id);
    assert.equal(stored.json.provenance.examples, examples.length);
    assert.deepEqual(stored.json.provenance.after, result.after);
    assert.deepEqual(Object.keys(stored.json.groups), ['language']);
  });

  it('refuses bad fit requests with 422 naming the field (before any job starts)', async () => {
    const examples = await examplesFor(url);
    const post = (fit: unknown, extra: Record<string, unknown> = {}) =>
      call(url, 'POST', '/v1/compositions', { name: 'bad-fit', fit, ...extra });
    const expect422 = async (fit: unknown, field: RegExp) => {
      const answer = await post(fit);
      assert.equal(answer.status, 422, JSON.stringify(answer.json));
      assert.match(String(answer.json.error.details?.field), field, JSON.stringify(answer.json));
    };
    const base = { examples, task: 'topic', groups: ['language'] };
    await expect422(
      { ...base, examples: [{ text: 'x y z', label: 'no-such-label' }, ...examples.slice(1)] },
      /examples/,
    );
    await expect422(
      { ...base, examples: Array.from({ length: LIMITS.maxExamples + 1 }, () => examples[0]) },
      /examples/,
    );
    await expect422({ ...base, groups: [] }, /groups/);
    await expect422({ ...base, groups: ['dialect'] }, /groups/);
    await expect422({ ...base, task: 'no-such-task' }, /task/);
    const both = await post(base, { groups: { language: { weights: { de: 1 } } } });
    assert.equal(both.status, 422);
    assert.equal(both.json.error.code, 'COMPOSITION_INVALID');
    const taken = await call(url, 'POST', '/v1/compositions', { name: 'de', fit: base });
    assert.equal(taken.status, 409);
    assert.equal(taken.json.error.code, 'COMPOSITION_NAME_TAKEN');
  });

  it('runs one fit at a time per node: another answers 429 FIT_BUSY with retry-after', async () => {
    const examples = await examplesFor(url);
    const fit = {
      examples,
      task: 'topic',
      groups: ['language'],
      budget: { evaluations: 40, seconds: 20 },
    };
    const [first, second] = await Promise.all([
      call(url, 'POST', '/v1/compositions', { name: 'busy-1', fit }),
      call(url, 'POST', '/v1/compositions', { name: 'busy-2', fit }),
    ]);
    const statuses = [first.status, second.status].sort();
    assert.deepEqual(
      statuses,
      [202, 429],
      `${JSON.stringify(first.json)} ${JSON.stringify(second.json)}`,
    );
    const busy = first.status === 429 ? first : second;
    assert.equal(busy.json.error.code, 'FIT_BUSY');
    assert.ok(Number(busy.headers.get('retry-after')) >= 1);
    const running = first.status === 202 ? first : second;
    await finished(url, running.json.id);
  });

  it('cancels a running fit on shutdown: the job ends failed with FIT_CANCELLED, nothing stored', async () => {
    const examples = await examplesFor(url);
    const store = new MemoryCompositionStore();
    const states = new MemoryFitJobStates(60_000);
    const fits = new FitJobs({ inference: service.inference, store, states, maxRunning: 1 });
    const spec = checkFitSpec(
      service.inference.describe(),
      { examples, task: 'topic', groups: ['language'], budget: { evaluations: 200, seconds: 60 } },
      LIMITS,
    );
    const job = await fits.start({ name: 'cancelled', description: '', spec });
    await sleep(100);
    await fits.close();
    const record = await fits.status(job.id);
    assert.equal(record.state, 'failed');
    assert.equal(record.error?.code, 'FIT_CANCELLED');
    assert.equal(store.get('cancelled'), undefined);
  });
});

describe('composition fit route (queue mode) [needs the real search]', () => {
  const redisUrl = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
  const redisPort = Number(redisUrl.port || 6379);
  const prefix = `moe-fit-route-test-${process.pid}-${Date.now()}`;
  const procs: HttpProc[] = [];

  after(async () => {
    await Promise.all(procs.map((proc) => stop(proc)));
    const keys = (await redisCli(redisPort, '--scan', '--pattern', `${prefix}:*`))
      .split('\n')
      .filter(Boolean);
    for (const key of keys) await redisCli(redisPort, 'del', key);
  });

  it('a fit started on one API node runs on the workers; the other node follows it and serves the result', async () => {
    const env = clusterEnv({
      packDir,
      redisPort,
      prefix,
      extra: { ADMIN_API_KEY: ADMIN_KEY, ADAPTER_ROOT: root, FIT_MAX_EXAMPLES: '20' },
    });
    procs.push(await startWorker(env));
    const apiA = await startApi(env);
    procs.push(apiA);
    const apiB = await startApi(env);
    procs.push(apiB);
    const examples = await examplesFor(apiA.url);
    const accepted = await call(apiA.url, 'POST', '/v1/compositions', {
      name: 'fitted-q',
      fit: {
        examples,
        task: 'topic',
        groups: ['language'],
        budget: { evaluations: 30, seconds: 30 },
      },
    });
    assert.equal(accepted.status, 202, JSON.stringify(accepted.json));
    const { job } = await finished(apiB.url, accepted.json.id);
    assert.equal(job.state, 'completed', JSON.stringify(job));
    assert.ok(job.result.after.accuracy >= job.result.before.accuracy);
    const used = await call(apiB.url, 'POST', '/v1/infer', {
      inputs: examples.map((e) => e.text),
      composition: 'fitted-q',
      task: 'topic',
    });
    assert.equal(used.status, 200, JSON.stringify(used.json));
    assert.deepEqual(used.json.composition, { name: 'fitted-q', version: 1 });
  });
});
