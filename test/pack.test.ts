import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ModelFrontend } from '../src/inference/model.js';
import { TextTokenizer } from '../src/inference/tokenizer.js';
import { PackError, type PackErrorCode } from '../src/pack/errors.js';
import { loadAdapterFolder } from '../src/pack/import/moe-serve.js';
import { checkTokenizerFitsGates, loadPack } from '../src/pack/load.js';
import { readSafetensors, writeSafetensors } from '../src/pack/safetensors.js';
import type { BottleneckAdapter } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import {
  buildFixturePack,
  FIXTURE_BIGRAM_BUCKETS,
  randomAdapter,
  writeAdapterFolder,
} from './support/fixture-pack.js';

const root = await mkdtemp(join(tmpdir(), 'pack-test-'));
const base = join(root, 'base');
let copies = 0;

before(async () => {
  await buildFixturePack(base, { seed: 3 });
});
after(() => rm(root, { recursive: true, force: true }));

/** A fresh copy of the fixture pack to mutate. */
async function copyPack(): Promise<string> {
  const dir = join(root, `case${copies++}`);
  await cp(base, dir, { recursive: true });
  return dir;
}

// biome-ignore lint/suspicious/noExplicitAny: the tests mutate parsed JSON freely
type Json = Record<string, any>;

async function editJson(path: string, edit: (value: Json) => void): Promise<void> {
  const value = JSON.parse(await readFile(path, 'utf8')) as Json;
  edit(value);
  await writeFile(path, JSON.stringify(value, null, 2));
}

const manifestOf = (dir: string) => join(dir, 'manifest.json');
const adapterDir = (dir: string, group: string, id: string) => join(dir, 'adapters', group, id);
const configOf = (dir: string, group: string, id: string) =>
  join(adapterDir(dir, group, id), 'adapter_config.json');

async function expectPackError(
  promise: Promise<unknown>,
  expected: { code: PackErrorCode; file: string; field: string; message?: RegExp },
): Promise<PackError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof PackError, `expected a PackError, got ${String(caught)}`);
  assert.equal(caught.code, expected.code, caught.message);
  assert.equal(caught.file, expected.file, caught.message);
  assert.equal(caught.field, expected.field, caught.message);
  assert.ok(caught.message.startsWith(`${expected.file}: `), caught.message);
  if (expected.field) assert.ok(caught.message.includes(`: ${expected.field}: `), caught.message);
  if (expected.message) assert.match(caught.message, expected.message);
  return caught;
}

