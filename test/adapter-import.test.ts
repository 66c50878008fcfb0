/**
 * The importers on generated folders (test/support/adapter-fixtures.ts): PEFT LoRA folders and
 * AdapterHub bottleneck folders with those projects' file names, config fields and tensor names,
 * both layouts (with and without the task model's prefix), patterns, rsLoRA, leave_out, heads;
 * then every bad input: a PackError naming the file, the field and the values.
 *
 * Expected values come from the fixtures' own records of what they wrote, and for the selection
 * of modules from sets written out by hand here.
 */

import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { EncoderConfig, EncoderFamily } from '../src/pack/encoder-types.js';
import { PackError, type PackErrorCode } from '../src/pack/errors.js';
import { importAdapterHubFolder } from '../src/pack/import/adapterhub.js';
import { pythonFloorDiv } from '../src/pack/import/common.js';
import {
  detectAdapterFormat,
  importAdapterFolder,
  importPeftFolder,
  readBaseModelParts,
} from '../src/pack/import/index.js';
import type { LoraAdapter } from '../src/pack/layer-adapter-types.js';
import { readSafetensors, writeSafetensors } from '../src/pack/safetensors.js';
import type { Head, Weight } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import {
  type AdapterHubFixtureOptions,
  baseModelParts,
  type FixtureBackbone,
  type PeftFixtureOptions,
  writeAdapterHubFolder,
  writePeftLoraFolder,
} from './support/adapter-fixtures.js';
import { randomAdapter, writeAdapterFolder } from './support/fixture-pack.js';
import { writeHfFolder } from './support/hf-folder.js';

const root = await mkdtemp(join(tmpdir(), 'adapter-import-'));
after(() => rm(root, { recursive: true, force: true }));
let folders = 0;
const folder = () => join(root, `f${folders++}`);

function backbone(
  family: EncoderFamily,
  shape: Partial<Pick<EncoderConfig, 'hiddenSize' | 'intermediateSize' | 'layers'>> = {},
): EncoderConfig {
  return {
    family,
    vocabSize: 50,
    hiddenSize: shape.hiddenSize ?? 8,
    layers: shape.layers ?? 3,
    heads: 2,
    intermediateSize: shape.intermediateSize ?? 12,
    hiddenAct: 'gelu',
    layerNormEps: 1e-12,
    maxPositions: 16,
    padTokenId: family === 'bert' || family === 'distilbert' ? 0 : 1,
    positions: family === 'bert' || family === 'distilbert' ? 'absolute' : 'after-padding',
  };
}

function shapeOf(config: EncoderConfig): FixtureBackbone {
  return {
    family: config.family,
    hiddenSize: config.hiddenSize,
    intermediateSize: config.intermediateSize,
    layers: config.layers,
  };
}

async function expectPackError(
  promise: Promise<unknown>,
  expected: { code: PackErrorCode; file: string; field: string; message?: RegExp[] },
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
  for (const pattern of expected.message ?? []) assert.match(caught.message, pattern);
  return caught;
}

// biome-ignore lint/suspicious/noExplicitAny: tests edit parsed JSON freely
async function editJson(path: string, edit: (value: any) => void): Promise<void> {
  const value = JSON.parse(await readFile(path, 'utf8'));
  edit(value);
  await writeFile(path, JSON.stringify(value, null, 2));
}

async function editTensors(
  path: string,
  edit: (tensors: Map<string, Weight>) => void,
): Promise<void> {
  const tensors = new Map<string, Weight>(await readSafetensors(path));
  edit(tensors);
  await writeSafetensors(path, Object.fromEntries(tensors));
}

/** Head logits for one final hidden state [T,d] computed from the Head's math layout. */
function headLogits(head: Head, states: Float64Array, d: number): number[] {
  const pooled = states.subarray(0, d); // cls pooling: the first token
  assert.equal(head.pooling, 'cls');
  let x: number[] = [...pooled];
  if (head.hidden) {
    const [, h] = head.hidden.weight.shape as [number, number];
    x = Array.from({ length: h }, (_, j) => {
      let s = head.hidden!.bias.data[j]!;
      for (let i = 0; i < d; i++) s += pooled[i]! * head.hidden!.weight.data[i * h + j]!;
      return act(head.hidden!.activation, s);
    });
  }
  const [inSize, L] = head.weight.shape as [number, number];
  return Array.from({ length: L }, (_, l) => {
    let s = head.bias.data[l]!;
    for (let i = 0; i < inSize; i++) s += x[i]! * head.weight.data[i * L + l]!;
    return s;
  });
}

function act(name: string, x: number): number {
  if (name === 'tanh') return Math.tanh(x);
  if (name === 'relu') return Math.max(0, x);
  if (name === 'identity') return x;
  throw new Error(name);
}

/** The same logits from PyTorch-layout linears, as transformers computes them: W x + b. */
function torchLinear(w: Weight, b: Weight | undefined, x: readonly number[]): number[] {
  const [out, inSize] = w.shape as [number, number];
  return Array.from({ length: out }, (_, o) => {
    let s = b ? b.data[o]! : 0;
    for (let i = 0; i < inSize; i++) s += w.data[o * inSize + i]! * x[i]!;
    return s;
  });
}

function assertClose(actual: readonly number[], expected: readonly number[], tolerance = 1e-5) {
  assert.equal(actual.length, expected.length);
  for (const [i, value] of actual.entries()) {
    assert.ok(
      Math.abs(value - expected[i]!) <= tolerance,
      `element ${i}: ${value} vs ${expected[i]}`,
    );
  }
}

const moduleSet = (adapter: LoraAdapter) => adapter.modules.map((m) => `${m.layer}:${m.module}`);

// ---------------------------------------------------------------------------------------------

