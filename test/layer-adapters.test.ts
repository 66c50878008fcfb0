/**
 * In-layer adapters end to end: a pack made from a generated Hugging Face folder, with a group of
 * AdapterHub bottleneck adapters and a group of PEFT LoRA adapters inside the layers, served by the
 * real engine (one pack graph, slot banks in every worker), checked against the float64 reference
 * of PEFT's and AdapterHub's semantics (test/support/adapter-reference.ts) on token-id input:
 * single adapters, 0.5/0.5 mixtures, every item of one batch routed differently, a slot reused
 * after an unload, LoRA and bottleneck groups together.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { EngineItem } from '../src/engine/engine.js';
import { Model } from '../src/inference/model.js';
import { createPack } from '../src/pack/create.js';
import type { LayerAdapter } from '../src/pack/layer-adapter-types.js';
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
  await writeAdapterHubFolder(join(packDir, 'adapters/x'), { backbone, seed: 11, name: 'x' });
  await writeAdapterHubFolder(join(packDir, 'adapters/y'), { backbone, seed: 12, name: 'y' });
  await writePeftLoraFolder(join(packDir, 'adapters/a'), { backbone, seed: 21, r: 4 });
  await writePeftLoraFolder(join(packDir, 'adapters/b'), {
    backbone,
    seed: 22,
    r: 2,
    loraAlpha: 4,
    targetModules: ['query', 'value', 'dense'],
  });
  const manifestPath = join(packDir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as Record<string, unknown>;
  manifest.groups = [
    {
      id: 'language',
      placement: 'layers',
      default_k: 1,
      adapters: [
        { id: 'x', path: 'adapters/x' },
        { id: 'y', path: 'adapters/y' },
      ],
      gate: null,
      default_adapter: 'x',
    },
    {
      id: 'task',
      placement: 'layers',
      default_k: 1,
      // Room for one more rank-4 adapter: a third slot, LoRA on every linear module.
      slots: 3,
      rank: 4,
      adapters: [
        { id: 'a', path: 'adapters/a' },
        { id: 'b', path: 'adapters/b' },
      ],
      gate: null,
      default_adapter: 'a',
    },
  ];
  await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
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

/** Served adapters plus those loaded at run time (read back from their folders by the registry). */
function withRegistry(): Map<string, LayerAdapter> {
  const adapters = served();
  for (const [id, entry] of model.registry.entries()) adapters.set(id, entry as LayerAdapter);
  return adapters;
}
