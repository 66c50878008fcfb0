/**
 * Named compositions end to end in embedded mode: a fixture-pack model with a real engine worker,
 * the app listening on 127.0.0.1, driven over HTTP with fetch. Create, list, show, replace and
 * delete (admin), the rules (422 naming the field, 409 for taken names), use through every route
 * family (`composition` in /v1/infer, the model id `<model>:<name>` in OpenAI and KServe) with the
 * answers checked against explicit weights, top-p per composition against the gate's own
 * distribution and the k histogram, changes under traffic, the unload guard, and a restart on the
 * same state folder. Answers of the new routes are checked against the served OpenAPI document.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { FileCompositionStore } from '../src/compositions/store.js';
import { Random } from '../src/util/random.js';
import {
  buildFixturePack,
  FIXTURE_TEXTS,
  randomAdapter,
  writeAdapterFolder,
} from './support/fixture-pack.js';
import { buildTestService, maxAbsDiff, type TestService } from './support/listening-app.js';
import { startApi, stop } from './support/processes.js';

const ADMIN_KEY = 'compositions-test-key-0123456789';
const TEXTS = [
  'The weather is good today and the market is open.',
  'Die Mannschaft hat das Spiel gewonnen, und die Fans waren froh.',
  "Je n'aime pas ce film ; l'histoire est mauvaise.",
];

let root: string;
let packDir: string;
let adapterRoot: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-compositions-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 11 });
  adapterRoot = join(root, 'adapters');
  await mkdir(adapterRoot, { recursive: true });
  await writeAdapterFolder(
    join(adapterRoot, 'extra'),
    randomAdapter(new Random(5), { id: 'extra', group: 'language', hiddenSize: 32, rank: 3 }),
  );
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Served {
  readonly service: TestService;
  readonly url: string;
  readonly store: FileCompositionStore;
  close(): Promise<void>;
}

/** The app over a file store in `stateDir`, listening, as main.ts wires embedded mode. */
async function serve(stateDir: string): Promise<Served> {
  const store = FileCompositionStore.inFolder(stateDir, 'fixture');
  await store.start();
  const service = await buildTestService({
    packDir,
    adapterRoot,
    adminApiKey: ADMIN_KEY,
    compositions: store,
  });
  const url = await service.app.listen({ host: '127.0.0.1', port: 0 });
  return {
    service,
    url,
    store,
    async close() {
      await service.close();
      await store.close();
    },
  };
}

/** A parsed JSON answer (what JSON.parse gives); the tests check it field by field. */
type Json = ReturnType<typeof JSON.parse>;

interface Answer {
  status: number;
  json: Json;
}

