/**
 * GPU check, for a machine with a GPU, in one run (bench/gpu-check.sh runs it; its header says
 * what to carry to a lent machine). For each provider asked for:
 *   1. the execution providers onnxruntime-node offers here (once);
 *   2. the pack (default: the demo) loaded on the provider without CPU fallback; a provider that
 *      does not start is reported with ORT's reason, and the next provider is checked;
 *   3. its outputs against the same pack on cpu: max abs difference of embeddings, routing
 *      weights and task scores, within a tolerance, and the same adapters chosen;
 *   4. throughput (sequences/s) at batch 1, 32 and 128 on both, one engine worker each,
 *      interleaved in rounds so machine noise hits both alike (medians);
 *   5. slot banks (src/engine/bank-residency.ts): packs with an in-layer LoRA group of few and of
 *      many slots (8 and 512 by default; LoRA rank 8 on query and value in every layer of a
 *      d384 x 12 BERT), run on the same batch (32 items x 64 tokens, every item routed to another
 *      adapter) with the banks
 *        - fed from the host on every run ('host': what a GPU provider would copy per run), and
 *        - kept the provider's way ('device' on webgpu, 'initializers' on cuda; --residency forces
 *          one, e.g. on cpu to check this script),
 *      reporting the time per batch (median), its growth from few to many slots (the banks' cost
 *      per run), the outputs of both against cpu, and what a slot write costs in each: the load
 *      (until every worker has the adapter) and the sync the next batch pays first (bankSyncMs),
 *      that batch's answers checked against cpu (a write is seen, no stale weights).
 * Progress goes to stderr; one JSON object to stdout. Exit 0 when every provider asked for started
 * and every output agreed with cpu, 1 otherwise.
 *
 *   node dist/bench/gpu-check.js [--provider webgpu,cuda] [--device 0] [--pack models/demo]
 *       [--tolerance 1e-3] [--batches 1,32,128] [--seconds 1] [--rounds 3]
 *       [--bank-slots 8,512] [--bank-hidden 384] [--bank-layers 12] [--bank-rank 8]
 *       [--bank-batch 32] [--bank-tokens 64] [--bank-runs 10] [--bank-writes 4]
 *       [--residency auto|host|device|initializers] [--skip-pack] [--skip-banks]
 *
 * `--provider cpu --residency initializers` (or device) runs the same path with no GPU, to check
 * the script itself: small `--bank-*` sizes keep that short (see bench/gpu-check.sh).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { BankResidency, BankResidencySetting } from '../src/engine/bank-residency.js';
import type { BatchOutcome, EngineItem } from '../src/engine/engine.js';
import type { ExecutionProvider } from '../src/engine/protocol.js';
import { listProviders, runtimeVersions } from '../src/engine/providers.js';
import { MoeError } from '../src/errors.js';
import { type InferResult, Model } from '../src/inference/model.js';
import { ensurePack } from '../src/tools/default-pack.js';
import { Random } from '../src/util/random.js';
import { FIXTURE_TEXTS } from '../test/support/fixture-pack.js';
import { type LayerPack, writeLayerPack, writeRuntimeLora } from '../test/support/layer-pack.js';
import { log, median, positiveInt, round3 } from './support.js';

const { values } = parseArgs({
  options: {
    provider: { type: 'string', default: 'cuda' },
    device: { type: 'string', default: '0' },
    pack: { type: 'string' },
    tolerance: { type: 'string', default: '1e-3' },
    batches: { type: 'string', default: '1,32,128' },
    seconds: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
    'bank-slots': { type: 'string', default: '8,512' },
    'bank-hidden': { type: 'string', default: '384' },
    'bank-layers': { type: 'string', default: '12' },
    'bank-rank': { type: 'string', default: '8' },
    'bank-batch': { type: 'string', default: '32' },
    'bank-tokens': { type: 'string', default: '64' },
    'bank-runs': { type: 'string', default: '10' },
    'bank-writes': { type: 'string', default: '4' },
    residency: { type: 'string', default: 'auto' },
    'skip-pack': { type: 'boolean', default: false },
    'skip-banks': { type: 'boolean', default: false },
  },
});
const PROVIDERS = ['cpu', 'cuda', 'webgpu'] as const satisfies readonly ExecutionProvider[];
const RESIDENCIES = ['auto', 'host', 'device', 'initializers'] as const;
const providers = values.provider.split(',') as ExecutionProvider[];
for (const p of providers) {
  if (!(PROVIDERS as readonly string[]).includes(p))
    usage(`--provider takes ${PROVIDERS.join(', ')}`);
}
if (!(RESIDENCIES as readonly string[]).includes(values.residency))
  usage(`--residency takes ${RESIDENCIES.join(', ')}`);
const RESIDENCY = values.residency as BankResidencySetting;
const DEVICE = Number(values.device);
const TOLERANCE = Number(values.tolerance);
const BATCHES = values.batches.split(',').map((b) => positiveInt('batches', b));
const SECONDS = Number(values.seconds);
const ROUNDS = positiveInt('rounds', values.rounds);
const BANK = {
  slots: values['bank-slots'].split(',').map((s) => positiveInt('bank-slots', s)),
  hidden: positiveInt('bank-hidden', values['bank-hidden']),
  layers: positiveInt('bank-layers', values['bank-layers']),
  rank: positiveInt('bank-rank', values['bank-rank']),
  batch: positiveInt('bank-batch', values['bank-batch']),
  tokens: positiveInt('bank-tokens', values['bank-tokens']),
  runs: positiveInt('bank-runs', values['bank-runs']),
  writes: positiveInt('bank-writes', values['bank-writes']),
};
const THREADS = Math.max(1, availableParallelism());
if (BANK.slots.some((s) => s < 2))
  usage('--bank-slots: at least 2 (one is kept free for the probes)');

function usage(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

/** What a section reports: whether every output agreed with cpu, and its measurements. */
type SectionReport = { outputsAgree: boolean } & Record<string, unknown>;

