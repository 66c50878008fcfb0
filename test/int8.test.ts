/**
 * int8 backbones (src/onnx/quantize.ts, src/onnx/bert.ts `quantize: 'int8'`): the graph ORT runs
 * against the plain-JS reference of onnxruntime's int8 arithmetic (test/support/int8-reference.ts)
 * and against the float32 graph, with padding in the batch; the kernels ORT runs; the cache key;
 * the manifest field and the command-line flags with their errors; a quantized ONNX export.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { Model } from '../src/inference/model.js';
import { prepareEngineGraph } from '../src/inference/pack-graph-plan.js';
import {
  ENCODER_INPUT_IDS,
  ENCODER_INPUT_MASK,
  ENCODER_OUTPUT,
  emitProjection,
  encoderGraph,
  encoderModelBytes,
  writeEncoderModel,
} from '../src/onnx/bert.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import { INT8_WEIGHT_MAX, quantizeColumns, roundHalfEven } from '../src/onnx/quantize.js';
import { randomEncoder } from '../src/onnx/random-encoder.js';
import { createPack } from '../src/pack/create.js';
import { PackError, type PackErrorCode } from '../src/pack/errors.js';
import { readHfModel } from '../src/pack/hf-model.js';
import { loadPack } from '../src/pack/load.js';
import { MANIFEST_FILE } from '../src/pack/manifest.js';
import { Random } from '../src/util/random.js';
import { writeHfFolder } from './support/hf-folder.js';
import {
  int8Linear,
  quantizeActivations,
  quantizeWeights,
  referenceEncoder,
} from './support/int8-reference.js';

const { onnx } = onnxProto;
const run = promisify(execFile);
const root = await mkdtemp(join(tmpdir(), 'int8-test-'));
after(() => rm(root, { recursive: true, force: true }));
let count = 0;
const fresh = (what: string) => join(root, `${what}${count++}`);

const SESSION: ort.InferenceSession.SessionOptions = {
  graphOptimizationLevel: 'all',
  intraOpNumThreads: 1,
};

async function runEncoder(model: Uint8Array, ids: number[][], mask: number[][]) {
  const session = await ort.InferenceSession.create(model, SESSION);
  try {
    const B = ids.length;
    const T = ids[0]!.length;
    const out = await session.run({
      [ENCODER_INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(ids.flat(), BigInt), [B, T]),
      [ENCODER_INPUT_MASK]: new ort.Tensor('int64', BigInt64Array.from(mask.flat(), BigInt), [
        B,
        T,
      ]),
    });
    return out[ENCODER_OUTPUT]!.data as Float32Array;
  } finally {
    await session.release();
  }
}

/** Op types (domain-qualified) of the graph ORT runs after its optimizations. */
async function optimizedOps(model: Uint8Array | string): Promise<Record<string, number>> {
  const path = `${fresh('optimized')}.onnx`;
  const session = await ort.InferenceSession.create(model as Uint8Array, {
    graphOptimizationLevel: 'extended',
    optimizedModelFilePath: path,
  });
  await session.release();
  const counts: Record<string, number> = {};
  for (const node of onnx.ModelProto.decode(await readFile(path)).graph!.node!) {
    const key = node.domain ? `${node.domain}.${node.opType}` : node.opType!;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

/** Right-padded random ids: lengths per item, pad id 0 after them. */
function batch(lengths: number[], vocab: number, seed: number) {
  const rng = new Random(seed);
  const T = Math.max(...lengths);
  const ids = lengths.map((n) =>
    Array.from({ length: T }, (_, t) => (t < n ? 1 + rng.int(vocab - 1) : 0)),
  );
  const mask = lengths.map((n) => Array.from({ length: T }, (_, t) => (t < n ? 1 : 0)));
  return { ids, mask, T };
}

function cosine(a: ArrayLike<number>, b: ArrayLike<number>, offset: number, n: number): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let j = offset; j < offset + n; j++) {
    ab += a[j]! * b[j]!;
    aa += a[j]! * a[j]!;
    bb += b[j]! * b[j]!;
  }
  return ab / Math.sqrt(aa * bb);
}

