/**
 * int8 backbones against float32: our encoder graph (src/onnx/bert.ts) built twice from the same
 * random weights, float32 and `quantize: 'int8'`, timed side by side in interleaved rounds in one
 * process (machine noise hits both alike), at B = 32, T = 64 (real lengths 64 down to 33: padding,
 * as the batcher leaves it), on the demo backbone's shape (d256 x 4, ffn 1024) and on d384 x 12
 * (ffn 1536: MiniLM / e5-small). Prints JSON on stdout: medians, items/s, the int8/float32 ratio
 * per shape (target >= 1.8 at B = 32), the cosine of int8 against float32 (per token and per
 * mean-pooled item), and the op types ORT runs after its optimizations (dumped optimized models).
 *
 *   npm run bench:int8 [-- --rounds 7 --threads 2 --batches 32 --shapes d256x4,d384x12]
 *                      [--matmulinteger] [--pack models/demo]
 *
 * Variants (each its own session, same weights, same input):
 *   float32        the plain encoder: Attention, Gemm / MatMul + BiasGelu
 *   int8           what `quantize: 'int8'` builds: DynamicQuantizeMatMul for every projection
 *                  (q, k, v as one [d,3d] product), MultiHeadAttention, BiasGelu
 *   int8_matmulinteger  (--matmulinteger) the int8 graph with every DynamicQuantizeMatMul
 *                  rewritten as the ONNX-standard pattern DynamicQuantizeLinear -> MatMulInteger ->
 *                  Cast -> Mul(scales) -> Add(bias), as onnxruntime's quantize_dynamic writes
 *                  QOperator models: ORT fuses it back into DynamicQuantizeMatMul (see its ops),
 *                  so the two forms run the same kernels; the builder emits the fused op directly.
 * --pack DIR (a pack with a Hugging Face backbone, e.g. models/demo): also the served path, the
 * pack as it is and a copy with backbone.quantize "int8", through the engine (the one pack graph:
 * backbone, adapters, gates, heads), paired batches of 1 and 32 of realistic sentences in
 * alternating order; with the top-1 language route and first head's label of each sentence and
 * the embedding cosine between the two.
 * The machine is shared and noisy: two variants that run the very same kernels (int8 and
 * int8_matmulinteger) have differed by up to 30% in one run here; read ratios over several runs.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { onnx as OnnxTypes } from 'onnx-proto';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { Model } from '../src/inference/model.js';
import { encoderModelBytes } from '../src/onnx/bert.js';
import { randomEncoder } from '../src/onnx/random-encoder.js';
import { MANIFEST_FILE } from '../src/pack/manifest.js';
import { Random } from '../src/util/random.js';
import { log, median, positiveInt, round2, round3, SENTENCES } from './support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '7' },
    threads: { type: 'string', default: '2' },
    seq: { type: 'string', default: '64' },
    batches: { type: 'string', default: '32' },
    shapes: { type: 'string', default: 'd256x4,d384x12' },
    matmulinteger: { type: 'boolean', default: false },
    pack: { type: 'string' },
  },
});
const ROUNDS = positiveInt('rounds', values.rounds);
const THREADS = positiveInt('threads', values.threads);
const SEQ = positiveInt('seq', values.seq);
const BATCHES = values.batches.split(',').map((b) => positiveInt('batches', b));
const SHAPES = values.shapes.split(',').map((s) => {
  const match = /^d(\d+)x(\d+)$/.exec(s);
  if (!match) throw new Error(`--shapes takes d<hidden>x<layers>, e.g. d384x12, got ${s}`);
  return { d: Number(match[1]), layers: Number(match[2]) };
});
const VOCAB = 8000;
const TARGET = 1.8;
const { onnx } = onnxProto;

type Variant = 'float32' | 'int8' | 'int8_matmulinteger';

function sessionOptions(optimizedModelFilePath?: string): ort.InferenceSession.SessionOptions {
  // What the engine uses (src/engine/engine-worker.ts).
  return {
    executionProviders: ['cpu'],
    intraOpNumThreads: THREADS,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: '0' } } },
    ...(optimizedModelFilePath ? { optimizedModelFilePath } : {}),
  };
}

function feeds(batch: number): Record<string, ort.Tensor> {
  const rng = new Random(batch);
  const n = batch * SEQ;
  // Real lengths from SEQ down to SEQ/2 + 1: padding in the batch, as the batcher leaves it.
  const length = (b: number) => SEQ - Math.floor((b * SEQ) / 2 / Math.max(batch, 1));
  return {
    input_ids: new ort.Tensor(
      'int64',
      BigInt64Array.from({ length: n }, () => BigInt(1 + rng.int(VOCAB - 1))),
      [batch, SEQ],
    ),
    attention_mask: new ort.Tensor(
      'int64',
      BigInt64Array.from({ length: n }, (_, i) => (i % SEQ < length((i / SEQ) | 0) ? 1n : 0n)),
      [batch, SEQ],
    ),
  };
}

/**
 * The int8 model with every com.microsoft.DynamicQuantizeMatMul(A, B, b_scale, b_zp?, bias?)
 * written as DynamicQuantizeLinear(A) -> MatMulInteger(a_q, B, a_zp) -> Cast(float) ->
 * Mul(a_scale * b_scale) -> Add(bias): the same arithmetic in ONNX-standard ops.
 */
