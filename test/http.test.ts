/**
 * The HTTP service end to end: `buildApp` over an EmbeddedInference over `Model.open` of a fixture
 * pack (real engine workers, real ORT sessions), driven through `app.inject`, and through a real
 * listening server where a socket has to go away. The OpenAPI document the app serves is the
 * contract every answer is checked against.
 */

import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import type { AppOptions } from '../src/app.js';
import type { EmbeddedOptions } from '../src/inference/service.js';
import { Metrics } from '../src/metrics.js';
import type { BottleneckAdapter } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import {
  buildFixturePack,
  FIXTURE_HEADS,
  randomAdapter,
  writeAdapterFolder,
} from './support/fixture-pack.js';
import {
  buildTestService,
  keepEngineBusy,
  type TestService,
  until,
} from './support/listening-app.js';

// --- helpers ------------------------------------------------------------------------------------

const TEXTS = [
  'The weather is good today and the market is open.',
  'Die Mannschaft hat das Spiel gewonnen, und die Fans waren froh.',
  "Je n'aime pas ce film ; l'histoire est mauvaise.",
];
const LANGUAGES = ['en', 'de', 'fr', 'ru']; // the fixture's language group, in order
const GROUPS = ['language', 'task'];
const TASKS = Object.keys(FIXTURE_HEADS);
const ADMIN_KEY = 'test-admin-key-0123456789';

const LIMITS: AppOptions['limits'] = {
  maxInputs: 8,
  maxInputChars: 400,
  maxRequestChars: 4000,
  requestTimeoutMs: 30_000,
  bodyLimitBytes: 16 * 1024,
};

let root: string;
let packDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-http-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 11 });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

type Service = TestService;

/** The app over a freshly opened model (one engine worker), as main.ts wires it. */
function startService(
  options: {
    limits?: Partial<AppOptions['limits']>;
    batching?: Partial<EmbeddedOptions>;
    adminApiKey?: string;
    adapterRoot?: string;
    logger?: AppOptions['logger'];
    allowFaultInjection?: boolean;
  } = {},
): Promise<Service> {
  return buildTestService({
    ...options,
    packDir,
    limits: { ...LIMITS, ...options.limits },
    adapterRoot: options.adapterRoot ?? join(root, 'adapters'),
  }).then(async (service) => {
    await service.app.ready();
    return service;
  });
}

function infer(app: FastifyInstance, body: unknown): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: '/v1/infer', payload: body as object });
}

interface Routed {
  adapter: string;
  weight: number;
}
interface ResultJson {
  routing: Record<string, Routed[]>;
  outputs: Record<string, { label: string; score: number; scores?: Record<string, number> }>;
  embedding?: number[];
  tokens: number;
  truncated: boolean;
}
interface InferJson {
  model: string;
  results: ResultJson[];
  usage: { input_tokens: number };
}
interface ErrorJson {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

/** Every group routed, best adapter first, weights positive and summing to 1. */
function assertRouting(result: ResultJson): void {
  assert.deepEqual(Object.keys(result.routing), GROUPS);
  for (const [group, chosen] of Object.entries(result.routing)) {
    assert.ok(chosen.length >= 1, `group ${group} routed nowhere`);
    const sum = chosen.reduce((s, r) => s + r.weight, 0);
    assert.ok(Math.abs(sum - 1) < 1e-5, `group ${group} weights sum to ${sum}`);
    for (let i = 0; i < chosen.length; i++) {
      assert.ok(chosen[i]!.weight > 0);
      if (i > 0) assert.ok(chosen[i - 1]!.weight >= chosen[i]!.weight, 'not best first');
    }
    assert.equal(new Set(chosen.map((r) => r.adapter)).size, chosen.length, 'adapter twice');
  }
}

function assertError(
  response: LightMyRequestResponse | { statusCode: number; json(): unknown },
  status: number,
  code: string,
): ErrorJson['error'] {
  const body = response.json() as ErrorJson;
  assert.equal(response.statusCode, status, JSON.stringify(body));
  assert.equal(body.error.code, code, body.error.message);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 10, `terse message: ${body.error.message}`);
  return body.error;
}

/** `tokenize;dur=0.12, queue;dur=3.40, ...` -> { tokenize: 0.12, queue: 3.4, ... } */
function serverTiming(header: string): Record<string, number> {
  const stages: Record<string, number> = {};
  for (const part of header.split(',')) {
    const [name, dur] = part.trim().split(';dur=');
    stages[name!] = Number(dur);
  }
  return stages;
}

/** Every (method, url) the app routes, read from fastify's route tree; HEAD twins left out. */
function appRoutes(app: FastifyInstance): { method: string; url: string }[] {
  const routes: { method: string; url: string }[] = [];
  const prefixes: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const match = /^(.*?)[├└]── (\S+) \(([^)]+)\)/.exec(line);
    if (match === null) continue;
    const depth = match[1]!.length / 4;
    prefixes.length = depth;
    prefixes.push(match[2]!);
    const url = prefixes.join('');
    for (const method of match[3]!.split(',').map((m) => m.trim())) {
      if (method !== 'HEAD') routes.push({ method, url });
    }
  }
  return routes;
}

interface OpenApiDoc {
  openapi: string;
  paths: Record<string, Record<string, OpenApiOperation>>;
  components?: { schemas?: Record<string, unknown> };
}
interface OpenApiOperation {
  requestBody?: { content?: Record<string, { schema?: object }> };
  responses: Record<string, { content?: Record<string, { schema?: object }> }>;
}