/** Largest |a - b| over the real tokens (mask 1) of [B*T*d] tensors. */
function maxDiffReal(a: ArrayLike<number>, b: ArrayLike<number>, mask: number[][], d: number) {
  let m = 0;
  mask.flat().forEach((real, t) => {
    if (real !== 1) return;
    for (let j = t * d; j < (t + 1) * d; j++) m = Math.max(m, Math.abs(a[j]! - b[j]!));
  });
  return m;
}

describe('int8 weights', () => {
  test('per column, symmetric, 7-bit: the reference quantizer gives the same values', () => {
    const rng = new Random(11);
    const K = 48;
    const N = 20;
    const w = rng.normals(K * N, 0.5);
    for (let k = 0; k < K; k++) w[k * N + 3] = 0; // an all-zero column
    w[5 * N + 7] = 40; // an outlier: only its own column's scale grows
    const q = quantizeColumns(w, K, N);
    const ref = quantizeWeights(w, K, N);
    assert.deepEqual(q.values, ref.values);
    assert.deepEqual(q.scales, ref.scales);
    assert.equal(q.scales[3], 1);
    for (let n = 0; n < N; n++) {
      let largest = 0;
      for (let k = 0; k < K; k++) {
        const v = q.values[k * N + n]!;
        largest = Math.max(largest, Math.abs(v));
        assert.ok(Math.abs(v * q.scales[n]! - w[k * N + n]!) <= q.scales[n]! / 2 + 1e-7);
      }
      assert.equal(largest, n === 3 ? 0 : INT8_WEIGHT_MAX, `column ${n}`);
    }
    assert.ok(q.scales[7]! > 10 * q.scales[6]!);
    assert.deepEqual(
      [0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6].map(roundHalfEven),
      [0, 2, 2, -0, -2, 2, -3],
    );
    assert.throws(() => quantizeColumns(w, K, N + 1), /expected 48 x 21/);
  });
});

describe('one int8 projection against the reference of the kernel math', () => {
  const K = 40;
  const N = 24;
  const R = 9;
  const rng = new Random(3);
  const weight = rng.normals(K * N, 0.2);
  const bias = rng.normals(N, 0.1);

  async function project(x: Float32Array, withBias: boolean, quantize: 'none' | 'int8') {
    const g = new GraphBuilder();
    const input = g.input('x', 'float32', ['rows', K]);
    const y = emitProjection(
      g,
      input,
      { weight, bias: withBias ? bias : undefined, rows: K, cols: N },
      'proj',
      quantize,
    );
    g.output(y, 'y', 'float32', ['rows', N]);
    const session = await ort.InferenceSession.create(g.toModel(), SESSION);
    try {
      const out = await session.run({ x: new ort.Tensor('float32', x, [x.length / K, K]) });
      return out.y!.data as Float32Array;
    } finally {
      await session.release();
    }
  }

  /** Every output within a quarter of its column's quantum of the reference. */
  function assertMatches(got: Float32Array, x: Float32Array, withBias: boolean) {
    const rows = x.length / K;
    const ref = int8Linear(x, rows, K, weight, withBias ? bias : undefined, N);
    for (let i = 0; i < got.length; i++) {
      const quantum = ref.quantum[i % N]!;
      assert.ok(
        Math.abs(got[i]! - ref.y[i]!) <= quantum / 4,
        `row ${Math.floor(i / N)} col ${i % N}: ${got[i]} vs ${ref.y[i]} (quantum ${quantum})`,
      );
    }
  }

  test('equals the integer math to within float rounding, with and without a bias', async () => {
    // Rows 0-5 are "real", rows 6-8 stand for padding rows of the same batch tensor.
    const x = rng.normals(R * K, 1);
    for (let i = 0; i < K; i++) x[2 * K + i] = Math.abs(x[2 * K + i]!) * 3; // a skewed row
    for (const withBias of [true, false]) {
      assertMatches(await project(x, withBias, 'int8'), x, withBias);
    }
    // The float32 projection of the same builder is the plain product.
    const plain = await project(x, true, 'none');
    const exact = int8Linear(x, R, K, weight, bias, N); // only for its shape
    assert.equal(plain.length, exact.y.length);
    for (let r = 0; r < R; r++) {
      for (let n = 0; n < N; n++) {
        let s = bias[n]!;
        for (let k = 0; k < K; k++) s += x[r * K + k]! * weight[k * N + n]!;
        assert.ok(Math.abs(plain[r * N + n]! - s) <= 1e-5);
      }
    }
  });

  test('the activation range is the whole tensor: padding rows move the real rows, as the reference says', async () => {
    const x = rng.normals(R * K, 1);
    const wide = Float32Array.from(x);
    for (let i = 6 * K; i < R * K; i++) wide[i] = wide[i]! * 8; // louder padding rows
    assert.notEqual(quantizeActivations(x).scale, quantizeActivations(wide).scale);
    const a = await project(x, true, 'int8');
    const b = await project(wide, true, 'int8');
    assertMatches(b, wide, true);
    let moved = 0;
    for (let i = 0; i < 6 * N; i++) moved = Math.max(moved, Math.abs(a[i]! - b[i]!));
    assert.ok(moved > 1e-3, `real rows moved by ${moved}`);
  });
});

