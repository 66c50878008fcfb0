/**
 * Backbone throughput: our BERT-family graph (src/onnx/bert.ts) next to onnxruntime running the
 * same dense MatMuls alone (the GEMM ceiling of this machine), at B = 1, 8, 32 and T = 64, for
 * d384 x 12 layers (MiniLM / e5-small shape) and d768 x 12 layers (BERT-base shape), random
 * weights. Every configuration runs in interleaved rounds in one process, so machine noise hits
 * them alike; medians per configuration and their ratio are printed as JSON on stdout, with the
 * op types ORT runs after its graph optimizations (which fused ops fired).
 *
 *   npm run bench:backbone [-- --rounds 5 --threads 2 --seq 64 --batches 1,8,32 --hooks]
 *
 * The ceiling graph: per layer x @ Wqkv [d,3d], its first d columns @ Wo [d,d], @ W1 [d,f],
 * @ W2 [f,d], chained (the encoder's projections, nothing else: no attention, no LayerNorm, no
 * activation), with variance-preserving weights so that no value drifts into denormals. Target:
 * encoder >= 0.7 of the ceiling's items/s at B = 32. --hooks also times the graph with identity
 * hooks (the in-layer adapter path: q, k, v apart, MultiHeadAttention) at the largest batch.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { encoderGraph, encoderModelBytes } from '../src/onnx/bert.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import { randomEncoder } from '../src/onnx/random-encoder.js';
import { Random } from '../src/util/random.js';
import { log, median, positiveInt, round2, round3 } from './support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    threads: { type: 'string', default: '2' },
    seq: { type: 'string', default: '64' },
    batches: { type: 'string', default: '1,8,32' },
    shapes: { type: 'string', default: 'd384x12,d768x12' },
    hooks: { type: 'boolean', default: false },
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
const { onnx } = onnxProto;

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

/** The encoder's dense projections alone, chained (see the header). */
function ceilingModel(d: number, layers: number, f: number): Uint8Array {
  const rng = new Random(7);
  const g = new GraphBuilder();
  const ids = g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const table = g.initializer('table', rng.normals(VOCAB * d, 1), [VOCAB, d]);
  let x = g.reshape(g.gather(table, ids), [-1, d]); // [N,d]
  const w = (rows: number, cols: number) =>
    g.initializer('w', rng.normals(rows * cols, 1 / Math.sqrt(rows)), [rows, cols]);
  for (let l = 0; l < layers; l++) {
    const qkv = g.matMul(x, w(d, 3 * d)); // [N,3d]
    const q = g.op('Slice', [qkv, g.constInt64([0]), g.constInt64([d]), g.constInt64([1])]); // [N,d]
    x = g.matMul(g.matMul(g.matMul(q, w(d, d)), w(d, f)), w(f, d)); // [N,d]
  }
  g.output(x, 'out', 'float32', ['tokens', d]);
  return g.toModel();
}

function feeds(batch: number): Record<string, ort.Tensor> {
  const rng = new Random(batch);
  const n = batch * SEQ;
  // Real lengths from SEQ down to SEQ/2: padding in the batch, as the batcher leaves it.
  const mask = BigInt64Array.from({ length: n }, (_, i) => {
    const length = SEQ - Math.floor(((i / SEQ) | 0) * (SEQ / 2 / Math.max(batch, 1)));
    return i % SEQ < length ? 1n : 0n;
  });
  return {
    input_ids: new ort.Tensor(
      'int64',
      BigInt64Array.from({ length: n }, () => BigInt(rng.int(VOCAB))),
      [batch, SEQ],
    ),
    attention_mask: new ort.Tensor('int64', mask, [batch, SEQ]),
  };
}

async function opTypes(path: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const node of onnx.ModelProto.decode(await readFile(path)).graph!.node!) {
    const key = node.domain ? `${node.domain}.${node.opType}` : node.opType!;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).sort((a, b) => b[1] - a[1]));
}

