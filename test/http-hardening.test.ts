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
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { PARSE_OFF_THREAD_BYTES } from '../src/http/json-body.js';
import { LONG_STRING, poolLongStrings } from '../src/http/json-body-worker.js';
import { Random } from '../src/util/random.js';
import {
  buildFixturePack,
  FIXTURE_TEXTS,
  randomAdapter,
  writeAdapterFolder,
} from './support/fixture-pack.js';
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
      for (const stage of ['tokenize', 'queue', 'forward']) {
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

describe('large JSON bodies, parsed off the HTTP thread', () => {
  let service: TestService;
  before(async () => {
    service = await start({
      limits: {
        maxInputs: 64,
        maxInputChars: 20_000,
        maxRequestChars: 1_000_000,
        bodyLimitBytes: 2 * 1024 * 1024,
      },
    });
  });
  after(() => service.close());

  const long = FIXTURE_TEXTS.join(' ').repeat(10);
  const inputs = Array.from({ length: 8 }, (_, i) => long.slice(i * 7, i * 7 + 3000 + i));
  const send = (url: string, text: string) =>
    service.app.inject({
      method: 'POST',
      url,
      payload: text,
      headers: { 'content-type': 'application/json' },
    });
  /** The same JSON, padded with whitespace past PARSE_OFF_THREAD_BYTES. */
  const padded = (value: object) => `${JSON.stringify(value)}${' '.repeat(PARSE_OFF_THREAD_BYTES)}`;

  it('answers a large body exactly as the same request parsed in place', async () => {
    const body = { inputs, return: ['embedding', 'scores'] };
    const small = JSON.stringify(body);
    assert.ok(small.length < PARSE_OFF_THREAD_BYTES);
    const [inPlace, offThread] = await Promise.all([
      send('/v1/infer', small),
      send('/v1/infer', padded(body)),
    ]);
    assert.equal(inPlace.statusCode, 200, inPlace.body);
    assert.equal(offThread.statusCode, 200, offThread.body);
    assert.deepEqual(offThread.json(), inPlace.json());
    const openai = await send('/v1/embeddings', padded({ model: 'fixture', input: inputs }));
    assert.equal(openai.statusCode, 200, openai.body);
    const kserve = await send('/v2/models/fixture/infer', padded(FAMILIES[2].body(inputs)));
    assert.equal(kserve.statusCode, 200, kserve.body);
  });

  it('refuses broken JSON and prototype keys in large bodies as in small ones', async () => {
    const cases = [
      `{"inputs": ["${'a'.repeat(PARSE_OFF_THREAD_BYTES)}"`,
      `{"inputs": ["x"], "__proto__": {"polluted": "${'a'.repeat(PARSE_OFF_THREAD_BYTES)}"}}`,
      `{"inputs": ["x"], "constructor": {"prototype": {"a": "${'a'.repeat(PARSE_OFF_THREAD_BYTES)}"}}}`,
    ];
    for (const text of cases) {
      for (const [url, code] of [
        [
          '/v1/infer',
          (r: LightMyRequestResponse) => r.json<{ error: { code: string } }>().error.code,
        ],
        [
          '/v1/embeddings',
          (r: LightMyRequestResponse) => r.json<{ error: { code: string } }>().error.code,
        ],
      ] as const) {
        const response = await send(url, text);
        assert.equal(response.statusCode, 400, `${url}: ${response.body.slice(0, 200)}`);
        assert.equal(code(response), 'INPUT_MALFORMED_JSON');
      }
      const kserve = await send('/v2/models/fixture/infer', text);
      assert.equal(kserve.statusCode, 400);
      assert.match(kserve.json<{ error: string }>().error, /not valid JSON/);
    }
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it('pools long strings out of a parsed value, in order, leaving the rest as it was', () => {
    const value = {
      a: 'x'.repeat(LONG_STRING),
      b: ['short', 'y'.repeat(LONG_STRING + 5), { c: 'z'.repeat(2 * LONG_STRING) }],
      d: 7,
    };
    const copy = structuredClone(value);
    const { pool, spans } = poolLongStrings(copy);
    assert.deepEqual(copy, { a: '', b: ['short', '', { c: '' }], d: 7 });
    assert.equal(pool.length, 4 * LONG_STRING + 5);
    const restored = spans.map(([path, start, end]) => [path, pool.slice(start, end)]);
    assert.deepEqual(
      restored.map(([path]) => path).sort(),
      [['a'], ['b', 1], ['b', 2, 'c']].sort(),
    );
    for (const [path, text] of restored) {
      let node: unknown = value;
      for (const key of path as (string | number)[]) node = (node as Record<string, unknown>)[key];
      assert.equal(text, node);
    }
  });
});

/**
 * Clients in processes of their own (as real clients are: their work is not the server's). With
 * `senders` > 0: that many loops posting the body in `bodyFile` until `ms` have passed, each
 * sending the next request when the last is answered; prints `{ outcomes }`. With 0: a probe
 * timing GET /health/live every 10 ms for `ms`; prints `{ latencies }`.
 */
const CLIENTS = `
  const { base, bodyFile, senders, ms } = JSON.parse(process.argv[1]);
  const body = bodyFile === '' ? '' : await (await import('node:fs/promises')).readFile(bodyFile);
  let stop = false;
  setTimeout(() => { stop = true; }, ms);
  const latencies = [];
  const outcomes = [];
  const probe = async () => {
    while (!stop) {
      const t0 = performance.now();
      const response = await fetch(base + '/health/live');
      await response.text();
      latencies.push(performance.now() - t0);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  const send = async () => {
    while (!stop) {
      const response = await fetch(base + '/v1/infer', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      const json = await response.json();
      outcomes.push({
        status: response.status,
        truncated: (json.results ?? []).filter((r) => r.truncated).length,
        results: (json.results ?? []).length,
      });
    }
  };
  await (senders === 0 ? probe() : Promise.all(Array.from({ length: senders }, send)));
  process.stdout.write(JSON.stringify({ latencies, outcomes }));
`;

interface LoadOutcome {
  status: number;
  truncated: number;
  results: number;
}

function runClients(options: {
  base: string;
  bodyFile: string;
  senders: number;
  ms: number;
}): Promise<{ latencies: number[]; outcomes: LoadOutcome[] }> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', CLIENTS, JSON.stringify(options)],
      { timeout: options.ms + 120_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) =>
        error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(JSON.parse(stdout)),
    );
  });
}