function asMatMulInteger(model: Uint8Array): Uint8Array {
  const proto = onnx.ModelProto.decode(model);
  const graph = proto.graph!;
  const nodes: OnnxTypes.INodeProto[] = [];
  let n = 0;
  for (const node of graph.node!) {
    if (node.opType !== 'DynamicQuantizeMatMul') {
      nodes.push(node);
      continue;
    }
    const [a, b, scale, , bias] = node.input!;
    const p = `mmi${n++}`;
    const out = node.output![0]!;
    nodes.push(
      { opType: 'DynamicQuantizeLinear', input: [a!], output: [`${p}_q`, `${p}_s`, `${p}_z`] },
      { opType: 'MatMulInteger', input: [`${p}_q`, b!, `${p}_z`], output: [`${p}_acc`] },
      {
        opType: 'Cast',
        input: [`${p}_acc`],
        output: [`${p}_accf`],
        attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: 1 }],
      },
      { opType: 'Mul', input: [`${p}_s`, scale!], output: [`${p}_scale`] },
      {
        opType: 'Mul',
        input: [`${p}_accf`, `${p}_scale`],
        output: [bias ? `${p}_scaled` : out],
      },
      ...(bias ? [{ opType: 'Add', input: [`${p}_scaled`, bias], output: [out] }] : []),
    );
  }
  graph.node = nodes;
  return onnx.ModelProto.encode(proto).finish();
}

function opCounts(model: OnnxTypes.IModelProto): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const node of model.graph!.node!) {
    const key = node.domain ? `${node.domain}.${node.opType}` : node.opType!;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).sort((a, b) => b[1] - a[1]));
}

/** Cosine per real token and per mean-pooled item of [B,T,d] outputs. */
function cosines(a: Float32Array, b: Float32Array, mask: BigInt64Array, d: number, T: number) {
  const cos = (x: ArrayLike<number>, y: ArrayLike<number>, o: number) => {
    let xy = 0;
    let xx = 0;
    let yy = 0;
    for (let j = o; j < o + d; j++) {
      xy += x[j]! * y[j]!;
      xx += x[j]! * x[j]!;
      yy += y[j]! * y[j]!;
    }
    return xy / Math.sqrt(xx * yy);
  };
  const tokens: number[] = [];
  const items: number[] = [];
  for (let item = 0; item < mask.length / T; item++) {
    const pa = new Float64Array(d);
    const pb = new Float64Array(d);
    for (let t = item * T; t < (item + 1) * T; t++) {
      if (mask[t] !== 1n) continue;
      tokens.push(cos(a, b, t * d));
      for (let j = 0; j < d; j++) {
        pa[j] = pa[j]! + a[t * d + j]!;
        pb[j] = pb[j]! + b[t * d + j]!;
      }
    }
    items.push(cos(pa, pb, 0));
  }
  const stats = (xs: number[]) => ({
    mean: Number((xs.reduce((s, x) => s + x, 0) / xs.length).toFixed(6)),
    min: Number(Math.min(...xs).toFixed(6)),
  });
  return { token: stats(tokens), pooled: stats(items) };
}