describe('fixture pack', () => {
  test('builds and loads with the documented structure', async () => {
    const pack = await loadPack(base);
    assert.equal(pack.dir, base);
    assert.equal(pack.hiddenSize, 32);
    assert.equal(pack.maxLength, 32);
    assert.deepEqual(pack.backbone, { kind: 'onnx', path: join(base, 'backbone.onnx') });
    assert.deepEqual(pack.pooling, { mode: 'mean', normalize: true });
    assert.equal(pack.tokenizerPath, join(base, 'tokenizer.json'));
    assert.equal(pack.manifest.name, 'fixture');
    assert.deepEqual(
      pack.groups.map((g) => g.id),
      ['language', 'task'],
    );
    const [language, task] = pack.groups;
    assert.deepEqual(
      (language!.adapters as BottleneckAdapter[]).map((a) => [a.id, a.rank, a.group]),
      [
        ['en', 4, 'language'],
        ['de', 8, 'language'],
        ['fr', 2, 'language'],
        ['ru', 8, 'language'],
      ],
    );
    const en = language!.adapters[0] as BottleneckAdapter;
    assert.deepEqual(en.down.shape, [32, 4]);
    assert.deepEqual(en.downBias.shape, [4]);
    assert.deepEqual(en.up.shape, [4, 32]);
    assert.deepEqual(en.upBias.shape, [32]);
    assert.equal(en.activation, 'gelu');
    assert.equal(en.residual, true);
    assert.equal(language!.defaultK, 1);
    assert.equal(language!.gate?.type, 'linear');
    assert.deepEqual(language!.gate?.experts, ['en', 'de', 'fr', 'ru']);
    if (language!.gate?.type === 'linear') {
      assert.deepEqual(language!.gate.weight.shape, [32, 4]);
      assert.deepEqual(language!.gate.bias.shape, [4]);
    }
    assert.equal(task!.gate, null);
    assert.equal(task!.defaultAdapter, 'topic');
    assert.deepEqual(
      task!.adapters.map((a) => a.id),
      ['topic', 'sentiment'],
    );
    assert.deepEqual(
      pack.heads.map((h) => [h.id, h.labels.length, h.weight.shape, h.pin]),
      [
        ['topic', 4, [32, 4], { group: 'task', adapter: 'topic' }],
        ['sentiment', 2, [32, 2], undefined],
      ],
    );
  });

  test('options: mlp gate, gated task group, more languages, other sizes', async () => {
    const dir = join(root, 'options');
    await buildFixturePack(dir, {
      seed: 5,
      hiddenSize: 16,
      maxLength: 24,
      languageAdapters: 6,
      ranks: [3, 5],
      gate: 'mlp',
      taskGate: 'linear',
      languageDefaultK: 2,
    });
    const pack = await loadPack(dir);
    const [language, task] = pack.groups;
    assert.deepEqual(
      (language!.adapters as BottleneckAdapter[]).map((a) => a.rank),
      [3, 5, 3, 5, 3, 5],
    );
    assert.equal(language!.defaultK, 2);
    assert.equal(language!.gate?.type, 'mlp');
    if (language!.gate?.type === 'mlp') {
      assert.equal(language!.gate.activation, 'relu');
      assert.deepEqual(language!.gate.hiddenWeight.shape, [16, 8]);
      assert.deepEqual(language!.gate.outWeight.shape, [8, 6]);
    }
    assert.equal(task!.gate?.type, 'linear');
    assert.equal(task!.defaultAdapter, undefined);
    assert.equal(pack.hiddenSize, 16);
  });

  test('same seed, same bytes; another seed, other weights', async () => {
    const again = join(root, 'again');
    await buildFixturePack(again, { seed: 3 });
    for (const file of [
      'manifest.json',
      'tokenizer.json',
      'backbone.onnx',
      'gates/language.safetensors',
    ]) {
      assert.deepEqual(await readFile(join(again, file)), await readFile(join(base, file)), file);
    }
    const other = join(root, 'other');
    await buildFixturePack(other, { seed: 4 });
    assert.notDeepEqual(
      await readFile(join(other, 'heads/topic.safetensors')),
      await readFile(join(base, 'heads/topic.safetensors')),
    );
  });
});