async function call(
  url: string,
  method: string,
  path: string,
  body?: unknown,
  options: { admin?: boolean } = {},
): Promise<Answer> {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: {
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...(options.admin === false ? {} : { authorization: `Bearer ${ADMIN_KEY}` }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? undefined : JSON.parse(text) };
}

function assertError(answer: Answer, status: number, code: string, field?: string) {
  assert.equal(answer.status, status, JSON.stringify(answer.json));
  assert.equal(answer.json.error.code, code, answer.json.error.message);
  assert.ok(answer.json.error.message.length > 20, `terse message: ${answer.json.error.message}`);
  if (field !== undefined) assert.equal(answer.json.error.details?.field, field);
  return answer.json.error;
}

/** Validates answers against the OpenAPI document the app serves. */
async function contract(url: string) {
  const doc = (await call(url, 'GET', '/docs/json')).json;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addFormat('date-time', (s: string) => !Number.isNaN(Date.parse(s)));
  ajv.addSchema(doc, 'openapi.json');
  return (method: string, path: string, status: number, body: unknown) => {
    const pointer = `#/paths/${path.replaceAll('~', '~0').replaceAll('/', '~1')}/${method.toLowerCase()}/responses/${status}/content/application~1json/schema`;
    const validate = ajv.getSchema(`openapi.json${pointer}`);
    assert.ok(validate, `no schema for ${method} ${path} ${status}`);
    assert.ok(validate(body), `${method} ${path} ${status}: ${ajv.errorsText(validate.errors)}`);
  };
}

const MIX = { language: { weights: { de: 0.6, fr: 0.4 } } };

describe('named compositions (embedded)', () => {
  let served: Served;
  let check: Awaited<ReturnType<typeof contract>>;

  before(async () => {
    served = await serve(join(root, 'state-main'));
    check = await contract(served.url);
  });
  after(async () => {
    await served?.close();
  });

  it('creates, lists, shows, replaces (version + 1) and deletes a composition; changes need the admin key', async () => {
    const { url } = served;
    assertError(
      await call(url, 'POST', '/v1/compositions', { name: 'crud', groups: MIX }, { admin: false }),
      401,
      'ADMIN_UNAUTHORIZED',
    );
    const created = await call(url, 'POST', '/v1/compositions', {
      name: 'crud',
      description: 'German and French',
      groups: MIX,
    });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    check('POST', '/v1/compositions', 201, created.json);
    assert.equal(created.json.version, 1);
    assert.equal(created.json.model, 'fixture:crud');
    assert.deepEqual(created.json.provenance, { kind: 'manual' });
    assert.deepEqual(created.json.groups, MIX);
    assert.deepEqual(created.json.missing_adapters, []);

    const list = await call(url, 'GET', '/v1/compositions', undefined, { admin: false });
    check('GET', '/v1/compositions', 200, list.json);
    assert.deepEqual(
      list.json.data.map((c: { name: string }) => c.name),
      ['crud'],
    );
    const one = await call(url, 'GET', '/v1/compositions/crud', undefined, { admin: false });
    check('GET', '/v1/compositions/{name}', 200, one.json);
    assert.equal(one.json.description, 'German and French');

    const replaced = await call(url, 'POST', '/v1/compositions', {
      name: 'crud',
      groups: { language: { gate: { top_p: 0.8, k_max: 2 } } },
    });
    assert.equal(replaced.status, 200, JSON.stringify(replaced.json));
    check('POST', '/v1/compositions', 200, replaced.json);
    assert.equal(replaced.json.version, 2);
    assert.equal(replaced.json.created_at, created.json.created_at);
    assert.deepEqual(replaced.json.groups, { language: { gate: { top_p: 0.8, k_max: 2 } } });

    assertError(
      await call(url, 'DELETE', '/v1/compositions/crud', undefined, { admin: false }),
      401,
      'ADMIN_UNAUTHORIZED',
    );
    const deleted = await call(url, 'DELETE', '/v1/compositions/crud');
    check('DELETE', '/v1/compositions/{name}', 200, deleted.json);
    assert.deepEqual(deleted.json, { name: 'crud', version: 2, deleted: true });
    assertError(await call(url, 'GET', '/v1/compositions/crud'), 404, 'COMPOSITION_NOT_FOUND');
    assertError(await call(url, 'DELETE', '/v1/compositions/crud'), 404, 'COMPOSITION_NOT_FOUND');
  });

  it('refuses bad definitions with 422 naming the field, and taken names with 409', async () => {
    const { url } = served;
    const post = (body: unknown) => call(url, 'POST', '/v1/compositions', body);
    const bad = async (groups: unknown, code: string, field: string) => {
      const answer = await post({ name: 'bad', groups });
      const error = assertError(answer, 422, code, field);
      check('POST', '/v1/compositions', 422, answer.json);
      return error;
    };
    await bad({}, 'COMPOSITION_INVALID', 'groups');
    await bad(
      { language: { weights: { de: 1.2, fr: -0.2 } } },
      'COMPOSITION_INVALID',
      'groups.language.weights.fr',
    );
    const sum = await bad(
      { language: { weights: { de: 0.5, fr: 0.2 } } },
      'COMPOSITION_INVALID',
      'groups.language.weights',
    );
    assert.match(sum.message, /sum to 0\.7.*must sum to 1/);
    const group = await bad(
      { dialect: { weights: { de: 1 } } },
      'COMPOSITION_INVALID',
      'groups.dialect',
    );
    assert.deepEqual(group.details.choices, ['language', 'task']);
    const unknown = await bad(
      { language: { weights: { de: 0.5, nl: 0.5 } } },
      'COMPOSITION_UNKNOWN_ADAPTER',
      'groups.language.weights.nl',
    );
    assert.deepEqual(unknown.details.choices, ['en', 'de', 'fr', 'ru']);
    await bad({ language: {} }, 'COMPOSITION_INVALID', 'groups.language');
    await bad(
      { language: { weights: { de: 1 }, gate: { k: 1 } } },
      'COMPOSITION_INVALID',
      'groups.language',
    );
    await bad({ task: { gate: { k: 1 } } }, 'COMPOSITION_INVALID', 'groups.task.gate');
    await bad({ language: { gate: { k: 9 } } }, 'COMPOSITION_INVALID', 'groups.language.gate.k');
    await bad(
      { language: { gate: { k: 2, top_p: 0.5 } } },
      'COMPOSITION_INVALID',
      'groups.language.gate.k',
    );
    await bad(
      { language: { gate: { top_p: 1.5 } } },
      'COMPOSITION_INVALID',
      'groups.language.gate.top_p',
    );
    await bad(
      { language: { gate: { k_max: 2 } } },
      'COMPOSITION_INVALID',
      'groups.language.gate.k_max',
    );
    assertError(await post({ name: 'nogroups' }), 422, 'COMPOSITION_INVALID', 'groups');
    // Model-id segments: a loaded adapter's id, or the model's own id.
    assertError(await post({ name: 'de', groups: MIX }), 409, 'COMPOSITION_NAME_TAKEN', 'name');
    assertError(await post({ name: 'fixture', groups: MIX }), 409, 'COMPOSITION_NAME_TAKEN');
    assertError(await post({ name: 'a:b', groups: MIX }), 400, 'INPUT_INVALID', 'name');
    assert.equal(served.store.list().length, 0, 'a refused definition was stored');
  });

  it('routes with a composition in every route family, as the same explicit weights do, and says which version served', async () => {
    const { url } = served;
    const created = await call(url, 'POST', '/v1/compositions', { name: 'mix', groups: MIX });
    assert.equal(created.status, 201);

    const byName = await call(url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'mix',
      return: ['embedding'],
    });
    assert.equal(byName.status, 200, JSON.stringify(byName.json));
    check('POST', '/v1/infer', 200, byName.json);
    assert.deepEqual(byName.json.composition, { name: 'mix', version: 1 });
    const explicit = await call(url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      adapters: { language: { de: 0.6, fr: 0.4 } },
      return: ['embedding'],
    });
    assert.equal(explicit.json.composition, undefined);
    byName.json.results.forEach((result: Json, i: number) => {
      const routed = result.routing.language.map((r: Json) => [r.adapter, r.weight]);
      assert.equal(routed.length, 2);
      assert.deepEqual(routed[0][0], 'de');
      assert.ok(Math.abs(routed[0][1] - 0.6) < 1e-5 && Math.abs(routed[1][1] - 0.4) < 1e-5);
      assert.ok(maxAbsDiff(result.embedding, explicit.json.results[i].embedding) < 1e-5);
    });

    const openai = await call(url, 'POST', '/v1/embeddings', {
      model: 'fixture:mix',
      input: TEXTS,
      encoding_format: 'float',
    });
    assert.equal(openai.status, 200, JSON.stringify(openai.json));
    assert.deepEqual(openai.json.composition, { name: 'mix', version: 1 });
    openai.json.data.forEach((d: Json, i: number) => {
      assert.ok(maxAbsDiff(d.embedding, explicit.json.results[i].embedding) < 1e-5);
    });

    const kserve = await call(url, 'POST', '/v2/models/fixture:mix/infer', {
      inputs: [{ name: 'text', shape: [TEXTS.length], datatype: 'BYTES', data: TEXTS }],
    });
    assert.equal(kserve.status, 200, JSON.stringify(kserve.json));
    assert.equal(kserve.json.model_name, 'fixture:mix');
    assert.deepEqual(kserve.json.parameters, { composition: 'mix', composition_version: 1 });
    const kEmbedding = kserve.json.outputs.find((o: Json) => o.name === 'embedding');
    assert.ok(maxAbsDiff(kEmbedding.data.slice(0, 32), explicit.json.results[0].embedding) < 1e-5);

    // Listings show it next to the base model and the adapter ids.
    const models = await call(url, 'GET', '/v1/models');
    check('GET', '/v1/models', 200, models.json);
    const ids = models.json.data.map((m: { id: string }) => m.id);
    assert.deepEqual(ids.slice(0, 2), ['fixture', 'fixture:mix']);
    assert.ok(ids.includes('fixture:de'), 'adapter ids are still listed');
    const card = await call(url, 'GET', '/v1/models/fixture:mix');
    assert.equal(card.status, 200);
    assert.equal(card.json.composition.version, 1);
    const index = await call(url, 'POST', '/v2/repository/index', {});
    assert.ok(
      index.json.some((e: Json) => e.name === 'fixture:mix' && e.state === 'READY'),
      JSON.stringify(index.json),
    );
    const metadata = await call(url, 'GET', '/v2/models/fixture:mix');
    assert.equal(metadata.status, 200);

    // The request's own routing still applies; fixing the same group differently conflicts.
    const conflict = await call(url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'mix',
      language: 'en',
    });
    assertError(conflict, 422, 'ROUTING_CONFLICT');
    assert.match(conflict.json.error.message, /fixture:mix/);
    const withTask = await call(url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'mix',
      task: 'sentiment',
    });
    assert.equal(withTask.status, 200, JSON.stringify(withTask.json));
    assert.deepEqual(Object.keys(withTask.json.results[0].outputs), ['sentiment']);

    const unknown = await call(url, 'POST', '/v1/infer', { inputs: TEXTS, composition: 'nope' });
    const error = assertError(unknown, 404, 'COMPOSITION_NOT_FOUND', 'composition');
    assert.deepEqual(error.details.choices, ['mix']);
    assertError(
      await call(url, 'POST', '/v1/embeddings', { model: 'fixture:nope', input: 'x' }),
      404,
      'MODEL_NOT_FOUND',
    );
    await call(url, 'DELETE', '/v1/compositions/mix');
  });

  it('top-p per composition: k = 1 for inputs the gate is sure of, more for ambiguous ones, as the metrics count', async () => {
    const { url } = served;
    // A spread of gate confidence: the fixture's multilingual sample (16 inputs: MAX_INPUTS).
    const texts = [...TEXTS, ...FIXTURE_TEXTS.slice(0, 13)];
    // The gate's full distribution per input: all 4 language adapters mixed, weights = softmax.
    const full = await call(url, 'POST', '/v1/infer', { inputs: texts, top_k: 4, top_p: 1 });
    assert.equal(full.status, 200, JSON.stringify(full.json));
    const distributions: number[][] = full.json.results.map((r: Json) =>
      r.routing.language.map((x: Json) => x.weight),
    );
    const top1 = distributions.map((d) => d[0]!).sort((a, b) => a - b);
    // A p between the least and the most confident inputs' top-1 probability.
    const p = (top1[Math.floor(top1.length / 4)]! + top1[Math.floor((3 * top1.length) / 4)]!) / 2;
    assert.ok(top1[0]! < p && p < top1.at(-1)!, `inputs too alike: top-1 ${top1.join(', ')}`);

    const created = await call(url, 'POST', '/v1/compositions', {
      name: 'nucleus',
      groups: { language: { gate: { top_p: p } } },
    });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const bucketsBefore = await kHistogram(url);
    const routed = await call(url, 'POST', '/v1/infer', { inputs: texts, composition: 'nucleus' });
    assert.equal(routed.status, 200, JSON.stringify(routed.json));
    const ks: number[] = routed.json.results.map((r: Json) => r.routing.language.length);
    distributions.forEach((dist, i) => {
      let cumulative = 0;
      let expected = 0;
      while (expected < dist.length && cumulative < p) cumulative += dist[expected++]!;
      if (Math.abs(cumulative - p) < 1e-4) return; // on the edge: float rounding decides
      assert.equal(ks[i], expected, `input ${i}: distribution ${dist.join(', ')}, p ${p}`);
    });
    assert.ok(ks.includes(1), `no input got k = 1: ${ks.join(', ')}`);
    assert.ok(
      ks.some((k) => k > 1),
      `no input got k > 1: ${ks.join(', ')}`,
    );
    // moe_routed_experts{group="language"} counts each input's k.
    const bucketsAfter = await kHistogram(url);
    const count = (le: string) => (bucketsAfter[le] ?? 0) - (bucketsBefore[le] ?? 0);
    assert.equal(count('1'), ks.filter((k) => k <= 1).length);
    assert.equal(count('2'), ks.filter((k) => k <= 2).length);
    assert.equal(count('+Inf'), ks.length);

    // k_max caps it; the request's own top_p overrides the composition's.
    await call(url, 'POST', '/v1/compositions', {
      name: 'nucleus',
      groups: { language: { gate: { top_p: 1, k_max: 2 } } },
    });
    const capped = await call(url, 'POST', '/v1/infer', { inputs: texts, composition: 'nucleus' });
    assert.deepEqual(capped.json.composition, { name: 'nucleus', version: 2 });
    for (const r of capped.json.results) assert.equal(r.routing.language.length, 2);
    const overridden = await call(url, 'POST', '/v1/infer', {
      inputs: texts,
      composition: 'nucleus',
      top_p: 1e-6,
    });
    for (const r of overridden.json.results) assert.equal(r.routing.language.length, 1);
    const fixedK = await call(url, 'POST', '/v1/compositions', {
      name: 'nucleus',
      groups: { language: { gate: { k: 3 } } },
    });
    assert.equal(fixedK.json.version, 3);
    const three = await call(url, 'POST', '/v1/infer', { inputs: texts, composition: 'nucleus' });
    for (const r of three.json.results) assert.equal(r.routing.language.length, 3);
    await call(url, 'DELETE', '/v1/compositions/nucleus');
  });

  it('creates, uses, replaces and deletes compositions under traffic with no request failing', async () => {
    const { url } = served;
    const weightsOf = (n: number) => ({ de: n % 2 === 0 ? 0.7 : 0.2, fr: n % 2 === 0 ? 0.3 : 0.8 });
    await call(url, 'POST', '/v1/compositions', { name: 'steady', groups: MIX });
    let stop = false;
    let deletedAt = Number.POSITIVE_INFINITY;
    const failures: string[] = [];
    let answered = 0;
    let movingServed = 0;
    const client = async (i: number) => {
      while (!stop) {
        const target = ['steady', 'moving', undefined][i % 3];
        const sentAt = performance.now();
        const answer = await call(url, 'POST', '/v1/infer', {
          inputs: [TEXTS[i % TEXTS.length]!],
          ...(target === undefined ? {} : { composition: target }),
        });
        answered++;
        if (target === 'moving' && answer.status === 404 && sentAt > deletedAt) continue;
        if (target === 'moving' && answer.status === 404 && movingServed === 0) continue;
        if (answer.status !== 200) {
          failures.push(`${target}: ${answer.status} ${JSON.stringify(answer.json)}`);
          continue;
        }
        if (target === 'moving') {
          movingServed++;
          // The answer's version and its weights belong together: no half-swapped composition.
          const { version } = answer.json.composition;
          const expected = weightsOf(version);
          const got = Object.fromEntries(
            answer.json.results[0].routing.language.map((r: Json) => [r.adapter, r.weight]),
          );
          for (const [adapter, weight] of Object.entries(expected)) {
            if (Math.abs(got[adapter] - weight) > 1e-5) {
              failures.push(`moving v${version}: ${JSON.stringify(got)}`);
            }
          }
        }
      }
    };
    const clients = Array.from({ length: 6 }, (_, i) => client(i));
    for (let version = 1; version <= 8; version++) {
      const answer = await call(url, 'POST', '/v1/compositions', {
        name: 'moving',
        groups: { language: { weights: weightsOf(version) } },
      });
      assert.equal(answer.json.version, version, JSON.stringify(answer.json));
      await new Promise((resolve) => setTimeout(resolve, 60));
    }
    deletedAt = performance.now(); // requests sent from here on may find it gone (404)
    const deleted = await call(url, 'DELETE', '/v1/compositions/moving');
    assert.equal(deleted.status, 200);
    await new Promise((resolve) => setTimeout(resolve, 150));
    stop = true;
    await Promise.all(clients);
    assert.deepEqual(failures, []);
    assert.ok(movingServed > 5, `only ${movingServed} answers came from 'moving'`);
    assert.ok(answered > 30, `only ${answered} requests in all`);
    await call(url, 'DELETE', '/v1/compositions/steady');
  });

  it('refuses to unload an adapter a composition uses (409 naming it) unless force; then the composition answers 422 until the adapter is back', async () => {
    const { url } = served;
    const loaded = await call(url, 'POST', '/v1/adapters', { path: 'extra' });
    assert.equal(loaded.status, 200, JSON.stringify(loaded.json));
    await call(url, 'POST', '/v1/compositions', {
      name: 'with-extra',
      groups: { language: { weights: { extra: 0.5, de: 0.5 } } },
    });
    const refused = await call(url, 'DELETE', '/v1/adapters/extra');
    const error = assertError(refused, 409, 'ADAPTER_USED_BY_COMPOSITION');
    assert.deepEqual(error.details.compositions, ['with-extra']);
    const kserveRefused = await call(url, 'POST', '/v2/repository/models/fixture:extra/unload', {});
    assert.equal(kserveRefused.status, 409);
    assert.match(kserveRefused.json.error, /with-extra/);

    const forced = await call(url, 'DELETE', '/v1/adapters/extra?force=true');
    assert.equal(forced.status, 200, JSON.stringify(forced.json));
    assert.deepEqual(forced.json.broken_compositions, ['with-extra']);
    const shown = await call(url, 'GET', '/v1/compositions/with-extra');
    assert.deepEqual(shown.json.missing_adapters, ['extra']);
    const broken = await call(url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'with-extra',
    });
    assert.deepEqual(assertError(broken, 422, 'COMPOSITION_BROKEN').details.missing, ['extra']);

    await call(url, 'POST', '/v1/adapters', { path: 'extra' });
    const healed = await call(url, 'POST', '/v1/infer', {
      inputs: TEXTS,
      composition: 'with-extra',
    });
    assert.equal(healed.status, 200, JSON.stringify(healed.json));
    // KServe force as a parameter.
    const kserveForced = await call(url, 'POST', '/v2/repository/models/fixture:extra/unload', {
      parameters: { force: true },
    });
    assert.equal(kserveForced.status, 200, JSON.stringify(kserveForced.json));
    await call(url, 'DELETE', '/v1/compositions/with-extra');
  });

  it('answers GET /v1/jobs/{id} for fit jobs in embedded mode (404 for an unknown one, not 501)', async () => {
    const answer = await call(
      served.url,
      'GET',
      '/v1/jobs/fit-00000000-0000-0000-0000-000000000000',
    );
    assertError(answer, 404, 'JOB_NOT_FOUND');
    // Durable inference jobs stay queue-mode only.
    assertError(await call(served.url, 'GET', '/v1/jobs/abc'), 501, 'QUEUE_MODE_REQUIRED');
  });
});