// ---- 2-4: the pack on the provider against cpu ------------------------------------------------

/** `n` inputs cycled from multilingual sample sentences, each made distinct by its number. */
function inputs(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${FIXTURE_TEXTS[i % FIXTURE_TEXTS.length]} ${i}`);
}

interface Diff {
  embedding: number;
  routingWeight: number;
  score: number;
  routingMismatches: number;
}

function compare(ours: InferResult[], reference: InferResult[]): Diff {
  const diff: Diff = { embedding: 0, routingWeight: 0, score: 0, routingMismatches: 0 };
  ours.forEach((result, i) => {
    const ref = reference[i]!;
    diff.embedding = Math.max(diff.embedding, maxAbsDiff(result.embedding, ref.embedding));
    for (const [group, chosen] of Object.entries(ref.routing)) {
      const mine = result.routing[group] ?? [];
      if (mine.map((a) => a.adapter).join() !== chosen.map((a) => a.adapter).join()) {
        diff.routingMismatches++;
        continue;
      }
      chosen.forEach((a, k) => {
        diff.routingWeight = Math.max(diff.routingWeight, Math.abs(mine[k]!.weight - a.weight));
      });
    }
    for (const [task, output] of Object.entries(ref.outputs)) {
      for (const [label, score] of Object.entries(output.scores)) {
        const mine = result.outputs[task]?.scores[label] ?? Number.NaN;
        diff.score = Math.max(diff.score, Math.abs(mine - score));
      }
    }
  });
  return diff;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return a.length === b.length ? m : Number.POSITIVE_INFINITY;
}

/** Sequences per second of `model` on batches of `batch` inputs, for about SECONDS. */
async function throughput(model: Model, batch: number): Promise<number> {
  const texts = inputs(batch);
  await model.infer({ inputs: texts }); // warm-up (first-run allocations, kernel selection)
  let done = 0;
  const start = performance.now();
  while (performance.now() - start < SECONDS * 1000 || done < 3 * batch) {
    await model.infer({ inputs: texts });
    done += batch;
  }
  return done / ((performance.now() - start) / 1000);
}

function openOn(
  packDir: string,
  provider: ExecutionProvider,
  bankResidency: BankResidencySetting = 'auto',
): Promise<Model> {
  return Model.open({
    packDir,
    engine: {
      workers: 1,
      intraOpThreads: THREADS,
      executionProvider: provider,
      deviceId: DEVICE,
      allowProviderFallback: false,
      bankResidency,
    },
    log: () => {},
  });
}

/** Steps 2-4 on `provider`; `reference` is the same pack on cpu. */
async function packCheck(
  provider: ExecutionProvider,
  packDir: string,
  reference: Model,
): Promise<SectionReport> {
  const report: SectionReport = { outputsAgree: false };
  const model = await openOn(packDir, provider);
  try {
    report.bankResidency = model.engine.bankResidency;
    // Outputs against cpu, on batches of several sizes (padding differs with the batch).
    const diff: Diff = { embedding: 0, routingWeight: 0, score: 0, routingMismatches: 0 };
    for (const batch of [1, 7, 32]) {
      const request = { inputs: inputs(batch), topK: 2 };
      const d = compare(await model.infer(request), await reference.infer(request));
      diff.embedding = Math.max(diff.embedding, d.embedding);
      diff.routingWeight = Math.max(diff.routingWeight, d.routingWeight);
      diff.score = Math.max(diff.score, d.score);
      diff.routingMismatches += d.routingMismatches;
    }
    const agree =
      diff.routingMismatches === 0 &&
      Math.max(diff.embedding, diff.routingWeight, diff.score) <= TOLERANCE;
    report.maxAbsDiff = diff;
    report.outputsAgree = agree;
    log(
      `${agree ? 'OK' : 'FAIL'} ${provider} outputs vs cpu: max abs diff embedding ${diff.embedding.toExponential(2)}, ` +
        `routing weight ${diff.routingWeight.toExponential(2)}, score ${diff.score.toExponential(2)}, ` +
        `routing mismatches ${diff.routingMismatches} (tolerance ${TOLERANCE})`,
    );

    const rows: { batch: number; seqPerSec: Record<string, number>; speedup: number }[] = [];
    for (const batch of BATCHES) {
      const runs: Record<string, number[]> = { [provider]: [], cpu: [] };
      for (let round = 0; round < ROUNDS; round++) {
        runs[provider]!.push(await throughput(model, batch));
        if (provider !== 'cpu') runs.cpu!.push(await throughput(reference, batch));
      }
      const ours = median(runs[provider]!);
      const cpu = provider === 'cpu' ? ours : median(runs.cpu!);
      rows.push({ batch, seqPerSec: { [provider]: ours, cpu }, speedup: ours / cpu });
      const vsCpu =
        provider === 'cpu' ? '' : `, cpu ${cpu.toFixed(0)} seq/s (x${(ours / cpu).toFixed(2)})`;
      log(`batch ${String(batch).padStart(3)}: ${provider} ${ours.toFixed(0)} seq/s${vsCpu}`);
    }
    report.throughput = rows;
    return report;
  } finally {
    await model.close();
  }
}

// ---- 5: slot banks ----------------------------------------------------------------------------

interface BankPack {
  readonly slots: number;
  readonly pack: LayerPack;
  /** Runtime adapters for the write measurements, one folder each. */
  readonly probes: readonly string[];
  /** The batch: every item routed to another adapter of the pack. */
  readonly items: readonly EngineItem[];
  /** Every item routed to the probe adapter: the batch after a write. */
  readonly probeItems: readonly EngineItem[];
  /** The pack on cpu with host banks: the answers the others are checked against. */
  readonly reference: Model;
}

const PROBE = 'probe';

async function bankPack(root: string, slots: number): Promise<BankPack> {
  // A slot stays free for the probes, so that a load writes at once (no eviction at dispatch).
  const adapters = Math.min(slots - 1, 8);
  const pack = await writeLayerPack(join(root, `slots-${slots}`), {
    hiddenSize: BANK.hidden,
    layers: BANK.layers,
    heads: Math.max(1, Math.round(BANK.hidden / 64)),
    maxPositions: BANK.tokens,
    slots,
    rank: BANK.rank,
    targetModules: ['query', 'value'],
    loraAdapters: adapters,
    seed: 7,
  });
  const probes: string[] = [];
  for (let w = 0; w < BANK.writes; w++) {
    probes.push(await writeRuntimeLora(pack, join(root, `slots-${slots}-probe-${w}`), 100 + w));
  }
  const rng = new Random(11);
  const ids = () => [
    2,
    ...Array.from({ length: BANK.tokens - 2 }, () => 5 + rng.int(pack.vocabSize - 5)),
    3,
  ];
  const items = Array.from({ length: BANK.batch }, (_, b) => ({
    ids: ids(),
    routing: { pins: { task: pack.lora[b % adapters]! } },
  }));
  const probeItems = items.map((item) => ({ ...item, routing: { pins: { task: PROBE } } }));
  const reference = await openOn(pack.packDir, 'cpu', 'host');
  return { slots, pack, probes, items, probeItems, reference };
}

/** Bytes of every slot bank of the engine's graph. */
function bankBytes(model: Model): number {
  return model.engine.graph.worker.banks.reduce(
    (sum, b) =>
      sum + b.rows * b.rowShape.reduce((x, y) => x * y, 1) * (b.dtype === 'int64' ? 8 : 4),
    0,
  );
}

/** Largest difference of the embeddings of two outcomes; Infinity when an item failed. */
function outcomeDiff(ours: BatchOutcome, theirs: BatchOutcome): number {
  let max = 0;
  ours.items.forEach((item, i) => {
    const other = theirs.items[i]!;
    max =
      item.ok && other.ok
        ? Math.max(max, maxAbsDiff(item.result.embedding, other.result.embedding))
        : Number.POSITIVE_INFINITY;
  });
  return max;
}

/** Median time of one batch of `items` on `model`, over `runs` batches after one warm-up. */
async function batchMs(model: Model, items: readonly EngineItem[]): Promise<number> {
  await model.engine.run(items);
  const times: number[] = [];
  for (let r = 0; r < BANK.runs; r++) {
    const started = performance.now();
    await model.engine.run(items);
    times.push(performance.now() - started);
  }
  return median(times);
}

interface WriteCost {
  /** Adapter load: read, checked, written into a slot of every worker. */
  readonly loadMs: number;
  /** What the next batch paid first to bring the banks up to date. */
  readonly syncMs: number;
  /** That whole batch. */
  readonly batchMs: number;
  /** Max abs difference of that batch's embeddings to cpu (the new adapter, not stale weights). */
  readonly maxAbsDiff: number;
}

/** Load a probe adapter, run the batch routed to it, unload it; per probe. */
async function writeCosts(model: Model, bank: BankPack): Promise<WriteCost[]> {
  const costs: WriteCost[] = [];
  for (const probe of bank.probes) {
    await bank.reference.registry.load(probe, { id: PROBE });
    const want = await bank.reference.engine.run(bank.probeItems);
    const loadStarted = performance.now();
    await model.registry.load(probe, { id: PROBE });
    const loadMs = performance.now() - loadStarted;
    const started = performance.now();
    const outcome = await model.engine.run(bank.probeItems);
    costs.push({
      loadMs,
      syncMs: outcome.timings.bankSyncMs,
      batchMs: performance.now() - started,
      maxAbsDiff: outcomeDiff(outcome, want),
    });
    await model.registry.unload(PROBE);
    await bank.reference.registry.unload(PROBE);
  }
  return costs;
}

/** Step 5 on `provider`: host banks against the provider's way, per pack. */
async function bankCheck(
  provider: ExecutionProvider,
  banks: readonly BankPack[],
): Promise<SectionReport> {
  const rows: Record<string, unknown>[] = [];
  let agree = true;
  let residencies: BankResidency[] = [];
  for (const bank of banks) {
    const models: Model[] = [await openOn(bank.pack.packDir, provider, 'host')];
    try {
      const own = await openOn(bank.pack.packDir, provider, RESIDENCY);
      if (own.engine.bankResidency === 'host') await own.close();
      else models.push(own);
      residencies = models.map((m) => m.engine.bankResidency!);
      const want = await bank.reference.engine.run(bank.items);
      const perResidency: Record<string, unknown> = {};
      const times: Record<string, number[]> = {};
      for (const model of models) {
        const got = await model.engine.run(bank.items);
        const diff = outcomeDiff(got, want);
        agree &&= diff <= TOLERANCE;
        perResidency[model.engine.bankResidency!] = { maxAbsDiffVsCpu: diff };
        times[model.engine.bankResidency!] = [];
      }
      // Interleaved rounds, so that machine noise hits every residency alike.
      for (let round = 0; round < ROUNDS; round++) {
        for (const model of models)
          times[model.engine.bankResidency!]!.push(await batchMs(model, bank.items));
      }
      for (const model of models) {
        const residency = model.engine.bankResidency!;
        const writes = await writeCosts(model, bank);
        agree &&= writes.every((w) => w.maxAbsDiff <= TOLERANCE);
        const entry = perResidency[residency] as Record<string, unknown>;
        entry.batchMs = round3(median(times[residency]!));
        entry.write = {
          loadMs: round3(median(writes.map((w) => w.loadMs))),
          syncMs: round3(median(writes.map((w) => w.syncMs))),
          batchAfterWriteMs: round3(median(writes.map((w) => w.batchMs))),
          maxAbsDiffVsCpu: Math.max(...writes.map((w) => w.maxAbsDiff)),
        };
        log(
          `slots ${String(bank.slots).padStart(4)} ${provider}/${residency.padEnd(12)} ` +
            `batch ${entry.batchMs} ms; write: load ${(entry.write as WriteCost).loadMs} ms, ` +
            `sync at next batch ${(entry.write as WriteCost).syncMs} ms`,
        );
      }
      rows.push({ slots: bank.slots, bankBytes: bankBytes(models[0]!), residency: perResidency });
    } finally {
      await Promise.all(models.map((m) => m.close()));
    }
  }
  // The banks' cost per run: how much a batch grows from the fewest slots to the most.
  const perRunCost: Record<string, number> = {};
  if (rows.length > 1) {
    const first = rows[0]!.residency as Record<string, { batchMs: number }>;
    const last = rows[rows.length - 1]!.residency as Record<string, { batchMs: number }>;
    for (const residency of residencies) {
      perRunCost[residency] = round3(last[residency]!.batchMs - first[residency]!.batchMs);
    }
    log(
      `banks' cost per run (${rows[0]!.slots} -> ${rows[rows.length - 1]!.slots} slots): ` +
        Object.entries(perRunCost)
          .map(([r, ms]) => `${r} ${ms >= 0 ? '+' : ''}${ms} ms`)
          .join(', '),
    );
  }
  log(`${agree ? 'OK' : 'FAIL'} ${provider} slot banks: outputs vs cpu within ${TOLERANCE}`);
  return { outputsAgree: agree, rows, batchGrowthMs: perRunCost };
}