describe('loadPack errors', () => {
  test('missing manifest', async () => {
    const dir = await copyPack();
    await rm(manifestOf(dir));
    await expectPackError(loadPack(dir), {
      code: 'PACK_FILE_MISSING',
      file: manifestOf(dir),
      field: '',
    });
  });

  test('manifest that is not JSON', async () => {
    const dir = await copyPack();
    await writeFile(manifestOf(dir), '{ "format": ');
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '',
      message: /is not valid JSON/,
    });
  });

  test('schema errors name the file and the field', async () => {
    const dir = await copyPack();
    await editJson(manifestOf(dir), (m) => {
      m.groups[0].gate.experts = 'en';
    });
    const error = await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/groups/0/gate/experts',
    });
    assert.equal(error.message, `${manifestOf(dir)}: /groups/0/gate/experts: must be array`);

    await editJson(manifestOf(dir), (m) => {
      m.groups[0].gate.experts = ['en', 'de', 'fr', 'ru'];
      m.backbone.hiden_size = 32;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/backbone/hiden_size',
      message: /not a known property/,
    });
  });

  test('newer format_version', async () => {
    const dir = await copyPack();
    await editJson(manifestOf(dir), (m) => {
      m.format_version = 2;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNSUPPORTED_VERSION',
      file: manifestOf(dir),
      field: '/format_version',
    });
  });

  test('missing backbone, tokenizer, adapter folder, gate and head files', async () => {
    const cases: [string, string][] = [
      ['backbone.onnx', '/backbone/file'],
      ['tokenizer.json', '/tokenizer/file'],
      ['adapters/language/de', '/groups/0/adapters/1/path'],
      ['gates/language.safetensors', '/groups/0/gate/file'],
      ['heads/sentiment.safetensors', '/heads/1/file'],
    ];
    for (const [path, field] of cases) {
      const dir = await copyPack();
      await rm(join(dir, path), { recursive: true });
      await expectPackError(loadPack(dir), {
        code: 'PACK_FILE_MISSING',
        file: manifestOf(dir),
        field,
        message: /not found/,
      });
    }
  });

  test('missing adapter.safetensors in an adapter folder', async () => {
    const dir = await copyPack();
    const weights = join(adapterDir(dir, 'task', 'topic'), 'adapter.safetensors');
    await rm(weights);
    await expectPackError(loadPack(dir), { code: 'PACK_FILE_MISSING', file: weights, field: '' });
  });

  test('paths that leave the pack folder', async () => {
    for (const path of ['../backbone.onnx', 'adapters/../../x.onnx', '/etc/hostname']) {
      const dir = await copyPack();
      await editJson(manifestOf(dir), (m) => {
        m.backbone.file = path;
      });
      await expectPackError(loadPack(dir), {
        code: 'PACK_PATH_OUTSIDE',
        file: manifestOf(dir),
        field: '/backbone/file',
      });
    }
  });

  test('adapter hidden size differs from the backbone', async () => {
    const dir = await copyPack();
    const adapter = randomAdapter(new Random(9), {
      id: 'fr',
      group: 'language',
      hiddenSize: 48,
      rank: 2,
    });
    await writeAdapterFolder(adapterDir(dir, 'language', 'fr'), adapter);
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: configOf(dir, 'language', 'fr'),
      field: '/hidden_size',
      message: /adapter hidden size 48 does not match the backbone's 32/,
    });
  });

  test('adapter tensors that do not match rank or hidden size', async () => {
    const dir = await copyPack();
    await editJson(configOf(dir, 'language', 'en'), (c) => {
      c.rank = 6;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: join(adapterDir(dir, 'language', 'en'), 'adapter.safetensors'),
      field: 'down.weight',
      message: /shape \[32,4\] must be \[hidden_size, rank\] = \[32,6\]/,
    });
  });

  test('adapter config naming a group that does not exist', async () => {
    const dir = await copyPack();
    await editJson(configOf(dir, 'task', 'sentiment'), (c) => {
      c.group = 'style';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNKNOWN_GROUP',
      file: configOf(dir, 'task', 'sentiment'),
      field: '/group',
      message: /group 'style' does not exist/,
    });
  });

  test('adapter config naming another group, or another id', async () => {
    const dir = await copyPack();
    await editJson(configOf(dir, 'task', 'sentiment'), (c) => {
      c.group = 'language';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_ADAPTER',
      file: configOf(dir, 'task', 'sentiment'),
      field: '/group',
    });
    const other = await copyPack();
    await editJson(configOf(other, 'language', 'de'), (c) => {
      c.id = 'deu';
    });
    await expectPackError(loadPack(other), {
      code: 'PACK_INVALID_ADAPTER',
      file: configOf(other, 'language', 'de'),
      field: '/id',
    });
  });

  test('invalid adapter config', async () => {
    const dir = await copyPack();
    await editJson(configOf(dir, 'language', 'ru'), (c) => {
      c.activation = 'swish';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_ADAPTER',
      file: configOf(dir, 'language', 'ru'),
      field: '/activation',
      message: /must be one of "gelu", "relu", "tanh", "identity"/,
    });
  });

  test('head pin naming an unknown group or adapter', async () => {
    const dir = await copyPack();
    await editJson(manifestOf(dir), (m) => {
      m.heads[0].pin.group = 'style';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNKNOWN_GROUP',
      file: manifestOf(dir),
      field: '/heads/0/pin/group',
    });
    await editJson(manifestOf(dir), (m) => {
      m.heads[0].pin = { group: 'task', adapter: 'en' };
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNKNOWN_ADAPTER',
      file: manifestOf(dir),
      field: '/heads/0/pin/adapter',
    });
  });

  test('gate experts that are not exactly the group adapters', async () => {
    const edits: [(m: Json) => void, RegExp][] = [
      [(m) => m.groups[0].gate.experts.pop(), /missing ru/],
      [(m) => m.groups[0].gate.experts.push('es'), /not adapters of the group: es/],
      [(m) => (m.groups[0].gate.experts[3] = 'en'), /names 'en' twice/],
    ];
    for (const [edit, message] of edits) {
      const dir = await copyPack();
      await editJson(manifestOf(dir), edit);
      await expectPackError(loadPack(dir), {
        code: 'PACK_GATE_EXPERTS_MISMATCH',
        file: manifestOf(dir),
        field: '/groups/0/gate/experts',
        message,
      });
    }
  });

  test('gate weight shapes vs hidden size and expert count', async () => {
    const dir = await copyPack();
    const gate = join(dir, 'gates/language.safetensors');
    await writeSafetensors(gate, {
      weight: { shape: [16, 4], data: new Float32Array(64) },
      bias: { shape: [4], data: new Float32Array(4) },
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: gate,
      field: 'weight',
      message: /\[16,4\] must be \[hidden_size, experts\] = \[32,4\]/,
    });
    await writeSafetensors(gate, {
      weight: { shape: [32, 4], data: new Float32Array(128) },
      bias: { shape: [3], data: new Float32Array(3) },
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: gate,
      field: 'bias',
    });
  });

  test('gate file with a missing or an unexpected tensor', async () => {
    const dir = await copyPack();
    const gate = join(dir, 'gates/language.safetensors');
    await writeSafetensors(gate, { weight: { shape: [32, 4], data: new Float32Array(128) } });
    await expectPackError(loadPack(dir), {
      code: 'PACK_MISSING_TENSOR',
      file: gate,
      field: 'bias',
    });
    await writeSafetensors(gate, {
      weight: { shape: [32, 4], data: new Float32Array(128) },
      bias: { shape: [4], data: new Float32Array(4) },
      scale: { shape: [1], data: new Float32Array(1) },
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNEXPECTED_TENSOR',
      file: gate,
      field: 'scale',
    });
  });

  test('mlp gate without an activation', async () => {
    const dir = join(root, 'mlp-case');
    await buildFixturePack(dir, { gate: 'mlp' });
    await editJson(manifestOf(dir), (m) => {
      delete m.groups[0].gate.activation;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/groups/0/gate/activation',
    });
  });

  test('head labels count vs weight shape', async () => {
    const dir = await copyPack();
    await editJson(manifestOf(dir), (m) => {
      m.heads[1].labels.push('neutral');
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: join(dir, 'heads/sentiment.safetensors'),
      field: 'weight',
      message: /has 2 label columns but head 'sentiment' lists 3 labels/,
    });
  });

  test('activation mismatch within a group', async () => {
    const dir = await copyPack();
    const adapter = randomAdapter(new Random(2), {
      id: 'de',
      group: 'language',
      hiddenSize: 32,
      rank: 8,
      activation: 'relu',
    });
    await writeAdapterFolder(adapterDir(dir, 'language', 'de'), adapter);
    await expectPackError(loadPack(dir), {
      code: 'PACK_ACTIVATION_MISMATCH',
      file: configOf(dir, 'language', 'de'),
      field: '/activation',
      message: /'relu' differs from 'gelu' of adapter 'en'/,
    });
  });

  test('duplicate group, head and adapter ids', async () => {
    const edits: [(m: Json) => void, string][] = [
      [(m) => (m.groups[1].id = 'language'), '/groups/1/id'],
      [(m) => (m.heads[1].id = 'topic'), '/heads/1/id'],
      [(m) => (m.groups[1].adapters[1].id = 'en'), '/groups/1/adapters/1/id'],
    ];
    for (const [edit, field] of edits) {
      const dir = await copyPack();
      await editJson(manifestOf(dir), edit);
      await expectPackError(loadPack(dir), {
        code: 'PACK_DUPLICATE_ID',
        file: manifestOf(dir),
        field,
        message: /is already used at/,
      });
    }
  });

  test('default_adapter and default_k checks', async () => {
    const dir = await copyPack();
    await editJson(manifestOf(dir), (m) => {
      m.groups[1].default_adapter = 'en';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNKNOWN_ADAPTER',
      file: manifestOf(dir),
      field: '/groups/1/default_adapter',
    });
    await editJson(manifestOf(dir), (m) => {
      m.groups[1].default_adapter = 'topic';
      m.groups[0].default_k = 5;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/groups/0/default_k',
      message: /default_k 5 is more than the group's 4 adapters/,
    });
    await editJson(manifestOf(dir), (m) => {
      m.groups[0].default_k = 1;
      m.groups[0].default_adapter = 'en';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/groups/0/default_adapter',
    });
  });

  test('corrupt adapter weights and non-F32 tensors', async () => {
    const dir = await copyPack();
    const weights = join(adapterDir(dir, 'language', 'fr'), 'adapter.safetensors');
    const bytes = await readFile(weights);
    await writeFile(weights, bytes.subarray(0, bytes.byteLength - 10));
    await expectPackError(loadPack(dir), {
      code: 'PACK_CORRUPT_FILE',
      file: weights,
      field: 'up.bias',
      message: /truncated/,
    });
    // Rewrite one tensor's dtype as F16 (same byte size for a [2]-shaped F32 tensor as [4] F16).
    const header = JSON.stringify({
      'down.bias': { dtype: 'F16', shape: [4], data_offsets: [0, 8] },
    });
    const out = Buffer.alloc(8 + header.length + 8);
    out.writeBigUInt64LE(BigInt(header.length), 0);
    out.write(header, 8);
    await writeFile(weights, out);
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNSUPPORTED_DTYPE',
      file: weights,
      field: 'down.bias',
    });
  });
});

