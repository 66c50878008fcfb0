/**
 * In-layer adapters end to end: a pack made from a generated Hugging Face folder, with a group of
 * AdapterHub bottleneck adapters and a group of PEFT LoRA adapters inside the layers, served by the
 * real engine (one pack graph, slot banks in every worker), checked against the float64 reference
 * of PEFT's and AdapterHub's semantics (test/support/adapter-reference.ts) on token-id input:
 * single adapters, 0.5/0.5 mixtures, every item of one batch routed differently, a slot reused
 * after an unload, LoRA and bottleneck groups together.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { EngineItem } from '../src/engine/engine.js';
import { Model } from '../src/inference/model.js';
import { addAdapter, createPack } from '../src/pack/create.js';
import type { LayerAdapter } from '../src/pack/layer-adapter-types.js';
import { loadPack } from '../src/pack/load.js';
import {
  type FixtureBackbone,
  writeAdapterHubFolder,
  writePeftLoraFolder,
} from './support/adapter-fixtures.js';
import { type ItemRouting, layerAdapterHooks } from './support/adapter-reference.js';
import { hfEncoderReference, pooledReference } from './support/encoder-reference.js';
import { type HfFolder, writeHfFolder } from './support/hf-folder.js';

const TOL = 1e-4;
let root: string;
let hf: HfFolder;
let backbone: FixtureBackbone;
let packDir: string;
let model: Model;

/** Token-id inputs of different lengths (padding in every batch). */
const INPUTS = [
  [2, 17, 33, 41, 58, 3],
  [2, 9, 3],
  [2, 60, 61, 62, 63, 64, 65, 66, 3],
  [2, 40, 3, 5],
];

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-layers-'));
  hf = await writeHfFolder(join(root, 'hf'), {
    family: 'bert',
    hiddenSize: 32,
    layers: 2,
    heads: 2,
    intermediateSize: 64,
    seed: 3,
  });
  backbone = { family: 'bert', hiddenSize: 32, intermediateSize: 64, layers: 2 };
  const pack = await createPack({ backbone: hf.dir, out: join(root, 'pack'), name: 'layers' });
  packDir = pack.dir;
  const sources = join(root, 'sources');
  await writeAdapterHubFolder(join(sources, 'x'), { backbone, seed: 11, name: 'x' });
  await writeAdapterHubFolder(join(sources, 'y'), { backbone, seed: 12, name: 'y' });
  await writePeftLoraFolder(join(sources, 'a'), { backbone, seed: 21, r: 4 });
  await writePeftLoraFolder(join(sources, 'b'), {
    backbone,
    seed: 22,
    r: 2,
    loraAlpha: 4,
    targetModules: ['query', 'value', 'dense'],
  });
  // As `npm run pack -- add-adapter` does: the first adapter of a group creates it (ungated, with
  // that adapter as its default); the task group gets room for one more rank-4 adapter.
  await addAdapter({ pack: packDir, group: 'language', adapter: join(sources, 'x') });
  await addAdapter({ pack: packDir, group: 'language', adapter: join(sources, 'y') });
  await addAdapter({
    pack: packDir,
    group: 'task',
    adapter: join(sources, 'a'),
    slots: 3,
    rank: 4,
  });
  await addAdapter({ pack: packDir, group: 'task', adapter: join(sources, 'b') });
  model = await Model.open({ packDir, engine: { workers: 2, intraOpThreads: 1 }, log: () => {} });
});

after(async () => {
  await model?.close();
  await rm(root, { recursive: true, force: true });
});

type Mixture = Record<string, number>;

/** The adapters the pack serves now, by id. */
function served(): Map<string, LayerAdapter> {
  return new Map(
    model.pack.groups.flatMap((g) => g.adapters.map((a) => [a.id, a as LayerAdapter] as const)),
  );
}