/** Validators for the JSON answers the OpenAPI document describes; `$ref`s resolve in the doc. */
class Contract {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: true });
  private readonly cache = new Map<string, ValidateFunction>();

  constructor(readonly doc: OpenApiDoc) {
    this.ajv.addFormat(
      'date-time',
      (s: string) => /^\d{4}-\d\d-\d\dT/.test(s) && !Number.isNaN(Date.parse(s)),
    );
    this.ajv.addSchema(doc as object, 'openapi.json');
  }

  operation(method: string, url: string): OpenApiOperation | undefined {
    return this.doc.paths[templateOf(this.doc, url)]?.[method.toLowerCase()];
  }

  /** Assert `body` is what the document promises for this route and status. */
  check(method: string, url: string, status: number, body: unknown): void {
    const path = templateOf(this.doc, url);
    const operation = this.operation(method, url);
    assert.ok(operation, `${method} ${path} is not in /docs/json`);
    const response = operation.responses[String(status)];
    assert.ok(response, `${method} ${path} does not document status ${status}`);
    assert.ok(
      response.content?.['application/json']?.schema,
      `${method} ${path} ${status}: no schema`,
    );
    const key = `${method} ${path} ${status}`;
    let validate = this.cache.get(key);
    if (validate === undefined) {
      const pointer = [
        'paths',
        path,
        method.toLowerCase(),
        'responses',
        String(status),
        'content',
        'application/json',
        'schema',
      ]
        .map((part) => part.replaceAll('~', '~0').replaceAll('/', '~1'))
        .join('/');
      validate = this.ajv.compile({ $ref: `openapi.json#/${pointer}` });
      this.cache.set(key, validate);
    }
    assert.ok(validate(body), `${key}: ${this.ajv.errorsText(validate.errors)}`);
  }
}

/** The path template of the document that `url` matches: `/v1/adapters/en` -> `/v1/adapters/{id}`. */
function templateOf(doc: OpenApiDoc, url: string): string {
  const path = url.split('?')[0]!.replace(/:(\w+)/g, '{$1}');
  if (doc.paths[path] !== undefined) return path;
  const match = Object.keys(doc.paths).find((template) =>
    new RegExp(`^${template.replace(/\{\w+\}/g, '[^/]+')}$`).test(path),
  );
  return match ?? path;
}