// ---- main -------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const listing = listProviders();
  const report: Record<string, unknown> = {
    requested: providers,
    device: DEVICE,
    tolerance: TOLERANCE,
    versions: { node: process.versions.node, ...runtimeVersions() },
    providers: listing,
    bankShape: values['skip-banks'] ? undefined : { ...BANK, targetModules: ['query', 'value'] },
    results: {},
  };
  log(
    `providers onnxruntime-node offers: ${listing.map((p) => `${p.name}${p.bundled ? '' : ' (needs libraries)'}`).join(', ')}`,
  );
  let ok = true;
  const root = await mkdtemp(join(tmpdir(), 'moe-gpu-check-'));
  const references: Model[] = [];
  try {
    const packDir = values['skip-pack'] ? undefined : await ensurePack(values.pack, log);
    report.pack = packDir;
    const reference = packDir === undefined ? undefined : await openOn(packDir, 'cpu');
    if (reference !== undefined) references.push(reference);
    const banks: BankPack[] = [];
    if (!values['skip-banks']) {
      for (const slots of BANK.slots) {
        log(`building the bank pack with ${slots} slots ...`);
        const bank = await bankPack(root, slots);
        references.push(bank.reference);
        banks.push(bank);
      }
    }
    const results = report.results as Record<string, unknown>;
    for (const provider of providers) {
      const result: Record<string, unknown> = { started: true };
      results[provider] = result;
      // Each section on its own: a provider that cannot start is the answer for it (the next
      // provider is checked); any other failure is reported and the next section still runs.
      const sections: [string, () => Promise<SectionReport>][] = [];
      if (packDir !== undefined)
        sections.push(['pack', () => packCheck(provider, packDir, reference!)]);
      if (banks.length > 0) sections.push(['banks', () => bankCheck(provider, banks)]);
      for (const [name, section] of sections) {
        try {
          const outcome = await section();
          result[name] = outcome;
          ok &&= outcome.outputsAgree;
        } catch (error) {
          const message = (error as Error).message;
          ok = false;
          result[name] = { error: message };
          log(`FAIL ${provider} ${name}: ${message}`);
          if (error instanceof MoeError && error.code === 'ENGINE_PROVIDER_UNAVAILABLE') {
            result.started = false;
            result.error = message;
            break;
          }
        }
      }
    }
  } finally {
    await Promise.all(references.map((m) => m.close()));
    await rm(root, { recursive: true, force: true });
  }
  report.ok = ok;
  process.stdout.write(`${JSON.stringify(report)}\n`);
  return ok ? 0 : 1;
}

process.exitCode = await main();
