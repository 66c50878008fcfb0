/**
 * Queue mode end to end, with real processes: a private redis-server (its own port and folder, so
 * it can be stopped and restarted, and its memory is this cluster's alone), one API node
 * (`main.js`, QUEUE=redis) and two workers (`worker.js`), all on a small fixture pack with one
 * engine thread each; tests add API nodes and workers of their own. Every run uses its own key
 * prefix. Answers are compared with embedded mode's for the same inputs (an EmbeddedInference in
 * this process, on the same pack and the same adapter folders).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildApp } from '../src/app.js';
import type { InferBody, InferResponse } from '../src/http/schemas.js';
import { nativeInputs, toInferRequest } from '../src/http/wire.js';
import { type InferResult, Model } from '../src/inference/model.js';
import { EmbeddedInference } from '../src/inference/service.js';
import { Metrics } from '../src/metrics.js';
import { Random } from '../src/util/random.js';
import {
  buildFixturePack,
  FIXTURE_LANGUAGES,
  FIXTURE_TEXTS,
  randomAdapter,
  writeAdapterFolder,
} from './support/fixture-pack.js';
import {
  activeJobsOf,
  clusterEnv,
  freePort,
  type HttpProc,
  metricSum,
  type Proc,
  redisCli,
  redisFootprint,
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
/** ADAPTER_ROOT of the cluster: adapter folders the tests load at run time. */
let adapterRoot: string;
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

async function admin(
  url: string,
  method: 'POST' | 'DELETE',
  path: string,
  payload?: unknown,
): Promise<Answer> {
  const t0 = performance.now();
  const response = await fetch(`${url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${ADMIN_KEY}`,
      ...(payload === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: payload === undefined ? undefined : JSON.stringify(payload),
    signal: AbortSignal.timeout(60_000),
  });
  return { status: response.status, json: await response.json(), ms: performance.now() - t0 };
}

async function metricsOf(url: string): Promise<string> {
  return String((await get(`${url}/metrics`)).json);
}

/** `name` summed over the /metrics of every process in `urls`. */
async function sumOver(
  urls: readonly string[],
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const texts = await Promise.all(urls.map(metricsOf));
  return texts.reduce((sum, text) => sum + metricSum(text, name, labels), 0);
}

function redisCliOf(args: string[]): Promise<string> {
  return redisCli(redisPort, ...args);
}