describe('token_bag gates', () => {
  let tb: string;
  let vocabSize: number;
  before(async () => {
    tb = join(root, 'token-bag');
    await buildFixturePack(tb, { seed: 4, gate: 'token_bag' });
    vocabSize = (await TextTokenizer.load(join(tb, 'tokenizer.json'), 32)).vocabSize;
  });
  async function copyTokenBag(): Promise<{ dir: string; gate: string }> {
    const dir = join(root, `tb-case${copies++}`);
    await cp(tb, dir, { recursive: true });
    return { dir, gate: join(dir, 'gates/language.safetensors') };
  }
  const f32 = (shape: number[]) => ({
    shape,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
  });

  test('the fixture loads: a table over the vocabulary and the buckets, no hidden layer', async () => {
    const pack = await loadPack(tb);
    const gate = pack.groups[0]!.gate;
    assert.equal(gate?.type, 'token_bag');
    if (gate?.type !== 'token_bag') return;
    assert.equal(gate.buckets, FIXTURE_BIGRAM_BUCKETS);
    assert.deepEqual(gate.embedding.shape, [vocabSize + FIXTURE_BIGRAM_BUCKETS, 8]);
    assert.deepEqual(gate.outWeight.shape, [8, 4]);
    assert.equal(gate.hidden, undefined);
    assert.equal(pack.groups[0]!.gateFile, join(tb, 'gates/language.safetensors'));
    checkTokenizerFitsGates(pack, vocabSize);
  });

  test('bigram_buckets: required for token_bag, refused elsewhere', async () => {
    const { dir } = await copyTokenBag();
    await editJson(manifestOf(dir), (m) => {
      delete m.groups[0].gate.bigram_buckets;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/groups/0/gate/bigram_buckets',
      message: /required for a 'token_bag' gate/,
    });
    const linear = await copyPack();
    await editJson(manifestOf(linear), (m) => {
      m.groups[0].gate.bigram_buckets = 8;
    });
    await expectPackError(loadPack(linear), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(linear),
      field: '/groups/0/gate/bigram_buckets',
    });
    await editJson(manifestOf(dir), (m) => {
      m.groups[0].gate.bigram_buckets = -1;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_INVALID_MANIFEST',
      file: manifestOf(dir),
      field: '/groups/0/gate/bigram_buckets',
    });
  });

  test('tensor shapes: table rows beyond the buckets, out layer width and experts', async () => {
    const { dir, gate } = await copyTokenBag();
    await writeSafetensors(gate, {
      'embedding.weight': f32([FIXTURE_BIGRAM_BUCKETS, 8]),
      'out.weight': f32([8, 4]),
      'out.bias': f32([4]),
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: gate,
      field: 'embedding.weight',
    });
    await writeSafetensors(gate, {
      'embedding.weight': f32([vocabSize + FIXTURE_BIGRAM_BUCKETS, 8]),
      'out.weight': f32([6, 4]),
      'out.bias': f32([4]),
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: gate,
      field: 'out.weight',
      message: /\[6,4\] must be \[embedding width, experts\] = \[8,4\]/,
    });
    await writeSafetensors(gate, {
      'embedding.weight': f32([vocabSize + FIXTURE_BIGRAM_BUCKETS, 8]),
      'out.weight': f32([8, 3]),
      'out.bias': f32([3]),
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: gate,
      field: 'out.weight',
    });
  });

  test('a hidden layer comes with an activation, and only then', async () => {
    const { dir, gate } = await copyTokenBag();
    await editJson(manifestOf(dir), (m) => {
      m.groups[0].gate.activation = 'relu';
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_MISSING_TENSOR',
      file: gate,
      field: 'hidden.weight',
    });
    const rows = vocabSize + FIXTURE_BIGRAM_BUCKETS;
    await writeSafetensors(gate, {
      'embedding.weight': f32([rows, 8]),
      'hidden.weight': f32([8, 5]),
      'hidden.bias': f32([5]),
      'out.weight': f32([5, 4]),
      'out.bias': f32([4]),
    });
    const pack = await loadPack(dir);
    const loaded = pack.groups[0]!.gate;
    assert.ok(loaded?.type === 'token_bag' && loaded.hidden?.activation === 'relu');
    assert.deepEqual(loaded.hidden.weight.shape, [8, 5]);
    await editJson(manifestOf(dir), (m) => {
      delete m.groups[0].gate.activation;
    });
    await expectPackError(loadPack(dir), {
      code: 'PACK_UNEXPECTED_TENSOR',
      file: gate,
      field: 'hidden.weight',
    });
  });

  test('a table with fewer token rows than the tokenizer has ids is refused once both are known', async () => {
    const { dir, gate } = await copyTokenBag();
    await writeSafetensors(gate, {
      'embedding.weight': f32([vocabSize - 1 + FIXTURE_BIGRAM_BUCKETS, 8]),
      'out.weight': f32([8, 4]),
      'out.bias': f32([4]),
    });
    const pack = await loadPack(dir); // the loader alone cannot tell
    const expected = {
      code: 'PACK_SHAPE_MISMATCH' as const,
      file: gate,
      field: 'embedding.weight',
      message: new RegExp(`has ${vocabSize - 1} token rows .* has ${vocabSize} token ids`),
    };
    await expectPackError((async () => checkTokenizerFitsGates(pack, vocabSize))(), expected);
    // ...and the served model checks it at open, before any engine starts.
    await expectPackError(ModelFrontend.open({ packDir: dir }), expected);
  });
});

