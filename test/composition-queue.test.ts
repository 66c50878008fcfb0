/**
 * Named compositions in queue mode, with real processes: two API nodes (`main.js`, QUEUE=redis)
 * and one worker (`worker.js`) on a fixture pack, sharing the Redis at REDIS_URL (default
 * 127.0.0.1:6379) under a key prefix of this run, deleted at the end. A composition created on one
 * node is served by the other at once; a replacement on either is seen by both; a restarted node
 * finds them in Redis; fit job states are read through Redis (any node answers).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixturePack } from './support/fixture-pack.js';
import {
  clusterEnv,
  type HttpProc,
  redisCli,
  sleep,
  startApi,
  startWorker,
  stop,
} from './support/processes.js';

const REDIS_URL = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const REDIS_PORT = Number(REDIS_URL.port || 6379);
const PREFIX = `moe-composition-test-${process.pid}-${Date.now()}`;
const ADMIN_KEY = 'composition-queue-key';
const TEXTS = ['Die Mannschaft hat das Spiel gewonnen.', 'The market is open today.'];

/** A parsed JSON answer (what JSON.parse gives); the tests check it field by field. */
type Json = ReturnType<typeof JSON.parse>;

let root: string;
let env: Record<string, string>;
const procs: HttpProc[] = [];
let apiA: HttpProc;
let apiB: HttpProc;

async function call(
  url: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Json }> {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${ADMIN_KEY}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  return { status: response.status, json: await response.json() };
}

async function until(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-composition-queue-'));
  const packDir = await buildFixturePack(join(root, 'pack'), { seed: 11 });
  env = clusterEnv({
    packDir,
    redisPort: REDIS_PORT,
    prefix: PREFIX,
    extra: { ADMIN_API_KEY: ADMIN_KEY, ADAPTER_ROOT: root },
  });
  procs.push(await startWorker(env));
  apiA = await startApi(env);
  apiB = await startApi(env);
  procs.push(apiA, apiB);
  await until('both API nodes ready', async () => {
    const ready = await Promise.all(
      [apiA, apiB].map((api) => fetch(`${api.url}/health/ready`).then((r) => r.status === 200)),
    );
    return ready.every(Boolean);
  });
});

after(async () => {
  await Promise.all(procs.map((proc) => stop(proc)));
  const keys = (await redisCli(REDIS_PORT, '--scan', '--pattern', `${PREFIX}:*`))
    .split('\n')
    .filter(Boolean);
  for (const key of keys) await redisCli(REDIS_PORT, 'del', key);
  await rm(root, { recursive: true, force: true });
});

describe('named compositions (queue mode, two API nodes)', () => {
  it('a composition created on one node is used on the other at once, and replacements converge on both', async () => {
    const created = await call(apiA.url, 'POST', '/v1/compositions', {
      name: 'shared',
      groups: { language: { weights: { de: 0.75, en: 0.25 } } },
    });
    assert.equal(created.status, 201, JSON.stringify(created.json));

    // No wait: B looks up a name it has not seen in Redis.
    const onB = await call(apiB.url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'shared',
    });
    assert.equal(onB.status, 200, JSON.stringify(onB.json));
    assert.deepEqual(onB.json.composition, { name: 'shared', version: 1 });
    for (const result of onB.json.results) {
      assert.deepEqual(
        result.routing.language.map((r: Json) => [r.adapter, Number(r.weight.toFixed(5))]),
        [
          ['de', 0.75],
          ['en', 0.25],
        ],
      );
    }
    const openai = await call(apiB.url, 'POST', '/v1/embeddings', {
      model: 'fixture:shared',
      input: TEXTS,
      encoding_format: 'float',
    });
    assert.equal(openai.status, 200, JSON.stringify(openai.json));
    assert.deepEqual(openai.json.composition, { name: 'shared', version: 1 });

    // Replaced on B: A serves version 2 once the announcement lands.
    const replaced = await call(apiB.url, 'POST', '/v1/compositions', {
      name: 'shared',
      groups: { language: { gate: { top_p: 0.9, k_max: 2 } } },
    });
    assert.equal(replaced.status, 200, JSON.stringify(replaced.json));
    assert.equal(replaced.json.version, 2);
    await until('node A to serve version 2', async () => {
      const shown = await call(apiA.url, 'GET', '/v1/compositions/shared');
      return shown.json.version === 2;
    });
    const onA = await call(apiA.url, 'POST', '/v1/infer', { inputs: TEXTS, composition: 'shared' });
    assert.deepEqual(onA.json.composition, { name: 'shared', version: 2 });
    for (const result of onA.json.results) assert.ok(result.routing.language.length <= 2);

    // Concurrent replacements on both nodes: each gets its own version, none is lost.
    const [x, y] = await Promise.all(
      [apiA, apiB].map((api, i) =>
        call(api.url, 'POST', '/v1/compositions', {
          name: 'shared',
          description: `from ${i}`,
          groups: { language: { weights: { fr: 1 } } },
        }),
      ),
    );
    assert.deepEqual(
      [x!.json.version, y!.json.version].sort(),
      [3, 4],
      `${JSON.stringify(x!.json)} ${JSON.stringify(y!.json)}`,
    );
    await until('both nodes to list the same compositions', async () => {
      const [a, b] = await Promise.all(
        [apiA, apiB].map((api) => call(api.url, 'GET', '/v1/compositions')),
      );
      return JSON.stringify(a!.json) === JSON.stringify(b!.json) && a!.json.data[0]?.version === 4;
    });

    // Deleted on A: B answers 404 once it has the announcement.
    assert.equal((await call(apiA.url, 'DELETE', '/v1/compositions/shared')).status, 200);
    await until('node B to forget it', async () => {
      const answer = await call(apiB.url, 'POST', '/v1/infer', {
        inputs: TEXTS,
        composition: 'shared',
      });
      return answer.status === 404 && answer.json.error.code === 'COMPOSITION_NOT_FOUND';
    });
  });

  it('a restarted API node finds the compositions in Redis', async () => {
    await call(apiA.url, 'POST', '/v1/compositions', {
      name: 'durable',
      groups: { language: { weights: { ru: 0.5, fr: 0.5 } } },
    });
    await stop(apiA);
    apiA = await startApi(env);
    procs.push(apiA);
    const shown = await call(apiA.url, 'GET', '/v1/compositions/durable');
    assert.equal(shown.status, 200, JSON.stringify(shown.json));
    assert.equal(shown.json.version, 1);
    await until('node A ready again', async () =>
      fetch(`${apiA.url}/health/ready`).then((r) => r.status === 200),
    );
    const used = await call(apiA.url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'durable',
    });
    assert.equal(used.status, 200, JSON.stringify(used.json));
    const models = await call(apiB.url, 'GET', '/v1/models');
    assert.ok(models.json.data.some((m: Json) => m.id === 'fixture:durable'));
  });

  it('answers fit job ids through Redis on any node (404 for an unknown one)', async () => {
    const answer = await call(apiB.url, 'GET', '/v1/jobs/fit-00000000-0000-0000-0000-000000000000');
    assert.equal(answer.status, 404, JSON.stringify(answer.json));
    assert.equal(answer.json.error.code, 'JOB_NOT_FOUND');
  });
});
