/**
 * Queue mode end to end, with real processes: a private redis-server (its own port and folder, so
 * it can be stopped and restarted), one API node (`main.js`, QUEUE=redis) and two workers
 * (`worker.js`), all on a small fixture pack with one engine thread each. Every run uses its own
 * key prefix. Answers are compared with embedded mode's for the same inputs (an EmbeddedInference
 * in this process, on the same pack).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildApp } from '../src/app.js';
import type { InferBody, InferResponse } from '../src/http/schemas.js';
import { toInferRequest } from '../src/http/wire.js';
import { type InferResult, Model } from '../src/inference/model.js';
import { EmbeddedInference } from '../src/inference/service.js';
import { Metrics } from '../src/metrics.js';
import { buildFixturePack, FIXTURE_LANGUAGES, FIXTURE_TEXTS } from '../src/pack/fixture.js';
import {
  activeJobsOf,
  clusterEnv,
  freePort,
  type HttpProc,
  metricSum,
  type Proc,
  runLoad,
  sleep,
  startApi,
  startRedis,
  startWorker,
  stop,
} from './support/processes.js';

const REQUESTS = 1000;
const CONCURRENCY = 64;
const TOLERANCE = 1e-5;
/** Short locks so a killed worker's jobs move to the other one within seconds. */
const LOCK_MS = '3000';
const ADMIN_KEY = 'queue-test-key';

let root: string;
let packDir: string;
let redisPort: number;
let redis: Proc;
let env: Record<string, string>;
let api: HttpProc;
const workers: HttpProc[] = [];
/** BullMQ's key prefix of the cluster's queue (QUEUE_PREFIX:QUEUE_NAME:). */
let queueKeys: string;
/** Extra processes a test started; stopped in `after`. */
const extras: Proc[] = [];
let embedded: { model: Model; inference: EmbeddedInference };

const WORDS = FIXTURE_TEXTS.join(' ')
  .split(/\s+/)
  .filter((w) => /\p{L}/u.test(w));

/** Request i: one text of 3-9 words, and one of four routing wishes. */
function body(i: number): InferBody {
  let seed = (i + 1) * 2654435761;
  const next = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed;
  };
  const words = Array.from({ length: 3 + (next() % 7) }, () => WORDS[next() % WORDS.length]!);
  const base: InferBody = { inputs: [words.join(' ')], return: ['embedding', 'scores'] };
  switch (i % 4) {
    case 1:
      return { ...base, task: 'sentiment' };
    case 2:
      return { ...base, language: FIXTURE_LANGUAGES[i % 4]! };
    case 3:
      return { ...base, top_k: 2 };
    default:
      return base;
  }
}

interface Answer {
  status: number;
  json: unknown;
  ms: number;
}

async function post(url: string, path: string, payload: unknown): Promise<Answer> {
  const t0 = performance.now();
  const response = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(payload),
    signal: AbortSignal.timeout(60_000),
  });
  const json = (await response.json()) as unknown;
  return { status: response.status, json, ms: performance.now() - t0 };
}

async function get(url: string): Promise<Answer> {
  const t0 = performance.now();
  const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  const text = await response.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // metrics text
  }
  return { status: response.status, json, ms: performance.now() - t0 };
}

const codeOf = (answer: Answer) => (answer.json as { error?: { code?: string } }).error?.code;

function close(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= TOLERANCE, `${what}: ${actual} vs ${expected}`);
}

