/**
 * Slot banks kept the GPU way, tested on cpu (src/engine/bank-residency.ts). The cpu provider is
 * forced into the modes a GPU provider runs in:
 * - 'device' (webgpu): the banks are copied by an upload session and fed from the copy;
 * - 'initializers' (cuda): the banks are initializers of the session, rebuilt after writes.
 * Each must answer what the host path answers, see every slot write at the next batch, never
 * serve a reused slot's old weights, and pay for the sync on the first batch after writes only.
 * Real ORT sessions on two packs: in-layer LoRA and bottleneck groups over a built backbone (the
 * graph is a file with its weights as external data), and the fixture pack (an ONNX backbone, the
 * graph from bytes, gated groups whose gate-index banks are int64).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { BankResidency } from '../src/engine/bank-residency.js';
import type { BatchOutcome, EngineItem } from '../src/engine/engine.js';
import { Model } from '../src/inference/model.js';
import type { BottleneckAdapter } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import {
  buildFixturePack,
  FIXTURE_TEXTS,
  randomAdapter,
  writeAdapterFolder,
} from './support/fixture-pack.js';
import { type LayerPack, writeLayerPack, writeRuntimeLora } from './support/layer-pack.js';

const GPU_MODES = ['device', 'initializers'] as const satisfies readonly BankResidency[];
/** The modes change where the banks are, not the arithmetic; allow float reassociation only. */
const TOL = 1e-5;

let root: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-banks-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function open(packDir: string, residency: BankResidency): Promise<Model> {
  return Model.open({
    packDir,
    engine: { workers: 1, intraOpThreads: 1, bankResidency: residency },
    log: () => {},
  });
}

/** Every item answered; the largest difference of embeddings and routing weights to `want`. */
function difference(got: BatchOutcome, want: BatchOutcome): number {
  let max = 0;
  got.items.forEach((item, b) => {
    const other = want.items[b]!;
    assert.ok(item.ok && other.ok, 'every item answered');
    const [x, y] = [item.result, other.result];
    for (let j = 0; j < x.embedding.length; j++)
      max = Math.max(max, Math.abs(x.embedding[j]! - y.embedding[j]!));
    for (const [group, routed] of Object.entries(y.routing)) {
      const mine = x.routing[group]!;
      assert.deepEqual(
        mine.map((r) => r.adapter),
        routed.map((r) => r.adapter),
        `group ${group}: the same adapters`,
      );
      routed.forEach((r, k) => {
        max = Math.max(max, Math.abs(mine[k]!.weight - r.weight));
      });
    }
  });
  return max;
}

/**
 * The models of one pack, one per mode, driven through the same registry operations and batches.
 * `batch` runs the items on every model and checks each GPU mode against the host path.
 */
class Trio {
  constructor(
    readonly host: Model,
    readonly modes: Record<(typeof GPU_MODES)[number], Model>,
  ) {}

  static async open(packDir: string): Promise<Trio> {
    // One after the other: the first builds the pack's cached graph, the others find it.
    const host = await open(packDir, 'host');
    const device = await open(packDir, 'device');
    const initializers = await open(packDir, 'initializers');
    return new Trio(host, { device, initializers });
  }

  get all(): Model[] {
    return [this.host, ...Object.values(this.modes)];
  }

  /** Runs `items` on every model; returns each GPU mode's outcome after checking it. */
  async batch(items: readonly EngineItem[]): Promise<Record<string, BatchOutcome>> {
    const want = await this.host.engine.run(items);
    assert.equal(want.timings.bankSyncMs, 0, 'the host path never syncs');
    const outcomes: Record<string, BatchOutcome> = { host: want };
    for (const [mode, model] of Object.entries(this.modes)) {
      const got = await model.engine.run(items);
      const diff = difference(got, want);
      assert.ok(diff <= TOL, `${mode}: max difference ${diff} to the host path`);
      outcomes[mode] = got;
    }
    return outcomes;
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((m) => m.close()));
  }
}

