/**
 * The BERT-family graph builder (src/onnx/bert.ts) on Hugging Face folders the tests generate,
 * against the independent float64 reference written from transformers' modeling code
 * (test/support/encoder-reference.ts): every family, padding in the batch, RoBERTa/XLM-R position
 * ids, activations, the hook points, the fused ops ORT runs, and weights as external data.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import {
  bertBackbone,
  ENCODER_INPUT_IDS,
  ENCODER_INPUT_MASK,
  ENCODER_OUTPUT,
  encoderGraph,
  encoderModelBytes,
  writeEncoderModel,
} from '../src/onnx/bert.js';
import type { EncoderHooks } from '../src/onnx/encoder-hooks.js';
import { compilePackGraph, packGraphBytes } from '../src/onnx/pack-graph.js';
import {
  GRAPH_INPUT_IDS,
  GRAPH_INPUT_MASK,
  GRAPH_OUTPUT_EMBEDDING,
} from '../src/onnx/pack-graph-contract.js';
import type { EncoderConfig, EncoderWeights } from '../src/pack/encoder-types.js';
import { readHfModel } from '../src/pack/hf-model.js';
import { Random } from '../src/util/random.js';
import {
  hfEncoderReference,
  pooledReference,
  type ReferenceHooks,
} from './support/encoder-reference.js';
import { type HfFolder, type HfFolderSpec, writeHfFolder } from './support/hf-folder.js';

const { onnx } = onnxProto;
const root = await mkdtemp(join(tmpdir(), 'bert-test-'));
after(() => rm(root, { recursive: true, force: true }));
let folders = 0;

async function folder(spec: HfFolderSpec) {
  const hf = await writeHfFolder(join(root, `m${folders++}`), spec);
  const model = await readHfModel(hf.dir);
  return { hf, ...model };
}

/** Right-padded batch of random ids (lengths per item), padded with the model's pad id. */
function batch(hf: HfFolder, lengths: number[], seed = 3) {
  const rng = new Random(seed);
  const T = Math.max(...lengths);
  // Avoid the pad id inside the text: RoBERTa treats it as padding for positions (tested apart).
  const id = () => {
    let v = hf.padTokenId;
    while (v === hf.padTokenId) v = rng.int(hf.vocabSize);
    return v;
  };
  const ids = lengths.map((n) =>
    Array.from({ length: T }, (_, t) => (t < n ? id() : hf.padTokenId)),
  );
  const mask = lengths.map((n) => Array.from({ length: T }, (_, t) => (t < n ? 1 : 0)));
  return { ids, mask, T };
}

async function run(
  model: Uint8Array | string,
  ids: number[][],
  mask: number[][],
  level: 'all' | 'disabled' = 'all',
) {
  const session = await ort.InferenceSession.create(model as Uint8Array, {
    graphOptimizationLevel: level,
    intraOpNumThreads: 1,
  });
  const B = ids.length;
  const T = ids[0]!.length;
  const out = await session.run({
    [ENCODER_INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(ids.flat(), BigInt), [B, T]),
    [ENCODER_INPUT_MASK]: new ort.Tensor('int64', BigInt64Array.from(mask.flat(), BigInt), [B, T]),
  });
  await session.release();
  const hidden = out[ENCODER_OUTPUT]!;
  assert.deepEqual(hidden.dims.slice(0, 2), [B, T]);
  return hidden.data as Float32Array;
}

function maxAbsDiff(got: Float32Array, expected: readonly Float64Array[]): number {
  const flat = expected.flatMap((e) => Array.from(e));
  assert.equal(got.length, flat.length);
  let m = 0;
  for (let i = 0; i < got.length; i++) m = Math.max(m, Math.abs(got[i]! - flat[i]!));
  return m;
}

/** Op type counts of the graph ORT runs after its optimizations (dumped with optimizedModelFilePath). */
async function optimizedOps(model: Uint8Array, hooks = false): Promise<Record<string, number>> {
  const path = join(root, `optimized-${folders++}${hooks ? '-hooks' : ''}.onnx`);
  const session = await ort.InferenceSession.create(model, {
    graphOptimizationLevel: 'extended',
    optimizedModelFilePath: path,
  });
  await session.release();
  const counts: Record<string, number> = {};
  for (const node of onnx.ModelProto.decode(await readFile(path)).graph!.node!) {
    counts[node.opType!] = (counts[node.opType!] ?? 0) + 1;
  }
  return counts;
}