/** A queue-mode result equals embedded mode's: routing, labels, scores, embedding, tokens. */
function assertSameResult(
  got: InferResponse['results'][number],
  want: InferResult,
  what: string,
): void {
  assert.deepEqual(Object.keys(got.routing), Object.keys(want.routing), `${what}: groups`);
  for (const [group, chosen] of Object.entries(want.routing)) {
    const mine = got.routing[group]!;
    assert.deepEqual(
      mine.map((c) => c.adapter),
      chosen.map((c) => c.adapter),
      `${what}: adapters of ${group}`,
    );
    chosen.forEach((c, k) => {
      close(mine[k]!.weight, c.weight, `${what}: weight ${group}[${k}]`);
    });
  }
  assert.deepEqual(Object.keys(got.outputs), Object.keys(want.outputs), `${what}: tasks`);
  for (const [task, out] of Object.entries(want.outputs)) {
    const mine = got.outputs[task]!;
    assert.equal(mine.label, out.label, `${what}: label of ${task}`);
    for (const [label, p] of Object.entries(out.scores)) {
      close(mine.scores![label]!, p, `${what}: ${task}/${label}`);
    }
  }
  assert.equal(got.embedding!.length, want.embedding.length, `${what}: embedding size`);
  want.embedding.forEach((x, j) => {
    close(got.embedding![j]!, x, `${what}: embedding[${j}]`);
  });
  assert.equal(got.tokens, want.tokens, `${what}: tokens`);
  assert.equal(got.truncated, want.truncated, `${what}: truncated`);
}

/**
 * SIGKILL `victim` at a moment it provably holds jobs, and resolve with how many. A job spends only
 * tens of milliseconds in a worker (the API node, not the workers, limits this load), so a kill at
 * a random moment often finds the worker holding nothing and proves no recovery. So: freeze it
 * (SIGSTOP: it takes, finishes and renews nothing), let the Redis commands it already sent land,
 * count the active jobs it took (BullMQ's `processedBy` is the worker's name, hostname:pid); kill
 * it if it holds any, else let it run a moment and look again.
 */
async function killHoldingJobs(victim: HttpProc): Promise<number> {
  const name = `${hostname()}:${victim.child.pid}`;
  const limit = performance.now() + 20_000;
  while (performance.now() < limit) {
    victim.child.kill('SIGSTOP');
    await sleep(100);
    const held = await activeJobsOf(redisPort, queueKeys, name);
    if (held > 0) {
      victim.child.kill('SIGKILL');
      return held;
    }
    victim.child.kill('SIGCONT');
    await sleep(10 + Math.random() * 40);
  }
  victim.child.kill('SIGKILL');
  throw new Error('the victim held no job whenever it was frozen; nothing to recover');
}

/** Embedded mode's answers for requests 0..REQUESTS-1, computed once. */
let expected: InferResult[];

async function loadAndCheck(label: string, onProgress?: (done: number) => void): Promise<Answer[]> {
  const answers = await runLoad(
    REQUESTS,
    CONCURRENCY,
    (i) => post(api.url, '/v1/infer', body(i)),
    onProgress,
  );
  const failures = answers.filter((a) => a instanceof Error || a.status !== 200);
  assert.equal(
    failures.length,
    0,
    `${label}: ${failures.length} of ${REQUESTS} not answered 200, e.g. ${JSON.stringify(
      failures.slice(0, 3).map((a) => (a instanceof Error ? a.message : a.json)),
    )}`,
  );
  answers.forEach((answer, i) => {
    const response = (answer as Answer).json as InferResponse;
    assert.equal(response.results.length, 1);
    assertSameResult(response.results[0]!, expected[i]!, `${label} request ${i}`);
  });
  return answers as Answer[];
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-queue-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 5 });
  redisPort = await freePort();
  redis = await startRedis(redisPort, root);
  env = clusterEnv({
    packDir,
    redisPort,
    prefix: `moe-test-${process.pid}-${Date.now()}`,
    // 16 jobs per worker at most: a worker with room for all 64 would take nearly all of them.
    extra: { JOB_LOCK_MS: LOCK_MS, WORKER_CONCURRENCY: '16', ADMIN_API_KEY: ADMIN_KEY },
  });
  queueKeys = `${env.QUEUE_PREFIX}:${env.QUEUE_NAME ?? 'moe-infer'}:`;
  const started = await Promise.all([startApi(env), startWorker(env), startWorker(env)]);
  api = started[0];
  workers.push(started[1], started[2]);

  const model = await Model.open({ packDir, engine: { workers: 1, intraOpThreads: 1 } });
  const inference = new EmbeddedInference(model, new Metrics(), {
    maxBatchItems: 32,
    maxBatchTokens: 8192,
    maxQueueDelayMs: 0,
    maxQueuedItems: 1 << 20,
  });
  embedded = { model, inference };
  const answers = await Promise.all(
    Array.from({ length: REQUESTS }, (_, i) =>
      inference.infer(toInferRequest({ texts: body(i).inputs }, body(i)), {
        deadline: performance.now() + 60_000,
      }),
    ),
  );
  expected = answers.map((a) => a.results[0]!);
});

