/**
 * GPU check, for a machine with a GPU (run it through bench/gpu-check.sh):
 *   1. the execution providers onnxruntime-node offers here;
 *   2. the pack loaded on the provider asked for, without CPU fallback (a failure is the answer);
 *   3. its outputs against the same pack on cpu: max abs difference of embeddings, routing
 *      weights and task scores, within a tolerance, and the same adapters chosen;
 *   4. throughput (sequences/s) at batch 1, 32 and 128 on both, one engine worker each,
 *      interleaved in rounds so machine noise hits both alike (medians).
 * Progress goes to stderr; one JSON object to stdout. Exit 0 when the provider started and the
 * outputs agree, 1 otherwise.
 *
 *   node dist/bench/gpu-check.js [--provider cuda|webgpu|cpu] [--device 0] [--pack models/demo]
 *                                [--tolerance 1e-3] [--batches 1,32,128] [--seconds 1] [--rounds 3]
 *
 * `--provider cpu` runs the same path with no GPU (cpu against cpu), to check the script itself.
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import type { ExecutionProvider } from '../src/engine/protocol.js';
import { listProviders } from '../src/engine/providers.js';
import { type InferResult, Model } from '../src/inference/model.js';
import { ensurePack } from '../src/tools/default-pack.js';
import { FIXTURE_TEXTS } from '../test/support/fixture-pack.js';
import { log, median } from './support.js';

const { values } = parseArgs({
  options: {
    provider: { type: 'string', default: 'cuda' },
    device: { type: 'string', default: '0' },
    pack: { type: 'string' },
    tolerance: { type: 'string', default: '1e-3' },
    batches: { type: 'string', default: '1,32,128' },
    seconds: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
  },
});
const PROVIDERS = ['cpu', 'cuda', 'webgpu'] as const satisfies readonly ExecutionProvider[];
const provider = values.provider as ExecutionProvider;
if (!(PROVIDERS as readonly string[]).includes(provider)) {
  process.stderr.write(`--provider must be one of ${PROVIDERS.join(', ')}\n`);
  process.exit(2);
}
const DEVICE = Number(values.device);
const TOLERANCE = Number(values.tolerance);
const BATCHES = values.batches.split(',').map(Number);
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);
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
    for (let j = 0; j < ref.embedding.length; j++) {
      diff.embedding = Math.max(diff.embedding, Math.abs(result.embedding[j]! - ref.embedding[j]!));
    }
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

async function main(): Promise<number> {
  const report: Record<string, unknown> = { provider, device: DEVICE, tolerance: TOLERANCE };
  const providers = listProviders();
  report.providers = providers;
  log(
    `providers onnxruntime-node offers: ${providers.map((p) => `${p.name}${p.bundled ? '' : ' (needs libraries)'}`).join(', ')}`,
  );

  const packDir = await ensurePack(values.pack, log);
  report.pack = packDir;
  const threads = Math.max(1, availableParallelism());
  const reference = await Model.open({
    packDir,
    engine: { workers: 1, intraOpThreads: threads, executionProvider: 'cpu' },
  });
  let model: Model;
  try {
    model = await Model.open({
      packDir,
      engine: {
        workers: 1,
        intraOpThreads: threads,
        executionProvider: provider,
        deviceId: DEVICE,
        allowProviderFallback: false,
      },
    });
  } catch (error) {
    await reference.close();
    report.started = false;
    report.error = (error as Error).message;
    log(`FAIL ${provider} did not start: ${(error as Error).message}`);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return 1;
  }
  report.started = model.engine.providerStatus.provider === provider;
  log(`${provider} started (device ${DEVICE}); pack ${packDir}`);

  try {
    // Outputs against cpu, on batches of several sizes (padding differs with the batch).
    const diff: Diff = { embedding: 0, routingWeight: 0, score: 0, routingMismatches: 0 };
    for (const batch of [1, 7, 32]) {
      const texts = inputs(batch);
      const request = { inputs: texts, topK: 2 };
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
      `${agree ? 'OK' : 'FAIL'} outputs vs cpu: max abs diff embedding ${diff.embedding.toExponential(2)}, ` +
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
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return agree ? 0 : 1;
  } finally {
    await model.close();
    await reference.close();
  }
}

process.exitCode = await main();