describe('the HTTP thread while requests of 200 inputs x 15,000 characters flow', () => {
  let service: TestService;
  let base: string;
  before(async () => {
    const demoSized = await buildFixturePack(join(root, 'demo-sized'), {
      seed: 17,
      hiddenSize: 256,
      layers: 4,
      heads: 4,
      maxLength: 128,
    });
    service = await start({
      packDir: demoSized,
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

  it('/health/live p99 stays under 50 ms, and every such request is answered, truncated', async (t) => {
    const long = FIXTURE_TEXTS.join(' ').repeat(20);
    const bigInputs = Array.from({ length: 200 }, (_, i) => long.slice(i, i + 15_000));
    const big = join(root, 'big-body.json');
    await writeFile(big, JSON.stringify({ inputs: bigInputs }));
    // The reference: the same flow of requests with ~600-character inputs (about max_length
    // tokens: the same engine work), so that only the 14,400 extra characters per input differ.
    const small = join(root, 'small-body.json');
    await writeFile(
      small,
      JSON.stringify({ inputs: Array.from({ length: 200 }, (_, i) => long.slice(i, i + 600)) }),
    );
    // Warm-up: the first answers of a route compile its serializers; that is not the measure.
    for (const warm of [['hello'], bigInputs.slice(0, 2)]) {
      const response = await fetch(`${base}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: warm }),
      });
      assert.equal(response.status, 200, await response.text());
    }
    // Interleaved phases, so that the machine's own noise (a shared 2-core VM) hits both alike;
    // the HTTP thread's own event-loop delay is recorded beside the probe's latency.
    const runs = { big: [] as number[], small: [] as number[], answered: [] as LoadOutcome[] };
    /** Per phase: the HTTP thread's event-loop delay p99 and max, ms. */
    const loop = { big: [] as number[][], small: [] as number[][] };
    for (let round = 0; round < 2; round++) {
      for (const kind of ['small', 'big'] as const) {
        const delay = monitorEventLoopDelay({ resolution: 1 });
        delay.enable();
        const [load, probe] = await Promise.all([
          runClients({ base, bodyFile: kind === 'big' ? big : small, senders: 2, ms: 3000 }),
          runClients({ base, bodyFile: '', senders: 0, ms: 3000 }),
        ]);
        delay.disable();
        loop[kind].push([delay.percentile(99) / 1e6, delay.max / 1e6]);
        runs[kind].push(...probe.latencies);
        if (kind === 'big') runs.answered.push(...load.outcomes);
        else for (const outcome of load.outcomes) assert.equal(outcome.status, 200);
      }
    }
    // Two clients had a request in flight the whole time (each sends the next on an answer);
    // every answer is the whole request, each input cut to the pack's max_length.
    assert.ok(runs.answered.length >= 4, `only ${runs.answered.length} big requests answered`);
    for (const outcome of runs.answered) {
      assert.deepEqual(outcome, { status: 200, truncated: 200, results: 200 });
    }
    const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)]!;
    const bigP99 = p99(runs.big);
    const smallP99 = p99(runs.small);
    const phases = (kind: 'big' | 'small') =>
      loop[kind].map(([p, max]) => `p99 ${p!.toFixed(1)}/max ${max!.toFixed(1)}`).join(', ');
    const said =
      `/health/live p99 ${bigP99.toFixed(1)} ms over ${runs.big.length} probes while ${runs.answered.length} big requests were answered ` +
      `(${smallP99.toFixed(1)} ms with small inputs); HTTP thread event-loop delay per phase, ms: ${phases('big')} ` +
      `(small inputs: ${phases('small')})`;
    t.diagnostic(said);
    assert.ok(runs.big.length > 100, said);
    // 50 ms; or, where this machine is so busy that the same flow of small requests already
    // pushes the probe past that, no worse than twice that reference. (The stall the issue
    // measured, the whole text tokenized on the HTTP thread, was 2,170 ms.)
    assert.ok(bigP99 < Math.max(50, 2 * smallP99), said);
  });
});
