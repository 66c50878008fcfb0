/**
 * The OpenAI-compatible routes through the official `openai` client (v6, default options: it asks
 * for base64 embeddings and decodes them itself, retries 429 honouring retry-after), against the
 * real app listening on 127.0.0.1 over a fixture pack with real engine workers.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import OpenAI, { APIError } from 'openai';
import { Tokenizer } from 'tokenizers';
import { buildFixturePack } from './support/fixture-pack.js';
import {
  type ListeningApp,
  maxAbsDiff,
  nativeEmbeddings,
  startListeningApp,
} from './support/listening-app.js';

const TEXTS = [
  'The weather is good today and the market is open.',
  'Die Mannschaft hat das Spiel gewonnen, und die Fans waren froh.',
  "Je n'aime pas ce film ; l'histoire est mauvaise.",
];
const TOLERANCE = 1e-5;

let root: string;
let packDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-openai-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 21 });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

function norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
}

/** The client error a call rejects with. */
async function apiError(promise: Promise<unknown>): Promise<APIError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof APIError, `expected APIError, got ${String(error)}`);
    return error;
  }
  assert.fail('the call succeeded');
}

describe('openai client: embeddings and models', () => {
  let server: ListeningApp;
  let client: OpenAI;
  const formats: (string | undefined)[] = [];

  before(async () => {
    server = await startListeningApp({
      packDir,
      adapterRoot: join(root, 'adapters'),
      beforeListen: (app) =>
        app.addHook('preHandler', async (request) => {
          if (request.url === '/v1/embeddings') {
            formats.push((request.body as { encoding_format?: string }).encoding_format);
          }
        }),
    });
    client = new OpenAI({ apiKey: 'unused-by-moe-serve', baseURL: `${server.url}/v1` });
  });
  after(() => server.close());

  it('embeds a string (default base64 on the wire) as /v1/infer does, with usage', async () => {
    formats.length = 0;
    const response = await client.embeddings.create({ input: TEXTS[0]!, model: 'fixture' });
    assert.deepEqual(formats, ['base64'], 'the client did not ask for base64');
    const [native] = await nativeEmbeddings(server.url, { inputs: [TEXTS[0]!] });
    assert.equal(response.object, 'list');
    assert.equal(response.model, 'fixture');
    assert.equal(response.data.length, 1);
    const { embedding, index, object } = response.data[0]!;
    assert.equal(object, 'embedding');
    assert.equal(index, 0);
    assert.equal(embedding.length, server.model.pack.hiddenSize);
    assert.ok(maxAbsDiff(embedding, native!.embedding) <= TOLERANCE);
    assert.ok(Math.abs(norm(embedding) - 1) < 1e-5);
    assert.equal(response.usage.prompt_tokens, native!.tokens);
    assert.equal(response.usage.total_tokens, native!.tokens);
  });

  it('embeds an array of strings in order; explicit float agrees with the default base64', async () => {
    const decoded = await client.embeddings.create({ input: TEXTS, model: 'fixture' });
    const floats = await client.embeddings.create({
      input: TEXTS,
      model: 'fixture',
      encoding_format: 'float',
    });
    const native = await nativeEmbeddings(server.url, { inputs: TEXTS });
    assert.deepEqual(
      decoded.data.map((d) => d.index),
      [0, 1, 2],
    );
    for (let i = 0; i < TEXTS.length; i++) {
      assert.equal(maxAbsDiff(decoded.data[i]!.embedding, floats.data[i]!.embedding), 0);
      assert.ok(maxAbsDiff(floats.data[i]!.embedding, native[i]!.embedding) <= TOLERANCE);
    }
    // Different texts, different vectors: the comparison above is not between constants.
    assert.ok(maxAbsDiff(native[0]!.embedding, native[1]!.embedding) > 1e-3);
    assert.equal(
      decoded.usage.prompt_tokens,
      native.reduce((s, r) => s + r.tokens, 0),
    );
  });

  it('takes token ids of the model vocabulary (one array, or one per input) exactly as given', async () => {
    const tokenizer = Tokenizer.fromFile(join(packDir, 'tokenizer.json'));
    // With the special tokens the tokenizer adds to a text, ids give that text's answer.
    const encodings = await tokenizer.encodeBatch([...TEXTS], { addSpecialTokens: true });
    const ids = encodings.map((e) => e.getIds());
    const native = await nativeEmbeddings(server.url, { inputs: TEXTS });
    // Without them, the model runs on the bare ids: nothing is added behind the client's back.
    const bare = (await tokenizer.encode(TEXTS[1]!, null, { addSpecialTokens: false })).getIds();
    const alone = await client.embeddings.create({ input: bare, model: 'fixture' });
    assert.equal(alone.usage.prompt_tokens, bare.length);
    assert.ok(maxAbsDiff(alone.data[0]!.embedding, native[1]!.embedding) > 1e-3);
    const one = await client.embeddings.create({ input: ids[1]!, model: 'fixture' });
    assert.equal(one.data.length, 1);
    assert.ok(maxAbsDiff(one.data[0]!.embedding, native[1]!.embedding) <= TOLERANCE);
    const many = await client.embeddings.create({ input: ids, model: 'fixture' });
    for (let i = 0; i < TEXTS.length; i++) {
      assert.ok(maxAbsDiff(many.data[i]!.embedding, native[i]!.embedding) <= TOLERANCE);
    }
    assert.equal(
      many.usage.prompt_tokens,
      native.reduce((s, r) => s + r.tokens, 0),
    );
  });

  it('truncates to `dimensions` and renormalises; more than the model has is a 400 on `dimensions`', async () => {
    const full = await client.embeddings.create({ input: TEXTS[2]!, model: 'fixture' });
    const short = await client.embeddings.create({
      input: TEXTS[2]!,
      model: 'fixture',
      dimensions: 8,
    });
    const vector = short.data[0]!.embedding;
    assert.equal(vector.length, 8);
    assert.ok(Math.abs(norm(vector) - 1) < 1e-5);
    const head = full.data[0]!.embedding.slice(0, 8);
    const expected = head.map((x) => x / norm(head));
    assert.ok(maxAbsDiff(vector, expected) <= TOLERANCE);

    const d = server.model.pack.hiddenSize;
    const error = await apiError(
      client.embeddings.create({ input: 'hi', model: 'fixture', dimensions: d + 1 }),
    );
    assert.equal(error.status, 400);
    assert.equal(error.code, 'INPUT_INVALID');
    assert.equal(error.param, 'dimensions');
    assert.equal(error.type, 'invalid_request_error');
    assert.match(error.message, new RegExp(`1\\.\\.${d}`));
  });

  it('routes by composition model id and by the extra `routing` field as /v1/infer does', async () => {
    // `other`: a routing that differs only in the pinned adapter, to show the pin matters.
    const cases: {
      model: string;
      routing?: object;
      native: object;
      other: object;
      expect: object;
    }[] = [
      {
        model: 'fixture:de',
        native: { adapters: { language: 'de' } },
        other: { adapters: { language: 'en' } },
        expect: { language: 'de' },
      },
      {
        model: 'fixture',
        routing: { language: 'fr' },
        native: { language: 'fr' },
        other: { language: 'ru' },
        expect: { language: 'fr' },
      },
      {
        model: 'fixture:ru+sentiment',
        native: { adapters: { language: 'ru', task: 'sentiment' } },
        other: { adapters: { language: 'ru', task: 'topic' } },
        expect: { language: 'ru', task: 'sentiment' },
      },
      {
        model: 'fixture:sentiment',
        routing: { top_k: 2, exclude: ['en'] },
        native: { adapters: { task: 'sentiment' }, top_k: 2, exclude: ['en'] },
        other: { adapters: { task: 'topic' }, top_k: 2, exclude: ['en'] },
        expect: { task: 'sentiment' },
      },
    ];
    for (const c of cases) {
      // openai-node sends body fields it does not know (here `routing`) as they are.
      const params = { input: TEXTS, model: c.model, ...(c.routing ? { routing: c.routing } : {}) };
      const response = await client.embeddings.create(params);
      assert.equal(response.model, c.model);
      const native = await nativeEmbeddings(server.url, { inputs: TEXTS, ...c.native });
      for (let i = 0; i < TEXTS.length; i++) {
        for (const [group, adapter] of Object.entries(c.expect)) {
          assert.equal(native[i]!.routing[group]![0]!.adapter, adapter);
        }
        const diff = maxAbsDiff(response.data[i]!.embedding, native[i]!.embedding);
        assert.ok(diff <= TOLERANCE, `${c.model} ${JSON.stringify(c.routing)}: diff ${diff}`);
      }
      const other = await nativeEmbeddings(server.url, { inputs: TEXTS, ...c.other });
      const moved = Math.min(
        ...TEXTS.map((_, i) => maxAbsDiff(response.data[i]!.embedding, other[i]!.embedding)),
      );
      assert.ok(moved > 1e-4, `${c.model}: another pin gives the same vectors`);
    }
  });

  it('lists the base model with its native fields, then one composition per adapter', async () => {
    const ids: string[] = [];
    for await (const model of client.models.list()) ids.push(model.id);
    assert.deepEqual(ids, [
      'fixture',
      'fixture:en',
      'fixture:de',
      'fixture:fr',
      'fixture:ru',
      'fixture:topic',
      'fixture:sentiment',
    ]);
    const base = (await client.models.retrieve('fixture')) as unknown as Record<string, unknown>;
    assert.equal(base.hidden_size, server.model.pack.hiddenSize);
    assert.ok(Array.isArray(base.groups));
    const composed = (await client.models.retrieve('fixture:de+sentiment')) as unknown as Record<
      string,
      unknown
    >;
    assert.equal(composed.id, 'fixture:de+sentiment');
    assert.equal(composed.object, 'model');
    assert.equal(composed.parent, 'fixture');
    assert.deepEqual(composed.adapters, { language: 'de', task: 'sentiment' });
  });

  it("answers errors in OpenAI's form, read by the client as APIError with status and code", async () => {
    const unknown = await apiError(client.embeddings.create({ input: 'hi', model: 'gpt-x' }));
    assert.equal(unknown.status, 404);
    assert.equal(unknown.code, 'MODEL_NOT_FOUND');
    assert.equal(unknown.param, 'model');
    assert.match(unknown.message, /fixture:de/, 'the message lists the valid ids');

    const twoInGroup = await apiError(client.models.retrieve('fixture:de+fr'));
    assert.equal(twoInGroup.status, 404);
    assert.match(twoInGroup.message, /one adapter per group/);

    const badAdapter = await apiError(
      client.embeddings.create({ input: 'hi', model: 'fixture', routing: { language: 'xx' } } as {
        input: string;
        model: string;
      }),
    );
    assert.equal(badAdapter.status, 422);
    assert.equal(badAdapter.code, 'ROUTING_UNKNOWN_ADAPTER');

    const vocab = server.model.tokenizer.vocabSize;
    const badId = await apiError(
      client.embeddings.create({ input: [[1, 2, vocab]], model: 'fixture' }),
    );
    assert.equal(badId.status, 400);
    assert.equal(badId.param, 'input[0][2]');

    const empty = await apiError(
      client.embeddings.create({ input: ['ok', '  '], model: 'fixture' }),
    );
    assert.equal(empty.status, 422);
    assert.equal(empty.code, 'INPUT_EMPTY');
    assert.equal(empty.param, 'input[1]');

    const tooMany = await apiError(
      client.embeddings.create({ input: Array.from({ length: 17 }, () => 'hi'), model: 'fixture' }),
    );
    assert.equal(tooMany.status, 413);
    assert.equal(tooMany.code, 'INPUT_TOO_MANY');
    assert.equal(tooMany.param, 'input');

    const conflict = await apiError(
      client.embeddings.create({
        input: 'hi',
        model: 'fixture:de',
        routing: { language: 'fr' },
      } as {
        input: string;
        model: string;
      }),
    );
    assert.equal(conflict.status, 422);
    assert.equal(conflict.code, 'ROUTING_CONFLICT');
    assert.equal(conflict.param, 'routing.language');
    assert.match(conflict.message, /model 'fixture:de' pins language=de, but language asks for fr/);

    const raw = await fetch(`${server.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input: 'hi', model: 'fixture', encoding_format: 'int8' }),
    });
    assert.equal(raw.status, 400);
    const body = (await raw.json()) as { error: Record<string, unknown> };
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(body.error.param, 'encoding_format');
  });
});

describe('openai client: overload', () => {
  let server: ListeningApp;
  let client: OpenAI;
  const seen: { status: number; arrived: number; answered: number }[] = [];

  before(async () => {
    // One item admitted at a time, and a lone item waits 600 ms for company: a request queued
    // first keeps the next one out (429) for that long.
    server = await startListeningApp({
      packDir,
      adapterRoot: join(root, 'adapters'),
      batching: { maxQueuedItems: 1, maxQueueDelayMs: 600 },
      beforeListen: (app) => {
        const arrivals = new WeakMap<object, number>();
        app.addHook('onRequest', async (request) => {
          arrivals.set(request, performance.now());
        });
        app.addHook('onResponse', async (request, reply) => {
          if (request.url !== '/v1/embeddings') return;
          seen.push({
            status: reply.statusCode,
            arrived: arrivals.get(request)!,
            answered: performance.now(),
          });
        });
      },
    });
    client = new OpenAI({ apiKey: 'unused', baseURL: `${server.url}/v1` });
    await client.embeddings.create({ input: 'warm up', model: 'fixture' });
  });
  after(() => server.close());

  /** Occupy the only admission slot (for 600 ms): resolves once the item is queued. */
  async function occupy(): Promise<{ done: Promise<unknown> }> {
    const done = nativeEmbeddings(server.url, { inputs: [TEXTS[0]!] });
    for (;;) {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      if (/^moe_queue_depth_items 1$/m.test(text)) return { done };
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  it('answers 429 in OpenAI form with retry-after', async () => {
    const blocker = await occupy();
    const error = await apiError(
      client.embeddings.create({ input: 'hi', model: 'fixture' }, { maxRetries: 0 }),
    );
    await blocker.done;
    assert.equal(error.status, 429);
    assert.equal(error.code, 'OVERLOADED');
    assert.equal(error.type, 'invalid_request_error');
    assert.equal(error.headers?.get('retry-after'), '1');
  });

  it('lets the default client retry after the delay the server asks for, and succeed', async () => {
    seen.length = 0;
    const blocker = await occupy();
    const response = await client.embeddings.create({ input: TEXTS[1]!, model: 'fixture' });
    await blocker.done;
    assert.equal(response.data[0]!.embedding.length, server.model.pack.hiddenSize);
    assert.deepEqual(
      seen.map((s) => s.status),
      [429, 200],
    );
    // retry-after: 1 was honoured; without it the client's own backoff waits at most ~0.5 s.
    const waited = seen[1]!.arrived - seen[0]!.answered;
    assert.ok(waited >= 950, `the client retried after ${waited.toFixed(0)} ms`);
  });
});