/** The pack served float32 and int8 through the engine, side by side (see the header). */
async function servedPack(packDir: string, dir: string) {
  const manifest = JSON.parse(await readFile(join(packDir, MANIFEST_FILE), 'utf8'));
  if (manifest.backbone.huggingface === undefined) {
    throw new Error(`--pack ${packDir}: backbone.quantize needs a huggingface backbone`);
  }
  const int8Dir = join(dir, 'int8-pack');
  await cp(packDir, int8Dir, { recursive: true, filter: (src) => !src.includes('/.cache') });
  manifest.backbone = { ...manifest.backbone, quantize: 'int8' };
  await writeFile(join(int8Dir, MANIFEST_FILE), JSON.stringify(manifest));
  log(`[bench] serving ${packDir} float32 and int8 (building the int8 pack graph)`);
  const float = await Model.open({ packDir, log: () => undefined });
  const int8 = await Model.open({ packDir: int8Dir, log: () => undefined });
  try {
    const items = await float.prepare({ inputs: SENTENCES });
    const batches: Record<string, unknown> = {};
    for (const batch of [1, 32]) {
      const times = { float: [] as number[], int8: [] as number[], ratio: [] as number[] };
      for (let r = -4; r < (batch === 1 ? 200 : 3 * ROUNDS); r++) {
        const chosen = Array.from(
          { length: batch },
          (_, j) => items[((r + 4) * batch + j) % items.length]!,
        );
        const order = r % 2 === 0 ? [float, int8] : [int8, float];
        const ms = new Map<Model, number>();
        for (const model of order) {
          const t0 = performance.now();
          await model.engine.run(chosen);
          ms.set(model, performance.now() - t0);
        }
        if (r < 0) continue; // warm-up
        times.float.push(ms.get(float)!);
        times.int8.push(ms.get(int8)!);
        times.ratio.push(ms.get(float)! / ms.get(int8)!);
      }
      batches[`batch_${batch}`] = {
        float32_ms: round2(median(times.float)),
        int8_ms: round2(median(times.int8)),
        int8_speedup_paired: round3(median(times.ratio)),
      };
    }
    const a = await float.infer({ inputs: SENTENCES });
    const b = await int8.infer({ inputs: SENTENCES });
    const group = float.pack.groups[0]?.id;
    const head = float.pack.heads[0]?.id;
    const same = a.filter(
      (r, i) =>
        (group === undefined ||
          r.routing[group]?.[0]?.adapter === b[i]!.routing[group]?.[0]?.adapter) &&
        (head === undefined || r.outputs[head]?.label === b[i]!.outputs[head]?.label),
    ).length;
    const cos = a.map((r, i) => {
      const x = r.embedding;
      const y = b[i]!.embedding;
      let xy = 0;
      let xx = 0;
      let yy = 0;
      for (let j = 0; j < x.length; j++) {
        xy += x[j]! * y[j]!;
        xx += x[j]! * x[j]!;
        yy += y[j]! * y[j]!;
      }
      return xy / Math.sqrt(xx * yy);
    });
    return {
      pack: packDir,
      ...batches,
      sentences: SENTENCES.length,
      same_route_and_label: same,
      embedding_cosine_min: Number(Math.min(...cos).toFixed(6)),
    };
  } finally {
    await float.close();
    await int8.close();
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-int8-'));
  try {
    interface Config {
      shape: string;
      variant: Variant;
      batch: number;
      session: ort.InferenceSession;
      times: number[];
    }
    const configs: Config[] = [];
    const kernels: Record<string, Record<string, unknown>> = {};
    const variants: Variant[] = ['float32', 'int8'];
    if (values.matmulinteger) variants.push('int8_matmulinteger');
    for (const { d, layers } of SHAPES) {
      const shape = `d${d}x${layers}`;
      const f = 4 * d;
      log(`[bench] building ${shape} (heads ${d / 64}, ffn ${f}): ${variants.join(', ')}`);
      const { config, weights } = randomEncoder({
        vocabSize: VOCAB,
        hiddenSize: d,
        layers,
        heads: d / 64,
        ffnSize: f,
        maxLength: 512,
        seed: 1,
      });
      const int8 = encoderModelBytes(config, weights, { quantize: 'int8' });
      const models: Record<Variant, () => Uint8Array> = {
        float32: () => encoderModelBytes(config, weights),
        int8: () => int8,
        int8_matmulinteger: () => asMatMulInteger(int8),
      };
      kernels[shape] = {};
      for (const variant of variants) {
        const bytes = models[variant]();
        const optimized = join(dir, `${shape}.${variant}.onnx`);
        const session = await ort.InferenceSession.create(bytes, sessionOptions(optimized));
        kernels[shape]![variant] = {
          emitted: opCounts(onnx.ModelProto.decode(bytes)),
          ort_runs: opCounts(onnx.ModelProto.decode(await readFile(optimized))),
        };
        for (const batch of BATCHES) configs.push({ shape, variant, batch, session, times: [] });
      }
    }
    log(`[bench] warm-up, then ${ROUNDS} interleaved rounds of ${configs.length} configurations`);
    const outputs = new Map<Config, Float32Array>();
    for (const c of configs) {
      const out = await c.session.run(feeds(c.batch));
      outputs.set(c, out.last_hidden_state!.data as Float32Array);
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of configs) {
        const input = feeds(c.batch);
        const t0 = performance.now();
        await c.session.run(input);
        c.times.push(performance.now() - t0);
      }
      log(`[bench] round ${round + 1}/${ROUNDS}`);
    }
    const served = values.pack === undefined ? undefined : await servedPack(values.pack, dir);
    const results = [];
    for (const { d, layers } of SHAPES) {
      const shape = `d${d}x${layers}`;
      for (const batch of BATCHES) {
        const find = (variant: Variant) =>
          configs.find((c) => c.shape === shape && c.batch === batch && c.variant === variant);
        const float = find('float32')!;
        const floatMs = median(float.times);
        const mask = feeds(batch).attention_mask!.data as BigInt64Array;
        const row: Record<string, unknown> = {
          shape,
          batch,
          seq: SEQ,
          float32_ms: round2(floatMs),
          float32_items_per_s: round2((batch * 1000) / floatMs),
        };
        for (const variant of variants.slice(1)) {
          const c = find(variant)!;
          const ms = median(c.times);
          row[`${variant}_ms`] = round2(ms);
          row[`${variant}_items_per_s`] = round2((batch * 1000) / ms);
          row[`${variant}_speedup`] = round3(floatMs / ms);
        }
        row.int8_cosine = cosines(outputs.get(find('int8')!)!, outputs.get(float)!, mask, d, SEQ);
        results.push(row);
      }
    }
    const largest = Math.max(...BATCHES);
    process.stdout.write(
      `${JSON.stringify(
        {
          bench: 'int8',
          machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown' },
          settings: {
            rounds: ROUNDS,
            threads: THREADS,
            seq: SEQ,
            vocab: VOCAB,
            ort: ort.env.versions.common,
          },
          results,
          target: {
            rule: `int8 items/s >= ${TARGET} x float32 items/s at B = ${largest}`,
            met: results
              .filter((r) => r.batch === largest)
              .every((r) => (r.int8_speedup as number) >= TARGET),
          },
          kernels,
          ...(served === undefined ? {} : { served }),
        },
        null,
        2,
      )}\n`,
    );
    for (const session of new Set(configs.map((c) => c.session))) await session.release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 1;
});