describe('the int8 encoder', () => {
  // Weights 5x BERT's init: the quantization error is then well above float noise, so the
  // comparison with the reference tells int8 arithmetic from float arithmetic.
  const { config, weights } = randomEncoder({
    vocabSize: 60,
    hiddenSize: 32,
    layers: 2,
    heads: 2,
    ffnSize: 64,
    maxLength: 16,
    seed: 5,
    initStd: 0.1,
  });
  const d = config.hiddenSize;
  const { ids, mask } = batch([9, 5, 2], config.vocabSize, 8);

  test('matches the reference of the kernels to float rounding, with padding; cosine >= 0.999 per token', async () => {
    const int8 = await runEncoder(
      encoderModelBytes(config, weights, { quantize: 'int8' }),
      ids,
      mask,
    );
    const float = await runEncoder(encoderModelBytes(config, weights), ids, mask);
    const refFloat = referenceEncoder(config, weights, ids, mask, false);
    const refInt8 = referenceEncoder(config, weights, ids, mask, true);
    // The reference itself: its float path is our float graph.
    assert.ok(maxDiffReal(float, refFloat, mask, d) <= 1e-4);
    const quantizationError = maxDiffReal(int8, float, mask, d);
    const modelError = maxDiffReal(int8, refInt8, mask, d);
    // Measured: 2.4e-2 from float32, 4.8e-7 from the reference (float rounding only).
    assert.ok(quantizationError > 5e-3, `int8 vs float32 ${quantizationError}`);
    assert.ok(
      modelError <= 1e-4 && modelError <= quantizationError / 100,
      `int8 vs its reference ${modelError}, vs float32 ${quantizationError}`,
    );
    mask.flat().forEach((real, t) => {
      if (real === 1) assert.ok(cosine(int8, float, t * d, d) >= 0.999, `token ${t}`);
    });
  });

  test('runs DynamicQuantizeMatMul for every projection: no float32 projection is left', async () => {
    const ops = await optimizedOps(encoderModelBytes(config, weights, { quantize: 'int8' }));
    assert.equal(ops['com.microsoft.DynamicQuantizeMatMul'], 4 * config.layers);
    assert.equal(ops['com.microsoft.MultiHeadAttention'], config.layers);
    assert.equal(ops['com.microsoft.BiasGelu'], config.layers);
    for (const op of ['MatMul', 'Gemm', 'com.microsoft.FusedMatMul', 'com.microsoft.Attention']) {
      assert.equal(ops[op], undefined, op);
    }
  });

  test('with identity linear hooks (the in-layer adapter path): the same values', async () => {
    const plain = await runEncoder(
      encoderModelBytes(config, weights, { quantize: 'int8' }),
      ids,
      mask,
    );
    const hooked = encoderGraph(
      config,
      weights,
      { linear: (site) => site.output },
      { quantize: 'int8' },
    ).toModel();
    const ops = await optimizedOps(hooked);
    assert.equal(ops['com.microsoft.DynamicQuantizeMatMul'], 4 * config.layers);
    assert.equal(ops['com.microsoft.BiasGelu'], undefined); // the hooks see the biased output
    assert.ok(maxDiffReal(await runEncoder(hooked, ids, mask), plain, mask, d) <= 1e-4);
  });
});