describe('in-layer groups over a built backbone (graph file, external data)', () => {
  let pack: LayerPack;
  let trio: Trio;
  /** Token ids of different lengths: padding in every batch. */
  const IDS = [
    [2, 17, 33, 41, 58, 3],
    [2, 9, 3],
    [2, 60, 61, 62, 63, 64, 65, 66, 3],
  ];
  const items = (task: readonly Record<string, number>[]): EngineItem[] =>
    task.map((weights, b) => ({
      ids: IDS[b % IDS.length]!,
      routing: {
        weights: { language: { bn0: 1 - 0.5 * (b % 2), bn1: 0.5 * (b % 2) }, task: weights },
      },
    }));

  before(async () => {
    pack = await writeLayerPack(join(root, 'layers'), {
      slots: 3,
      rank: 4,
      targetModules: ['query', 'value', 'dense'],
      loraAdapters: 2,
      bottleneckAdapters: 2,
      seed: 3,
    });
    trio = await Trio.open(pack.packDir);
  });
  after(async () => {
    await trio?.close();
  });

  it('each engine runs its banks where it was told', () => {
    assert.equal(trio.host.engine.bankResidency, 'host');
    assert.equal(trio.modes.device.engine.bankResidency, 'device');
    assert.equal(trio.modes.initializers.engine.bankResidency, 'initializers');
  });

  it('answers what the host path answers; the sync comes with the first batch after writes only', async () => {
    // The pack's adapters were written into slots after the sessions opened: the first batch syncs.
    const first = await trio.batch(items([{ lora0: 1 }, { lora1: 1 }, { lora0: 0.5, lora1: 0.5 }]));
    for (const mode of GPU_MODES) assert.ok(first[mode]!.timings.bankSyncMs > 0, mode);
    const second = await trio.batch(items([{ lora1: 1 }, { lora0: 0.25, lora1: 0.75 }]));
    for (const mode of GPU_MODES) assert.equal(second[mode]!.timings.bankSyncMs, 0, mode);
  });

  it('a reused slot serves the new adapter only, from the batch right after the write', async () => {
    const route = items([{ runtime: 1 }, { runtime: 0.5, lora0: 0.5 }]);
    const c = await writeRuntimeLora(pack, join(root, 'runtime-c'), 31);
    const d = await writeRuntimeLora(pack, join(root, 'runtime-d'), 32);
    await Promise.all(trio.all.map((model) => model.registry.load(c, { id: 'runtime' })));
    const withC = await trio.batch(route);
    for (const mode of GPU_MODES) assert.ok(withC[mode]!.timings.bankSyncMs > 0, mode);
    // The third slot is the only free one: the next adapter takes the slot this one had.
    await Promise.all(trio.all.map((model) => model.registry.unload('runtime')));
    await Promise.all(trio.all.map((model) => model.registry.load(d, { id: 'runtime' })));
    const withD = await trio.batch(route);
    for (const mode of GPU_MODES) {
      assert.ok(withD[mode]!.timings.bankSyncMs > 0, mode);
      // Not a vacuous match: the new weights change the answer.
      assert.ok(difference(withD[mode]!, withC.host!) > 1e-3, `${mode}: the new weights count`);
    }
    await Promise.all(trio.all.map((model) => model.registry.unload('runtime')));
  });
});

describe('the fixture pack (ONNX backbone, graph from bytes, gated groups)', () => {
  let packDir: string;
  let trio: Trio;

  before(async () => {
    packDir = await buildFixturePack(join(root, 'fixture'), { seed: 5 });
    trio = await Trio.open(packDir);
  });
  after(async () => {
    await trio?.close();
  });

  it('routes by the gates and answers what the host path answers', async () => {
    const items = await trio.host.prepare({ inputs: FIXTURE_TEXTS.slice(0, 6), topK: 2 });
    await trio.batch(items);
    const again = await trio.batch(items);
    for (const mode of GPU_MODES) assert.equal(again[mode]!.timings.bankSyncMs, 0, mode);
  });

  it('an adapter loaded at run time, and another under its id after an unload, served at once', async () => {
    const activation = (trio.host.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation;
    const write = async (seed: number) => {
      const dir = join(root, `extra-${seed}`);
      const adapter = randomAdapter(new Random(seed), {
        id: 'extra',
        group: 'language',
        hiddenSize: trio.host.pack.hiddenSize,
        rank: 3,
        activation,
      });
      await writeAdapterFolder(dir, adapter);
      return dir;
    };
    const first = await write(71);
    await Promise.all(trio.all.map((model) => model.registry.load(first)));
    const items = await trio.host.prepare({
      inputs: FIXTURE_TEXTS.slice(0, 3),
      adapters: { language: 'extra' },
    });
    const before = await trio.batch(items);
    await Promise.all(trio.all.map((model) => model.registry.unload('extra')));
    const second = await write(72);
    await Promise.all(trio.all.map((model) => model.registry.load(second)));
    const after = await trio.batch(items);
    for (const mode of GPU_MODES) {
      assert.ok(after[mode]!.timings.bankSyncMs > 0, mode);
      assert.ok(difference(after[mode]!, before.host!) > 1e-3, `${mode}: the new weights count`);
    }
  });
});
