/**
 * Named compositions in queue mode, with real processes: a private redis-server (its own port and
 * folder, so it can be stopped and restarted), two API nodes (`main.js`, QUEUE=redis) and one
 * worker (`worker.js`) on a fixture pack. A composition created on one node is served by the other
 * at once; a replacement on either is seen by both; a restarted node finds them in Redis; while
 * Redis is away the nodes stay up and serve what they hold, and changes fail with 503; fit job
 * states are read through Redis (any node answers).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixturePack } from './support/fixture-pack.js';
import {
  clusterEnv,
  freePort,
  type HttpProc,
  type Proc,
  sleep,
  startApi,
  startRedis,
  startWorker,
  stop,
} from './support/processes.js';

const PREFIX = `moe-composition-test-${process.pid}-${Date.now()}`;
const ADMIN_KEY = 'composition-queue-key';
const TEXTS = ['Die Mannschaft hat das Spiel gewonnen.', 'The market is open today.'];

/** A parsed JSON answer (what JSON.parse gives); the tests check it field by field. */
type Json = ReturnType<typeof JSON.parse>;

let root: string;
let redisPort: number;
let redis: Proc;
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
  redisPort = await freePort();
  redis = await startRedis(redisPort, root);
  env = clusterEnv({
    packDir,
    redisPort,
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
  if (redis !== undefined) await stop(redis);
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

  it('while Redis is away the nodes stay up and serve the compositions they hold; changes get 503, and work again once it is back', async () => {
    await call(apiA.url, 'POST', '/v1/compositions', {
      name: 'outage',
      groups: { language: { weights: { en: 1 } } },
    });
    await until('node B to know it', async () =>
      call(apiB.url, 'GET', '/v1/compositions').then((a) =>
        a.json.data.some((c: Json) => c.name === 'outage'),
      ),
    );
    await stop(redis);
    await sleep(300);
    for (const api of [apiA, apiB]) {
      const listed = await call(api.url, 'GET', '/v1/compositions/outage');
      assert.equal(listed.status, 200, JSON.stringify(listed.json));
      const change = await call(api.url, 'POST', '/v1/compositions', {
        name: 'outage',
        groups: { language: { weights: { de: 1 } } },
      });
      assert.equal(change.status, 503, JSON.stringify(change.json));
      assert.equal(change.json.error.code, 'QUEUE_UNAVAILABLE');
      const deleted = await call(api.url, 'DELETE', '/v1/compositions/outage');
      assert.equal(deleted.status, 503, JSON.stringify(deleted.json));
    }
    redis = await startRedis(redisPort, root);
    await until(
      'a change to work again',
      async () => {
        const change = await call(apiB.url, 'POST', '/v1/compositions', {
          name: 'outage',
          groups: { language: { weights: { de: 1 } } },
        });
        return change.status === 200;
      },
      15_000,
    );
    await until(
      'node A to serve version 2',
      async () => {
        const used = await call(apiA.url, 'POST', '/v1/infer', {
          inputs: TEXTS,
          composition: 'outage',
        });
        return used.status === 200 && used.json.composition.version === 2;
      },
      15_000,
    );
    for (const api of [apiA, apiB]) assert.ok(api.alive(), `an API node exited:\n${api.output()}`);
  });

  it('answers fit job ids through Redis on any node (404 for an unknown one)', async () => {
    const answer = await call(apiB.url, 'GET', '/v1/jobs/fit-00000000-0000-0000-0000-000000000000');
    assert.equal(answer.status, 404, JSON.stringify(answer.json));
    assert.equal(answer.json.error.code, 'JOB_NOT_FOUND');
  });
});