/** What the reference says each item's embedding is, routed by `mixtures[b] = [language, task]`. */
function expected(
  mixtures: readonly (readonly [Mixture, Mixture])[],
  adapters: Map<string, LayerAdapter>,
): Float64Array[] {
  const ids = INPUTS.slice(0, mixtures.length);
  const T = Math.max(...ids.map((row) => row.length));
  const padded = ids.map((row) => [...row, ...new Array(T - row.length).fill(hf.padTokenId)]);
  const mask = ids.map((row) => [...row.map(() => 1), ...new Array(T - row.length).fill(0)]);
  const routing = (g: 0 | 1): ItemRouting[] =>
    mixtures.map((m) =>
      Object.entries(m[g]).map(([id, weight]) => ({ adapter: adapters.get(id)!, weight })),
    );
  const hidden = hfEncoderReference(
    hf.config,
    hf.tensors,
    { ids: padded, mask },
    layerAdapterHooks([routing(0), routing(1)]),
  );
  return pooledReference(
    hidden,
    mask,
    hf.config.hidden_size as number,
    model.pack.pooling.mode,
    model.pack.pooling.normalize,
  );
}

async function check(mixtures: readonly (readonly [Mixture, Mixture])[], adapters = served()) {
  const items: EngineItem[] = mixtures.map(([language, task], b) => ({
    ids: INPUTS[b]!,
    routing: { weights: { language, task } },
  }));
  const outcome = await model.engine.run(items);
  const want = expected(mixtures, adapters);
  outcome.items.forEach((item, b) => {
    assert.ok(item.ok, item.ok ? '' : item.error.message);
    const got = item.result.embedding;
    let error = 0;
    for (let j = 0; j < got.length; j++) error = Math.max(error, Math.abs(got[j]! - want[b]![j]!));
    assert.ok(error <= TOL, `item ${b}: max error ${error}`);
    const routed = item.result.routing;
    for (const [g, mixture] of [
      ['language', mixtures[b]![0]],
      ['task', mixtures[b]![1]],
    ] as const) {
      const weights = Object.fromEntries(routed[g]!.map((r) => [r.adapter, r.weight]));
      for (const [id, w] of Object.entries(mixture)) assert.ok(Math.abs(weights[id]! - w) < 1e-5);
    }
  });
}