describe('BERT-family graph against the float64 reference', () => {
  const cases: [string, HfFolderSpec][] = [
    ['BERT with token types and a task-model prefix', { family: 'bert', prefix: true }],
    ['RoBERTa, byte-level BPE folder', { family: 'roberta' }],
    ['XLM-R with its position offset, F16 weights', { family: 'xlm-roberta', dtype: 'F16' }],
    ['DistilBERT, BF16 weights in 3 shards', { family: 'distilbert', dtype: 'BF16', shards: 3 }],
    [
      'BERT with gelu_new (tanh GELU) and 3 heads',
      { family: 'bert', hiddenAct: 'gelu_new', hiddenSize: 48, heads: 3 },
    ],
    ['RoBERTa with relu', { family: 'roberta', hiddenAct: 'relu' }],
  ];
  for (const [name, spec] of cases) {
    test(`${name}: last_hidden_state within 1e-4 with padding in the batch`, async () => {
      const { hf, config, weights } = await folder(spec);
      const { ids, mask } = batch(hf, [9, 4, 1, 7]);
      const expected = hfEncoderReference(hf.config, hf.tensors, { ids, mask });
      const got = await run(encoderModelBytes(config, weights), ids, mask);
      const error = maxAbsDiff(got, expected);
      assert.ok(error <= 1e-4, `max abs error ${error}`);
    });
  }

  test('RoBERTa position ids: built from the ids (pad ids inside the text too), not 0..T-1', async () => {
    const { hf, config, weights } = await folder({ family: 'xlm-roberta' });
    const { ids, mask } = batch(hf, [8, 5]);
    ids[0]![3] = hf.padTokenId; // a pad id the mask attends: HF gives it position padding_idx
    const expected = hfEncoderReference(hf.config, hf.tensors, { ids, mask });
    assert.ok(
      maxAbsDiff(await run(encoderModelBytes(config, weights), ids, mask), expected) <= 1e-4,
    );
    // The classic pitfall, BERT's 0..T-1, gives other numbers: the check above can fail.
    const absolute: EncoderConfig = { ...config, positions: 'absolute' };
    const wrong = await run(encoderModelBytes(absolute, weights), ids, mask);
    assert.ok(maxAbsDiff(wrong, expected) > 1e-2);
  });

  test('BERT folds token type 0 in: leaving it out changes the states', async () => {
    const { hf, config, weights } = await folder({ family: 'bert' });
    const { ids, mask } = batch(hf, [6, 3]);
    const expected = hfEncoderReference(hf.config, hf.tensors, { ids, mask });
    const { tokenType0: _, ...without } = weights;
    assert.ok(
      maxAbsDiff(await run(encoderModelBytes(config, without), ids, mask), expected) > 1e-2,
    );
  });

  test('same numbers with ORT optimizations off, and from external data on disk', async () => {
    const { hf, config, weights } = await folder({ family: 'bert', hiddenSize: 64, heads: 4 });
    const { ids, mask } = batch(hf, [5, 2]);
    const expected = hfEncoderReference(hf.config, hf.tensors, { ids, mask });
    const bytes = encoderModelBytes(config, weights);
    assert.ok(maxAbsDiff(await run(bytes, ids, mask, 'disabled'), expected) <= 1e-4);
    const path = join(root, `external-${folders++}.onnx`);
    await writeEncoderModel(path, config, weights, { threshold: 256 });
    assert.ok(maxAbsDiff(await run(path, ids, mask), expected) <= 1e-4);
  });
});