async function expectPackError(
  promise: Promise<unknown>,
  code: PackErrorCode,
  file: string,
  field: string,
  message: RegExp,
): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof PackError, `expected a PackError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.equal(error.file, file);
    assert.equal(error.field, field);
    assert.match(error.message, message);
    return true;
  });
}

describe('backbone.quantize in a pack', () => {
  test('builds the pack graph with an int8 backbone under its own cache key; serves it', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert', seed: 4 });
    const float = await createPack({ backbone: hf.dir, out: fresh('pack') });
    const int8 = await createPack({ backbone: hf.dir, out: fresh('pack'), quantize: 'int8' });
    assert.equal(int8.manifest.backbone.quantize, 'int8');
    assert.equal(float.manifest.backbone.quantize, undefined);
    assert.ok(int8.backbone.kind === 'huggingface' && int8.backbone.quantize === 'int8');
    assert.ok(float.backbone.kind === 'huggingface' && float.backbone.quantize === 'none');
    // The pack graphs (backbone built in) in one cache folder, as <pack name>-<key>/model.onnx.
    const cacheDir = fresh('cache');
    const graphOf = async (dir: string) => {
      const pack = await loadPack(dir);
      const graph = await prepareEngineGraph(pack, { cacheDir });
      const path = graph.worker.model as string;
      return { path, key: basename(dirname(path)).slice(pack.manifest.name.length + 1) };
    };
    const floatGraph = await graphOf(float.dir);
    const int8Graph = await graphOf(int8.dir);
    assert.match(int8Graph.key, /^[0-9a-f]{32}$/);
    assert.notEqual(floatGraph.key, int8Graph.key);
    const floatOps = await optimizedOps(floatGraph.path);
    const int8Ops = await optimizedOps(int8Graph.path);
    assert.equal(floatOps['com.microsoft.DynamicQuantizeMatMul'], undefined);
    assert.equal(int8Ops['com.microsoft.DynamicQuantizeMatMul'], 4 * 2); // 2 layers
    // quantize "none" written out is the default: the same key as without the field.
    const manifestPath = join(float.dir, MANIFEST_FILE);
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    manifest.backbone.quantize = 'none';
    await writeFile(manifestPath, JSON.stringify(manifest));
    assert.equal((await graphOf(float.dir)).key, floatGraph.key);

    // Served through the engine: close to the float32 pack's embeddings.
    const ids = [
      [2, 9, 17, 23, 3],
      [2, 30, 3],
    ];
    const embeddings: number[][][] = [];
    for (const pack of [float, int8]) {
      const model = await Model.open({
        packDir: pack.dir,
        engine: { workers: 1, intraOpThreads: 1 },
        log: () => undefined,
      });
      try {
        const results = await model.infer({ inputs: [], tokenIds: ids });
        embeddings.push(results.map((r) => Array.from(r.embedding)));
      } finally {
        await model.close();
      }
    }
    embeddings[0]!.forEach((e, i) => {
      const c = cosine(e, embeddings[1]![i]!, 0, e.length);
      assert.ok(c >= 0.99 && c < 1, `item ${i}: cosine ${c}`);
    });
  });

  test('quantize is refused for an ONNX file or export, and must be none or int8', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert' });
    const pack = await createPack({ backbone: hf.dir, out: fresh('pack') });
    const manifestPath = join(pack.dir, MANIFEST_FILE);
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    const edit = async (backbone: Record<string, unknown>) =>
      writeFile(manifestPath, JSON.stringify({ ...manifest, backbone }));
    await edit({ huggingface: 'backbone', quantize: 'int4' });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone/quantize',
      /must be one of "none", "int8"/,
    );
    await writeFile(join(pack.dir, 'x.onnx'), '');
    await edit({ file: 'x.onnx', hidden_size: 32, max_length: 8, quantize: 'int8' });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone/quantize',
      /only for a huggingface backbone.*an ONNX file is run as it is/,
    );
    await mkdir(join(pack.dir, 'export'));
    await edit({ onnx_export: 'export', hidden_size: 32, max_length: 8, quantize: 'int8' });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone/quantize',
      /set variant "quantized"/,
    );
    await assert.rejects(
      createPack({ backbone: hf.dir, kind: 'onnx-export', out: fresh('pack'), quantize: 'int8' }),
      /quantize 'int8' is for a Hugging Face folder/,
    );
  });

  test('a quantized export (model_quantized.onnx with int8 ops) is served as it is', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert', seed: 6 });
    const dir = fresh('export');
    await mkdir(join(dir, 'onnx'), { recursive: true });
    const { config, weights } = await readHfModel(hf.dir);
    await writeEncoderModel(join(dir, 'onnx', 'model.onnx'), config, weights);
    await writeEncoderModel(join(dir, 'onnx', 'model_quantized.onnx'), config, weights, {
      quantize: 'int8',
    });
    for (const file of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      await writeFile(join(dir, file), await readFile(join(hf.dir, file)));
    }
    const results: number[][][] = [];
    for (const variant of ['default', 'quantized'] as const) {
      const pack = await createPack({
        backbone: dir,
        kind: 'onnx-export',
        variant,
        out: fresh('pack'),
      });
      assert.ok(pack.backbone.kind === 'onnx-export');
      assert.match(
        pack.backbone.path,
        variant === 'quantized' ? /model_quantized\.onnx$/ : /model\.onnx$/,
      );
      const model = await Model.open({
        packDir: pack.dir,
        engine: { workers: 1, intraOpThreads: 1 },
        log: () => undefined,
      });
      try {
        const answers = await model.infer({ inputs: ['The weather is good today.', 'Hello'] });
        results.push(answers.map((r) => Array.from(r.embedding)));
      } finally {
        await model.close();
      }
    }
    results[0]!.forEach((e, i) => {
      const c = cosine(e, results[1]![i]!, 0, e.length);
      assert.ok(c >= 0.99 && c < 1, `item ${i}: cosine ${c}`);
    });
  });
});

describe('command-line flags', () => {
  const fail = (args: string[]) =>
    run('node', args).then(
      () => assert.fail(`${args.join(' ')} succeeded`),
      (error: { code: number; stderr: string }) => error,
    );

  test('pack create --quantize int8 writes backbone.quantize and builds the int8 graph; bad values are usage errors', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert' });
    const out = fresh('pack');
    const created = await run('node', [
      'dist/src/tools/pack.js',
      'create',
      '--backbone',
      hf.dir,
      '--out',
      out,
      '--quantize',
      'int8',
    ]);
    assert.match(created.stderr, /huggingface \(int8\) backbone/);
    const graph = /\[pack\] pack graph: (\S+)/.exec(created.stderr)?.[1];
    assert.ok(graph !== undefined, created.stderr);
    assert.equal((await optimizedOps(graph))['com.microsoft.DynamicQuantizeMatMul'], 4 * 2);
    const manifest = JSON.parse(await readFile(join(out, MANIFEST_FILE), 'utf8'));
    assert.equal(manifest.backbone.quantize, 'int8');

    const bad = await fail([
      'dist/src/tools/pack.js',
      'create',
      '--backbone',
      hf.dir,
      '--out',
      fresh('pack'),
      '--quantize',
      'int4',
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--quantize must be one of none, int8/);
    const exported = await fail([
      'dist/src/tools/pack.js',
      'create',
      '--backbone',
      hf.dir,
      '--out',
      fresh('pack'),
      '--onnx-export',
      '--quantize',
      'int8',
    ]);
    assert.equal(exported.code, 2);
    assert.match(exported.stderr, /--quantize is for a Hugging Face folder/);
  });

  test('build-demo-pack --quantize takes none or int8', async () => {
    const bad = await fail([
      'dist/src/tools/build-demo-pack.js',
      '--out',
      fresh('demo'),
      '--quantize',
      'fp16',
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--quantize must be one of none, int8, got fp16/);
  });
});
