/**
 * KServe v2 / Open Inference Protocol routes on the real app (fixture pack, real engine workers),
 * over real HTTP as tritonclient and the KServe SDK send it: JSON bodies, and binary tensor data
 * bodies with no content-type and an Inference-Header-Content-Length header. Binary bodies and
 * answers are written and read here with the test's own few lines, after the extension's text.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Random } from '../src/util/random.js';
import { buildFixturePack, randomAdapter, writeAdapterFolder } from './support/fixture-pack.js';
import {
  type ListeningApp,
  maxAbsDiff,
  nativeEmbeddings,
  startListeningApp,
} from './support/listening-app.js';

const TEXTS = [
  'The weather is good today and the market is open.',
  'Die Mannschaft hat das Spiel gewonnen, und die Fans waren froh.',
  'Мне не нравится этот фильм: история плохая.',
];
const ADMIN_KEY = 'kserve-test-admin-key';
const LANGUAGES = ['en', 'de', 'fr', 'ru'];

interface Tensor {
  datatype: string;
  shape: number[];
  data: (number | string)[];
}

interface AnswerJson {
  model_name: string;
  model_version: string;
  id?: string;
  outputs: {
    name: string;
    datatype: string;
    shape: number[];
    data?: (number | string)[];
    parameters?: { binary_data_size?: number };
  }[];
}

interface TensorMetadata {
  name: string;
  datatype: string;
  shape: number[];
}

/** BYTES binary data: per element a u32 little-endian length, then the UTF-8 bytes. */
function bytesData(values: string[]): Buffer {
  return Buffer.concat(
    values.flatMap((v) => {
      const bytes = Buffer.from(v, 'utf8');
      const length = Buffer.alloc(4);
      length.writeUInt32LE(bytes.length);
      return [length, bytes];
    }),
  );
}

/** Read an infer answer as tritonclient's InferResult does: JSON, or header + binary outputs. */
async function readAnswer(
  response: Response,
): Promise<{ json: AnswerJson; tensors: Map<string, Tensor> }> {
  const body = Buffer.from(await response.arrayBuffer());
  const length = response.headers.get('inference-header-content-length');
  const headerBytes = length === null ? body : body.subarray(0, Number(length));
  const json = JSON.parse(headerBytes.toString('utf8')) as AnswerJson;
  let at = length === null ? body.length : Number(length);
  const tensors = new Map<string, Tensor>();
  for (const output of json.outputs) {
    const size = output.parameters?.binary_data_size;
    let data: (number | string)[];
    if (size === undefined) {
      data = output.data ?? [];
    } else {
      const raw = body.subarray(at, at + size);
      at += size;
      data = [];
      if (output.datatype === 'FP32') {
        for (let i = 0; i < raw.length; i += 4) data.push(raw.readFloatLE(i));
      } else {
        for (let i = 0; i < raw.length; ) {
          const n = raw.readUInt32LE(i);
          data.push(raw.subarray(i + 4, i + 4 + n).toString('utf8'));
          i += 4 + n;
        }
      }
    }
    tensors.set(output.name, { datatype: output.datatype, shape: output.shape, data });
  }
  assert.equal(at, body.length, 'bytes left over after the binary outputs');
  return { json, tensors };
}

/** Row `i` of a [N, k] tensor. */
function row(tensor: Tensor, i: number): (number | string)[] {
  const k = tensor.shape[1]!;
  return tensor.data.slice(i * k, (i + 1) * k);
}