describe('hook points', () => {
  /**
   * Adapters on both sides: a LoRA-like delta on value and intermediate (x @ A @ B, rank 2), and a
   * bottleneck after the feed-forward block that replaces LN(hidden + residual) with
   * LN(hidden + up(relu(down(hidden))) + residual). Graph and reference must agree.
   */
  function adapters(config: EncoderConfig) {
    const rng = new Random(9);
    const d = config.hiddenSize;
    const r = 2;
    const lora = new Map<
      string,
      { a: Float32Array; b: Float32Array; inSize: number; outSize: number }
    >();
    for (let l = 0; l < config.layers; l++) {
      lora.set(`${l}.value`, {
        a: rng.normals(d * r, 0.3),
        b: rng.normals(r * d, 0.3),
        inSize: d,
        outSize: d,
      });
      const f = config.intermediateSize;
      lora.set(`${l}.intermediate`, {
        a: rng.normals(d * r, 0.3),
        b: rng.normals(r * f, 0.3),
        inSize: d,
        outSize: f,
      });
    }
    const down = rng.normals(d * r, 0.3);
    const up = rng.normals(r * d, 0.3);
    const calls: string[] = [];
    const graph: EncoderHooks = {
      embeddings: (x) => {
        calls.push('embeddings');
        return x;
      },
      linear: (site, { g }) => {
        calls.push(`linear ${site.layer} ${site.module} ${site.inSize}x${site.outSize}`);
        const w = lora.get(`${site.layer}.${site.module}`);
        if (!w) return site.output;
        const xa = g.matMul(site.input, g.initializer('lora_a', w.a, [w.inSize, r]));
        return g.add(site.output, g.matMul(xa, g.initializer('lora_b', w.b, [r, w.outSize])));
      },
      block: (site, { g }) => {
        calls.push(`block ${site.layer} ${site.block}`);
        if (site.block !== 'ffn') return site.layerNorm(g.add(site.hidden, site.residual));
        const inner = g.op('Relu', [g.matMul(site.hidden, g.initializer('down', down, [d, r]))]);
        const adapted = g.add(site.hidden, g.matMul(inner, g.initializer('up', up, [r, d])));
        return site.layerNorm(g.add(adapted, site.residual));
      },
      layerOutput: (layer, x) => {
        calls.push(`layer ${layer}`);
        return x;
      },
    };
    const matmul = (
      x: Float64Array,
      w: Float32Array,
      rows: number,
      inSize: number,
      outSize: number,
    ) => {
      const y = new Float64Array(rows * outSize);
      for (let i = 0; i < rows; i++) {
        for (let o = 0; o < outSize; o++) {
          let s = 0;
          for (let k = 0; k < inSize; k++) s += x[i * inSize + k]! * w[k * outSize + o]!;
          y[i * outSize + o] = s;
        }
      }
      return y;
    };
    const reference: ReferenceHooks = {
      linear: (site) => {
        const w = lora.get(`${site.layer}.${site.module}`);
        if (!w) return site.output;
        const rows = site.input.length / site.inSize;
        const delta = matmul(matmul(site.input, w.a, rows, w.inSize, r), w.b, rows, r, w.outSize);
        return site.output.map((v, i) => v + delta[i]!);
      },
      block: (site) => {
        const rows = site.hidden.length / d;
        if (site.block !== 'ffn')
          return site.layerNorm(site.hidden.map((v, i) => v + site.residual[i]!));
        const inner = matmul(site.hidden, down, rows, d, r).map((v) => Math.max(0, v));
        const delta = matmul(inner, up, rows, r, d);
        return site.layerNorm(site.hidden.map((v, i) => v + delta[i]! + site.residual[i]!));
      },
    };
    return { graph, reference, calls };
  }

  test('adapters through the hooks match the same adapters through the reference callbacks', async () => {
    const { hf, config, weights } = await folder({ family: 'roberta', seed: 5 });
    const { ids, mask } = batch(hf, [7, 3, 5]);
    const { graph, reference, calls } = adapters(config);
    const model = encoderGraph(config, weights, graph).toModel();
    const expected = hfEncoderReference(hf.config, hf.tensors, { ids, mask }, reference);
    const got = await run(model, ids, mask);
    assert.ok(maxAbsDiff(got, expected) <= 1e-4, `max abs error ${maxAbsDiff(got, expected)}`);
    // The adapters matter: without them the reference is elsewhere.
    const plain = hfEncoderReference(hf.config, hf.tensors, { ids, mask });
    assert.ok(maxAbsDiff(got, plain) > 1e-2);
    // Every hook point, in order, once per layer and module, with the module's sizes.
    const d = config.hiddenSize;
    const f = config.intermediateSize;
    const layer = (l: number) => [
      `linear ${l} query ${d}x${d}`,
      `linear ${l} key ${d}x${d}`,
      `linear ${l} value ${d}x${d}`,
      `linear ${l} attention_output ${d}x${d}`,
      `block ${l} attention`,
      `linear ${l} intermediate ${d}x${f}`,
      `linear ${l} output ${f}x${d}`,
      `block ${l} ffn`,
      `layer ${l}`,
    ];
    assert.deepEqual(calls, ['embeddings', ...layer(0), ...layer(1)]);
  });

  test('hooks that change nothing give the plain graph numbers', async () => {
    const { hf, config, weights } = await folder({ family: 'bert' });
    const { ids, mask } = batch(hf, [6, 2]);
    const identity: EncoderHooks = {
      linear: (site) => site.output,
      block: (site, { g }) => site.layerNorm(g.add(site.residual, site.hidden)),
    };
    const plain = await run(encoderModelBytes(config, weights), ids, mask);
    const hooked = await run(encoderGraph(config, weights, identity).toModel(), ids, mask);
    let m = 0;
    for (let i = 0; i < plain.length; i++) m = Math.max(m, Math.abs(plain[i]! - hooked[i]!));
    assert.ok(m <= 1e-5, `max abs difference ${m}`);
  });
});