/** A language adapter folder under the cluster's ADAPTER_ROOT (fixture size, seeded). */
async function adapterFolder(name: string, id: string, seed: number): Promise<string> {
  const adapter = randomAdapter(new Random(seed), {
    id,
    group: 'language',
    hiddenSize: 32,
    rank: 4,
  });
  const dir = join(adapterRoot, name);
  await writeAdapterFolder(dir, adapter);
  return dir;
}

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
 * milliseconds in a worker (the API node, not the workers, limits this load), and the other worker
 * takes what is waiting in bulk, so a kill at a random moment often finds the victim holding
 * nothing and proves no recovery. So: freeze the other worker for a moment (SIGSTOP: it takes,
 * finishes and renews nothing), so that new jobs go to the victim; freeze the victim too, let the
 * Redis commands it already sent land, count the active jobs it took (BullMQ's `processedBy` is
 * the worker's name, hostname:pid); kill it if it holds any, else let both run and look again.
 */
async function killHoldingJobs(victim: HttpProc, other: HttpProc): Promise<number> {
  const name = `${hostname()}:${victim.child.pid}`;
  const limit = performance.now() + 20_000;
  try {
    while (performance.now() < limit) {
      other.child.kill('SIGSTOP');
      await sleep(20 + Math.random() * 30);
      victim.child.kill('SIGSTOP');
      await sleep(100);
      other.child.kill('SIGCONT');
      const held = await activeJobsOf(redisPort, queueKeys, name);
      if (held > 0) {
        victim.child.kill('SIGKILL');
        return held;
      }
      victim.child.kill('SIGCONT');
      await sleep(10 + Math.random() * 40);
    }
  } finally {
    other.child.kill('SIGCONT');
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
  adapterRoot = join(root, 'adapters');
  redisPort = await freePort();
  redis = await startRedis(redisPort, root);
  env = clusterEnv({
    packDir,
    redisPort,
    prefix: `moe-test-${process.pid}-${Date.now()}`,
    // 16 jobs per worker at most: a worker with room for all 64 would take nearly all of them.
    extra: {
      JOB_LOCK_MS: LOCK_MS,
      WORKER_CONCURRENCY: '16',
      ADMIN_API_KEY: ADMIN_KEY,
      ADAPTER_ROOT: adapterRoot,
    },
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
      inference.infer(toInferRequest(nativeInputs(body(i).inputs), body(i)), {
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
  it('answers 1000 requests at concurrency 64, equal to embedded mode; the metrics add up', async () => {
    await loadAndCheck('queue');
    const metrics = await metricsOf(api.url);
    assert.ok(metrics.includes('moe_queue_jobs{state="waiting"}'), 'queue depth gauge');
    // The API node read exactly its 1000 answers from its reply stream, none twice.
    assert.equal(metricSum(metrics, 'moe_queue_replies_total', { outcome: 'answered' }), REQUESTS);
    assert.equal(metricSum(metrics, 'moe_queue_replies_total', { outcome: 'late' }), 0);
    // Both workers took part, and their own counters agree with each other and with the load.
    const urls = workers.map((w) => w.url);
    for (const url of urls) {
      const text = await metricsOf(url);
      assert.ok(metricSum(text, 'moe_queue_jobs_processed_total', { result: 'completed' }) > 0);
      assert.equal(metricSum(text, 'moe_adapter_registry_version'), 0);
      assert.equal(metricSum(text, 'moe_adapter_registry_synced'), 1);
    }
    const completed = await sumOver(urls, 'moe_queue_jobs_processed_total', {
      result: 'completed',
    });
    const attempts = await sumOver(urls, 'moe_queue_jobs_processed_total');
    const fetched = await sumOver(urls, 'moe_queue_fetch_jobs_sum');
    const items = await sumOver(urls, 'moe_batch_size_items_sum');
    const retries = await sumOver(urls, 'moe_queue_job_retries_total');
    assert.ok(completed >= REQUESTS && completed <= REQUESTS + retries, `${completed} completed`);
    assert.equal(fetched, attempts, 'every job taken was finished once per attempt');
    assert.ok(items >= completed, `${items} items batched for ${completed} jobs`);
  });

  it('leaves nothing behind: after 10,000 requests Redis holds a bounded set of keys', async (t) => {
    const prefix = `${env.QUEUE_PREFIX}:`;
    const before = await redisFootprint(redisPort, prefix);
    const count = 10_000;
    const answers = await runLoad(count, CONCURRENCY, (i) =>
      post(api.url, '/v1/infer', body(i % REQUESTS)),
    );
    const failed = answers.filter((a) => a instanceof Error || a.status !== 200);
    assert.equal(failed.length, 0, `${failed.length} of ${count} not answered 200`);
    await sleep(200); // the last reply stream trim is not awaited by the API node
    const after = await redisFootprint(redisPort, prefix);
    const grown = after.usedMemory - before.usedMemory;
    t.diagnostic(
      `keys ${before.keys.length} -> ${after.keys.length}; used_memory ${before.usedMemory} -> ${after.usedMemory} (${grown >= 0 ? '+' : ''}${grown} bytes): ${after.keys.join(' ')}`,
    );
    // No job hash is left (job ids are UUIDs; BullMQ stores a job at PREFIX:QUEUE:<id>).
    const uuid = /:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(:|$)/;
    assert.deepEqual(
      after.keys.filter((key) => uuid.test(key)),
      [],
      'job keys left behind',
    );
    // BullMQ's fixed keys, one reply stream per API node, the registry's keys: a few dozen at
    // most, whatever the number of requests.
    assert.ok(after.keys.length <= 24, `${after.keys.length} keys`);
    // 10,000 kept jobs would take tens of megabytes; a bounded set of keys takes none of that.
    assert.ok(grown < 4 * 1024 * 1024, `used_memory grew by ${grown} bytes`);
    const events = Number(
      (await redisCliOf(['xlen', `${env.QUEUE_PREFIX}:moe-infer:events`])).trim(),
    );
    assert.ok(events <= 2 * 1000, `${events} entries in BullMQ's event stream`);
  });

  it('each answer reaches only the API node that waits for it (two API nodes)', async () => {
    const second = await startApi(env);
    extras.push(second);
    const nodes = [api, second];
    const before = await Promise.all(
      nodes.map(async (node) => metricSum(await metricsOf(node.url), 'moe_queue_replies_total')),
    );
    const perNode = 300;
    const loads = await Promise.all(
      nodes.map((node) => runLoad(perNode, 32, (i) => post(node.url, '/v1/infer', body(i)))),
    );
    for (const [n, answers] of loads.entries()) {
      assert.ok(
        answers.every((a) => !(a instanceof Error) && a.status === 200),
        `node ${n}`,
      );
      answers.forEach((answer, i) => {
        const response = (answer as Answer).json as InferResponse;
        assertSameResult(response.results[0]!, expected[i]!, `node ${n} request ${i}`);
      });
    }
    for (const [n, node] of nodes.entries()) {
      const text = await metricsOf(node.url);
      // A node that read every node's answers would count the others' as late replies.
      assert.equal(
        metricSum(text, 'moe_queue_replies_total') - before[n]!,
        perNode,
        `node ${n} read exactly its own ${perNode} answers`,
      );
      assert.equal(metricSum(text, 'moe_queue_replies_total', { outcome: 'late' }), 0);
    }
    assert.equal(await stop(second), 0);
  });

  it('a worker takes waiting jobs in bulk, and their inputs leave in shared batches', async (t) => {
    // Its own queue: 64 requests wait in Redis before the worker exists.
    const queueEnv = { ...env, QUEUE_NAME: 'bulk', WORKER_CONCURRENCY: '64' };
    const bulkApi = await startApi(queueEnv);
    extras.push(bulkApi);
    const answers = Promise.all(
      Array.from({ length: 64 }, (_, i) => post(bulkApi.url, '/v1/infer', body(i))),
    );
    await sleep(500);
    const worker = await startWorker(queueEnv);
    extras.push(worker);
    const got = await answers;
    got.forEach((answer, i) => {
      assert.equal(answer.status, 200, JSON.stringify(answer.json));
      assertSameResult((answer.json as InferResponse).results[0]!, expected[i]!, `request ${i}`);
    });
    const text = await metricsOf(worker.url);
    const fetches = metricSum(text, 'moe_queue_fetch_jobs_count');
    const small = metricSum(text, 'moe_queue_fetch_jobs_bucket', { le: '16' });
    const batches = metricSum(text, 'moe_batch_size_items_count');
    const items = metricSum(text, 'moe_batch_size_items_sum');
    t.diagnostic(`${fetches} fetches took 64 jobs; ${batches} batches ran ${items} items`);
    assert.equal(metricSum(text, 'moe_queue_fetch_jobs_sum'), 64);
    assert.ok(small < fetches, 'one round trip took more than 16 jobs');
    assert.ok(items / batches >= 16, `mean batch ${items / batches}`);
    assert.equal(await stop(worker), 0);
    assert.equal(await stop(bulkApi), 0);
  });

  it('adapters load and unload at run time: mid-load, on every worker, as in embedded mode', async (t) => {
    const folder = await adapterFolder('nl', 'nl', 21);
    const pinned = (i: number): InferBody => ({ ...body(i), language: 'nl' });
    // Embedded mode's answers with the same folder loaded.
    await embedded.inference.loadAdapter(folder, { id: 'nl' });
    const want = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        embedded.inference.infer(toInferRequest(nativeInputs(pinned(i).inputs), pinned(i)), {
          deadline: performance.now() + 60_000,
        }),
      ),
    );
    await embedded.inference.unloadAdapter('nl');

    // Load it while 600 other requests run.
    const background = runLoad(600, 32, (i) => post(api.url, '/v1/infer', body(i)));
    await sleep(100);
    const loaded = await admin(api.url, 'POST', '/v1/adapters', { path: 'nl' });
    assert.equal(loaded.status, 200, JSON.stringify(loaded.json));
    const info = loaded.json as { id: string; group: string; state: string; source: string };
    assert.deepEqual([info.id, info.group, info.state], ['nl', 'language', 'ready']);
    // Pinned at once: every worker applied it before the load was answered.
    const answers = await runLoad(200, 16, (i) => post(api.url, '/v1/infer', pinned(i)));
    answers.forEach((answer, i) => {
      assert.ok(!(answer instanceof Error) && answer.status === 200, JSON.stringify(answer));
      const got = (answer.json as InferResponse).results[0]!;
      assert.equal(got.routing.language![0]!.adapter, 'nl');
      assertSameResult(got, want[i]!.results[0]!, `pinned request ${i}`);
    });
    const others = await background;
    assert.ok(
      others.every((a) => !(a instanceof Error) && a.status === 200),
      'background load',
    );
    const urls = workers.map((w) => w.url);
    for (const url of urls) {
      const text = await metricsOf(url);
      assert.equal(metricSum(text, 'moe_adapter_registry_version'), 1, url);
      assert.ok(
        metricSum(text, 'moe_adapter_selections_total', { adapter: 'nl' }) > 0,
        `${url} ran requests pinning nl`,
      );
    }
    const listed = (await get(`${api.url}/v1/adapters`)).json as { data: { id: string }[] };
    assert.ok(listed.data.some((a) => a.id === 'nl'));

    // The KServe repository extension: load, index, unload.
    await adapterFolder('sv', 'sv', 22);
    const model = 'fixture';
    const kLoad = await admin(api.url, 'POST', `/v2/repository/models/${model}:sv/load`, {
      parameters: { path: 'sv' },
    });
    assert.equal(kLoad.status, 200, JSON.stringify(kLoad.json));
    const index = await admin(api.url, 'POST', '/v2/repository/index', {});
    const names = (index.json as { name: string; state: string }[]).map((e) => e.name);
    assert.ok(names.includes(`${model}:sv`) && names.includes(`${model}:nl`), names.join());
    const sv = await post(api.url, '/v1/infer', { inputs: ['hello world'], language: 'sv' });
    assert.equal(sv.status, 200, JSON.stringify(sv.json));
    const kUnload = await admin(api.url, 'POST', `/v2/repository/models/${model}:sv/unload`, {});
    assert.equal(kUnload.status, 200, JSON.stringify(kUnload.json));

    // Unloaded: requests pinning it are refused by the API node, on every version.
    const unloaded = await admin(api.url, 'DELETE', '/v1/adapters/nl');
    assert.equal(unloaded.status, 200, JSON.stringify(unloaded.json));
    const refused = await post(api.url, '/v1/infer', pinned(0));
    assert.equal(refused.status, 422);
    assert.equal(codeOf(refused), 'ROUTING_UNKNOWN_ADAPTER');
    for (const url of urls) {
      assert.equal(metricSum(await metricsOf(url), 'moe_adapter_registry_version'), 4, url);
    }

    // A bad folder: the same 4xx as embedded mode, and nothing changes.
    const embeddedApp = await buildApp({
      inference: embedded.inference,
      metrics: new Metrics(),
      limits: {
        maxInputs: 16,
        maxInputChars: 1000,
        maxRequestChars: 100_000,
        requestTimeoutMs: 5000,
        bodyLimitBytes: 1 << 20,
      },
      adminApiKey: ADMIN_KEY,
      adapterRoot,
    });
    for (const path of ['missing', 'nl/adapter_config.json']) {
      const mine = await admin(api.url, 'POST', '/v1/adapters', { path });
      const theirs = await embeddedApp.inject({
        method: 'POST',
        url: '/v1/adapters',
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
        payload: { path },
      });
      assert.equal(mine.status, theirs.statusCode, `${path}: ${JSON.stringify(mine.json)}`);
      assert.equal(codeOf(mine), theirs.json().error.code, path);
    }
    await embeddedApp.close();
    const busted = await admin(api.url, 'POST', '/v1/adapters', { path: 'missing' });
    assert.equal(busted.status, 422);
    assert.equal(codeOf(busted), 'ADAPTER_INVALID');

    // A worker that cannot read the folder (its ADAPTER_ROOT is another folder): the admin gets
    // its error, and the change is rolled back everywhere.
    const blind = await startWorker({ ...env, ADAPTER_ROOT: join(root, 'elsewhere') });
    extras.push(blind);
    const failed = await admin(api.url, 'POST', '/v1/adapters', { path: 'nl' });
    t.diagnostic(`a blind worker's refusal: ${JSON.stringify(failed.json)}`);
    assert.equal(failed.status, 422);
    assert.equal(codeOf(failed), 'ADAPTER_INVALID');
    const details = (failed.json as { error: { details: { worker?: string } } }).error.details;
    assert.equal(details.worker, `${hostname()}:${blind.child.pid}`);
    const after = (await get(`${api.url}/v1/adapters`)).json as { data: { id: string }[] };
    assert.ok(!after.data.some((a) => a.id === 'nl'), 'rolled back on the API node');
    assert.equal((await post(api.url, '/v1/infer', pinned(0))).status, 422);
    for (const url of [...urls, blind.url]) {
      const text = await metricsOf(url);
      assert.equal(metricSum(text, 'moe_adapter_registry_version'), 6, url);
      assert.equal(metricSum(text, 'moe_adapters_loaded', { group: 'language' }), 4, url);
    }
    assert.equal((await get(`${blind.url}/health/ready`)).status, 200, 'in sync again');
    assert.equal(await stop(blind), 0);

    // A worker that starts later catches up on the registry before it takes jobs.
    assert.equal((await admin(api.url, 'POST', '/v1/adapters', { path: 'nl' })).status, 200);
    const late = await startWorker(env);
    extras.push(late);
    const lateText = await metricsOf(late.url);
    assert.equal(metricSum(lateText, 'moe_adapter_registry_version'), 7);
    assert.equal(metricSum(lateText, 'moe_adapters_loaded', { group: 'language' }), 5);
    assert.equal(await stop(late), 0);
    assert.equal((await admin(api.url, 'DELETE', '/v1/adapters/nl')).status, 200);
  });

  it('a worker behind on the registry never answers with a stale adapter set', async () => {
    // Its own queue: one API node, one worker that is frozen while an adapter is loaded.
    const queueEnv = { ...env, QUEUE_NAME: 'behind' };
    const [lateApi, frozen] = await Promise.all([startApi(queueEnv), startWorker(queueEnv)]);
    extras.push(lateApi, frozen);
    await adapterFolder('nl', 'nl', 21);
    frozen.child.kill('SIGSTOP');
    try {
      // The load waits for the frozen worker until its status expires, then commits.
      const loaded = await admin(lateApi.url, 'POST', '/v1/adapters', { path: 'nl' });
      assert.equal(loaded.status, 200, JSON.stringify(loaded.json));
      // Queued while the only worker is frozen at version 0, stamped with version 1.
      const answer = post(lateApi.url, '/v1/infer', { inputs: ['hello world'], language: 'nl' });
      await sleep(300);
      frozen.child.kill('SIGCONT');
      const got = await answer;
      assert.equal(got.status, 200, JSON.stringify(got.json));
      const routing = (got.json as InferResponse).results[0]!.routing;
      assert.equal(routing.language![0]!.adapter, 'nl');
    } finally {
      frozen.child.kill('SIGCONT');
    }
    assert.equal(metricSum(await metricsOf(frozen.url), 'moe_adapter_registry_version'), 1);
    assert.equal(await stop(frozen), 0);
    assert.equal(await stop(lateApi), 0);
  });

  it('loses nothing when a worker is SIGKILLed mid-load: every request answered once', async (t) => {
    const victim = workers.pop()!;
    extras.push(victim);
    let killing: Promise<number> | undefined;
    await loadAndCheck('kill', (done) => {
      if (killing === undefined && done >= 150) {
        killing = killHoldingJobs(victim, workers[0]!);
        killing.catch(() => undefined); // awaited below
      }
    });
    assert.ok(killing !== undefined);
    const held = await killing;
    assert.equal(await victim.exit, null, 'killed by the signal');
    // The survivor's stall check moved every job the dead worker held back, and ran them again.
    // (A job whose answer the dead worker had sent before it was frozen answers no request, so
    // the load can end before its second run: wait for it, boundedly.)
    let stalled = 0;
    let retries = 0;
    for (let i = 0; i < 100 && !(stalled >= held && retries >= held); i++) {
      const survivor = await metricsOf(workers[0]!.url);
      stalled = metricSum(survivor, 'moe_queue_jobs_stalled_total');
      retries = metricSum(survivor, 'moe_queue_job_retries_total');
      if (!(stalled >= held && retries >= held)) await sleep(100);
    }
    t.diagnostic(
      `killed holding ${held} jobs; survivor: ${stalled} stalled, ${retries} taken again`,
    );
    assert.ok(held >= 1, 'the victim held jobs when killed');
    const log = workers[0]!
      .output()
      .split('\n')
      .filter((line) => /stall|lock/.test(line));
    assert.ok(
      stalled >= held,
      `stalled jobs seen: ${stalled} of the ${held} held; survivor log:\n${log.join('\n')}`,
    );
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
    // Requests that ended before this moment ended while Redis was down (once started, Redis may
    // serve before startRedis sees it answer PING).
    const restartingAt = performance.now() - t0;
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
    const down = samples.filter((s) => s.start > stoppedAt + 1500 && s.end < restartingAt);
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
    // The synchronous job was removed when its client got the 504: only the durable one was
    // left for the worker, which did not run it.
    assert.equal(metricSum(text, 'moe_queue_jobs_processed_total', { result: 'expired' }), 1);
    assert.equal(metricSum(text, 'moe_queue_jobs_processed_total'), 1);
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