/** A sample of the Prometheus text, summed over the series whose labels include `labels`. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  let found = false;
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const have = Object.fromEntries(
      [...(match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      total += Number(match[3]);
      found = true;
    }
  }
  return found ? total : 0;
}

// --- tests --------------------------------------------------------------------------------------

describe('happy paths, checked against the OpenAPI document', () => {
  let service: Service;
  let app: FastifyInstance;
  let contract: Contract;
  before(async () => {
    service = await startService();
    app = service.app;
    const docs = await app.inject('/docs/json');
    assert.equal(docs.statusCode, 200);
    contract = new Contract(docs.json() as OpenApiDoc);
  });
  after(() => service.close());

  /** POST /v1/infer, assert 200 and the documented shape, and return the body. */
  async function ok(body: object): Promise<InferJson> {
    const response = await infer(app, body);
    assert.equal(response.statusCode, 200, response.body);
    const json = response.json() as InferJson;
    contract.check('POST', '/v1/infer', 200, json);
    return json;
  }

  it('serves an OpenAPI 3 document with every route, its body schema and its answer schema', () => {
    const { doc } = contract;
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    // Every route of the app (swagger-ui's own /docs routes aside), whichever family it is in.
    const routes = appRoutes(app).filter((r) => !r.url.startsWith('/docs'));
    const listed = routes.map((r) => `${r.method} ${r.url}`);
    for (const route of [
      'POST /v1/infer',
      'GET /v1/models',
      'GET /v1/adapters',
      'POST /v1/adapters',
      'DELETE /v1/adapters/:id',
      'GET /health/live',
      'GET /health/ready',
      'GET /metrics',
    ]) {
      assert.ok(listed.includes(route), `the route tree lacks ${route}: ${listed.join(', ')}`);
    }
    for (const { method, url } of routes) {
      const operation = contract.operation(method, url);
      assert.ok(operation, `${method} ${url} has no entry in /docs/json`);
      if (method === 'POST') {
        const body = Object.values(operation.requestBody?.content ?? {});
        assert.ok(
          body.length > 0 && body.every((c) => c.schema),
          `${method} ${url}: no body schema`,
        );
      }
      // The success answer (200, or 202 for a job) has a schema, JSON or Prometheus text.
      const success = Object.entries(operation.responses).filter(([status]) =>
        /^2\d\d$/.test(status),
      );
      assert.ok(success.length > 0, `${method} ${url}: no success answer documented`);
      for (const [status, response] of success) {
        const content = Object.values(response.content ?? {});
        assert.ok(
          content.length > 0 && content.every((c) => c.schema),
          `${method} ${url}: ${status} has no schema`,
        );
      }
    }
  });

  it('answers inputs in order with routing for every group, both task outputs, no extras', async () => {
    const json = await ok({ inputs: TEXTS });
    assert.equal(json.model, 'fixture');
    assert.equal(json.results.length, TEXTS.length);
    let tokens = 0;
    for (const result of json.results) {
      assertRouting(result);
      assert.equal(result.routing.language!.length, 1); // default_k 1
      assert.deepEqual(result.routing.task, [{ adapter: 'topic', weight: 1 }]); // ungated default
      assert.deepEqual(Object.keys(result.outputs).sort(), [...TASKS].sort());
      for (const [task, out] of Object.entries(result.outputs)) {
        assert.ok((FIXTURE_HEADS as Record<string, readonly string[]>)[task]!.includes(out.label));
        assert.ok(out.score > 0 && out.score <= 1);
        assert.equal(out.scores, undefined);
      }
      assert.equal(result.embedding, undefined);
      assert.ok(result.tokens > 2);
      assert.equal(result.truncated, false);
      tokens += result.tokens;
    }
    assert.equal(json.usage.input_tokens, tokens);
    // The same text alone gets the same answer (order is kept, batching changes nothing).
    const alone = await ok({ inputs: [TEXTS[1]!] });
    assert.deepEqual(
      alone.results[0]!.routing.language!.map((r) => r.adapter),
      json.results[1]!.routing.language!.map((r) => r.adapter),
    );
    assert.equal(alone.results[0]!.outputs.topic!.label, json.results[1]!.outputs.topic!.label);
  });

  it('returns the embedding and every score when asked', async () => {
    const json = await ok({ inputs: TEXTS, return: ['embedding', 'scores'] });
    for (const result of json.results) {
      assertRouting(result);
      const embedding = result.embedding!;
      assert.equal(embedding.length, service.model.pack.hiddenSize);
      const norm = Math.sqrt(embedding.reduce((s, x) => s + x * x, 0));
      assert.ok(Math.abs(norm - 1) < 1e-4, `embedding norm ${norm}`);
      for (const [task, out] of Object.entries(result.outputs)) {
        const scores = out.scores!;
        assert.deepEqual(Object.keys(scores), [
          ...(FIXTURE_HEADS as Record<string, readonly string[]>)[task]!,
        ]);
        const sum = Object.values(scores).reduce((s, x) => s + x, 0);
        assert.ok(Math.abs(sum - 1) < 1e-5, `${task} scores sum to ${sum}`);
        assert.equal(scores[out.label], out.score);
        assert.equal(out.score, Math.max(...Object.values(scores)));
      }
    }
  });

  it("runs token-id inputs exactly as given: with the specials a text gets, the text's answer", async () => {
    const texts = service.model.tokenizer;
    const withSpecials = (await texts.encodeAll(TEXTS, 'truncate')).map((e) => Array.from(e.ids));
    const fromText = await ok({ inputs: TEXTS, return: ['embedding'] });
    const fromIds = await ok({ inputs: withSpecials, return: ['embedding'] });
    fromIds.results.forEach((result, i) => {
      assert.equal(result.tokens, withSpecials[i]!.length);
      const expected = fromText.results[i]!.embedding!;
      const diff = Math.max(...result.embedding!.map((v, j) => Math.abs(v - expected[j]!)));
      assert.ok(diff < 1e-5, `input ${i}: ${diff}`);
    });
    // Without the specials nothing is added: other tokens, another embedding.
    const bare = await ok({ inputs: [withSpecials[0]!.slice(1, -1)], return: ['embedding'] });
    assert.equal(bare.results[0]!.tokens, withSpecials[0]!.length - 2);
    const diff = Math.max(
      ...bare.results[0]!.embedding!.map((v, j) =>
        Math.abs(v - fromText.results[0]!.embedding![j]!),
      ),
    );
    assert.ok(diff > 1e-3);
  });

  it('keeps only the task asked for, with the adapter its head pins', async () => {
    const topic = await ok({ inputs: [TEXTS[0]!], task: 'topic' });
    assert.deepEqual(Object.keys(topic.results[0]!.outputs), ['topic']);
    assert.deepEqual(topic.results[0]!.routing.task, [{ adapter: 'topic', weight: 1 }]);
    const sentiment = await ok({ inputs: [TEXTS[0]!], task: 'sentiment', return: ['scores'] });
    assert.deepEqual(Object.keys(sentiment.results[0]!.outputs), ['sentiment']);
    assert.deepEqual(Object.keys(sentiment.results[0]!.outputs.sentiment!.scores!), [
      'negative',
      'positive',
    ]);
  });

  it('pins adapters by language and by group', async () => {
    const byLanguage = await ok({ inputs: TEXTS, language: 'de' });
    for (const result of byLanguage.results) {
      assertRouting(result);
      assert.deepEqual(result.routing.language, [{ adapter: 'de', weight: 1 }]);
    }
    const byGroup = await ok({ inputs: TEXTS, adapters: { language: 'ru', task: 'sentiment' } });
    for (const result of byGroup.results) {
      assert.deepEqual(result.routing, {
        language: [{ adapter: 'ru', weight: 1 }],
        task: [{ adapter: 'sentiment', weight: 1 }],
      });
    }
  });

  it('mixes top_k adapters, never an excluded one', async () => {
    const excluded = await ok({ inputs: TEXTS, exclude: ['en', 'de'], top_k: 2 });
    for (const result of excluded.results) {
      assertRouting(result);
      assert.deepEqual(result.routing.language!.map((r) => r.adapter).sort(), ['fr', 'ru']);
    }
    const all = await ok({ inputs: TEXTS, top_k: LANGUAGES.length });
    for (const result of all.results) {
      assertRouting(result);
      assert.deepEqual(
        result.routing.language!.map((r) => r.adapter).sort(),
        [...LANGUAGES].sort(),
      );
      assert.deepEqual(result.routing.task, [{ adapter: 'topic', weight: 1 }]); // pinned groups keep k 1
    }
  });

  it('says where the time went in a server-timing header', async () => {
    const response = await infer(app, { inputs: [TEXTS[0]!] });
    assert.equal(response.statusCode, 200);
    const stages = serverTiming(String(response.headers['server-timing']));
    assert.deepEqual(Object.keys(stages), ['tokenize', 'queue', 'forward']);
    for (const [stage, ms] of Object.entries(stages))
      assert.ok(ms >= 0 && Number.isFinite(ms), `${stage}=${ms}`);
    assert.ok(stages.forward! > 0, 'the model ran in no time');
  });

  it('lists the model with its groups, adapters and tasks, then one composition per adapter', async () => {
    const response = await app.inject('/v1/models');
    assert.equal(response.statusCode, 200);
    const json = response.json();
    contract.check('GET', '/v1/models', 200, json);
    assert.equal(json.object, 'list');
    const [card, ...compositions] = json.data;
    assert.deepEqual(
      compositions.map((c: { id: string; parent: string; adapters: Record<string, string> }) => [
        c.id,
        c.parent,
        c.adapters,
      ]),
      [
        ...LANGUAGES.map((id) => [`fixture:${id}`, 'fixture', { language: id }]),
        ['fixture:topic', 'fixture', { task: 'topic' }],
        ['fixture:sentiment', 'fixture', { task: 'sentiment' }],
      ],
    );
    assert.equal(card.id, 'fixture');
    assert.equal(card.object, 'model');
    assert.equal(card.hidden_size, service.model.pack.hiddenSize);
    assert.equal(card.max_length, service.model.pack.maxLength);
    assert.deepEqual(card.groups, [
      { id: 'language', gated: true, default_k: 1, adapters: LANGUAGES },
      { id: 'task', gated: false, default_k: 1, adapters: ['topic', 'sentiment'] },
    ]);
    assert.deepEqual(card.tasks, [
      { id: 'topic', labels: [...FIXTURE_HEADS.topic], pin: { group: 'task', adapter: 'topic' } },
      { id: 'sentiment', labels: [...FIXTURE_HEADS.sentiment] },
    ]);
  });

  it('lists every adapter of the pack as ready', async () => {
    const response = await app.inject('/v1/adapters');
    assert.equal(response.statusCode, 200);
    const json = response.json();
    contract.check('GET', '/v1/adapters', 200, json);
    assert.deepEqual(
      json.data.map((a: { id: string; group: string }) => `${a.group}/${a.id}`),
      [...LANGUAGES.map((id) => `language/${id}`), 'task/topic', 'task/sentiment'],
    );
    for (const adapter of json.data) {
      assert.equal(adapter.state, 'ready');
      assert.equal(adapter.source, 'pack');
      assert.equal(adapter.gated, adapter.group === 'language');
    }
  });

  it('answers the health checks', async () => {
    const live = await app.inject('/health/live');
    assert.equal(live.statusCode, 200);
    contract.check('GET', '/health/live', 200, live.json());
    assert.deepEqual(live.json(), { status: 'ok' });
    const ready = await app.inject('/health/ready');
    assert.equal(ready.statusCode, 200);
    contract.check('GET', '/health/ready', 200, ready.json());
    assert.deepEqual(ready.json(), {
      ready: true,
      checks: { model_loaded: true, engine_workers_up: true, not_draining: true },
      execution_provider: 'cpu',
      execution_provider_requested: 'cpu',
      provider_fallback: false,
      provider_fallback_reason: null,
    });
  });

  it('exports every metric of src/metrics.ts, with the batches and stages just run', async () => {
    await ok({ inputs: TEXTS });
    const response = await app.inject('/metrics');
    assert.equal(response.statusCode, 200);
    assert.match(String(response.headers['content-type']), /^text\/plain/);
    const text = response.body;
    const names = (await new Metrics().registry.getMetricsAsJSON()).map((m) => m.name);
    assert.ok(
      names.includes('moe_batch_size_items') && names.includes('nodejs_eventloop_lag_seconds'),
    );
    for (const name of names) assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    assert.ok(metric(text, 'moe_batch_size_items_count') >= 1);
    assert.ok(metric(text, 'moe_batch_size_items_sum') >= TEXTS.length);
    assert.ok(metric(text, 'moe_stage_duration_seconds_count', { stage: 'forward' }) >= 1);
    assert.ok(metric(text, 'moe_stage_duration_seconds_sum', { stage: 'forward' }) > 0);
    assert.ok(metric(text, 'moe_input_tokens_total') > 0);
    assert.ok(
      metric(text, 'moe_http_requests_total', {
        route: '/v1/infer',
        method: 'POST',
        status: '200',
      }) >= 1,
    );
    assert.equal(metric(text, 'moe_adapters_loaded', { group: 'language' }), LANGUAGES.length);
    // The gate's own distribution, not the routed weights: k = 1 routing still has entropy.
    assert.ok(metric(text, 'moe_gate_entropy_nats_count', { group: 'language' }) >= 1);
    assert.ok(metric(text, 'moe_gate_entropy_nats_sum', { group: 'language' }) > 0);
    assert.ok(metric(text, 'moe_gate_margin_count', { group: 'language' }) >= 1);
    assert.ok(metric(text, 'moe_routed_experts_count', { group: 'language' }) >= 1);
    assert.equal(
      metric(text, 'moe_adapter_slots', { group: 'language', state: 'used' }),
      LANGUAGES.length,
    );
    assert.equal(metric(text, 'moe_execution_provider_info', { provider: 'cpu' }), 1);
    assert.match(text, /^nodejs_eventloop_lag_seconds \S+$/m);
  });
});

