/**
 * Engine throughput: the backbone alone, and backbone + compiled mixture with 1, 16 and 256
 * adapters in a gated group, at the same batch size and lengths, through the real engine (worker
 * thread, ORT sessions, routing, decoding). Configurations are measured in interleaved rounds on
 * one engine (the mixture graph is swapped between them, the backbone stays), so machine noise
 * hits them alike; medians and ratios are printed as JSON on stdout.
 *
 *   npm run bench:engine [-- --rounds 5 --batches 8 --batch 32 --seq 64 --k 1 --workers 1 --threads 2]
 *
 * "Backbone alone" runs a mixture graph with no group and no head (pooling only), so it pays the
 * same dispatch and decode path as the others.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine, type EngineItem } from '../src/engine/engine.js';
import { compileMixture } from '../src/onnx/mixture.js';
import type { MixtureLayout } from '../src/onnx/mixture-contract.js';
import { randomEncoderModel } from '../src/onnx/random-encoder.js';
import { randomAdapter } from '../src/pack/fixture.js';
import type { Head, LinearGate, MixtureSpec } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { log, median } from './support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    batches: { type: 'string', default: '8' },
    batch: { type: 'string', default: '32' },
    seq: { type: 'string', default: '64' },
    workers: { type: 'string', default: '1' },
    threads: { type: 'string', default: '2' },
    rank: { type: 'string', default: '16' },
    k: { type: 'string', default: '1' },
  },
});
const ROUNDS = Number(values.rounds);
const BATCHES = Number(values.batches);
const BATCH = Number(values.batch);
const SEQ = Number(values.seq);
const RANK = Number(values.rank);
/** Same k for every configuration, so only the number of adapters differs. */
const K = Number(values.k);
const BACKBONE = {
  vocabSize: 8000,
  hiddenSize: 256,
  layers: 4,
  heads: 4,
  ffnSize: 1024,
  maxLength: 128,
  seed: 1,
};
const d = BACKBONE.hiddenSize;
const rng = new Random(2024);
function weight(shape: number[], std: number) {
  return {
    shape,
    data: rng.normals(
      shape.reduce((a, b) => a * b, 1),
      std,
    ),
  };
}

const head: Head = {
  id: 'article',
  labels: Array.from({ length: 30 }, (_, i) => `a${i + 1}`),
  weight: weight([d, 30], 0.05),
  bias: weight([30], 0.01),
};

/** A mixture with one gated group of `experts` adapters, or none at all (backbone alone). */
function configuration(
  experts: number,
  version: number,
): { layout: MixtureLayout; bytes: Uint8Array } {
  const ids = Array.from({ length: experts }, (_, i) => `x${i}`);
  const adapters = ids.map((id) =>
    randomAdapter(rng, {
      id,
      group: 'language',
      hiddenSize: d,
      rank: RANK,
      activation: 'gelu',
      residual: true,
    }),
  );
  const gate: LinearGate = {
    type: 'linear',
    experts: ids,
    weight: weight([d, experts], 0.05),
    bias: weight([experts], 0.01),
  };
  const spec: MixtureSpec =
    experts === 0
      ? { hiddenSize: d, groups: [], heads: [] }
      : { hiddenSize: d, groups: [{ id: 'language', adapters, gate }], heads: [head] };
  const layout: MixtureLayout = {
    version,
    hiddenSize: d,
    groups: spec.groups.map((g) => ({
      id: g.id,
      adapters: ids,
      gated: true,
      gateKnows: ids.map(() => true),
      defaultK: Math.min(K, experts),
      defaultAdapter: undefined,
    })),
    heads: spec.heads.map((h) => ({ id: h.id, labels: h.labels })),
  };
  return { layout, bytes: compileMixture(spec) };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'moe-bench-'));
  const backbonePath = join(dir, 'backbone.onnx');
  await writeFile(backbonePath, randomEncoderModel(BACKBONE));
  const sizes = [0, 1, 16, 256];
  let version = 0;
  const configs = sizes.map((experts) => ({ experts, ...configuration(experts, ++version) }));
  const items: EngineItem[] = Array.from({ length: BATCH }, () => ({
    ids: Int32Array.from({ length: SEQ }, () => 5 + rng.int(BACKBONE.vocabSize - 5)),
    routing: {},
  }));
  const first = configs[0]!;
  const engine = await Engine.start(
    { backbonePath, workers: Number(values.workers), intraOpThreads: Number(values.threads) },
    first.layout,
    first.bytes,
  );
  const perSecond = new Map<number, number[]>(sizes.map((s) => [s, []]));
  const backboneMs = new Map<number, number[]>(sizes.map((s) => [s, []]));
  const mixtureMs = new Map<number, number[]>(sizes.map((s) => [s, []]));
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const config of configs) {
        // Swap in this configuration's graph (a fresh version each time, as the registry does).
        const next = { ...config.layout, version: ++version };
        await engine.installMixture(next, config.bytes);
        const run = () => engine.run(items);
        await run(); // warm the new session
        const started = performance.now();
        const inFlight: Promise<unknown>[] = [];
        for (let b = 0; b < BATCHES; b++) {
          inFlight.push(
            run().then((outcome) => {
              backboneMs.get(config.experts)!.push(outcome.timings.backboneMs);
              mixtureMs.get(config.experts)!.push(outcome.timings.mixtureMs);
            }),
          );
        }
        await Promise.all(inFlight);
        const seconds = (performance.now() - started) / 1000;
        perSecond.get(config.experts)!.push((BATCHES * BATCH) / seconds);
        log(
          `round ${round + 1}/${ROUNDS} experts=${config.experts}: ${((BATCHES * BATCH) / seconds).toFixed(0)} items/s`,
        );
      }
    }
  } finally {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
  const name = (experts: number) =>
    experts === 0 ? 'backbone_alone' : `mixture_${experts}_adapters`;
  const results = Object.fromEntries(
    sizes.map((experts) => [
      name(experts),
      {
        adapters: experts,
        items_per_second_median: Math.round(median(perSecond.get(experts)!)),
        items_per_second_rounds: perSecond.get(experts)!.map(Math.round),
        backbone_ms_median: Number(median(backboneMs.get(experts)!).toFixed(2)),
        mixture_ms_median: Number(median(mixtureMs.get(experts)!).toFixed(2)),
      },
    ]),
  );
  const ips = (experts: number) => median(perSecond.get(experts)!);
  const ratio = (a: number, b: number) => Number((ips(a) / ips(b)).toFixed(3));
  const stage = (experts: number) => median(mixtureMs.get(experts)!);
  const report = {
    benchmark: 'engine',
    setup: {
      batch: BATCH,
      sequence: SEQ,
      backbone: BACKBONE,
      adapter_rank: RANK,
      top_k: K,
      workers: Number(values.workers),
      intra_op_threads: Number(values.threads),
      rounds: ROUNDS,
      batches_per_round: BATCHES,
    },
    results,
    ratios: {
      mixture_256_over_1: ratio(256, 1),
      mixture_16_over_1: ratio(16, 1),
      mixture_1_over_backbone_alone: ratio(1, 0),
      mixture_256_over_backbone_alone: ratio(256, 0),
      // The mixture session alone, which is what the number of adapters can change.
      mixture_stage_ms_256_over_1: Number((stage(256) / stage(1)).toFixed(3)),
    },
    target: { mixture_256_over_1_at_least: 0.85, met: ratio(256, 1) >= 0.85 },
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
}

await main();
