/**
 * The HTTP service against the findings of issue 12, on a fixture pack with real engine workers:
 * - one request pipeline: limits, deadline, client-gone and server-timing behave the same on the
 *   native, OpenAI and KServe inference routes;
 * - routing fields that pin different adapters in one group are a 422 naming both;
 * - admin routes authenticate before they read the body, and every route that takes an adapter
 *   id checks it (so ids, and the metric labels they become, stay bounded);
 * - requests with different pins, k and tasks that share one engine batch get the answers they
 *   get alone;
 * - the HTTP thread stays responsive while requests of 200 inputs x 15,000 characters flow.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import type { LightMyRequestResponse } from 'fastify';
import {
  buildFixturePack,
  FIXTURE_TEXTS,
  randomAdapter,
  writeAdapterFolder,
} from '../src/pack/fixture.js';
import { Random } from '../src/util/random.js';
import {
  buildTestService,
  keepEngineBusy,
  maxAbsDiff,
  type TestService,
  type TestServiceOptions,
  until,
} from './support/listening-app.js';
import { metricSum } from './support/processes.js';

const TEXTS = FIXTURE_TEXTS.slice(0, 3);
const ADMIN_KEY = 'hardening-admin-key-0123456789';

let root: string;
let packDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-hardening-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 13 });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function start(options: Partial<TestServiceOptions> = {}): Promise<TestService> {
  const service = await buildTestService({
    packDir,
    adapterRoot: join(root, 'adapters'),
    ...options,
    limits: {
      maxInputs: 8,
      maxInputChars: 400,
      maxRequestChars: 1000,
      requestTimeoutMs: 30_000,
      bodyLimitBytes: 64 * 1024,
      ...options.limits,
    },
  });
  await service.app.ready();
  return service;
}

const metrics = async (service: TestService) => (await service.app.inject('/metrics')).body;

/** An inference request of each route family, and how each tells its error code. */
const FAMILIES = [
  {
    name: 'native',
    url: '/v1/infer',
    body: (texts: string[]) => ({ inputs: texts }),
    code: (body: { error: { code: string } }) => body.error.code,
  },
  {
    name: 'openai',
    url: '/v1/embeddings',
    body: (texts: string[]) => ({ model: 'fixture', input: texts }),
    code: (body: { error: { code: string } }) => body.error.code,
  },
  {
    name: 'kserve',
    url: '/v2/models/fixture/infer',
    body: (texts: string[]) => ({
      inputs: [{ name: 'text', shape: [texts.length], datatype: 'BYTES', data: texts }],
    }),
    // KServe errors are a message only: tell the code by what the message says.
    code: (body: { error: string }) => body.error,
  },
] as const;

function post(service: TestService, url: string, payload: object): Promise<LightMyRequestResponse> {
  return service.app.inject({ method: 'POST', url, payload });
}

describe('one request pipeline for every route family', () => {
  let service: TestService;
  before(async () => {
    service = await start();
  });
  after(() => service.close());

  for (const family of FAMILIES) {
    it(`${family.name}: answers carry server-timing with every stage`, async () => {
      const response = await post(service, family.url, family.body(TEXTS));
      assert.equal(response.statusCode, 200, response.body);
      const timing = String(response.headers['server-timing']);
      for (const stage of ['tokenize', 'queue', 'backbone', 'mixture']) {
        assert.match(timing, new RegExp(`${stage};dur=\\d+\\.\\d\\d`), timing);
      }
    });

    it(`${family.name}: more characters in all than MAX_REQUEST_CHARS is a 413 before any work`, async () => {
      const before = metricSum(await metrics(service), 'moe_stage_duration_seconds_count', {
        stage: 'tokenize',
      });
      const texts = Array.from({ length: 3 }, () => 'word '.repeat(80)); // 3 x 400 > 1000
      const response = await post(service, family.url, family.body(texts));
      assert.equal(response.statusCode, 413, response.body);
      const said = family.code(response.json());
      if (family.name === 'kserve') assert.match(said, /1200 characters in all.*MAX_REQUEST_CHARS/);
      else assert.equal(said, 'INPUT_TOTAL_TOO_LONG');
      const tokenized = metricSum(await metrics(service), 'moe_stage_duration_seconds_count', {
        stage: 'tokenize',
      });
      assert.equal(tokenized, before, 'the request was tokenized');
    });
  }

  it('kserve: the timeout parameter shortens the deadline (504)', async () => {
    const busy = await keepEngineBusy(service.model);
    try {
      const response = await post(service, '/v2/models/fixture/infer', {
        parameters: { timeout: 1000 }, // µs
        ...FAMILIES[2].body(TEXTS),
      });
      assert.equal(response.statusCode, 504, response.body);
      assert.match(response.json<{ error: string }>().error, /REQUEST_TIMEOUT_MS|deadline/);
    } finally {
      await busy.stop();
    }
  });
});