describe('inside the pack graph (one session: backbone, pooling, embedding)', () => {
  test('bertBackbone emitted by compilePackGraph gives the reference sentence embeddings', async () => {
    const { hf, config, weights } = await folder({ family: 'xlm-roberta', seed: 8 });
    const { ids, mask } = batch(hf, [7, 2, 5]);
    for (const pooling of [
      { mode: 'mean', normalize: true },
      { mode: 'cls', normalize: false },
    ] as const) {
      const compiled = compilePackGraph({
        backbone: bertBackbone(config, weights),
        pooling,
        groups: [],
        heads: [],
      });
      assert.equal(compiled.tokensInput, GRAPH_INPUT_IDS);
      const session = await ort.InferenceSession.create(packGraphBytes(compiled), {
        intraOpNumThreads: 1,
      });
      const B = ids.length;
      const T = ids[0]!.length;
      const out = await session.run({
        [GRAPH_INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(ids.flat(), BigInt), [B, T]),
        [GRAPH_INPUT_MASK]: new ort.Tensor('int64', BigInt64Array.from(mask.flat(), BigInt), [
          B,
          T,
        ]),
      });
      await session.release();
      const hidden = hfEncoderReference(hf.config, hf.tensors, { ids, mask });
      const want = pooledReference(
        hidden,
        mask,
        config.hiddenSize,
        pooling.mode,
        pooling.normalize,
      );
      const got = out[GRAPH_OUTPUT_EMBEDDING]!.data as Float32Array;
      assert.ok(maxAbsDiff(got, want) <= 1e-4, `${pooling.mode}: ${maxAbsDiff(got, want)}`);
    }
  });
});

describe('what ORT runs', () => {
  test('plain graph: fused Attention and BiasGelu per layer, no Erf left, no SkipLayerNormalization', async () => {
    const { config, weights } = await folder({ family: 'bert', layers: 3 });
    const ops = await optimizedOps(encoderModelBytes(config, weights));
    assert.equal(ops.Attention, 3);
    assert.equal(ops.BiasGelu, 3);
    assert.equal(ops.Erf, undefined);
    assert.equal(ops.Softmax, undefined, 'attention is one kernel');
    assert.equal(
      ops.SkipLayerNormalization,
      undefined,
      'measured slower than Add + LayerNormalization on CPU',
    );
    assert.equal(ops.LayerNormalization, 1 + 2 * 3);
  });

  test('tanh GELU runs as FastGelu; with linear hooks attention is MultiHeadAttention', async () => {
    const { config, weights } = await folder({ family: 'bert', hiddenAct: 'gelu_pytorch_tanh' });
    const ops = await optimizedOps(encoderModelBytes(config, weights));
    assert.equal(ops.FastGelu, 2);
    const hooked = await optimizedOps(
      encoderGraph(config, weights, { linear: (site) => site.output }).toModel(),
      true,
    );
    assert.equal(hooked.MultiHeadAttention, 2);
    assert.equal(hooked.Attention, undefined);
  });

  test('rejects weights that do not fit the config', async () => {
    const { config, weights } = await folder({ family: 'bert' });
    const short: EncoderWeights = { ...weights, layers: weights.layers.slice(1) };
    assert.throws(() => encoderModelBytes(config, short), /config has 2 layers, weights 1/);
    assert.throws(
      () => encoderModelBytes({ ...config, heads: 3 }, weights),
      /not divisible by heads 3/,
    );
  });
});