describe('PEFT LoRA folders', () => {
  const bert = backbone('bert');
  const options = { id: 'a', group: 'task', backbone: bert };

  test('a bare BertModel adapter: default targets query and value, r, alpha, weights as saved', async () => {
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      r: 4,
      loraAlpha: 8,
      seed: 2,
    });
    assert.ok(
      [...fixture.tensors.keys()].includes(
        'base_model.model.encoder.layer.0.attention.self.query.lora_A.weight',
      ),
    );
    const adapter = await importPeftFolder(fixture.dir, options);
    assert.equal(adapter.kind, 'lora');
    assert.equal(adapter.hiddenSize, 8);
    assert.equal(adapter.rank, 4);
    assert.deepEqual(moduleSet(adapter), [
      '0:query',
      '0:value',
      '1:query',
      '1:value',
      '2:query',
      '2:value',
    ]);
    for (const m of adapter.modules) {
      const saved = fixture.modules.find((f) => f.layer === m.layer && f.module === m.module)!;
      assert.equal(m.rank, 4);
      assert.equal(m.scaling, 2); // lora_alpha / r = 8 / 4
      assert.deepEqual(m.a, saved.a);
      assert.deepEqual(m.b, saved.b);
    }
    assert.equal(adapter.head, undefined);
  });

  test('keys without base_model.model. (inject_adapter_in_model) read the same', async () => {
    const a = await writePeftLoraFolder(folder(), { backbone: shapeOf(bert), seed: 3 });
    const b = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      seed: 3,
      noPeftPrefix: true,
    });
    assert.ok([...b.tensors.keys()].every((name) => name.startsWith('encoder.layer.')));
    assert.deepEqual(
      await importPeftFolder(b.dir, options),
      await importPeftFolder(a.dir, options),
    );
  });

  for (const dtype of ['F16', 'BF16'] as const) {
    test(`weights saved in ${dtype} are widened exactly`, async () => {
      const fixture = await writePeftLoraFolder(folder(), { backbone: shapeOf(bert), dtype });
      const adapter = await importPeftFolder(fixture.dir, options);
      for (const m of adapter.modules) {
        const saved = fixture.modules.find((f) => f.layer === m.layer && f.module === m.module)!;
        assert.deepEqual(m.a, saved.a);
        assert.deepEqual(m.b, saved.b);
      }
    });
  }

  test('use_rslora scales by alpha / sqrt(r)', async () => {
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      r: 4,
      loraAlpha: 8,
      useRslora: true,
    });
    const adapter = await importPeftFolder(fixture.dir, options);
    for (const m of adapter.modules) assert.equal(m.scaling, 4); // 8 / sqrt(4)
  });

  test('rank_pattern and alpha_pattern per module (first matching pattern, suffix match)', async () => {
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      r: 4,
      loraAlpha: 8,
      targetModules: ['query', 'value', 'intermediate.dense'],
      rankPattern: { 'layer.1.attention.self.query': 2, 'intermediate.dense': 6 },
      alphaPattern: { value: 32 },
    });
    const adapter = await importPeftFolder(fixture.dir, options);
    const get = (layer: number, module: string) =>
      adapter.modules.find((m) => m.layer === layer && m.module === module)!;
    assert.deepEqual([get(1, 'query').rank, get(1, 'query').scaling], [2, 4]); // 8 / 2
    assert.deepEqual([get(0, 'query').rank, get(0, 'query').scaling], [4, 2]);
    assert.deepEqual([get(2, 'value').rank, get(2, 'value').scaling], [4, 8]); // 32 / 4
    assert.deepEqual([get(0, 'intermediate').rank, get(0, 'intermediate').scaling], [6, 8 / 6]);
    assert.equal(adapter.rank, 6);
    assert.equal(get(0, 'intermediate').a.length, 6 * 8); // [r, d]
    assert.equal(get(0, 'intermediate').b.length, 12 * 6); // [f, r]
  });

  test('layers_to_transform with layers_pattern, and a regex target_modules', async () => {
    const picked = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      targetModules: ['key', 'output.dense'],
      layersToTransform: [0, 2],
      layersPattern: 'layer',
    });
    // 'output.dense' ends both attention.output.dense and output.dense.
    assert.deepEqual(moduleSet(await importPeftFolder(picked.dir, options)), [
      '0:key',
      '0:attention_output',
      '0:output',
      '2:key',
      '2:attention_output',
      '2:output',
    ]);
    const regex = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      targetModules: '.*\\.layer\\.1\\..*(key|intermediate\\.dense)',
    });
    assert.deepEqual(moduleSet(await importPeftFolder(regex.dir, options)), [
      '1:key',
      '1:intermediate',
    ]);
    const excluded = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      targetModules: ['query', 'value'],
      excludeModules: ['layer.0.attention.self.value'],
    });
    assert.deepEqual(moduleSet(await importPeftFolder(excluded.dir, options)), [
      '0:query',
      '1:query',
      '1:value',
      '2:query',
      '2:value',
    ]);
  });

  test('BertForSequenceClassification: prefixed keys, classifier over the base pooler, labels from id2label', async () => {
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      head: { numLabels: 3 },
      seed: 5,
    });
    assert.ok(
      fixture.tensors.has(
        'base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight',
      ),
    );
    assert.ok(fixture.tensors.has('base_model.model.classifier.weight'));
    assert.deepEqual(fixture.config.modules_to_save, ['classifier', 'score']);
    const base = baseModelParts(shapeOf(bert), {
      taskModel: true,
      id2label: { '0': 'neg', '1': 'neu', '2': 'pos' },
    });
    const adapter = await importPeftFolder(fixture.dir, {
      ...options,
      base: { config: base.config, tensors: base.tensors },
    });
    const head = adapter.head!;
    assert.deepEqual(head.labels, ['neg', 'neu', 'pos']);
    assert.equal(head.id, 'a');
    assert.equal(head.hidden?.activation, 'tanh');
    // logits = classifier(tanh(pooler(h[0]))), computed the transformers way from saved tensors.
    const random = new Random(9);
    const states = Float64Array.from(random.normals(2 * 8));
    const pooled = torchLinear(
      base.tensors.get('bert.pooler.dense.weight')!,
      base.tensors.get('bert.pooler.dense.bias')!,
      [...states.subarray(0, 8)],
    ).map(Math.tanh);
    const expected = torchLinear(
      fixture.tensors.get('base_model.model.classifier.weight')!,
      fixture.tensors.get('base_model.model.classifier.bias')!,
      pooled,
    );
    assertClose(headLogits(head, states, 8), expected);
    // The bare checkpoint's names (pooler.dense) serve too; labels default without id2label.
    const bare = baseModelParts(shapeOf(bert), { taskModel: false });
    const again = await importPeftFolder(fixture.dir, {
      ...options,
      base: { config: { model_type: 'bert' }, tensors: bare.tensors },
    });
    assert.deepEqual(again.head!.labels, ['LABEL_0', 'LABEL_1', 'LABEL_2']);
  });

  test("target_modules ['dense'] reaches BERT's pooler: that LoRA is merged into the head", async () => {
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      head: { numLabels: 2 },
      targetModules: ['dense'],
      r: 2,
      loraAlpha: 4,
    });
    assert.ok(fixture.pooler, 'the fixture adapts bert.pooler.dense');
    const base = baseModelParts(shapeOf(bert), { taskModel: true });
    const adapter = await importPeftFolder(fixture.dir, {
      ...options,
      base: { config: base.config, tensors: base.tensors },
    });
    assert.deepEqual(
      moduleSet(adapter),
      [0, 1, 2].flatMap((l) => [`${l}:attention_output`, `${l}:intermediate`, `${l}:output`]),
    );
    const x = [...new Random(4).normals(8)];
    const p = fixture.pooler!;
    const baseOut = torchLinear(
      base.tensors.get('bert.pooler.dense.weight')!,
      base.tensors.get('bert.pooler.dense.bias')!,
      x,
    );
    const ax = torchLinear({ shape: [p.r, 8], data: p.a }, undefined, x);
    const bax = torchLinear({ shape: [8, p.r], data: p.b }, undefined, ax);
    const expected = baseOut.map((v, i) => v + p.scaling * bax[i]!);
    const hidden = adapter.head!.hidden!;
    const got = Array.from({ length: 8 }, (_, j) => {
      let s = hidden.bias.data[j]!;
      for (let i = 0; i < 8; i++) s += x[i]! * hidden.weight.data[i * 8 + j]!;
      return s;
    });
    assertClose(got, expected);
  });

  for (const family of ['roberta', 'xlm-roberta'] as const) {
    test(`${family} head: classifier.dense + tanh + out_proj saved with the adapter`, async () => {
      const roberta = backbone(family);
      const fixture = await writePeftLoraFolder(folder(), {
        backbone: shapeOf(roberta),
        head: { numLabels: 2 },
      });
      assert.ok(
        fixture.tensors.has(
          'base_model.model.roberta.encoder.layer.2.attention.self.value.lora_B.weight',
        ),
      );
      const adapter = await importPeftFolder(fixture.dir, { ...options, backbone: roberta });
      const states = Float64Array.from(new Random(1).normals(3 * 8));
      const t = (name: string) => fixture.tensors.get(`base_model.model.${name}`)!;
      const expected = torchLinear(
        t('classifier.out_proj.weight'),
        t('classifier.out_proj.bias'),
        torchLinear(t('classifier.dense.weight'), t('classifier.dense.bias'), [
          ...states.subarray(0, 8),
        ]).map(Math.tanh),
      );
      assertClose(headLogits(adapter.head!, states, 8), expected);
    });
  }

  test('all-linear as PEFT saves it (every linear module by its full name) reaches the pooler too', async () => {
    const names = [0, 1, 2].flatMap((layer) =>
      [
        'attention.self.query',
        'attention.self.key',
        'attention.self.value',
        'attention.output.dense',
        'intermediate.dense',
        'output.dense',
      ].map((path) => `encoder.layer.${layer}.${path}`),
    );
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(bert),
      targetModules: [...names, 'pooler.dense'],
    });
    assert.ok(fixture.pooler);
    const adapter = await importPeftFolder(fixture.dir, options);
    assert.equal(adapter.modules.length, 18);
    assert.equal(adapter.head, undefined); // a pooler LoRA without a head changes no output
  });

  test("DistilBERT: q_lin/v_lin/lin1 names map to our modules; pre_classifier saved (its name ends with 'classifier')", async () => {
    const distil = backbone('distilbert');
    const fixture = await writePeftLoraFolder(folder(), {
      backbone: shapeOf(distil),
      targetModules: ['q_lin', 'v_lin', 'lin1'],
      head: { numLabels: 4 },
    });
    assert.ok(
      fixture.tensors.has('base_model.model.distilbert.transformer.layer.1.ffn.lin1.lora_A.weight'),
    );
    assert.ok(fixture.tensors.has('base_model.model.pre_classifier.weight'));
    const adapter = await importPeftFolder(fixture.dir, { ...options, backbone: distil });
    assert.deepEqual(
      moduleSet(adapter),
      [0, 1, 2].flatMap((l) => [`${l}:query`, `${l}:value`, `${l}:intermediate`]),
    );
    const states = Float64Array.from(new Random(2).normals(8));
    const t = (name: string) => fixture.tensors.get(`base_model.model.${name}`)!;
    const expected = torchLinear(
      t('classifier.weight'),
      t('classifier.bias'),
      torchLinear(t('pre_classifier.weight'), t('pre_classifier.bias'), [...states]).map((v) =>
        Math.max(0, v),
      ),
    );
    assertClose(headLogits(adapter.head!, states, 8), expected);
    assert.deepEqual(adapter.head!.labels, ['LABEL_0', 'LABEL_1', 'LABEL_2', 'LABEL_3']);
    // Without a saved pre_classifier, the base model's serves.
    await editTensors(fixture.weightsPath, (tensors) => {
      tensors.delete('base_model.model.pre_classifier.weight');
      tensors.delete('base_model.model.pre_classifier.bias');
    });
    await expectPackError(importPeftFolder(fixture.dir, { ...options, backbone: distil }), {
      code: 'PACK_MISSING_TENSOR',
      file: fixture.weightsPath,
      field: 'pre_classifier.weight',
    });
    const base = baseModelParts(shapeOf(distil));
    const fromBase = await importPeftFolder(fixture.dir, {
      ...options,
      backbone: distil,
      base: { tensors: base.tensors },
    });
    assertClose(
      headLogits(fromBase.head!, states, 8),
      torchLinear(
        t('classifier.weight'),
        t('classifier.bias'),
        torchLinear(
          base.tensors.get('pre_classifier.weight')!,
          base.tensors.get('pre_classifier.bias')!,
          [...states],
        ).map((v) => Math.max(0, v)),
      ),
    );
  });
});