describe('the deadline, for every route family', () => {
  let service: TestService;
  before(async () => {
    service = await start({ limits: { requestTimeoutMs: 1 } });
  });
  after(() => service.close());

  it('answers 504 REQUEST_TIMEOUT on each family when the engine cannot take the request in time', async () => {
    const busy = await keepEngineBusy(service.model);
    try {
      for (const family of FAMILIES) {
        const response = await post(service, family.url, family.body(TEXTS));
        assert.equal(response.statusCode, 504, `${family.name}: ${response.body}`);
      }
    } finally {
      await busy.stop();
    }
    const text = await metrics(service);
    assert.equal(metricSum(text, 'moe_requests_rejected_total', { reason: 'timeout' }), 3);
    assert.equal(metricSum(text, 'moe_batch_size_items_count'), 0, 'timed-out items ran');
  });
});

describe('clients that go away, for every route family', () => {
  let service: TestService;
  let base: string;
  before(async () => {
    service = await start();
    base = await service.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(async () => {
    const closing = service.close();
    service.app.server.closeAllConnections();
    await closing;
  });

  it('drops the queued items of each family when its client leaves', async () => {
    const busy = await keepEngineBusy(service.model);
    const controllers = FAMILIES.map(() => new AbortController());
    const pending = FAMILIES.map((family, i) =>
      fetch(`${base}${family.url}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(family.body([TEXTS[i]!])),
        signal: controllers[i]!.signal,
      }).then(
        (response) => `answered ${response.status}`,
        (error: Error) => error.name,
      ),
    );
    const scrape = async () => (await fetch(`${base}/metrics`)).text();
    try {
      await until('3 queued items', async () => {
        return metricSum(await scrape(), 'moe_queue_depth_items') === FAMILIES.length;
      });
      for (const controller of controllers) controller.abort();
      assert.deepEqual(await Promise.all(pending), ['AbortError', 'AbortError', 'AbortError']);
      await until('3 client_gone drops', async () => {
        const text = await scrape();
        return metricSum(text, 'moe_requests_rejected_total', { reason: 'client_gone' }) === 3;
      });
    } finally {
      await busy.stop();
    }
    assert.equal(metricSum(await scrape(), 'moe_batch_size_items_count'), 0, 'dropped items ran');
  });
});

describe('conflicting routing: 422 ROUTING_CONFLICT naming both fields', () => {
  let service: TestService;
  before(async () => {
    service = await start();
  });
  after(() => service.close());

  const conflict = (response: LightMyRequestResponse) => {
    assert.equal(response.statusCode, 422, response.body);
    const { error } = response.json<{
      error: { code: string; message: string; details: Record<string, unknown> };
    }>();
    assert.equal(error.code, 'ROUTING_CONFLICT');
    return error;
  };

  it('a task whose head pins one adapter, and adapters pinning another in that group', async () => {
    const error = conflict(
      await post(service, '/v1/infer', {
        inputs: TEXTS,
        task: 'topic',
        adapters: { task: 'sentiment' },
      }),
    );
    assert.match(
      error.message,
      /group 'task'.*task 'topic' runs through task=topic.*adapters\.task asks for sentiment/,
    );
    assert.deepEqual(error.details.conflict, ['task', 'adapters.task']);
    assert.equal(error.details.field, 'adapters.task');
  });

  it('language and adapters.language disagreeing', async () => {
    const error = conflict(
      await post(service, '/v1/infer', {
        inputs: TEXTS,
        language: 'en',
        adapters: { language: 'de' },
      }),
    );
    assert.deepEqual(error.details.conflict, ['language', 'adapters.language']);
    assert.match(error.message, /language asks for en.*adapters\.language asks for de/);
  });

  it('agreeing fields are fine', async () => {
    const response = await post(service, '/v1/infer', {
      inputs: TEXTS,
      task: 'topic',
      adapters: { task: 'topic' },
      language: 'de',
    });
    assert.equal(response.statusCode, 200, response.body);
    for (const result of response.json<{ results: { routing: Record<string, unknown> }[] }>()
      .results) {
      assert.deepEqual(result.routing.language, [{ adapter: 'de', weight: 1 }]);
    }
  });

  it('a model id that pins one adapter and a routing field that pins another (OpenAI, KServe)', async () => {
    const openai = await post(service, '/v1/embeddings', {
      model: 'fixture:sentiment',
      input: TEXTS,
      routing: { task: 'topic' },
    });
    assert.equal(openai.statusCode, 422, openai.body);
    const body = openai.json<{ error: { code: string; param: string; message: string } }>();
    assert.equal(body.error.code, 'ROUTING_CONFLICT');
    assert.equal(body.error.param, 'routing.task');
    assert.match(body.error.message, /model 'fixture:sentiment' pins task=sentiment/);
    const kserve = await post(service, '/v2/models/fixture:de/infer', {
      parameters: { language: 'fr' },
      ...FAMILIES[2].body(TEXTS),
    });
    assert.equal(kserve.statusCode, 422, kserve.body);
    assert.match(
      kserve.json<{ error: string }>().error,
      /pins language=de, but language asks for fr/,
    );
  });
});

describe('admin routes: the key before the body; adapter ids checked on every route', () => {
  let guarded: TestService;
  let disabled: TestService;
  let adapterRoot: string;
  before(async () => {
    adapterRoot = join(root, 'admin-adapters');
    const adapter = randomAdapter(new Random(5), {
      id: 'extra',
      group: 'language',
      hiddenSize: 32,
      rank: 4,
    });
    await writeAdapterFolder(join(adapterRoot, 'extra'), adapter);
    guarded = await start({ adminApiKey: ADMIN_KEY, adapterRoot });
    disabled = await start({ adapterRoot });
  });
  after(async () => {
    await guarded.close();
    await disabled.close();
  });

  const BAD_BODIES = [
    { method: 'POST', url: '/v1/adapters', payload: { bogus: 1 } },
    { method: 'POST', url: '/v1/adapters', payload: '{"path": ', contentType: 'application/json' },
    { method: 'DELETE', url: '/v1/adapters/has%20space' },
    {
      method: 'POST',
      url: '/v2/repository/models/fixture:extra/load',
      payload: { parameters: { nope: 1 } },
    },
    { method: 'POST', url: '/v2/repository/models/fixture:extra/unload', payload: [1, 2] },
  ] as const;

  const send = (service: TestService, request: (typeof BAD_BODIES)[number], key?: string) =>
    service.app.inject({
      method: request.method,
      url: request.url,
      ...('payload' in request ? { payload: request.payload as string | object } : {}),
      headers: {
        ...('contentType' in request ? { 'content-type': request.contentType } : {}),
        ...(key === undefined ? {} : { authorization: `Bearer ${key}` }),
      },
    });

  it('without the key: 401 however bad the body, and 403 where admin is disabled', async () => {
    for (const request of BAD_BODIES) {
      for (const key of [undefined, 'wrong-key']) {
        const response = await send(guarded, request, key);
        assert.equal(
          response.statusCode,
          401,
          `${request.method} ${request.url}: ${response.body}`,
        );
      }
      const off = await send(disabled, request, ADMIN_KEY);
      assert.equal(off.statusCode, 403, `${request.method} ${request.url}: ${off.body}`);
    }
  });

  it('with the key, the body is validated as before (4xx naming the problem)', async () => {
    for (const request of BAD_BODIES) {
      const response = await send(guarded, request, ADMIN_KEY);
      assert.ok(
        response.statusCode === 400 || response.statusCode === 415,
        `${request.method} ${request.url}: ${response.statusCode} ${response.body}`,
      );
    }
  });

  it('KServe load and unload refuse ids outside the adapter id rules, registering nothing', async () => {
    const names = [
      'fixture:has space',
      `fixture:${'a'.repeat(65)}`,
      'fixture:-lead',
      'fixture:x%2Fy',
      'fixture:',
    ];
    for (const name of names) {
      for (const action of ['load', 'unload']) {
        const response = await guarded.app.inject({
          method: 'POST',
          url: `/v2/repository/models/${encodeURIComponent(name)}/${action}`,
          payload: action === 'load' ? { parameters: { path: 'extra' } } : {},
          headers: { authorization: `Bearer ${ADMIN_KEY}` },
        });
        assert.equal(response.statusCode, 400, `${action} ${name}: ${response.body}`);
        assert.match(response.json<{ error: string }>().error, /not a valid adapter id/);
      }
    }
    const listed = (await guarded.app.inject('/v1/adapters')).json<{ data: { id: string }[] }>();
    assert.deepEqual(
      listed.data
        .map((a) => a.id)
        .filter((id) => !['en', 'de', 'fr', 'ru', 'topic', 'sentiment'].includes(id)),
      [],
    );
    // A valid id loads, so the refusals above were about the id.
    const ok = await guarded.app.inject({
      method: 'POST',
      url: '/v2/repository/models/fixture:extra/load',
      payload: { parameters: { path: 'extra' } },
      headers: { authorization: `Bearer ${ADMIN_KEY}` },
    });
    assert.equal(ok.statusCode, 200, ok.body);
  });

  it('the native unload route checks the id too', async () => {
    const response = await guarded.app.inject({
      method: 'DELETE',
      url: `/v1/adapters/${'b'.repeat(65)}`,
      headers: { authorization: `Bearer ${ADMIN_KEY}` },
    });
    assert.equal(response.statusCode, 400, response.body);
    assert.equal(
      response.json<{ error: { details: { field: string } } }>().error.details.field,
      'id',
    );
  });
});

describe('requests with different routing that share one engine batch', () => {
  let service: TestService;
  before(async () => {
    service = await start();
  });
  after(() => service.close());

  /** Pins, k, excludes and tasks all different; 7 items. */
  const MIXED = [
    { inputs: [TEXTS[0]!] },
    { inputs: [TEXTS[0]!], language: 'de' },
    { inputs: [TEXTS[1]!], top_k: 2 },
    { inputs: [TEXTS[2]!], task: 'topic' },
    { inputs: [TEXTS[1]!], task: 'sentiment', exclude: ['en'] },
    { inputs: [TEXTS[0]!, TEXTS[2]!], adapters: { task: 'sentiment' }, top_k: 3 },
  ];
  type Result = {
    routing: Record<string, { adapter: string; weight: number }[]>;
    outputs: Record<string, { label: string; score: number; scores: Record<string, number> }>;
    embedding: number[];
    tokens: number;
  };
  const ask = async (body: object) => {
    const response = await post(service, '/v1/infer', { ...body, return: ['embedding', 'scores'] });
    assert.equal(response.statusCode, 200, response.body);
    return response.json<{ results: Result[] }>().results;
  };

  it('answers each as it answers the same request sent alone', async () => {
    const items = MIXED.reduce((n, body) => n + body.inputs.length, 0);
    const [last, ...first] = [MIXED.at(-1)!, ...MIXED.slice(0, -1)];
    const waiting = items - last.inputs.length;
    // All but the last request queue in the batcher while the engine is kept busy outside it;
    // the last one, sent once the engine is free, wakes the batcher, which then takes every
    // queued item into one batch (7 items < MAX_BATCH_ITEMS).
    const busy = await keepEngineBusy(service.model);
    let pending: Promise<Result[]>[];
    try {
      pending = first.map((body) => ask(body));
      await until(`${waiting} queued items`, async () => {
        return metricSum(await metrics(service), 'moe_queue_depth_items') === waiting;
      });
    } finally {
      await busy.stop();
    }
    pending.push(ask(last));
    const together = await Promise.all(pending);
    const text = await metrics(service);
    assert.equal(metricSum(text, 'moe_batch_size_items_count'), 1, 'not one batch');
    assert.equal(metricSum(text, 'moe_batch_size_items_sum'), items);

    const alone: Result[][] = [];
    for (const body of MIXED) alone.push(await ask(body));
    assert.equal(metricSum(await metrics(service), 'moe_batch_size_items_count'), 1 + MIXED.length);
    for (const [r, body] of MIXED.entries()) {
      for (const [i, mine] of together[r]!.entries()) {
        const single = alone[r]![i]!;
        const where = `${JSON.stringify(body)} input ${i}`;
        assert.equal(mine.tokens, single.tokens, where);
        assert.deepEqual(Object.keys(mine.routing), Object.keys(single.routing), where);
        for (const [group, chosen] of Object.entries(single.routing)) {
          assert.deepEqual(
            mine.routing[group]!.map((c) => c.adapter),
            chosen.map((c) => c.adapter),
            where,
          );
          assert.ok(
            maxAbsDiff(
              mine.routing[group]!.map((c) => c.weight),
              chosen.map((c) => c.weight),
            ) < 1e-5,
            where,
          );
        }
        assert.deepEqual(
          Object.keys(mine.outputs).sort(),
          Object.keys(single.outputs).sort(),
          where,
        );
        for (const [task, out] of Object.entries(single.outputs)) {
          assert.equal(mine.outputs[task]!.label, out.label, where);
          assert.ok(
            maxAbsDiff(Object.values(mine.outputs[task]!.scores), Object.values(out.scores)) < 1e-4,
            where,
          );
        }
        assert.ok(maxAbsDiff(mine.embedding, single.embedding) < 1e-4, where);
      }
    }
    // The routings really differ, so one batch carried different work for each request.
    const languages = together.map((results) => JSON.stringify(results[0]!.routing.language));
    assert.ok(new Set(languages).size >= 3, languages.join(' | '));
    assert.deepEqual(Object.keys(together[3]![0]!.outputs), ['topic']);
    assert.deepEqual(together[1]![0]!.routing.language, [{ adapter: 'de', weight: 1 }]);
    assert.equal(together[2]![0]!.routing.language!.length, 2);
    assert.ok(together[4]![0]!.routing.language!.every((c) => c.adapter !== 'en'));
  });
});

/**
 * The load, from worker threads of their own (so their work is not the server's delay): `senders`
 * loops posting one prepared body each until stopped, and a probe timing GET /health/live every
 * 10 ms. Serialised with toString(): uses nothing from this module's scope.
 */
function runLoad(): void {
  const { parentPort, workerData } =
    require('node:worker_threads') as typeof import('node:worker_threads');
  const { base, role, body, senders } = workerData as {
    base: string;
    role: 'probe' | 'send';
    body: string;
    senders: number;
  };
  let stop = false;
  parentPort!.once('message', () => {
    stop = true;
  });
  if (role === 'probe') {
    const latencies: number[] = [];
    (async () => {
      while (!stop) {
        const t0 = performance.now();
        const response = await fetch(`${base}/health/live`);
        await response.text();
        latencies.push(performance.now() - t0);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      parentPort!.postMessage(latencies);
    })();
    return;
  }
  const outcomes: { status: number; truncated: number; results: number }[] = [];
  const bytes = Buffer.from(body); // encoded once: the sender's own work is not the measure
  const loop = async () => {
    while (!stop) {
      const response = await fetch(`${base}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: bytes,
      });
      const json = (await response.json()) as { results?: { truncated: boolean }[] };
      outcomes.push({
        status: response.status,
        truncated: json.results?.filter((r) => r.truncated).length ?? 0,
        results: json.results?.length ?? 0,
      });
    }
  };
  Promise.all(Array.from({ length: senders }, loop)).then(() => parentPort!.postMessage(outcomes));
}

function startLoad(workerData: Record<string, unknown>) {
  const worker = new Worker(`(${runLoad.toString()})()`, { eval: true, workerData });
  const result = new Promise<unknown>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  return {
    async stop(): Promise<unknown> {
      worker.postMessage('stop');
      const value = await result;
      await worker.terminate();
      return value;
    },
  };
}

describe('the HTTP thread while requests of 200 inputs x 15,000 characters flow', () => {
  let service: TestService;
  let base: string;
  before(async () => {
    service = await start({
      limits: {
        maxInputs: 256,
        maxInputChars: 20_000,
        maxRequestChars: 4_000_000,
        bodyLimitBytes: 4 * 1024 * 1024,
        requestTimeoutMs: 120_000,
      },
      batching: { maxQueuedItems: 4096 },
    });
    base = await service.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(async () => {
    const closing = service.close();
    service.app.server.closeAllConnections();
    await closing;
  });

  it('/health/live p99 stays under 50 ms, and every such request is answered, truncated', async () => {
    const long = FIXTURE_TEXTS.join(' ').repeat(20);
    const inputs = Array.from({ length: 200 }, (_, i) => long.slice(i, i + 15_000));
    const body = JSON.stringify({ inputs });
    assert.ok(body.length > 3_000_000);
    // Warm-up: the first answers of a route compile its serializers; that is not the measure.
    for (const warm of [['hello'], inputs.slice(0, 2)]) {
      const response = await fetch(`${base}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: warm }),
      });
      assert.equal(response.status, 200, await response.text());
    }
    const sender = startLoad({ base, role: 'send', body, senders: 1 });
    const probe = startLoad({ base, role: 'probe', body: '', senders: 0 });
    await new Promise((resolve) => setTimeout(resolve, 8000));
    const latencies = (await probe.stop()) as number[];
    const outcomes = (await sender.stop()) as {
      status: number;
      truncated: number;
      results: number;
    }[];
    assert.ok(outcomes.length >= 4, `only ${outcomes.length} big requests answered in 8 s`);
    for (const outcome of outcomes)
      assert.deepEqual(outcome, { status: 200, truncated: 200, results: 200 });
    latencies.sort((a, b) => a - b);
    console.log(
      'TOP',
      latencies
        .slice(-12)
        .map((x) => x.toFixed(0))
        .join(' '),
      'n',
      latencies.length,
      'req',
      outcomes.length,
    );
    const p99 = latencies[Math.floor(latencies.length * 0.99)]!;
    assert.ok(latencies.length > 100, `${latencies.length} probes`);
    assert.ok(
      p99 < 50,
      `/health/live p99 ${p99.toFixed(1)} ms over ${latencies.length} probes (max ${latencies.at(-1)!.toFixed(1)})`,
    );
  });
});