describe('bad requests: a 4xx with a stable code and a message, never a 5xx', () => {
  let service: Service;
  let contract: Contract;
  before(async () => {
    service = await startService(); // no admin key: admin routes are disabled
    contract = new Contract((await service.app.inject('/docs/json')).json() as OpenApiDoc);
  });
  after(() => service.close());

  interface BadCase {
    name: string;
    method?: 'GET' | 'POST' | 'PUT' | 'DELETE';
    url?: string;
    /** A JSON body (serialised by inject) or raw text. */
    body?: unknown;
    headers?: Record<string, string>;
    status: number;
    code: string;
    /** The field the answer must name (message and details.field). */
    field?: string;
    choices?: string[];
  }

  const text = (n: number) => 'word '.repeat(n).trim();
  const CASES: BadCase[] = [
    {
      name: 'inputs a string',
      body: { inputs: 'hello' },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'inputs',
    },
    {
      name: 'inputs [1]',
      body: { inputs: [1] },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'inputs[0]',
    },
    {
      name: 'top_k "2"',
      body: { inputs: ['hi'], top_k: '2' },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'top_k',
    },
    {
      name: 'top_k 1.5',
      body: { inputs: ['hi'], top_k: 1.5 },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'top_k',
    },
    {
      name: 'adapters an array',
      body: { inputs: ['hi'], adapters: ['en'] },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'adapters',
    },
    {
      name: 'exclude a string',
      body: { inputs: ['hi'], exclude: 'en' },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'exclude',
    },
    {
      name: 'return an unknown extra',
      body: { inputs: ['hi'], return: ['logits'] },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'return[0]',
    },
    {
      name: 'missing inputs',
      body: { task: 'topic' },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'inputs',
    },
    {
      name: 'empty inputs array',
      body: { inputs: [] },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'inputs',
    },
    {
      name: 'an empty string input',
      body: { inputs: ['fine', ''] },
      status: 422,
      code: 'INPUT_EMPTY',
      field: 'inputs[1]',
    },
    {
      name: 'a blank input',
      body: { inputs: ['   \n'] },
      status: 422,
      code: 'INPUT_EMPTY',
      field: 'inputs[0]',
    },
    {
      name: 'an input over MAX_INPUT_CHARS',
      body: { inputs: ['ok', 'x'.repeat(LIMITS.maxInputChars + 1)] },
      status: 413,
      code: 'INPUT_TOO_LONG',
      field: 'inputs[1]',
    },
    {
      name: 'too many inputs',
      body: { inputs: Array.from({ length: LIMITS.maxInputs + 1 }, () => 'hi') },
      status: 413,
      code: 'INPUT_TOO_MANY',
      field: 'inputs',
    },
    {
      name: 'a body over the body limit',
      body: { inputs: [text(LIMITS.bodyLimitBytes / 4)] },
      status: 413,
      code: 'INPUT_BODY_TOO_LARGE',
    },
    {
      name: 'an unknown adapter',
      body: { inputs: ['hi'], adapters: { language: 'xx' } },
      status: 422,
      code: 'ROUTING_UNKNOWN_ADAPTER',
      choices: LANGUAGES,
    },
    {
      name: 'an unknown group',
      body: { inputs: ['hi'], adapters: { dialect: 'en' } },
      status: 422,
      code: 'ROUTING_UNKNOWN_GROUP',
      choices: GROUPS,
    },
    {
      name: 'an unknown task',
      body: { inputs: ['hi'], task: 'translation' },
      status: 422,
      code: 'ROUTING_UNKNOWN_TASK',
      field: 'task',
      choices: TASKS,
    },
    {
      name: 'an unknown language',
      body: { inputs: ['hi'], language: 'tlh' },
      status: 422,
      code: 'ROUTING_UNKNOWN_ADAPTER',
      choices: LANGUAGES,
    },
    {
      name: 'excluding an unknown adapter',
      body: { inputs: ['hi'], exclude: ['xx'] },
      status: 422,
      code: 'ROUTING_UNKNOWN_ADAPTER',
      choices: [...LANGUAGES, 'topic', 'sentiment'],
    },
    {
      name: 'pinning an excluded adapter',
      body: { inputs: ['hi'], language: 'en', exclude: ['en'] },
      status: 422,
      code: 'ROUTING_NO_ADAPTER_LEFT',
    },
    {
      name: 'excluding every adapter of a group',
      body: { inputs: ['hi'], exclude: LANGUAGES },
      status: 422,
      code: 'ROUTING_NO_ADAPTER_LEFT',
    },
    {
      name: 'top_k 0',
      body: { inputs: ['hi'], top_k: 0 },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'top_k',
    },
    {
      name: 'top_k above the group size',
      body: { inputs: ['hi'], top_k: LANGUAGES.length + 1 },
      status: 422,
      code: 'ROUTING_INVALID_K',
    },
    {
      name: 'an unknown field',
      body: { inputs: ['hi'], temperature: 0.7 },
      status: 400,
      code: 'INPUT_INVALID',
      field: 'temperature',
    },
    {
      name: 'broken JSON',
      body: '{"inputs": ["hi"',
      headers: { 'content-type': 'application/json' },
      status: 400,
      code: 'INPUT_MALFORMED_JSON',
    },
    {
      name: 'a JSON array body',
      body: '["hi"]',
      headers: { 'content-type': 'application/json' },
      status: 400,
      code: 'INPUT_INVALID',
    },
    {
      name: 'content type text/plain',
      body: '{"inputs": ["hi"]}',
      headers: { 'content-type': 'text/plain' },
      status: 415,
      code: 'INPUT_UNSUPPORTED_MEDIA_TYPE',
    },
    {
      name: 'content type form',
      body: 'inputs=hi',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      status: 415,
      code: 'INPUT_UNSUPPORTED_MEDIA_TYPE',
    },
    {
      name: 'an empty JSON body',
      body: '',
      headers: { 'content-type': 'application/json' },
      status: 400,
      code: 'INPUT_MALFORMED_JSON',
    },
    { name: 'no body at all', status: 400, code: 'INPUT_INVALID' },
    {
      name: 'an unknown route',
      method: 'GET',
      url: '/v1/nothing',
      status: 404,
      code: 'ROUTE_NOT_FOUND',
    },
    {
      name: 'an unknown top-level route',
      url: '/infer',
      body: { inputs: ['hi'] },
      status: 404,
      code: 'ROUTE_NOT_FOUND',
    },
    {
      name: 'a wrong method',
      method: 'PUT',
      url: '/v1/infer',
      body: { inputs: ['hi'] },
      status: 404,
      code: 'ROUTE_NOT_FOUND',
    },
    {
      name: 'loading an adapter, admin disabled',
      url: '/v1/adapters',
      body: { path: 'extra' },
      status: 403,
      code: 'ADMIN_DISABLED',
    },
    {
      name: 'unloading an adapter, admin disabled',
      method: 'DELETE',
      url: '/v1/adapters/en',
      status: 403,
      code: 'ADMIN_DISABLED',
    },
    {
      name: 'admin disabled, even with a key',
      method: 'DELETE',
      url: '/v1/adapters/en',
      headers: { authorization: `Bearer ${ADMIN_KEY}` },
      status: 403,
      code: 'ADMIN_DISABLED',
    },
  ];

  for (const c of CASES) {
    it(`${c.name}: ${c.status} ${c.code}`, async () => {
      const method = c.method ?? 'POST';
      const url = c.url ?? '/v1/infer';
      const response = await service.app.inject({
        method,
        url,
        ...(c.headers === undefined ? {} : { headers: c.headers }),
        ...(c.body === undefined ? {} : { payload: c.body as string }),
      });
      const error = assertError(response, c.status, c.code);
      assert.match(String(response.headers['content-type']), /^application\/json/);
      if (c.field !== undefined) {
        assert.ok(
          error.message.includes(c.field),
          `message does not name ${c.field}: ${error.message}`,
        );
        assert.equal(error.details?.field, c.field);
      }
      if (c.choices !== undefined) assert.deepEqual(error.details?.choices, c.choices);
      if (contract.operation(method, url) !== undefined)
        contract.check(method, url, c.status, response.json());
    });
  }

  it('keeps answering after the whole corpus, and counted no 5xx', async () => {
    const response = await infer(service.app, { inputs: TEXTS });
    assert.equal(response.statusCode, 200, response.body);
    assertRouting((response.json() as InferJson).results[0]!);
    const text = (await service.app.inject('/metrics')).body;
    for (const status of ['500', '502', '503', '504']) {
      assert.equal(
        metric(text, 'moe_http_requests_total', { status }),
        0,
        `status ${status} counted`,
      );
    }
    assert.ok(metric(text, 'moe_http_requests_total', { status: '400' }) >= 10);
  });
});

