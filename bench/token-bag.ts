/**
 * What a token_bag gate costs a batch: the demo pack's shapes (BERT-small backbone with a 3000-token
 * vocabulary, a `language` group of 15 rank-32 adapters, k = 1, two heads) served through the real
 * engine with the group ungated (routed by a default adapter: no gate at all), with a linear gate,
 * and with token_bag gates (the demo's width 32 without bigrams, and a heavier width 64 with 16384
 * bigram buckets). The backbone is an ONNX file run as its own session, so that the pack graph's
 * time (where the gate runs) is measured apart from it. One engine per configuration, all started
 * first, run in interleaved rounds; medians and ratios are printed as JSON on stdout.
 *
 *   npm run bench:token-bag [-- --rounds 7 --batches 8 --batch 32 --seq 64 --threads 2]
 *
 * `batch_ms` is the wall time of one batch through the engine (backbone + pack graph + dispatch);
 * `mixture_ms` the pack graph's run alone (gate, adapters, heads), where the gate runs.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { SlotGroup } from '../src/adapters/slot-writer.js';
import { Engine, type EngineGraph, type EngineItem } from '../src/engine/engine.js';
import { compilePackGraph, packGraphBytes } from '../src/onnx/pack-graph.js';
import { randomEncoderModel } from '../src/onnx/random-encoder.js';
import { groupBanks } from '../src/onnx/slot-banks.js';
import type { Gate, GroupStructure, Head } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { randomAdapter } from '../test/support/fixture-pack.js';
import { log, median } from './support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '7' },
    batches: { type: 'string', default: '8' },
    batch: { type: 'string', default: '32' },
    seq: { type: 'string', default: '64' },
    threads: { type: 'string', default: '2' },
  },
});
const ROUNDS = Number(values.rounds);
const BATCHES = Number(values.batches);
const BATCH = Number(values.batch);
const SEQ = Number(values.seq);
const BACKBONE = {
  vocabSize: 3000,
  hiddenSize: 256,
  layers: 4,
  heads: 4,
  ffnSize: 1024,
  maxLength: 128,
  seed: 1,
};
const d = BACKBONE.hiddenSize;
const E = 15;
const rng = new Random(2025);
const weight = (shape: number[], std: number) => ({
  shape,
  data: rng.normals(
    shape.reduce((a, b) => a * b, 1),
    std,
  ),
});
const ids = Array.from({ length: E }, (_, i) => `l${i}`);
const adapters = ids.map((id) =>
  randomAdapter(rng, {
    id,
    group: 'language',
    hiddenSize: d,
    rank: 32,
    activation: 'relu',
    residual: true,
  }),
);
const heads: Head[] = [30, 6].map((L, j) => ({
  id: `h${j}`,
  labels: Array.from({ length: L }, (_, i) => `c${i}`),
  weight: weight([d, L], 0.05),
  bias: weight([L], 0.01),
}));

function tokenBag(width: number, buckets: number): Gate {
  return {
    type: 'token_bag',
    experts: ids,
    buckets,
    embedding: weight([BACKBONE.vocabSize + buckets, width], 0.1),
    outWeight: weight([width, E], 0.5),
    outBias: weight([E], 0.01),
  };
}

const CONFIGS: { name: string; gate: Gate | null }[] = [
  { name: 'no_gate', gate: null },
  {
    name: 'linear',
    gate: { type: 'linear', experts: ids, weight: weight([d, E], 0.05), bias: weight([E], 0.01) },
  },
  { name: 'token_bag_w32', gate: tokenBag(32, 0) },
  { name: 'token_bag_w64_bigrams16384', gate: tokenBag(64, 16384) },
];

const STRUCTURE: GroupStructure = { kind: 'top', rank: 32, activation: 'relu' };
const SLOTS = 16;

/** The engine's view of a one-group pack with this gate (null: routed by its default adapter). */
function configuration(gate: Gate | null, backbonePath: string): EngineGraph {
  const group: SlotGroup = {
    index: 0,
    id: 'language',
    slots: SLOTS,
    structure: STRUCTURE,
    gated: gate !== null,
    gateExperts: gate?.experts.length ?? 0,
    dims: { hiddenSize: d, intermediateSize: 0 },
  };
  const compiled = compilePackGraph({
    backbone: { kind: 'external', hiddenSize: d },
    pooling: { mode: 'mean', normalize: true },
    groups: [{ id: 'language', slots: SLOTS, structure: STRUCTURE, gate }],
    heads,
  });
  return {
    worker: {
      model: packGraphBytes(compiled),
      externalBackbone: backbonePath,
      banks: groupBanks(0, STRUCTURE, SLOTS, gate !== null, group.dims),
      groupCount: 1,
      gatedGroups: [gate !== null],
      headCount: heads.length,
      padTokenId: 0,
    },
    groups: [group],
    heads: heads.map((h) => ({ id: h.id, labels: h.labels })),
    hiddenSize: d,
  };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'moe-bench-'));
  const backbonePath = join(dir, 'backbone.onnx');
  await writeFile(backbonePath, randomEncoderModel(BACKBONE));
  // Sentences of mixed lengths (half to full SEQ), so padding is real, as in served batches.
  const items: EngineItem[] = Array.from({ length: BATCH }, () => ({
    ids: Int32Array.from(
      { length: Math.ceil(SEQ / 2) + rng.int(Math.floor(SEQ / 2) + 1) },
      () => 5 + rng.int(BACKBONE.vocabSize - 5),
    ),
    routing: {},
  }));
  const engines: { name: string; engine: Engine }[] = [];
  const batchMs = new Map<string, number[]>(CONFIGS.map((c) => [c.name, []]));
  const mixtureMs = new Map<string, number[]>(CONFIGS.map((c) => [c.name, []]));
  const backboneMs = new Map<string, number[]>(CONFIGS.map((c) => [c.name, []]));
  try {
    for (const config of CONFIGS) {
      const engine = await Engine.start(
        { workers: 1, intraOpThreads: Number(values.threads) },
        configuration(config.gate, backbonePath),
      );
      engines.push({ name: config.name, engine });
      const gated = config.gate !== null;
      engine.setRoutingView(() => ({
        groups: [
          {
            id: 'language',
            gated,
            adapters: ids,
            gateKnows: () => gated,
            defaultK: 1,
            defaultAdapter: gated ? undefined : ids[0],
            defaultTopP: 1,
          },
        ],
      }));
      for (const [e, adapter] of adapters.entries()) {
        await engine.putAdapter(adapter.id, 0, adapter, gated ? e : undefined);
      }
      await engine.run(items); // warm
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const { name, engine } of engines) {
        for (let b = 0; b < BATCHES; b++) {
          // One batch at a time: the time of a batch, not the throughput of a queue.
          const started = performance.now();
          const outcome = await engine.run(items);
          batchMs.get(name)!.push(performance.now() - started);
          mixtureMs.get(name)!.push(outcome.timings.graphMs);
          backboneMs.get(name)!.push(outcome.timings.backboneMs);
        }
        log(
          `round ${round + 1}/${ROUNDS} ${name}: batch ${median(batchMs.get(name)!.slice(-BATCHES)).toFixed(1)} ms`,
        );
      }
    }
  } finally {
    for (const { engine } of engines) await engine.close();
    await rm(dir, { recursive: true, force: true });
  }
  const med = (m: Map<string, number[]>, name: string) => median(m.get(name)!);
  const results = Object.fromEntries(
    CONFIGS.map((c) => [
      c.name,
      {
        batch_ms_median: Number(med(batchMs, c.name).toFixed(2)),
        backbone_ms_median: Number(med(backboneMs, c.name).toFixed(2)),
        mixture_ms_median: Number(med(mixtureMs, c.name).toFixed(3)),
      },
    ]),
  );
  const ratio = (a: string, b: string) => Number((med(batchMs, a) / med(batchMs, b)).toFixed(4));
  const added = (a: string, b: string) =>
    Number(((med(mixtureMs, a) - med(mixtureMs, b)) / med(batchMs, b)).toFixed(4));
  const report = {
    benchmark: 'token_bag_gate',
    setup: {
      batch: BATCH,
      sequence_max: SEQ,
      backbone: BACKBONE,
      language_adapters: E,
      adapter_rank: 32,
      top_k: 1,
      workers: 1,
      intra_op_threads: Number(values.threads),
      rounds: ROUNDS,
      batches_per_round: BATCHES,
    },
    results,
    ratios: {
      batch_token_bag_w32_over_no_gate: ratio('token_bag_w32', 'no_gate'),
      batch_token_bag_w32_over_linear: ratio('token_bag_w32', 'linear'),
      batch_token_bag_w64_bigrams_over_no_gate: ratio('token_bag_w64_bigrams16384', 'no_gate'),
      batch_linear_over_no_gate: ratio('linear', 'no_gate'),
      // The gate's own cost, less noisy than whole batches: extra mixture-stage time per batch.
      mixture_stage_added_share_token_bag_w32: added('token_bag_w32', 'no_gate'),
      mixture_stage_added_share_token_bag_w64_bigrams: added(
        'token_bag_w64_bigrams16384',
        'no_gate',
      ),
    },
    target: {
      gate_adds_at_most: 0.02,
      met:
        added('token_bag_w32', 'no_gate') <= 0.02 &&
        added('token_bag_w64_bigrams16384', 'no_gate') <= 0.02,
    },
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
}

await main();