describe('loadAdapterFolder', () => {
  test('round trip of writeAdapterFolder', async () => {
    const adapter = randomAdapter(new Random(11), {
      id: 'it',
      group: 'language',
      hiddenSize: 32,
      rank: 3,
      activation: 'tanh',
      residual: false,
    });
    const dir = join(root, 'adapter-it');
    await writeAdapterFolder(dir, adapter);
    const loaded = await loadAdapterFolder(dir, {
      hiddenSize: 32,
      group: 'language',
      groups: ['language', 'task'],
    });
    assert.deepEqual(loaded, {
      ...adapter,
      down: { dtype: 'F32', ...adapter.down },
      downBias: { dtype: 'F32', ...adapter.downBias },
      up: { dtype: 'F32', ...adapter.up },
      upBias: { dtype: 'F32', ...adapter.upBias },
    });
    const tensors = await readSafetensors(join(dir, 'adapter.safetensors'));
    assert.deepEqual([...tensors.keys()], ['down.weight', 'down.bias', 'up.weight', 'up.bias']);
  });

  test('checks the expectations of the runtime registry', async () => {
    const adapter = randomAdapter(new Random(12), {
      id: 'pt',
      group: 'language',
      hiddenSize: 48,
      rank: 2,
    });
    const dir = join(root, 'adapter-pt');
    const config = join(dir, 'adapter_config.json');
    await writeAdapterFolder(dir, adapter);
    await expectPackError(loadAdapterFolder(dir, { hiddenSize: 32 }), {
      code: 'PACK_SHAPE_MISMATCH',
      file: config,
      field: '/hidden_size',
      message: /adapter hidden size 48 does not match the backbone's 32/,
    });
    await expectPackError(loadAdapterFolder(dir, { groups: ['task'] }), {
      code: 'PACK_UNKNOWN_GROUP',
      file: config,
      field: '/group',
    });
    await expectPackError(loadAdapterFolder(dir, { group: 'task' }), {
      code: 'PACK_INVALID_ADAPTER',
      file: config,
      field: '/group',
    });
    await expectPackError(loadAdapterFolder(join(root, 'no-such-adapter')), {
      code: 'PACK_FILE_MISSING',
      file: join(root, 'no-such-adapter'),
      field: '',
    });
    await writeFile(config, 'not json');
    await expectPackError(loadAdapterFolder(dir), {
      code: 'PACK_INVALID_ADAPTER',
      file: config,
      field: '',
      message: /not valid JSON/,
    });
  });
});