describe('in-layer adapters (PEFT LoRA and AdapterHub bottleneck) against the reference', () => {
  it('loads the pack: two in-layer groups with the structures their adapters need', () => {
    const [language, task] = model.pack.groups;
    assert.equal(language!.structure.kind, 'bottleneck-layers');
    assert.ok(task!.structure.kind === 'lora');
    assert.equal(task!.structure.rank, 4);
    assert.deepEqual(task!.structure.layers, [0, 1]);
    // PEFT's 'dense' target reaches all three dense modules of a BERT layer.
    assert.deepEqual([...task!.structure.modules].sort(), [
      'attention_output',
      'intermediate',
      'output',
      'query',
      'value',
    ]);
  });

  it('single adapters: the defaults, then the other pair', async () => {
    await check([[{ x: 1 }, { a: 1 }]]);
    await check([[{ y: 1 }, { b: 1 }]]);
  });

  it('two adapters mixed 0.5/0.5 in each group', async () => {
    await check([
      [
        { x: 0.5, y: 0.5 },
        { a: 0.5, b: 0.5 },
      ],
    ]);
  });

  it('each item of one batch routed differently', async () => {
    await check([
      [{ x: 1 }, { a: 1 }],
      [{ y: 1 }, { b: 1 }],
      [{ x: 0.3, y: 0.7 }, { a: 1 }],
      [{ y: 1 }, { a: 0.25, b: 0.75 }],
    ]);
  });

  it('adapters loaded at run time: a slot reused after an unload serves the new weights only', async () => {
    const first = join(packDir, 'runtime-c');
    const second = join(packDir, 'runtime-d');
    await writePeftLoraFolder(first, {
      backbone,
      seed: 31,
      r: 4,
      targetModules: ['query', 'value'],
    });
    await writePeftLoraFolder(second, { backbone, seed: 32, r: 3, targetModules: ['value'] });
    const c = await model.registry.load(first, { id: 'c' });
    assert.deepEqual([c.group, c.type, c.rank, c.state], ['task', 'lora', 4, 'ready']);
    await check(
      [
        [{ x: 1 }, { c: 1 }],
        [{ y: 1 }, { c: 0.5, a: 0.5 }],
      ],
      withRegistry(),
    );
    await model.registry.unload('c');
    // The third slot is the only free one: d takes the slot c had.
    const d = await model.registry.load(second, { id: 'd', group: 'task' });
    assert.equal(d.state, 'ready');
    await check(
      [
        [{ x: 1 }, { d: 1 }],
        [{ y: 0.5, x: 0.5 }, { d: 1 }],
      ],
      withRegistry(),
    );
    await model.registry.unload('d');
    assert.deepEqual(c.notes, [], 'a plain PEFT folder leaves nothing out');
  });

  it("says so when a run-time load leaves the folder's classifier head out", async () => {
    const withHead = join(packDir, 'runtime-with-head');
    await writePeftLoraFolder(withHead, { backbone, seed: 33, r: 2, head: { numLabels: 3 } });
    const tasks = model.describe().tasks.length;
    const loaded = await model.registry.load(withHead, { id: 'h', group: 'task' });
    assert.equal(loaded.state, 'ready');
    assert.equal(loaded.notes.length, 1);
    assert.match(loaded.notes[0]!, /classifier head .*3 labels.* is not served/);
    assert.match(loaded.notes[0]!, /npm run pack -- add-adapter .*--group task/);
    assert.deepEqual(model.registry.get('h')!.notes, loaded.notes, 'listed with the adapter');
    assert.equal(model.describe().tasks.length, tasks, 'no task was added');
    await model.registry.unload('h');
  });

  it('refuses an adapter that does not fit, leaving the registry as it was', async () => {
    const wide = join(packDir, 'runtime-wide');
    await writePeftLoraFolder(wide, { backbone, seed: 41, r: 8 });
    const before = model.registry.list().map((a) => a.id);
    await assert.rejects(
      model.registry.load(wide, { id: 'wide' }),
      /rank 8 is above group 'task''s slot rank 4/,
    );
    const other = join(packDir, 'runtime-other-base');
    await writePeftLoraFolder(other, { backbone: { ...backbone, layers: 3 }, seed: 42, r: 2 });
    await assert.rejects(model.registry.load(other, { id: 'other' }), /layer/);
    assert.deepEqual(
      model.registry.list().map((a) => a.id),
      before,
    );
  });
});

describe('npm run pack -- add-adapter', () => {
  it('adds a PEFT folder to a pack, which then loads with the new group; a bad folder changes nothing', async () => {
    const pack = await createPack({ backbone: hf.dir, out: join(root, 'cli-pack'), name: 'cli' });
    const peft = join(root, 'cli-lora');
    await writePeftLoraFolder(peft, { backbone, seed: 51, r: 2 });
    const run = (...args: string[]) =>
      spawnSync(process.execPath, ['dist/src/tools/pack.js', 'add-adapter', ...args], {
        encoding: 'utf8',
      });
    const added = run(
      '--pack',
      pack.dir,
      '--group',
      'task',
      '--adapter',
      peft,
      '--id',
      'lora1',
      '--no-build',
    );
    assert.equal(added.status, 0, added.stderr);
    assert.match(added.stderr, /group 'task' \(lora\) holds lora1/);
    const loaded = await loadPack(pack.dir);
    assert.deepEqual(
      loaded.groups.map((g) => [g.id, g.structure.kind, g.defaultAdapter]),
      [['task', 'lora', 'lora1']],
    );
    const bad = run(
      '--pack',
      pack.dir,
      '--group',
      'task',
      '--adapter',
      join(root, 'no-such-folder'),
    );
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /adapter_config\.json/);
    assert.equal((await loadPack(pack.dir)).groups[0]!.adapters.length, 1);
  });
});

/** Served adapters plus those loaded at run time (read back from their folders by the registry). */
function withRegistry(): Map<string, LayerAdapter> {
  const adapters = served();
  for (const [id, entry] of model.registry.entries()) adapters.set(id, entry as LayerAdapter);
  return adapters;
}