describe('named compositions survive a restart (embedded)', () => {
  it('a new server on the same state folder serves the same compositions and versions', async () => {
    const stateDir = join(root, 'state-restart');
    const first = await serve(stateDir);
    let before: Json;
    try {
      await call(first.url, 'POST', '/v1/compositions', { name: 'kept', groups: MIX });
      await call(first.url, 'POST', '/v1/compositions', {
        name: 'kept',
        description: 'second version',
        groups: {
          language: { weights: { en: 0.25, ru: 0.75 } },
          task: { weights: { sentiment: 1 } },
        },
      });
      await call(first.url, 'POST', '/v1/compositions', {
        name: 'gated',
        groups: { language: { gate: { top_p: 0.9 } } },
      });
      await call(first.url, 'POST', '/v1/compositions', { name: 'gone', groups: MIX });
      await call(first.url, 'DELETE', '/v1/compositions/gone');
      before = await call(first.url, 'POST', '/v1/infer', {
        inputs: TEXTS,
        composition: 'kept',
        return: ['embedding'],
      });
      assert.equal(before.status, 200);
    } finally {
      await first.close();
    }
    // Written whole and renamed into place: the file is valid JSON, and no temporary is left.
    assert.deepEqual(await readdir(stateDir), ['compositions.json']);
    const file = JSON.parse(await readFile(join(stateDir, 'compositions.json'), 'utf8'));
    assert.equal(file.format, 'moe-serve.compositions/1');

    const second = await serve(stateDir);
    try {
      const list = await call(second.url, 'GET', '/v1/compositions');
      assert.deepEqual(
        list.json.data.map((c: Json) => [c.name, c.version, c.description]),
        [
          ['gated', 1, ''],
          ['kept', 2, 'second version'],
        ],
      );
      const after = await call(second.url, 'POST', '/v1/infer', {
        inputs: TEXTS,
        composition: 'kept',
        return: ['embedding'],
      });
      assert.equal(after.status, 200, JSON.stringify(after.json));
      assert.deepEqual(after.json.composition, { name: 'kept', version: 2 });
      after.json.results.forEach((r: Json, i: number) => {
        assert.deepEqual(r.routing, before.json.results[i].routing);
        assert.ok(maxAbsDiff(r.embedding, before.json.results[i].embedding) < 1e-5);
      });
      const models = await call(second.url, 'GET', '/v1/models/fixture:gated');
      assert.equal(models.status, 200);
    } finally {
      await second.close();
    }
  });

  it('the server process (main.js) keeps them beside the pack by default and finds them after SIGTERM and a new start', async () => {
    const env = {
      QUEUE: 'embedded',
      MODEL_DIR: packDir,
      ENGINE_WORKERS: '1',
      ENGINE_THREADS: '1',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      ADMIN_API_KEY: ADMIN_KEY,
      ADAPTER_ROOT: adapterRoot,
    };
    const first = await startApi(env);
    try {
      const created = await call(first.url, 'POST', '/v1/compositions', {
        name: 'process-kept',
        groups: { language: { gate: { top_p: 0.7, k_max: 3 } } },
      });
      assert.equal(created.status, 201, JSON.stringify(created.json));
    } finally {
      assert.equal(await stop(first), 0, first.output());
    }
    const file = JSON.parse(await readFile(join(packDir, '.state', 'compositions.json'), 'utf8'));
    assert.deepEqual(
      file.compositions.map((c: Json) => c.name),
      ['process-kept'],
    );
    const second = await startApi(env);
    try {
      const shown = await call(second.url, 'GET', '/v1/compositions/process-kept');
      assert.equal(shown.status, 200, JSON.stringify(shown.json));
      assert.deepEqual(shown.json.groups, { language: { gate: { top_p: 0.7, k_max: 3 } } });
      const used = await call(second.url, 'POST', '/v1/infer', {
        inputs: TEXTS,
        composition: 'process-kept',
      });
      assert.equal(used.status, 200, JSON.stringify(used.json));
      assert.deepEqual(used.json.composition, { name: 'process-kept', version: 1 });
    } finally {
      assert.equal(await stop(second), 0, second.output());
      await rm(join(packDir, '.state'), { recursive: true, force: true });
    }
  });

  it('refuses to start on a state file that is not ours, naming the file', async () => {
    const stateDir = join(root, 'state-bad');
    await mkdir(stateDir, { recursive: true });
    await writeFile(join(stateDir, 'compositions.json'), '{"format": "something-else"}');
    const store = FileCompositionStore.inFolder(stateDir, 'fixture');
    await assert.rejects(store.start(), /compositions\.json: format is "something-else"/);
  });
});

/** moe_routed_experts_bucket{group="language"} by `le`. */
async function kHistogram(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const buckets: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const match = /^moe_routed_experts_bucket\{(.*)\} (\d+)/.exec(line);
    if (match === null || !match[1]!.includes('group="language"')) continue;
    const le = /le="([^"]+)"/.exec(match[1]!)![1]!;
    buckets[le] = Number(match[2]);
  }
  return buckets;
}
