/**
 * In-layer LoRA adapters in slots, through the real engine (issue 11's bench):
 *
 *   backbone   a BERT of the multilingual-e5-small / MiniLM shape (d384 x 12 layers, 12 heads,
 *              ffn 1536, random weights), built from a generated Hugging Face folder
 *   adapters   PEFT LoRA, r 8 on query and value in every layer
 *   batches    B = 32 items x T = 64 tokens, sent one after the other (so that items/s is the
 *              engine's, not the pipeline's)
 *
 * Side by side, interleaved rounds, medians:
 *   plain      the same backbone in a pack without adapter groups
 *   slots64    64 adapters loaded into 64 slots, every item routed to a different one
 *   evict1024  1024 adapters over the same 64 slots: every batch names 32 of them at random, so
 *              most are written into a slot first (least recently used evicted)
 * and, on the 64-slot pack: the latency of one adapter load (a PEFT folder read, checked and
 * written into a slot in every worker), and p50/p99 of single-item requests with and without
 * adapters being loaded and unloaded meanwhile.
 *
 *   npm run bench:engine [-- --rounds 5 --batches 4 --workers 1 --threads 2 --layers 12]
 *
 * Progress on stderr; one JSON document on stdout.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { EngineItem } from '../src/engine/engine.js';
import { Model } from '../src/inference/model.js';
import { createPack } from '../src/pack/create.js';
import { Random } from '../src/util/random.js';
import { writePeftLoraFolder } from '../test/support/adapter-fixtures.js';
import { writeHfFolder } from '../test/support/hf-folder.js';
import { log, median, percentile, positiveInt, round2, round3 } from './support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    batches: { type: 'string', default: '4' },
    workers: { type: 'string', default: '1' },
    threads: { type: 'string', default: '2' },
    layers: { type: 'string', default: '12' },
    loads: { type: 'string', default: '16' },
  },
});
const ROUNDS = positiveInt('rounds', values.rounds!);
const BATCHES = positiveInt('batches', values.batches!);
const LAYERS = positiveInt('layers', values.layers!);
const LOADS = positiveInt('loads', values.loads!);
const engine = {
  workers: positiveInt('workers', values.workers!),
  intraOpThreads: positiveInt('threads', values.threads!),
};
const B = 32;
const T = 64;
const SLOTS = 64;
const MANY = 1024;
const SHAPE = { hiddenSize: 384, layers: LAYERS, heads: 12, intermediateSize: 1536 };

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'moe-bench-engine-'));
  const models: Model[] = [];
  try {
    log(`[bench] generating a d${SHAPE.hiddenSize} x ${LAYERS} BERT folder and LoRA adapters`);
    const hf = await writeHfFolder(join(root, 'hf'), {
      family: 'bert',
      ...SHAPE,
      maxPositions: 128,
      seed: 5,
    });
    const backbone = { family: 'bert' as const, ...SHAPE };
    // One PEFT folder per distinct adapter of the 64; the 1024 reuse their weights under other ids.
    const folders: string[] = [];
    for (let i = 0; i < SLOTS; i++) {
      const dir = join(root, 'adapters', `a${i}`);
      await writePeftLoraFolder(dir, {
        backbone,
        seed: 100 + i,
        r: 8,
        targetModules: ['query', 'value'],
      });
      folders.push(dir);
    }
    const plain = await createPack({ backbone: hf.dir, out: join(root, 'plain'), name: 'plain' });
    const slotted = await lora(join(root, 'slots'), hf.dir, folders[0]!, SLOTS);
    const tight = await lora(join(root, 'evict'), hf.dir, folders[0]!, SLOTS);
    const open = async (packDir: string) => {
      const model = await Model.open({ packDir, engine, log: () => {} });
      models.push(model);
      return model;
    };
    const plainModel = await open(plain.dir);
    const slotModel = await open(slotted);
    const evictModel = await open(tight);

    const loadMs: number[] = [];
    for (let i = 1; i < SLOTS; i++) {
      const started = performance.now();
      await slotModel.registry.load(folders[i]!, { id: `a${i}` });
      loadMs.push(performance.now() - started);
    }
    log(`[bench] 64 adapters in 64 slots; median load ${median(loadMs).toFixed(1)} ms`);
    for (let i = 1; i < MANY; i++) {
      await evictModel.registry.load(folders[i % SLOTS]!, { id: `m${i}` });
      if (i % 256 === 0) log(`[bench] ${i + 1} adapters over 64 slots`);
    }
    const misses = { count: 0 };
    evictModel.engine.on('slot-miss', () => misses.count++);

    const rng = new Random(9);
    const ids = () =>
      Int32Array.from({ length: T }, (_, t) => (t === 0 ? 2 : 5 + rng.int(hf.vocabSize - 8)));
    const batch = (pick: (b: number) => string | undefined): EngineItem[] =>
      Array.from({ length: B }, (_, b) => {
        const adapter = pick(b);
        return { ids: ids(), routing: adapter === undefined ? {} : { pins: { task: adapter } } };
      });
    const configs = {
      plain: { model: plainModel, items: () => batch(() => undefined) },
      slots64: { model: slotModel, items: () => batch((b) => (b === 0 ? 'a' : `a${b}`)) },
      evict1024: {
        model: evictModel,
        items: () => {
          const chosen = new Set<number>();
          while (chosen.size < B) chosen.add(1 + rng.int(MANY - 1));
          return batch((b) => `m${[...chosen][b]}`);
        },
      },
    };
    const perSecond: Record<string, number[]> = { plain: [], slots64: [], evict1024: [] };
    for (const config of Object.values(configs)) await config.model.engine.run(config.items()); // warm
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, config] of Object.entries(configs)) {
        const started = performance.now();
        for (let n = 0; n < BATCHES; n++) {
          const outcome = await config.model.engine.run(config.items());
          if (!outcome.items.every((item) => item.ok)) throw new Error(`${name}: an item failed`);
        }
        const rate = (BATCHES * B) / ((performance.now() - started) / 1000);
        perSecond[name]!.push(rate);
        log(`[bench] round ${round + 1}/${ROUNDS} ${name}: ${rate.toFixed(1)} items/s`);
      }
    }

    // Latency of single requests, quiet and while adapters are loaded and unloaded.
    const single = async (count: number) => {
      const ms: number[] = [];
      for (let n = 0; n < count; n++) {
        const started = performance.now();
        await slotModel.engine.run(
          batch((b) => (b === 0 ? `a${1 + rng.int(SLOTS - 2)}` : undefined)).slice(0, 1),
        );
        ms.push(performance.now() - started);
      }
      return ms;
    };
    const quiet = await single(40);
    let loading = true;
    let swaps = 0;
    const churn = (async () => {
      while (loading) {
        await slotModel.registry.unload(`a${SLOTS - 1}`);
        await slotModel.registry.load(folders[(swaps % (SLOTS - 1)) + 1]!, { id: `a${SLOTS - 1}` });
        swaps++;
      }
    })();
    const busy = await single(Math.max(40, LOADS));
    loading = false;
    await churn;

    const med = (name: string) => median(perSecond[name]!);
    const result = {
      bench: 'engine-slots',
      shape: { ...SHAPE, batch: B, tokens: T, lora: { r: 8, targets: ['query', 'value'] } },
      engine,
      rounds: ROUNDS,
      items_per_second: {
        plain: round2(med('plain')),
        slots64: round2(med('slots64')),
        evict1024: round2(med('evict1024')),
      },
      ratio: {
        slots64_vs_plain: round3(med('slots64') / med('plain')),
        evict1024_vs_slots64: round3(med('evict1024') / med('slots64')),
      },
      slot_misses_evict1024: misses.count,
      load_ms: { median: round2(median(loadMs)), p90: round2(percentile(loadMs, 90)) },
      single_request_ms: {
        quiet: { p50: round2(percentile(quiet, 50)), p99: round2(percentile(quiet, 99)) },
        while_loading: {
          p50: round2(percentile(busy, 50)),
          p99: round2(percentile(busy, 99)),
          swaps,
        },
      },
      target: 'slots64_vs_plain >= 0.85 (S-LoRA: 0.945)',
    };
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    for (const model of models) await model.close();
    await rm(root, { recursive: true, force: true });
  }
}

/** A pack over `hfDir` with one in-layer LoRA group `task` (one adapter, `slots` slots). */
async function lora(out: string, hfDir: string, first: string, slots: number): Promise<string> {
  const pack = await createPack({ backbone: hfDir, out, name: 'bench' });
  await cp(first, join(pack.dir, 'adapters', 'a'), { recursive: true });
  const manifestPath = join(pack.dir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as Record<string, unknown>;
  manifest.groups = [
    {
      id: 'task',
      placement: 'layers',
      default_k: 1,
      slots,
      adapters: [{ id: 'a', path: 'adapters/a' }],
      gate: null,
      default_adapter: 'a',
    },
  ];
  await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
  return pack.dir;
}

await main();