function emittedOps(model: Uint8Array): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const node of onnx.ModelProto.decode(model).graph!.node!) {
    const key = node.domain ? `${node.domain}.${node.opType}` : node.opType!;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).sort((a, b) => b[1] - a[1]));
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-backbone-'));
  try {
    interface Config {
      shape: string;
      kind: 'encoder' | 'ceiling' | 'hooked';
      batch: number;
      session: ort.InferenceSession;
      times: number[];
      flops: number;
    }
    const configs: Config[] = [];
    const fusions: Record<string, unknown> = {};
    for (const { d, layers } of SHAPES) {
      const shape = `d${d}x${layers}`;
      const f = 4 * d;
      const heads = d / 64;
      log(`[bench] building ${shape} (heads ${heads}, ffn ${f})`);
      const { config, weights } = randomEncoder({
        vocabSize: VOCAB,
        hiddenSize: d,
        layers,
        heads,
        ffnSize: f,
        maxLength: 512,
        seed: 1,
      });
      const encoderBytes = encoderModelBytes(config, weights);
      const optimized = join(dir, `${shape}.optimized.onnx`);
      const encoder = await ort.InferenceSession.create(encoderBytes, sessionOptions(optimized));
      fusions[shape] = { emitted: emittedOps(encoderBytes), ort_runs: await opTypes(optimized) };
      const ceiling = await ort.InferenceSession.create(
        ceilingModel(d, layers, f),
        sessionOptions(),
      );
      const hooked = values.hooks
        ? await ort.InferenceSession.create(
            encoderGraph(config, weights, { linear: (site) => site.output }).toModel(),
            sessionOptions(),
          )
        : undefined;
      // MACs per token of the dense projections: 4 d^2 + 2 d f per layer.
      const flopsPerToken = 2 * layers * (4 * d * d + 2 * d * f);
      for (const batch of BATCHES) {
        const flops = flopsPerToken * batch * SEQ;
        configs.push({ shape, kind: 'encoder', batch, session: encoder, times: [], flops });
        configs.push({ shape, kind: 'ceiling', batch, session: ceiling, times: [], flops });
        if (hooked && batch === Math.max(...BATCHES)) {
          configs.push({ shape, kind: 'hooked', batch, session: hooked, times: [], flops });
        }
      }
    }
    log(`[bench] warm-up, then ${ROUNDS} interleaved rounds of ${configs.length} configurations`);
    for (const c of configs) await c.session.run(feeds(c.batch));
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of configs) {
        const input = feeds(c.batch);
        const t0 = performance.now();
        await c.session.run(input);
        c.times.push(performance.now() - t0);
      }
      log(`[bench] round ${round + 1}/${ROUNDS}`);
    }
    const results = [];
    for (const { d, layers } of SHAPES) {
      const shape = `d${d}x${layers}`;
      for (const batch of BATCHES) {
        const find = (kind: Config['kind']) =>
          configs.find((c) => c.shape === shape && c.batch === batch && c.kind === kind);
        const enc = find('encoder')!;
        const ceil = find('ceiling')!;
        const hooked = find('hooked');
        const encMs = median(enc.times);
        const ceilMs = median(ceil.times);
        results.push({
          shape,
          batch,
          seq: SEQ,
          encoder_ms: round2(encMs),
          encoder_items_per_s: round2((batch * 1000) / encMs),
          ceiling_ms: round2(ceilMs),
          ceiling_items_per_s: round2((batch * 1000) / ceilMs),
          ceiling_gflops: round2(enc.flops / ceilMs / 1e6),
          ratio_to_ceiling: round3(ceilMs / encMs),
          ...(hooked
            ? {
                hooked_items_per_s: round2((batch * 1000) / median(hooked.times)),
                hooked_ratio_to_plain: round3(encMs / median(hooked.times)),
              }
            : {}),
        });
      }
    }
    const largest = Math.max(...BATCHES);
    const atLargest = results.filter((r) => r.batch === largest);
    process.stdout.write(
      `${JSON.stringify(
        {
          bench: 'backbone',
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
            rule: `encoder items/s >= 0.7 x ceiling items/s at B = ${largest}`,
            met: atLargest.every((r) => r.ratio_to_ceiling >= 0.7),
          },
          fusions,
        },
        null,
        2,
      )}\n`,
    );
    for (const c of new Set(configs.map((x) => x.session))) await c.release();
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