let root: string;
let packDir: string;
let adapterRoot: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-kserve-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 17 });
  adapterRoot = join(root, 'adapters');
  await writeAdapterFolder(
    join(adapterRoot, 'extra'),
    randomAdapter(new Random(5), { id: 'extra', group: 'language', hiddenSize: 32, rank: 3 }),
  );
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('kserve v2', () => {
  let server: ListeningApp;

  before(async () => {
    server = await startListeningApp({ packDir, adapterRoot, adminApiKey: ADMIN_KEY });
  });
  after(() => server.close());

  const get = (path: string) => fetch(`${server.url}${path}`);
  const postJson = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${server.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
  /** As tritonclient posts: raw bytes, no content-type header. */
  const postRaw = (path: string, body: Buffer, headers: Record<string, string> = {}) =>
    fetch(`${server.url}${path}`, { method: 'POST', headers, body });
  const postBinary = (path: string, header: object, blobs: Buffer[], contentType?: string) => {
    const json = Buffer.from(JSON.stringify(header));
    return postRaw(path, Buffer.concat([json, ...blobs]), {
      'inference-header-content-length': String(json.length),
      ...(contentType === undefined ? {} : { 'content-type': contentType }),
    });
  };

  async function assertKServeError(response: Response, status: number, pattern: RegExp) {
    const body = (await response.json()) as Record<string, unknown>;
    assert.equal(response.status, status, JSON.stringify(body));
    assert.deepEqual(Object.keys(body), ['error']);
    assert.equal(typeof body.error, 'string');
    assert.match(body.error as string, pattern);
  }

  it('answers health, server metadata and model metadata as the protocol says', async () => {
    assert.deepEqual(await (await get('/v2/health/live')).json(), { live: true });
    const ready = await get('/v2/health/ready');
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { ready: true });
    const server_ = (await (await get('/v2')).json()) as Record<string, unknown>;
    assert.equal(server_.name, 'moe-serve');
    assert.equal(typeof server_.version, 'string');
    assert.deepEqual(server_.extensions, ['binary_tensor_data', 'model_repository']);

    const metadata = (await (await get('/v2/models/fixture')).json()) as {
      name: string;
      versions: string[];
      inputs: TensorMetadata[];
      outputs: TensorMetadata[];
    };
    assert.equal(metadata.name, 'fixture');
    assert.deepEqual(metadata.versions, ['1.0.0']);
    assert.deepEqual(metadata.inputs, [{ name: 'text', datatype: 'BYTES', shape: [-1] }]);
    assert.deepEqual(
      metadata.outputs.map((o) => `${o.name} ${o.datatype} [${o.shape}]`),
      [
        'embedding FP32 [-1,32]',
        'routing_language_adapters BYTES [-1,-1]',
        'routing_language_weights FP32 [-1,-1]',
        'routing_task_adapters BYTES [-1,-1]',
        'routing_task_weights FP32 [-1,-1]',
        'topic_label BYTES [-1]',
        'topic_scores FP32 [-1,4]',
        'sentiment_label BYTES [-1]',
        'sentiment_scores FP32 [-1,2]',
      ],
    );
    const composed = await get('/v2/models/fixture%3Ade');
    assert.equal(((await composed.json()) as { name: string }).name, 'fixture:de');
    assert.deepEqual(await (await get('/v2/models/fixture:de/ready')).json(), {
      name: 'fixture:de',
      ready: true,
    });
    await assertKServeError(
      await get('/v2/models/resnet'),
      404,
      /Unknown model 'resnet'.*fixture:de/,
    );
    await assertKServeError(await get('/v2/models/resnet/ready'), 404, /Unknown model/);
  });

  it('gives the same tensors for JSON and binary requests, equal to /v1/infer', async () => {
    const path = '/v2/models/fixture/infer';
    const parameters = { top_k: 2 };
    const viaJson = await postJson(path, {
      id: 'req-1',
      parameters,
      inputs: [{ name: 'text', shape: [3], datatype: 'BYTES', data: TEXTS }],
    });
    assert.equal(viaJson.status, 200);
    assert.match(viaJson.headers.get('content-type') ?? '', /application\/json/);
    const json = await readAnswer(viaJson);
    assert.equal(json.json.model_name, 'fixture');
    assert.equal(json.json.model_version, '1.0.0');
    assert.equal(json.json.id, 'req-1');

    // tritonclient's default: binary input, no outputs named, binary_data_output, no content-type.
    const viaBinary = await postBinary(
      path,
      {
        parameters: { ...parameters, binary_data_output: true },
        inputs: [
          {
            name: 'text',
            shape: [3, 1],
            datatype: 'BYTES',
            parameters: { binary_data_size: bytesData(TEXTS).length },
          },
        ],
      },
      [bytesData(TEXTS)],
    );
    assert.equal(viaBinary.status, 200, await viaBinary.clone().text());
    assert.equal(viaBinary.headers.get('content-type'), 'application/octet-stream');
    const binary = await readAnswer(viaBinary);
    assert.ok(binary.json.outputs.every((o) => o.data === undefined));

    // Some outputs binary, some JSON, chosen per output; octet-stream content-type this time.
    const mixed = await readAnswer(
      await postBinary(
        path,
        {
          parameters,
          inputs: [
            {
              name: 'text',
              shape: [3],
              datatype: 'BYTES',
              parameters: { binary_data_size: bytesData(TEXTS).length },
            },
          ],
          outputs: [
            { name: 'embedding', parameters: { binary_data: true } },
            { name: 'routing_language_adapters' },
            { name: 'topic_scores', parameters: { binary_data: true } },
          ],
        },
        [bytesData(TEXTS)],
        'application/octet-stream',
      ),
    );
    assert.deepEqual(
      [...mixed.tensors.keys()],
      ['embedding', 'routing_language_adapters', 'topic_scores'],
    );
    assert.ok(mixed.json.outputs[1]!.data !== undefined, 'a JSON output came back binary');

    assert.deepEqual([...binary.tensors.keys()], [...json.tensors.keys()]);
    for (const [name, tensor] of json.tensors) {
      assert.deepEqual(binary.tensors.get(name), tensor, name);
      if (mixed.tensors.has(name)) assert.deepEqual(mixed.tensors.get(name), tensor, name);
    }

    const native = await nativeEmbeddings(server.url, { inputs: TEXTS, top_k: 2 });
    const embedding = json.tensors.get('embedding')!;
    assert.deepEqual(embedding.shape, [3, 32]);
    const adapters = json.tensors.get('routing_language_adapters')!;
    const weights = json.tensors.get('routing_language_weights')!;
    assert.deepEqual(adapters.shape, [3, 2]);
    const topicLabel = json.tensors.get('topic_label')!;
    const topicScores = json.tensors.get('topic_scores')!;
    assert.deepEqual(topicScores.shape, [3, 4]);
    native.forEach((result, i) => {
      assert.ok(maxAbsDiff(row(embedding, i) as number[], result.embedding) <= 1e-5);
      assert.deepEqual(
        row(adapters, i),
        result.routing.language!.map((r) => r.adapter),
      );
      assert.ok(
        maxAbsDiff(
          row(weights, i) as number[],
          result.routing.language!.map((r) => r.weight),
        ) <= 1e-6,
      );
      assert.equal(topicLabel.data[i], result.outputs.topic!.label);
      assert.ok(
        maxAbsDiff(
          row(topicScores, i) as number[],
          ['world', 'sports', 'business', 'science'].map((l) => result.outputs.topic!.scores[l]!),
        ) <= 1e-6,
      );
    });
  });

  it('routes by parameters and by composition names', async () => {
    const infer = async (name: string, parameters: object) => {
      const response = await postJson(`/v2/models/${encodeURIComponent(name)}/infer`, {
        parameters,
        inputs: [{ name: 'text', shape: [3], datatype: 'BYTES', data: TEXTS }],
      });
      assert.equal(response.status, 200, await response.clone().text());
      return (await readAnswer(response)).tensors;
    };
    const byName = await infer('fixture:fr+sentiment', {});
    const byParameters = await infer('fixture', {
      language: 'fr',
      adapter_task: 'sentiment',
    });
    const byJson = await infer('fixture', { adapters: '{"language":"fr","task":"sentiment"}' });
    assert.deepEqual(byName.get('routing_language_adapters')!.data, ['fr', 'fr', 'fr']);
    assert.deepEqual(byName.get('routing_task_adapters')!.data, [
      'sentiment',
      'sentiment',
      'sentiment',
    ]);
    assert.deepEqual(byParameters, byName);
    assert.deepEqual(byJson, byName);
    const native = await nativeEmbeddings(server.url, {
      inputs: TEXTS,
      adapters: { language: 'fr', task: 'sentiment' },
    });
    native.forEach((result, i) => {
      assert.ok(maxAbsDiff(row(byName.get('embedding')!, i) as number[], result.embedding) <= 1e-5);
    });

    const excluded = await infer('fixture', { exclude: 'en,de', top_k: 2 });
    const chosen = excluded.get('routing_language_adapters')!;
    assert.deepEqual(chosen.shape, [3, 2]);
    assert.ok(chosen.data.every((a) => a === 'fr' || a === 'ru'));

    const task = await infer('fixture', { task: 'sentiment' });
    assert.ok(task.has('sentiment_label') && !task.has('topic_label'));
  });

  it('answers errors as {"error": "..."}', async () => {
    const path = '/v2/models/fixture/infer';
    const tensor = { name: 'text', shape: [1], datatype: 'BYTES', data: ['hi'] };
    await assertKServeError(
      await postJson(path, { inputs: [{ ...tensor, name: 'INPUT0' }] }),
      400,
      /'INPUT0'.*'text'/,
    );
    await assertKServeError(
      await postJson(path, { inputs: [{ ...tensor, datatype: 'FP32' }] }),
      400,
      /datatype FP32/,
    );
    await assertKServeError(
      await postJson(path, { inputs: [{ ...tensor, shape: [2] }] }),
      400,
      /shape \[2\] but 1 elements/,
    );
    await assertKServeError(
      await postJson(path, { inputs: [tensor], parameters: { langauge: 'de' } }),
      400,
      /Unknown parameter 'langauge'/,
    );
    await assertKServeError(
      await postJson(path, { inputs: [tensor], outputs: [{ name: 'logits' }] }),
      400,
      /'logits'.*embedding/,
    );
    await assertKServeError(
      await postJson(path, { inputs: [tensor], parameters: { language: 'xx' } }),
      422,
      /'xx'/,
    );
    await assertKServeError(await postJson(path, { inputs: [] }), 400, /inputs/);
    await assertKServeError(
      await postRaw(path, Buffer.from('{"inputs": ['), { 'content-type': 'application/json' }),
      400,
      /not valid JSON/,
    );
    await assertKServeError(
      await postRaw(path, Buffer.from('hi'), { 'content-type': 'text/plain' }),
      415,
      /text\/plain/,
    );
    const data = bytesData(['hi']);
    await assertKServeError(
      await postBinary(
        path,
        { inputs: [{ ...tensor, data: undefined, parameters: { binary_data_size: 99 } }] },
        [data],
      ),
      400,
      /binary_data_size is 99/,
    );
    await assertKServeError(
      await postBinary(
        path,
        { inputs: [{ ...tensor, data: undefined, parameters: { binary_data_size: 2 } }] },
        [data],
      ),
      400,
      /BYTES element 0 runs past|binary data that no input/,
    );
    await assertKServeError(await get('/v2/models/fixture/stats'), 404, /No route/);
  });

  it('maps the repository extension onto adapter load and unload, admin-protected', async () => {
    const index = async (body?: Buffer) => {
      const response = await postRaw('/v2/repository/index', body ?? Buffer.alloc(0));
      assert.equal(response.status, 200);
      return (await response.json()) as { name: string; state: string; version?: string }[];
    };
    // tritonclient posts the index with an empty body and no content-type.
    const before = await index();
    assert.deepEqual(before[0], { name: 'fixture', version: '1.0.0', state: 'READY' });
    assert.deepEqual(
      before.slice(1).map((e) => `${e.name} ${e.state}`),
      [...LANGUAGES, 'topic', 'sentiment'].map((id) => `fixture:${id} READY`),
    );

    const load = (name: string, body: object, key?: string) =>
      postRaw(
        `/v2/repository/models/${encodeURIComponent(name)}/load`,
        Buffer.from(JSON.stringify(body)),
        {
          ...(key === undefined ? {} : { authorization: `Bearer ${key}` }),
        },
      );
    await assertKServeError(
      await load('fixture:extra', { parameters: { path: 'extra' } }),
      401,
      /admin API key/,
    );
    await assertKServeError(
      await load('fixture:extra', { parameters: { path: 'extra' } }, 'wrong'),
      401,
      /wrong/,
    );
    await assertKServeError(
      await load('fixture:extra', { parameters: { path: '../pack' } }, ADMIN_KEY),
      403,
      /outside the adapter root/,
    );
    await assertKServeError(await load('fixture:extra', {}, ADMIN_KEY), 400, /parameters/);
    const loaded = await load('fixture:extra', { parameters: { path: 'extra' } }, ADMIN_KEY);
    assert.equal(loaded.status, 200, await loaded.clone().text());
    assert.deepEqual(await loaded.json(), { name: 'fixture:extra', load: true });
    // Loading again (no path: the folder it came from) changes nothing.
    assert.equal((await load('fixture:extra', {}, ADMIN_KEY)).status, 200);

    const listed = await index(Buffer.from('{"ready": true}'));
    assert.ok(listed.some((e) => e.name === 'fixture:extra' && e.state === 'READY'));
    assert.deepEqual(await (await get('/v2/models/fixture:extra/ready')).json(), {
      name: 'fixture:extra',
      ready: true,
    });
    const answer = await postJson('/v2/models/fixture:extra/infer', {
      inputs: [{ name: 'text', shape: [2], datatype: 'BYTES', data: TEXTS.slice(0, 2) }],
      outputs: [{ name: 'routing_language_adapters' }],
    });
    assert.equal(answer.status, 200);
    assert.deepEqual((await readAnswer(answer)).tensors.get('routing_language_adapters'), {
      datatype: 'BYTES',
      shape: [2, 1],
      data: ['extra', 'extra'],
    });

    const unload = (name: string, key?: string) =>
      postJson(
        `/v2/repository/models/${encodeURIComponent(name)}/unload`,
        { parameters: { unload_dependents: false } },
        key === undefined ? {} : { 'x-api-key': key },
      );
    await assertKServeError(await unload('fixture:extra'), 401, /admin API key/);
    await assertKServeError(await unload('fixture', ADMIN_KEY), 400, /base model/);
    const unloaded = await unload('fixture:extra', ADMIN_KEY);
    assert.equal(unloaded.status, 200);
    assert.deepEqual(await unloaded.json(), { name: 'fixture:extra', unload: true });
    assert.ok(!(await index()).some((e) => e.name === 'fixture:extra'));
    await assertKServeError(await get('/v2/models/fixture:extra/ready'), 404, /No adapter 'extra'/);
    await assertKServeError(await unload('fixture:extra', ADMIN_KEY), 404, /extra/);
  });
});