describe('PEFT bad input', () => {
  const bert = backbone('bert');
  const options = { id: 'a', group: 'task', backbone: bert };
  const make = (extra: Partial<PeftFixtureOptions> = {}) =>
    writePeftLoraFolder(folder(), { backbone: shapeOf(bert), ...extra });

  test('a pickled adapter_model.bin: the conversion command', async () => {
    const fixture = await make({ weights: 'bin' });
    await expectPackError(importPeftFolder(fixture.dir, options), {
      code: 'PACK_PICKLE_WEIGHTS',
      file: join(fixture.dir, 'adapter_model.bin'),
      field: '',
      message: [/python -c/, /safetensors\.torch import save_file/, /adapter_model\.safetensors/],
    });
  });

  test('no weights file, or no config', async () => {
    const fixture = await make();
    await rm(fixture.weightsPath);
    await expectPackError(importPeftFolder(fixture.dir, options), {
      code: 'PACK_FILE_MISSING',
      file: fixture.weightsPath,
      field: '',
    });
    await rm(fixture.configPath);
    await expectPackError(importPeftFolder(fixture.dir, options), {
      code: 'PACK_FILE_MISSING',
      file: fixture.configPath,
      field: '',
    });
  });

  test('another hidden size, FFN width, or more or fewer layers: another base', async () => {
    const wide = await make({ backbone: { ...shapeOf(bert), hiddenSize: 16 } });
    await expectPackError(importPeftFolder(wide.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: wide.weightsPath,
      field: 'base_model.model.encoder.layer.0.attention.self.query.lora_A.weight',
      message: [/hidden_size/, /16/, /\b8\b/],
    });
    const ffn = await make({
      backbone: { ...shapeOf(bert), intermediateSize: 20 },
      targetModules: ['intermediate.dense'],
    });
    await expectPackError(importPeftFolder(ffn.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: ffn.weightsPath,
      field: 'base_model.model.encoder.layer.0.intermediate.dense.lora_B.weight',
      message: [/intermediate_size/, /20/, /12/],
    });
    const deeper = await make({ backbone: { ...shapeOf(bert), layers: 4 } });
    await expectPackError(importPeftFolder(deeper.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: deeper.weightsPath,
      field: 'base_model.model.encoder.layer.3.attention.self.query.lora_A.weight',
      message: [/number of layers/, /layer 3/, /3 layers/],
    });
    const shallower = await make({ backbone: { ...shapeOf(bert), layers: 2 } });
    await expectPackError(importPeftFolder(shallower.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: shallower.weightsPath,
      field: 'base_model.model.encoder.layer.2.attention.self.query.lora_A.weight',
      message: [/number of layers/, /2 layers/, /backbone has 3/],
    });
  });

  test('target modules the backbone does not have', async () => {
    const distil = await writePeftLoraFolder(folder(), {
      backbone: { ...shapeOf(bert), family: 'distilbert' },
      targetModules: ['q_lin', 'v_lin'],
    });
    await expectPackError(importPeftFolder(distil.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: distil.weightsPath,
      field: 'base_model.model.transformer.layer.0.attention.q_lin.lora_A.weight',
      message: [/not a linear module of a bert encoder/, /target_modules is \["q_lin","v_lin"\]/],
    });
  });

  for (const [field, value, pattern] of [
    ['use_dora', true, /DoRA/],
    ['bias', 'all', /only bias "none"/],
    ['fan_in_fan_out', true, /Conv1D/],
    ['lora_bias', true, /bias on lora_B/],
    ['init_lora_weights', 'pissa', /changes the base weights/],
    ['layer_replication', [[0, 2]], /layer stack/],
    ['peft_type', 'IA3', /only PEFT LoRA/],
  ] as const) {
    test(`unsupported: ${field} = ${JSON.stringify(value)}`, async () => {
      const fixture = await make({ configOverrides: { [field]: value } });
      await expectPackError(importPeftFolder(fixture.dir, options), {
        code: 'PACK_UNSUPPORTED_ADAPTER',
        file: fixture.configPath,
        field: `/${field}`,
        message: [new RegExp(JSON.stringify(value).replace(/[[\]]/g, '\\$&')), pattern],
      });
    });
  }

  test('an adapter of the pooler alone adapts nothing served', async () => {
    const fixture = await make({ targetModules: ['pooler.dense'] });
    assert.ok(fixture.pooler);
    await expectPackError(importPeftFolder(fixture.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: fixture.weightsPath,
      field: '',
      message: [/adapts no module of the encoder's layers/, /pooler\.dense/],
    });
  });

  test('config and weights disagree: rank, selection, a missing half, a missing module', async () => {
    const rank = await make({ r: 4 });
    await editJson(rank.configPath, (c) => {
      c.r = 2;
    });
    await expectPackError(importPeftFolder(rank.dir, options), {
      code: 'PACK_SHAPE_MISMATCH',
      file: rank.weightsPath,
      field: 'base_model.model.encoder.layer.0.attention.self.query.lora_A.weight',
      message: [/rank 4/, /r = 2/],
    });
    const selection = await make();
    await editJson(selection.configPath, (c) => {
      c.target_modules = ['query'];
    });
    await expectPackError(importPeftFolder(selection.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: selection.configPath,
      field: '/target_modules',
      message: [/encoder\.layer\.0\.attention\.self\.value/],
    });
    const half = await make();
    await editTensors(half.weightsPath, (t) =>
      t.delete('base_model.model.encoder.layer.1.attention.self.value.lora_B.weight'),
    );
    await expectPackError(importPeftFolder(half.dir, options), {
      code: 'PACK_MISSING_TENSOR',
      file: half.weightsPath,
      field: 'base_model.model.encoder.layer.1.attention.self.value.lora_B.weight',
    });
    const module = await make();
    await editTensors(module.weightsPath, (t) => {
      t.delete('base_model.model.encoder.layer.1.attention.self.value.lora_A.weight');
      t.delete('base_model.model.encoder.layer.1.attention.self.value.lora_B.weight');
    });
    await expectPackError(importPeftFolder(module.dir, options), {
      code: 'PACK_MISSING_TENSOR',
      file: module.weightsPath,
      field: 'base_model.model.encoder.layer.1.attention.self.value.lora_A.weight',
    });
  });

  test('tensors PEFT would save for unsupported options, or that are no head', async () => {
    const dora = await make();
    await editTensors(dora.weightsPath, (t) =>
      t.set('base_model.model.encoder.layer.0.attention.self.query.lora_magnitude_vector', {
        shape: [8],
        data: new Float32Array(8),
      }),
    );
    await expectPackError(importPeftFolder(dora.dir, options), {
      code: 'PACK_UNSUPPORTED_ADAPTER',
      file: dora.weightsPath,
      field: 'base_model.model.encoder.layer.0.attention.self.query.lora_magnitude_vector',
      message: [/DoRA/],
    });
    const embeddings = await make({ head: { numLabels: 2 } });
    await editTensors(embeddings.weightsPath, (t) =>
      t.set('base_model.model.bert.embeddings.word_embeddings.weight', {
        shape: [4, 8],
        data: new Float32Array(32),
      }),
    );
    await expectPackError(importPeftFolder(embeddings.dir, options), {
      code: 'PACK_UNEXPECTED_TENSOR',
      file: embeddings.weightsPath,
      field: 'base_model.model.bert.embeddings.word_embeddings.weight',
    });
  });

  test('heads: token classification, a missing pooler, labels that do not fit', async () => {
    const token = await make({
      head: { numLabels: 2 },
      configOverrides: { task_type: 'TOKEN_CLS' },
    });
    const base = baseModelParts(shapeOf(bert), { taskModel: true });
    await expectPackError(
      importPeftFolder(token.dir, { ...options, base: { tensors: base.tensors } }),
      {
        code: 'PACK_UNSUPPORTED_ADAPTER',
        file: token.configPath,
        field: '/task_type',
        message: [/"TOKEN_CLS"/, /SEQ_CLS/],
      },
    );
    const noPooler = await make({ head: { numLabels: 2 } });
    await expectPackError(importPeftFolder(noPooler.dir, options), {
      code: 'PACK_MISSING_TENSOR',
      file: noPooler.weightsPath,
      field: 'bert.pooler.dense.weight',
      message: [/base model's weights/],
    });
    await expectPackError(
      importPeftFolder(noPooler.dir, {
        ...options,
        base: {
          config: { id2label: { '0': 'yes', '1': 'no', '2': 'maybe' } },
          tensors: base.tensors,
          configFile: 'base/config.json',
        },
      }),
      {
        code: 'PACK_SHAPE_MISMATCH',
        file: 'base/config.json',
        field: '/id2label',
        message: [/names 3 labels/, /2 outputs/],
      },
    );
  });

  test('not JSON, a wrong type', async () => {
    const bad = await make();
    await writeFile(bad.configPath, '{"peft_type": "LORA",');
    await expectPackError(importPeftFolder(bad.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: bad.configPath,
      field: '',
      message: [/not valid JSON/],
    });
    const typed = await make();
    await editJson(typed.configPath, (c) => {
      c.r = 'eight';
    });
    await expectPackError(importPeftFolder(typed.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: typed.configPath,
      field: '/r',
      message: [/"eight"/],
    });
  });
});

// ---------------------------------------------------------------------------------------------

describe('AdapterHub bottleneck folders', () => {
  const bert = backbone('bert', { hiddenSize: 32, intermediateSize: 48 });
  const options = { id: 'en', group: 'language', backbone: bert };
  const make = (extra: Partial<AdapterHubFixtureOptions> = {}) =>
    writeAdapterHubFolder(folder(), { backbone: shapeOf(bert), ...extra });

  test('seq_bn (Pfeiffer) from a BertAdapterModel: ffn blocks, defaults, weights as saved', async () => {
    const fixture = await make({ seed: 4 });
    assert.ok(
      fixture.tensors.has('bert.encoder.layer.0.output.adapters.lang.adapter_down.0.weight'),
    );
    const adapter = await importAdapterHubFolder(fixture.dir, options);
    assert.equal(adapter.kind, 'bottleneck-layers');
    assert.deepEqual(adapter.placement, {
      attention: false,
      ffn: true,
      originalLnBefore: true,
      originalLnAfter: true,
      residualBeforeLn: true,
      lnBefore: false,
      activation: 'relu',
    });
    assert.equal(adapter.bottleneckSize, 2); // 32 // 16
    assert.deepEqual(
      adapter.blocks.map((b) => `${b.layer}:${b.block}`),
      ['0:ffn', '1:ffn', '2:ffn'],
    );
    for (const block of adapter.blocks) {
      const saved = fixture.blocks.find((b) => b.layer === block.layer && b.block === block.block)!;
      assert.deepEqual(block.down, saved.down);
      assert.deepEqual(block.downBias, saved.downBias);
      assert.deepEqual(block.up, saved.up); // scaling 1.0
      assert.deepEqual(block.upBias, saved.upBias);
      assert.equal(block.lnBefore, undefined);
    }
  });

  test('double_seq_bn (Houlsby) from a bare BertModel, and the same config given by name', async () => {
    const fixture = await make({ config: 'double_seq_bn', prefixed: false });
    assert.ok(
      fixture.tensors.has('encoder.layer.1.attention.output.adapters.lang.adapter_up.weight'),
    );
    const adapter = await importAdapterHubFolder(fixture.dir, options);
    assert.deepEqual(adapter.placement, {
      attention: true,
      ffn: true,
      originalLnBefore: false,
      originalLnAfter: true,
      residualBeforeLn: true,
      lnBefore: false,
      activation: 'swish',
    });
    assert.equal(adapter.blocks.length, 6);
    const byName = await make({ config: 'double_seq_bn', prefixed: false, configByName: true });
    assert.equal(byName.document.config, 'double_seq_bn');
    assert.deepEqual(
      (await importAdapterHubFolder(byName.dir, options)).placement,
      adapter.placement,
    );
  });

  test('leave_out, a per-layer reduction_factor, scaling folded into up', async () => {
    const fixture = await make({
      configOverrides: { leave_out: [1], reduction_factor: { '0': 8, default: 16 }, scaling: 2 },
    });
    const adapter = await importAdapterHubFolder(fixture.dir, options);
    assert.deepEqual(
      adapter.blocks.map((b) => `${b.layer}:${b.block}:${b.downBias.length}`),
      ['0:ffn:4', '2:ffn:2'],
    );
    assert.equal(adapter.bottleneckSize, 4);
    const saved = fixture.blocks.find((b) => b.layer === 2)!;
    const block = adapter.blocks.find((b) => b.layer === 2)!;
    assertClose(
      [...block.up],
      [...saved.up].map((v) => 2 * v),
    );
    assertClose(
      [...block.upBias],
      [...saved.upBias].map((v) => 2 * v),
    );
  });

  for (const scaling of ['learned', 'channel'] as const) {
    test(`scaling "${scaling}": the saved scaling tensor folded per output channel`, async () => {
      const fixture = await make({ configOverrides: { scaling } });
      const adapter = await importAdapterHubFolder(fixture.dir, options);
      for (const block of adapter.blocks) {
        const saved = fixture.blocks.find((b) => b.layer === block.layer)!;
        const m = saved.m;
        const expected = [...saved.up].map((v, i) => v * saved.scale[Math.floor(i / m)]!);
        assertClose([...block.up], expected);
        assertClose(
          [...block.upBias],
          [...saved.upBias].map((v, j) => v * saved.scale[j]!),
        );
      }
    });
  }

  for (const names of ['both', 'down', 'norm'] as const) {
    test(`ln_before: the adapter's LayerNorm under ${names === 'both' ? 'both its names' : `adapter_${names === 'down' ? 'down.0' : 'norm_before'}`}, the Linear at adapter_down.1`, async () => {
      const fixture = await make({ configOverrides: { ln_before: true }, lnBeforeNames: names });
      const adapter = await importAdapterHubFolder(fixture.dir, options);
      assert.equal(adapter.placement.lnBefore, true);
      for (const block of adapter.blocks) {
        const saved = fixture.blocks.find((b) => b.layer === block.layer)!;
        assert.ok(saved.downName.endsWith('adapter_down.1.weight'));
        assert.deepEqual(block.lnBefore, saved.lnBefore);
        assert.deepEqual(block.down, saved.down);
      }
    });
  }

  test('an adapter-transformers v1 file (no "version"): "gelu" is the tanh form', async () => {
    const legacy = await make({ legacy: true, configOverrides: { non_linearity: 'gelu' } });
    assert.equal(
      (await importAdapterHubFolder(legacy.dir, options)).placement.activation,
      'gelu_new',
    );
    const current = await make({ configOverrides: { non_linearity: 'GELU' } });
    assert.equal((await importAdapterHubFolder(current.dir, options)).placement.activation, 'gelu');
  });

  test('DistilBERT keeps its adapters at attention_adapters / output_adapters', async () => {
    const distil = backbone('distilbert', { hiddenSize: 32, intermediateSize: 48 });
    const fixture = await writeAdapterHubFolder(folder(), {
      backbone: shapeOf(distil),
      config: 'double_seq_bn',
    });
    assert.ok(
      fixture.tensors.has(
        'distilbert.transformer.layer.0.attention_adapters.adapters.lang.adapter_down.0.weight',
      ),
    );
    const adapter = await importAdapterHubFolder(fixture.dir, { ...options, backbone: distil });
    assert.equal(adapter.blocks.length, 6);
  });

  test('a flex classification head: Linear + tanh + Linear on the CLS state, labels from label2id', async () => {
    const fixture = await make({
      head: { kind: 'flex', numLabels: 3, labels: ['a', 'b', 'c'] },
    });
    assert.ok(fixture.head!.tensors.has('heads.lang.1.weight'));
    assert.ok(fixture.head!.tensors.has('heads.lang.4.weight'));
    const adapter = await importAdapterHubFolder(fixture.dir, options);
    const head = adapter.head!;
    assert.deepEqual(head.labels, ['a', 'b', 'c']);
    const states = Float64Array.from(new Random(3).normals(2 * 32));
    const t = (name: string) => fixture.head!.tensors.get(name)!;
    const expected = torchLinear(
      t('heads.lang.4.weight'),
      t('heads.lang.4.bias'),
      torchLinear(t('heads.lang.1.weight'), t('heads.lang.1.bias'), [
        ...states.subarray(0, 32),
      ]).map(Math.tanh),
    );
    assertClose(headLogits(head, states, 32), expected);
  });

  test('a one-layer flex head on the pooler, and a task model head (config null)', async () => {
    const base = baseModelParts(shapeOf(bert), { taskModel: true });
    const pooled = await make({
      head: { kind: 'flex', numLabels: 2, layers: 1, usePooler: true, bias: false },
    });
    assert.deepEqual([...pooled.head!.tensors.keys()], ['heads.lang.1.weight']);
    const head = (
      await importAdapterHubFolder(pooled.dir, { ...options, base: { tensors: base.tensors } })
    ).head!;
    const states = Float64Array.from(new Random(8).normals(32));
    const expected = torchLinear(
      pooled.head!.tensors.get('heads.lang.1.weight')!,
      undefined,
      torchLinear(
        base.tensors.get('bert.pooler.dense.weight')!,
        base.tensors.get('bert.pooler.dense.bias')!,
        [...states],
      ).map(Math.tanh),
    );
    assertClose(headLogits(head, states, 32), expected);

    const roberta = backbone('roberta', { hiddenSize: 32, intermediateSize: 48 });
    const task = await writeAdapterHubFolder(folder(), {
      backbone: shapeOf(roberta),
      head: { kind: 'static', numLabels: 2, labels: ['no', 'yes'] },
    });
    const taskHead = (await importAdapterHubFolder(task.dir, { ...options, backbone: roberta }))
      .head!;
    assert.deepEqual(taskHead.labels, ['no', 'yes']);
    const t = (name: string) => task.head!.tensors.get(name)!;
    assertClose(
      headLogits(taskHead, states, 32),
      torchLinear(
        t('classifier.out_proj.weight'),
        t('classifier.out_proj.bias'),
        torchLinear(t('classifier.dense.weight'), t('classifier.dense.bias'), [...states]).map(
          Math.tanh,
        ),
      ),
    );
  });
});

describe('AdapterHub bad input', () => {
  const bert = backbone('bert', { hiddenSize: 32, intermediateSize: 48 });
  const options = { id: 'en', group: 'language', backbone: bert };
  const make = (extra: Partial<AdapterHubFixtureOptions> = {}) =>
    writeAdapterHubFolder(folder(), { backbone: shapeOf(bert), ...extra });

  test('a pickled pytorch_adapter.bin, or head: the conversion command', async () => {
    const fixture = await make({ weights: 'bin' });
    await expectPackError(importAdapterHubFolder(fixture.dir, options), {
      code: 'PACK_PICKLE_WEIGHTS',
      file: join(fixture.dir, 'pytorch_adapter.bin'),
      field: '',
      message: [/python -c/, /adapter\.safetensors/],
    });
    const head = await make({ head: { kind: 'flex', numLabels: 2 } });
    await rm(head.head!.weightsPath);
    await writeFile(join(head.dir, 'pytorch_model_head.bin'), 'PK');
    await expectPackError(importAdapterHubFolder(head.dir, options), {
      code: 'PACK_PICKLE_WEIGHTS',
      file: join(head.dir, 'pytorch_model_head.bin'),
      field: '',
      message: [/model_head\.safetensors/],
    });
  });

  test('another base: hidden size, model type, more or fewer layers', async () => {
    const wide = await make({ backbone: { ...shapeOf(bert), hiddenSize: 64 } });
    await expectPackError(importAdapterHubFolder(wide.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: wide.configPath,
      field: '/hidden_size',
      message: [/64/, /32/],
    });
    const unstated = await make({
      backbone: { ...shapeOf(bert), hiddenSize: 64 },
      topOverrides: { hidden_size: null },
    });
    await expectPackError(importAdapterHubFolder(unstated.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: unstated.weightsPath,
      field: 'bert.encoder.layer.0.output.adapters.lang.adapter_down.0.weight',
      message: [/hidden size/, /64/, /32/],
    });
    const roberta = await make({ backbone: { ...shapeOf(bert), family: 'roberta' } });
    await expectPackError(importAdapterHubFolder(roberta.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: roberta.configPath,
      field: '/model_type',
      message: [/'roberta'/, /'bert'/],
    });
    const deeper = await make({ backbone: { ...shapeOf(bert), layers: 5 } });
    await expectPackError(importAdapterHubFolder(deeper.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: deeper.weightsPath,
      field: 'bert.encoder.layer.3.output.adapters.lang.adapter_down.0.weight',
      message: [/number of layers/, /3 layers/],
    });
    const shallower = await make({ backbone: { ...shapeOf(bert), layers: 2 } });
    await expectPackError(importAdapterHubFolder(shallower.dir, options), {
      code: 'PACK_BACKBONE_MISMATCH',
      file: shallower.weightsPath,
      field: 'bert.encoder.layer.2.output.adapters.lang.adapter_down.0.weight',
      message: [/number of layers/, /2 layers/, /backbone has 3/],
    });
  });

  for (const [field, value, pattern] of [
    ['ln_after', true, /ln_after/],
    ['use_gating', true, /gated/],
    ['phm_layer', true, /Compacter/],
    ['is_parallel', true, /parallel/],
    ['inv_adapter', 'nice', /invertible/],
    ['architecture', 'lora', /only bottleneck/],
    ['non_linearity', 'sigmoid', /activations run here/],
    ['residual_before_ln', 'post_add', /original_ln_before/],
    ['scaling', 'other', /"learned" or "channel"/],
  ] as const) {
    test(`unsupported: config ${field} = ${JSON.stringify(value)}`, async () => {
      const fixture = await make({
        config: 'double_seq_bn',
        configOverrides: { [field]: value },
        ...(field === 'scaling' ? {} : {}),
      });
      await expectPackError(importAdapterHubFolder(fixture.dir, options), {
        code: 'PACK_UNSUPPORTED_ADAPTER',
        file: fixture.configPath,
        field: `/config/${field}`,
        message: [new RegExp(JSON.stringify(value)), pattern],
      });
    });
  }

  test('a named config we do not run', async () => {
    const fixture = await make();
    await editJson(fixture.configPath, (c) => {
      c.config = 'par_bn';
    });
    await expectPackError(importAdapterHubFolder(fixture.dir, options), {
      code: 'PACK_UNSUPPORTED_ADAPTER',
      file: fixture.configPath,
      field: '/config',
      message: [/"par_bn"/, /seq_bn/],
    });
  });

  test('config and weights disagree: name, leave_out, block flags, reduction_factor, a missing tensor', async () => {
    const renamed = await make();
    await editJson(renamed.configPath, (c) => {
      c.name = 'other';
    });
    await expectPackError(importAdapterHubFolder(renamed.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: renamed.weightsPath,
      field: 'bert.encoder.layer.0.output.adapters.lang.adapter_down.0.weight',
      message: [/'lang'/, /'other'/],
    });
    const left = await make();
    await editJson(left.configPath, (c) => {
      c.config.leave_out = [2];
    });
    await expectPackError(importAdapterHubFolder(left.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: left.configPath,
      field: '/config/leave_out',
      message: [/layer 2/],
    });
    const flags = await make({ config: 'double_seq_bn' });
    await editJson(flags.configPath, (c) => {
      c.config.mh_adapter = false;
    });
    await expectPackError(importAdapterHubFolder(flags.dir, options), {
      code: 'PACK_INVALID_ADAPTER',
      file: flags.configPath,
      field: '/config/mh_adapter',
    });
    const reduction = await make();
    await editJson(reduction.configPath, (c) => {
      c.config.reduction_factor = 8;
    });
    await expectPackError(importAdapterHubFolder(reduction.dir, options), {
      code: 'PACK_SHAPE_MISMATCH',
      file: reduction.weightsPath,
      field: 'bert.encoder.layer.0.output.adapters.lang.adapter_down.0.weight',
      message: [/\[2,32\]/, /m = 4/],
    });
    const missing = await make();
    await editTensors(missing.weightsPath, (t) =>
      t.delete('bert.encoder.layer.1.output.adapters.lang.adapter_up.bias'),
    );
    await expectPackError(importAdapterHubFolder(missing.dir, options), {
      code: 'PACK_MISSING_TENSOR',
      file: missing.weightsPath,
      field: 'bert.encoder.layer.1.output.adapters.lang.adapter_up.bias',
    });
    const stray = await make();
    await editTensors(stray.weightsPath, (t) =>
      t.set('bert.invertible_adapters.lang.F.0.weight', { shape: [2], data: new Float32Array(2) }),
    );
    await expectPackError(importAdapterHubFolder(stray.dir, options), {
      code: 'PACK_UNEXPECTED_TENSOR',
      file: stray.weightsPath,
      field: 'bert.invertible_adapters.lang.F.0.weight',
    });
  });

  test('heads we do not serve', async () => {
    const deep = await make({ head: { kind: 'flex', numLabels: 2 } });
    await editJson(deep.head!.configPath, (c) => {
      c.config.layers = 3;
    });
    await expectPackError(importAdapterHubFolder(deep.dir, options), {
      code: 'PACK_UNSUPPORTED_ADAPTER',
      file: deep.head!.configPath,
      field: '/config/layers',
      message: [/3/],
    });
    const tagging = await make({ head: { kind: 'flex', numLabels: 2 } });
    await editJson(tagging.head!.configPath, (c) => {
      c.config.head_type = 'tagging';
    });
    await expectPackError(importAdapterHubFolder(tagging.dir, options), {
      code: 'PACK_UNSUPPORTED_ADAPTER',
      file: tagging.head!.configPath,
      field: '/config/head_type',
      message: [/"tagging"/],
    });
  });
});

// ---------------------------------------------------------------------------------------------

describe('format detection and import', () => {
  const bert = backbone('bert', { hiddenSize: 32, intermediateSize: 48 });
  const options = { id: 'x', group: 'g', backbone: bert };

  test('moe-serve, PEFT and AdapterHub folders are told apart by adapter_config.json', async () => {
    const ours = folder();
    await writeAdapterFolder(
      ours,
      randomAdapter(new Random(1), {
        id: 'x',
        group: 'g',
        hiddenSize: 32,
        rank: 4,
        activation: 'relu',
      }),
    );
    const peft = await writePeftLoraFolder(folder(), { backbone: shapeOf(bert) });
    const hub = await writeAdapterHubFolder(folder(), { backbone: shapeOf(bert) });
    assert.equal(await detectAdapterFormat(ours), 'moe-serve');
    assert.equal(await detectAdapterFormat(peft.dir), 'peft');
    assert.equal(await detectAdapterFormat(hub.dir), 'adapterhub');
    const imported = await Promise.all(
      [ours, peft.dir, hub.dir].map((dir) => importAdapterFolder(dir, options)),
    );
    assert.deepEqual(
      imported.map((i) => [i.format, 'kind' in i.adapter ? i.adapter.kind : i.adapter.type]),
      [
        ['moe-serve', 'bottleneck'],
        ['peft', 'lora'],
        ['adapterhub', 'bottleneck-layers'],
      ],
    );
    // Our own format keeps its checks: the config's id must be the one asked for.
    await expectPackError(importAdapterFolder(ours, { ...options, id: 'y' }), {
      code: 'PACK_INVALID_ADAPTER',
      file: join(ours, 'adapter_config.json'),
      field: '/id',
    });
  });

  test("a head's base model parts read from a Hugging Face folder (pooler, id2label)", async () => {
    const tiny = backbone('bert', { hiddenSize: 16, intermediateSize: 24, layers: 2 });
    for (const prefix of [false, true]) {
      const hf = await writeHfFolder(folder(), {
        family: 'bert',
        hiddenSize: 16,
        layers: 2,
        intermediateSize: 24,
        prefix,
        dtype: 'F16',
      });
      const base = await readBaseModelParts(hf.dir);
      const pooler = `${prefix ? 'bert.' : ''}pooler.dense`;
      assert.deepEqual([...base.tensors!.keys()].sort(), [`${pooler}.bias`, `${pooler}.weight`]);
      assert.deepEqual(
        base.tensors!.get(`${pooler}.weight`)!.data,
        hf.tensors.get(`${pooler}.weight`)!.data,
      );
      assert.equal(base.configFile, join(hf.dir, 'config.json'));
      const peft = await writePeftLoraFolder(folder(), {
        backbone: shapeOf(tiny),
        head: { numLabels: 2 },
      });
      const { adapter } = await importAdapterFolder(peft.dir, { ...options, backbone: tiny, base });
      assert.ok('kind' in adapter && adapter.kind === 'lora');
      const hidden = adapter.head!.hidden!.weight.data; // [in,out], the pooler's transpose
      const saved = hf.tensors.get(`${pooler}.weight`)!.data; // [out,in]
      for (let i = 0; i < 16; i++) {
        for (let j = 0; j < 16; j++) assert.equal(hidden[i * 16 + j], saved[j * 16 + i]);
      }
    }
  });

  test('an unknown config, or none', async () => {
    const dir = folder();
    await writeAdapterHubFolder(dir, { backbone: shapeOf(bert) });
    await writeFile(join(dir, 'adapter_config.json'), '{"base_model_class": "BertModel"}');
    await expectPackError(importAdapterFolder(dir, options), {
      code: 'PACK_UNKNOWN_FORMAT',
      file: join(dir, 'adapter_config.json'),
      field: '',
      message: [/peft_type/, /moe-serve/],
    });
    await rm(join(dir, 'adapter_config.json'));
    await expectPackError(importAdapterFolder(dir, options), {
      code: 'PACK_FILE_MISSING',
      file: join(dir, 'adapter_config.json'),
      field: '',
    });
  });
});

describe("Python's floor division for reduction_factor", () => {
  test('matches CPython on the cases where Math.floor(a / b) does not', () => {
    assert.equal(pythonFloorDiv(768, 16), 48);
    assert.equal(pythonFloorDiv(768, 0.5), 1536);
    assert.equal(pythonFloorDiv(1, 0.1), 9); // Python: 1 // 0.1 == 9.0
    assert.equal(Math.floor(1 / 0.1), 10);
    assert.equal(pythonFloorDiv(-7, 2), -4);
    assert.equal(pythonFloorDiv(7, 3.5), 2);
  });
});