after(async () => {
  await embedded?.inference.close();
  await Promise.all(
    [api, ...workers, ...extras].filter(Boolean).map((proc) => stop(proc, 'SIGKILL')),
  );
  if (redis !== undefined) await stop(redis, 'SIGKILL');
  await rm(root, { recursive: true, force: true });
});

describe('queue mode: one API node, two workers, real Redis', () => {
  it('answers 1000 requests at concurrency 64, equal to embedded mode', async () => {
    await loadAndCheck('queue');
    const metrics = String((await get(`${api.url}/metrics`)).json);
    assert.ok(metrics.includes('moe_queue_jobs{state="waiting"}'), 'queue depth gauge');
    // Both workers took part.
    for (const worker of workers) {
      const text = String((await get(`${worker.url}/metrics`)).json);
      assert.ok(metricSum(text, 'moe_queue_jobs_processed_total', { result: 'completed' }) > 0);
    }
  });

  it('loses nothing when a worker is SIGKILLed mid-load: every request answered once', async (t) => {
    const victim = workers.pop()!;
    extras.push(victim);
    let killing: Promise<number> | undefined;
    await loadAndCheck('kill', (done) => {
      if (killing === undefined && done >= 150) {
        killing = killHoldingJobs(victim);
        killing.catch(() => undefined); // awaited below
      }
    });
    assert.ok(killing !== undefined);
    const held = await killing;
    assert.equal(await victim.exit, null, 'killed by the signal');
    const survivor = String((await get(`${workers[0]!.url}/metrics`)).json);
    // The survivor's stall check moved every job the dead worker held back, and ran them again.
    const stalled = metricSum(survivor, 'moe_queue_jobs_stalled_total');
    const retries = metricSum(survivor, 'moe_queue_job_retries_total');
    t.diagnostic(
      `killed holding ${held} jobs; survivor: ${stalled} stalled, ${retries} taken again`,
    );
    assert.ok(held >= 1, 'the victim held jobs when killed');
    assert.ok(stalled >= held, `stalled jobs seen: ${stalled} of the ${held} held`);
    assert.ok(retries >= held, `jobs taken again: ${retries} of the ${held} held`);
    assert.ok(api.alive() && workers[0]!.alive());
  });

  it('durable jobs: POST /v1/jobs -> 202 and an id; GET -> state, then the result', async () => {
    const payload = body(7);
    const accepted = await post(api.url, '/v1/jobs', payload);
    assert.equal(accepted.status, 202, JSON.stringify(accepted.json));
    const { id, state } = accepted.json as { id: string; state: string };
    assert.equal(state, 'waiting');
    let job: { state: string; result?: InferResponse; attempts: number } | undefined;
    for (let i = 0; i < 100; i++) {
      const answer = await get(`${api.url}/v1/jobs/${id}`);
      assert.equal(answer.status, 200);
      job = answer.json as typeof job;
      if (job!.state === 'completed') break;
      await sleep(50);
    }
    assert.equal(job!.state, 'completed');
    assert.equal(job!.attempts, 1);
    assertSameResult(job!.result!.results[0]!, expected[7]!, 'job');

    const unknown = await get(`${api.url}/v1/jobs/no-such-job`);
    assert.equal(unknown.status, 404);
    assert.equal(codeOf(unknown), 'JOB_NOT_FOUND');
    // Routing is checked by the API node before anything is queued.
    const bad = await post(api.url, '/v1/jobs', { inputs: ['x'], language: 'xx' });
    assert.equal(bad.status, 422);
    assert.equal(codeOf(bad), 'ROUTING_UNKNOWN_ADAPTER');
    // Adapters are fixed in queue mode: a clear error, even with the admin key.
    const unload = await fetch(`${api.url}/v1/adapters/en`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${ADMIN_KEY}` },
    });
    assert.equal(unload.status, 501);
    assert.equal(
      ((await unload.json()) as { error: { code: string } }).error.code,
      'QUEUE_MODE_UNSUPPORTED',
    );
  });

  it('Redis down: fast 503 QUEUE_UNAVAILABLE, not ready; back within 5 s; no exits', async (t) => {
    type Sample = Answer & { start: number; end: number };
    const samples: Sample[] = [];
    const readiness: { at: number; status: number; redis: boolean }[] = [];
    const t0 = performance.now();
    let stoppedAt = Number.POSITIVE_INFINITY;
    let restartedAt = Number.POSITIVE_INFINITY;
    let running = true;
    const loop = async (k: number) => {
      for (let n = 0; running && n < 2000; n++) {
        const start = performance.now() - t0;
        const answer = await post(api.url, '/v1/infer', body(k * 2000 + (n % 500)));
        samples.push({ ...answer, start, end: performance.now() - t0 });
        await sleep(20);
      }
    };
    const loops = Promise.all([0, 1, 2, 3].map(loop));

    await sleep(1000);
    await stop(redis);
    stoppedAt = performance.now() - t0;
    for (let i = 0; i < 10; i++) {
      await sleep(500);
      const ready = await get(`${api.url}/health/ready`);
      const checks = (ready.json as { checks: { redis: boolean } }).checks;
      readiness.push({ at: performance.now() - t0, status: ready.status, redis: checks.redis });
    }
    redis = await startRedis(redisPort, root);
    restartedAt = performance.now() - t0;
    // Serve again within 5 s: a fresh request is answered 200.
    let recoveredAt = Number.POSITIVE_INFINITY;
    while (performance.now() - t0 < restartedAt + 10_000) {
      const answer = await post(api.url, '/v1/infer', body(3));
      if (answer.status === 200) {
        recoveredAt = performance.now() - t0;
        break;
      }
      await sleep(100);
    }
    running = false;
    await loops;

    assert.ok(
      recoveredAt - restartedAt <= 5000,
      `full service ${Math.round(recoveredAt - restartedAt)} ms after Redis returned`,
    );
    const down = samples.filter((s) => s.start > stoppedAt + 1500 && s.end < restartedAt);
    t.diagnostic(
      `Redis down ${Math.round(restartedAt - stoppedAt)} ms: ${down.length} requests answered 503 in at most ${Math.round(Math.max(...down.map((s) => s.ms)))} ms; served again ${Math.round(recoveredAt - restartedAt)} ms after Redis returned; ${samples.filter((s) => s.status === 200).length} of ${samples.length} answered 200 in all`,
    );
    assert.ok(down.length >= 10, `${down.length} requests while Redis was down`);
    for (const s of down) {
      assert.equal(s.status, 503, JSON.stringify(s.json));
      assert.equal(codeOf(s), 'QUEUE_UNAVAILABLE');
      assert.ok(s.ms < 1500, `503 after ${Math.round(s.ms)} ms`);
    }
    // Every request got one answer: a result, or a clear error.
    for (const s of samples) {
      assert.ok(
        s.status === 200 || (s.status === 503 && codeOf(s) === 'QUEUE_UNAVAILABLE'),
        `${s.status} ${JSON.stringify(s.json)}`,
      );
    }
    const whileDown = readiness.filter((r) => r.at > stoppedAt + 500);
    assert.ok(whileDown.length > 0 && whileDown.every((r) => r.status === 503 && !r.redis));
    const ready = await get(`${api.url}/health/ready`);
    assert.equal(ready.status, 200);
    // Full service: a burst is answered in full, and nobody exited.
    const burst = await runLoad(100, 16, (i) => post(api.url, '/v1/infer', body(i)));
    assert.ok(burst.every((a) => !(a instanceof Error) && a.status === 200));
    assert.ok(api.alive() && workers.every((w) => w.alive()), 'no process exited');
  });

  it('a job past its deadline is not run: its client gets REQUEST_TIMEOUT', async () => {
    // Its own queue, and no worker yet: the job waits past its 300 ms deadline.
    const queueEnv = {
      ...env,
      QUEUE_NAME: 'expiry',
      REQUEST_TIMEOUT_MS: '300',
      JOB_TIMEOUT_MS: '300',
    };
    const lateApi = await startApi(queueEnv);
    extras.push(lateApi);
    const sync = await post(lateApi.url, '/v1/infer', body(1));
    assert.equal(sync.status, 504);
    assert.equal(codeOf(sync), 'REQUEST_TIMEOUT');
    assert.ok(sync.ms < 3000, `timed out after ${Math.round(sync.ms)} ms`);
    const accepted = await post(lateApi.url, '/v1/jobs', body(2));
    assert.equal(accepted.status, 202);
    const { id } = accepted.json as { id: string };
    await sleep(400);

    const worker = await startWorker(queueEnv);
    extras.push(worker);
    let job: { state: string; error?: { code: string; details?: { ran?: boolean } } } | undefined;
    for (let i = 0; i < 100; i++) {
      job = (await get(`${lateApi.url}/v1/jobs/${id}`)).json as typeof job;
      if (job!.state === 'failed') break;
      await sleep(100);
    }
    assert.equal(job!.state, 'failed');
    assert.equal(job!.error!.code, 'REQUEST_TIMEOUT');
    assert.equal(job!.error!.details?.ran, false);
    const text = String((await get(`${worker.url}/metrics`)).json);
    assert.equal(metricSum(text, 'moe_queue_jobs_processed_total', { result: 'expired' }), 2);
    assert.equal(metricSum(text, 'moe_batch_size_items_count'), 0, 'nothing ran');
  });

  it('embedded mode: the job routes answer 501 QUEUE_MODE_REQUIRED', async () => {
    const app = await buildApp({
      inference: embedded.inference,
      metrics: new Metrics(),
      limits: {
        maxInputs: 16,
        maxInputChars: 1000,
        maxRequestChars: 64_000,
        requestTimeoutMs: 5000,
        bodyLimitBytes: 1 << 20,
      },
      adminApiKey: undefined,
      adapterRoot: root,
    });
    const posted = await app.inject({ method: 'POST', url: '/v1/jobs', payload: body(0) });
    assert.equal(posted.statusCode, 501);
    assert.equal(posted.json().error.code, 'QUEUE_MODE_REQUIRED');
    assert.match(posted.json().error.message, /QUEUE=redis/);
    const read = await app.inject({ method: 'GET', url: '/v1/jobs/abc' });
    assert.equal(read.statusCode, 501);
    const spec = (await app.inject({ method: 'GET', url: '/docs/json' })).json() as {
      paths: Record<string, unknown>;
    };
    assert.ok(spec.paths['/v1/jobs'] && spec.paths['/v1/jobs/{id}'], 'job routes documented');
    await app.close();
  });

  it('SIGTERM: workers finish what they hold and every process exits 0', async () => {
    const inFlight = runLoad(64, 16, (i) => post(api.url, '/v1/infer', body(i)));
    await sleep(30);
    const codes = await Promise.all(workers.map((w) => stop(w)));
    assert.deepEqual(
      codes,
      workers.map(() => 0),
    );
    // Jobs taken before the stop were answered; the rest wait in the queue (no worker left)
    // until their deadline, so stop the API only after a fresh worker has drained them.
    const fresh = await startWorker(env);
    extras.push(fresh);
    const answers = await inFlight;
    assert.ok(answers.every((a) => !(a instanceof Error) && a.status === 200));
    assert.equal(await stop(api), 0);
    assert.equal(await stop(fresh), 0);
  });
});