describe('admin routes with a key: auth, adapter load, use and unload', () => {
  let service: Service;
  let adapterRoot: string;
  const rng = new Random(5);
  const bearer = { authorization: `Bearer ${ADMIN_KEY}` };
  const apiKey = { 'x-api-key': ADMIN_KEY };
  let contract: Contract;

  /** An adapter folder inside the adapter root, matching the pack's width and activation. */
  async function adapterFolder(name: string, id = name, rank = 3): Promise<string> {
    const dir = join(adapterRoot, name);
    await writeAdapterFolder(
      dir,
      randomAdapter(rng, {
        id,
        group: 'language',
        hiddenSize: service.model.pack.hiddenSize,
        rank,
        activation: (service.model.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
      }),
    );
    return dir;
  }

  before(async () => {
    adapterRoot = join(root, 'admin-adapters');
    await mkdir(adapterRoot, { recursive: true });
    service = await startService({ adminApiKey: ADMIN_KEY, adapterRoot });
    contract = new Contract((await service.app.inject('/docs/json')).json() as OpenApiDoc);
  });
  after(() => service.close());

  it('refuses a missing or wrong key with 401, and never echoes the key', async () => {
    const attempts: Record<string, string>[] = [
      {},
      { authorization: 'Bearer not-the-key' },
      { authorization: `Basic ${Buffer.from(`admin:${ADMIN_KEY}`).toString('base64')}` },
      { 'x-api-key': 'not-the-key' },
      { 'x-api-key': `${ADMIN_KEY}x` },
    ];
    for (const headers of attempts) {
      const load = await service.app.inject({
        method: 'POST',
        url: '/v1/adapters',
        headers,
        payload: { path: 'x' },
      });
      assertError(load, 401, 'ADMIN_UNAUTHORIZED');
      contract.check('POST', '/v1/adapters', 401, load.json());
      assert.ok(!load.body.includes(ADMIN_KEY) && !load.body.includes('not-the-key'));
      const unload = await service.app.inject({
        method: 'DELETE',
        url: '/v1/adapters/en',
        headers,
      });
      assertError(unload, 401, 'ADMIN_UNAUTHORIZED');
    }
    const listed = await service.app.inject('/v1/adapters');
    assert.equal(
      listed.json().data.length,
      LANGUAGES.length + 2,
      'a refused call changed the registry',
    );
  });

  it('takes the key as a bearer token and as x-api-key', async () => {
    for (const headers of [bearer, apiKey, { authorization: `bearer ${ADMIN_KEY}` }]) {
      const response = await service.app.inject({
        method: 'DELETE',
        url: '/v1/adapters/no-such',
        headers,
      });
      assertError(response, 404, 'ADAPTER_NOT_FOUND'); // authorised: the registry answered
    }
  });

  it('refuses adapter folders outside ADAPTER_ROOT', async () => {
    for (const path of ['../pack/adapters/language/en', '/etc', `${adapterRoot}/../pack`, '..']) {
      const response = await service.app.inject({
        method: 'POST',
        url: '/v1/adapters',
        headers: bearer,
        payload: { path },
      });
      const error = assertError(response, 403, 'ADAPTER_PATH_FORBIDDEN');
      contract.check('POST', '/v1/adapters', 403, response.json());
      assert.equal(error.details?.field, 'path');
    }
  });

  it('loads an adapter (200), serves it by pinning only, then unloads it', async () => {
    await adapterFolder('extra');
    const loaded = await service.app.inject({
      method: 'POST',
      url: '/v1/adapters',
      headers: bearer,
      payload: { path: 'extra' },
    });
    assert.equal(loaded.statusCode, 200, loaded.body);
    const info = loaded.json();
    contract.check('POST', '/v1/adapters', 200, info);
    assert.equal(info.id, 'extra');
    assert.equal(info.group, 'language');
    assert.equal(info.state, 'ready');
    assert.equal(info.rank, 3);
    assert.equal(info.gated, false);
    assert.ok(!Number.isNaN(Date.parse(info.loaded_at)));
    const listed = (await service.app.inject('/v1/adapters')).json();
    assert.ok(
      listed.data.some(
        (a: { id: string; state: string }) => a.id === 'extra' && a.state === 'ready',
      ),
    );
    const models = (await service.app.inject('/v1/models')).json();
    assert.ok(models.data[0].groups[0].adapters.includes('extra'));

    for (const body of [
      { inputs: TEXTS, adapters: { language: 'extra' } },
      { inputs: TEXTS, language: 'extra' },
    ]) {
      const pinned = await infer(service.app, body);
      assert.equal(pinned.statusCode, 200, pinned.body);
      for (const result of (pinned.json() as InferJson).results) {
        assert.deepEqual(result.routing.language, [{ adapter: 'extra', weight: 1 }]);
      }
    }
    // The gate was not trained on it: routing by the gate never picks it, even with top_k = all.
    const routed = await infer(service.app, { inputs: TEXTS, top_k: LANGUAGES.length + 1 });
    assert.equal(routed.statusCode, 200, routed.body);
    for (const result of (routed.json() as InferJson).results) {
      assertRouting(result);
      assert.ok(!result.routing.language!.some((r) => r.adapter === 'extra'));
    }

    const deleted = await service.app.inject({
      method: 'DELETE',
      url: '/v1/adapters/extra',
      headers: apiKey,
    });
    assert.equal(deleted.statusCode, 200, deleted.body);
    assert.deepEqual(deleted.json(), { id: 'extra', deleted: true });
    contract.check('DELETE', '/v1/adapters/extra', 200, deleted.json());
    const after = await infer(service.app, { inputs: [TEXTS[0]!], language: 'extra' });
    const error = assertError(after, 422, 'ROUTING_UNKNOWN_ADAPTER');
    assert.deepEqual(error.details?.choices, LANGUAGES);
    assertError(
      await service.app.inject({ method: 'DELETE', url: '/v1/adapters/extra', headers: apiKey }),
      404,
      'ADAPTER_NOT_FOUND',
    );
    const text = (await service.app.inject('/metrics')).body;
    assert.equal(
      metric(text, 'moe_adapter_operations_total', { operation: 'load', result: 'ok' }),
      1,
    );
    assert.equal(
      metric(text, 'moe_adapter_operations_total', { operation: 'unload', result: 'ok' }),
      1,
    );
  });

  it('loads a folder under another id', async () => {
    await adapterFolder('nested/dir/swiss', 'gsw', 2);
    const loaded = await service.app.inject({
      method: 'POST',
      url: '/v1/adapters',
      headers: apiKey,
      payload: { path: 'nested/dir/swiss', id: 'gsw-2' },
    });
    assert.equal(loaded.statusCode, 200, loaded.body);
    assert.equal(loaded.json().id, 'gsw-2');
    const pinned = await infer(service.app, { inputs: [TEXTS[0]!], language: 'gsw-2' });
    assert.deepEqual((pinned.json() as InferJson).results[0]!.routing.language, [
      { adapter: 'gsw-2', weight: 1 },
    ]);
    const deleted = await service.app.inject({
      method: 'DELETE',
      url: '/v1/adapters/gsw-2',
      headers: apiKey,
    });
    assert.equal(deleted.statusCode, 200, deleted.body);
  });

  it('rejects a corrupt adapter with 422 ADAPTER_INVALID naming the file, registry unchanged', async () => {
    const dir = await adapterFolder('corrupt');
    await writeFile(
      join(dir, 'adapter.safetensors'),
      Buffer.from('\x10\x00\x00\x00\x00\x00\x00\x00{"down.wei'),
    );
    const before = (await service.app.inject('/v1/adapters')).json();
    const response = await service.app.inject({
      method: 'POST',
      url: '/v1/adapters',
      headers: bearer,
      payload: { path: 'corrupt' },
    });
    const error = assertError(response, 422, 'ADAPTER_INVALID');
    contract.check('POST', '/v1/adapters', 422, response.json());
    assert.match(error.message, /adapter\.safetensors/);
    assert.match(String(error.details?.file), /adapter\.safetensors$/);
    assert.deepEqual((await service.app.inject('/v1/adapters')).json(), before);
  });

  it('rejects a missing folder and a bad config with 422 ADAPTER_INVALID', async () => {
    const missing = await service.app.inject({
      method: 'POST',
      url: '/v1/adapters',
      headers: bearer,
      payload: { path: 'no-such-folder' },
    });
    assertError(missing, 422, 'ADAPTER_INVALID');
    const dir = await adapterFolder('badconfig');
    await writeFile(join(dir, 'adapter_config.json'), '{"format": "nope"');
    const bad = await service.app.inject({
      method: 'POST',
      url: '/v1/adapters',
      headers: bearer,
      payload: { path: 'badconfig' },
    });
    const error = assertError(bad, 422, 'ADAPTER_INVALID');
    assert.match(error.message, /adapter_config\.json/);
  });

  it('validates the load body', async () => {
    const cases: [unknown, string][] = [
      [{}, 'path'],
      [{ path: '' }, 'path'],
      [{ path: 'extra', id: '../evil' }, 'id'],
      [{ path: 'extra', force: true }, 'force'],
    ];
    for (const [payload, field] of cases) {
      const response = await service.app.inject({
        method: 'POST',
        url: '/v1/adapters',
        headers: bearer,
        payload: payload as object,
      });
      const error = assertError(response, 400, 'INPUT_INVALID');
      assert.equal(error.details?.field, field);
    }
  });

  it('refuses with 409 to unload an adapter requests use without naming it, and the last of a group', async () => {
    const unload = (id: string) =>
      service.app.inject({ method: 'DELETE', url: `/v1/adapters/${id}`, headers: bearer });
    // 'topic' is the task group's default adapter (and the topic task pins it).
    const isDefault = assertError(await unload('topic'), 409, 'ADAPTER_IN_USE');
    assert.match(isDefault.message, /default adapter of group 'task'/);
    assert.equal((await unload('sentiment')).statusCode, 200);
    // Requests that name no task adapter still route through the default.
    const answer = await infer(service.app, { inputs: [TEXTS[0]!] });
    assert.equal(answer.statusCode, 200, answer.body);
    assertError(await unload('topic'), 409, 'ADAPTER_IN_USE');
    for (const id of LANGUAGES.slice(1)) assert.equal((await unload(id)).statusCode, 200);
    assertError(await unload(LANGUAGES[0]!), 409, 'ADAPTER_LAST_IN_GROUP');
  });
});

describe('admission: 429 OVERLOADED past maxQueuedItems', () => {
  let service: Service;
  before(async () => {
    service = await startService({ batching: { maxQueuedItems: 4 } });
  });
  after(() => service.close());

  it('sheds what does not fit with retry-after, answers the rest, loses nothing', async () => {
    const requests = 40;
    const responses = await Promise.all(
      Array.from({ length: requests }, (_, i) => infer(service.app, { inputs: [TEXTS[i % 3]!] })),
    );
    assert.equal(responses.length, requests);
    const byStatus = new Map<number, number>();
    for (const response of responses) {
      byStatus.set(response.statusCode, (byStatus.get(response.statusCode) ?? 0) + 1);
      if (response.statusCode === 429) {
        assertError(response, 429, 'OVERLOADED');
        assert.ok(Number(response.headers['retry-after']) >= 1, 'no retry-after');
      } else {
        assert.equal(response.statusCode, 200, response.body);
        assert.equal((response.json() as InferJson).results.length, 1);
      }
    }
    const ok = byStatus.get(200) ?? 0;
    const shed = byStatus.get(429) ?? 0;
    assert.equal(ok + shed, requests, `statuses: ${JSON.stringify([...byStatus])}`);
    assert.ok(ok >= 1 && shed >= 1, `ok ${ok}, shed ${shed}`);
    const text = (await service.app.inject('/metrics')).body;
    assert.equal(metric(text, 'moe_requests_rejected_total', { reason: 'overloaded' }), shed);
    assert.equal(metric(text, 'moe_batch_size_items_sum'), ok); // only admitted items ran
    // Once the burst is over there is room again.
    const later = await infer(service.app, { inputs: TEXTS.slice(0, 2) });
    assert.equal(later.statusCode, 200, later.body);
  });

  it('refuses a single request larger than the bound', async () => {
    const response = await infer(service.app, { inputs: Array.from({ length: 5 }, () => 'hi') });
    assertError(response, 429, 'OVERLOADED');
  });
});

describe('deadline: 504 REQUEST_TIMEOUT', () => {
  let service: Service;
  before(async () => {
    service = await startService({ limits: { requestTimeoutMs: 1 } });
  });
  after(() => service.close());

  it('answers 504 when the request is not answered in time, and counts it', async () => {
    // The engine is kept busy, so the item waits in the queue past its 1 ms deadline.
    const busy = await keepEngineBusy(service.model);
    try {
      const response = await infer(service.app, { inputs: TEXTS });
      const error = assertError(response, 504, 'REQUEST_TIMEOUT');
      assert.match(error.message, /REQUEST_TIMEOUT_MS/);
    } finally {
      await busy.stop();
    }
    const text = (await service.app.inject('/metrics')).body;
    assert.equal(metric(text, 'moe_requests_rejected_total', { reason: 'timeout' }), 1);
    assert.equal(metric(text, 'moe_queue_depth_items'), 0);
    assert.equal(metric(text, 'moe_batch_size_items_count'), 0, 'the timed-out items ran anyway');
  });
});

describe('client disconnect on a listening server', () => {
  let service: Service;
  let base: string;
  /** Log lines at level error and above. */
  const errorLogs: { msg?: string; err?: { message?: string } }[] = [];
  before(async () => {
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean))
          errorLogs.push(JSON.parse(line));
        done();
      },
    });
    service = await startService({ logger: { level: 'error', stream } });
    base = await service.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(async () => {
    // After an abort, fetch (undici) leaves fresh connections that never send a request; the
    // server's close() does not count them as idle and would wait for the client to drop them.
    const closing = service.close();
    service.app.server.closeAllConnections();
    await closing;
  });

  const scrape = async () => (await fetch(`${base}/metrics`)).text();

  it('drops the queued items of clients that went away and keeps serving', async () => {
    const gone = 3;
    const batchesBefore = metric(await scrape(), 'moe_batch_size_items_sum');
    const busy = await keepEngineBusy(service.model);
    const controllers = Array.from({ length: gone }, () => new AbortController());
    const pending = controllers.map((controller, i) =>
      fetch(`${base}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: [TEXTS[i]!] }),
        signal: controller.signal,
      }).then(
        (response) => `answered ${response.status}`,
        (error: Error) => error.name,
      ),
    );
    try {
      // All three are queued in the batcher (the engine has no room), then their clients leave.
      await until(
        '3 queued items',
        async () => metric(await scrape(), 'moe_queue_depth_items') === gone,
      );
      for (const controller of controllers) controller.abort();
      assert.deepEqual(await Promise.all(pending), Array(gone).fill('AbortError'));
      await until(
        '3 client_gone drops',
        async () =>
          metric(await scrape(), 'moe_requests_rejected_total', { reason: 'client_gone' }) === gone,
      );
      assert.equal(metric(await scrape(), 'moe_queue_depth_items'), 0);
    } finally {
      await busy.stop();
    }
    const live = await fetch(`${base}/health/live`);
    assert.equal(live.status, 200);
    assert.deepEqual(await live.json(), { status: 'ok' });
    const later = await fetch(`${base}/v1/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: [TEXTS[0]!] }),
    });
    assert.equal(later.status, 200, await later.clone().text());
    assertRouting(((await later.json()) as InferJson).results[0]!);
    // Only the later request's item ever reached the engine through the batcher.
    assert.equal(metric(await scrape(), 'moe_batch_size_items_sum'), batchesBefore + 1);
  });

  it('does not log a client that went away as a server error', () => {
    assert.deepEqual(
      errorLogs.map((line) => line.err?.message ?? line.msg),
      [],
    );
  });
});

describe('engine worker restart', () => {
  let service: Service;
  before(async () => {
    service = await startService({ allowFaultInjection: true, limits: { requestTimeoutMs: 2000 } });
  });
  after(() => service.close());

  it('runs requests that queued while the only worker restarted, without waiting for more traffic', async () => {
    service.model.engine.crashWorkerForTest(0);
    // Sent while the worker is down, the request waits in the batcher for its replacement; it
    // must run once that is up (200), not sit there until its deadline (504).
    await until('the worker down', async () => service.model.engine.readyWorkers === 0);
    const response = await infer(service.app, { inputs: [TEXTS[0]!] });
    assert.equal(response.statusCode, 200, response.body);
  });

  it('serves again once the worker is back', async () => {
    await until(
      'the worker back',
      async () => (await service.app.inject('/health/ready')).statusCode === 200,
    );
    const response = await infer(service.app, { inputs: [TEXTS[0]!] });
    assert.equal(response.statusCode, 200, response.body);
    const text = (await service.app.inject('/metrics')).body;
    assert.equal(metric(text, 'moe_engine_worker_restarts_total'), 1);
  });
});
