/**
 * A pack with in-layer adapter groups on a generated Hugging Face BERT folder, for the tests and
 * benches that need slot banks inside the layers (bank residency, bench/gpu-check):
 *
 *   writeLayerPack(root, options): Promise<LayerPack>
 *     <root>/hf (the backbone folder) and <root>/pack (made by `pack create`, then given a LoRA
 *     group 'task' with `slots` slots of rank `rank` on `targetModules`, holding `loraAdapters`
 *     PEFT folders, and, with `bottleneckAdapters` > 0, an AdapterHub seq_bn group 'language'
 *     before it). Both groups are ungated, routed by the request; the first adapter is the
 *     default. Deterministic in its options.
 *
 *   writeRuntimeLora(pack, dir, seed): a further PEFT folder that fits the 'task' group, for
 *     loading at run time.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createPack } from '../../src/pack/create.js';
import {
  type FixtureBackbone,
  writeAdapterHubFolder,
  writePeftLoraFolder,
} from './adapter-fixtures.js';
import { writeHfFolder } from './hf-folder.js';

export interface LayerPackOptions {
  readonly hiddenSize?: number; // default 32
  readonly layers?: number; // default 2
  readonly heads?: number; // default 2
  readonly intermediateSize?: number; // default 4 x hiddenSize
  /** Longest input, position embeddings (default 40). */
  readonly maxPositions?: number;
  /** Slots of the LoRA group (default 4). */
  readonly slots?: number;
  /** Rank of the LoRA group's slots, and of its adapters (default 4). */
  readonly rank?: number;
  /** PEFT target_modules of every LoRA adapter (default ['query', 'value']). */
  readonly targetModules?: readonly string[];
  /** LoRA adapters in the pack (default 2, at most `slots`), ids lora0, lora1, ... */
  readonly loraAdapters?: number;
  /** AdapterHub bottleneck adapters in a 'language' group before it (default 0: no group). */
  readonly bottleneckAdapters?: number;
  readonly seed?: number; // default 1
}

export interface LayerPack {
  readonly packDir: string;
  readonly backbone: FixtureBackbone;
  readonly padTokenId: number;
  /** Token ids run from 0 to vocabSize - 1; 2 and 3 are [CLS] and [SEP]. */
  readonly vocabSize: number;
  readonly rank: number;
  readonly targetModules: readonly string[];
  /** Ids of the adapters in the pack, per group. */
  readonly lora: readonly string[];
  readonly bottleneck: readonly string[];
}

export async function writeLayerPack(
  root: string,
  options: LayerPackOptions = {},
): Promise<LayerPack> {
  const hiddenSize = options.hiddenSize ?? 32;
  const layers = options.layers ?? 2;
  const intermediateSize = options.intermediateSize ?? 4 * hiddenSize;
  const seed = options.seed ?? 1;
  const rank = options.rank ?? 4;
  const slots = options.slots ?? 4;
  const targetModules = options.targetModules ?? ['query', 'value'];
  const hf = await writeHfFolder(join(root, 'hf'), {
    family: 'bert',
    hiddenSize,
    layers,
    heads: options.heads ?? 2,
    intermediateSize,
    ...(options.maxPositions === undefined ? {} : { maxPositions: options.maxPositions }),
    seed,
  });
  const backbone: FixtureBackbone = { family: 'bert', hiddenSize, intermediateSize, layers };
  const { dir: packDir } = await createPack({
    backbone: hf.dir,
    out: join(root, 'pack'),
    name: 'layers',
  });
  const lora = Array.from({ length: options.loraAdapters ?? 2 }, (_, i) => `lora${i}`);
  const bottleneck = Array.from({ length: options.bottleneckAdapters ?? 0 }, (_, i) => `bn${i}`);
  for (const [i, id] of lora.entries()) {
    await writePeftLoraFolder(join(packDir, 'adapters', id), {
      backbone,
      seed: seed * 1000 + i,
      r: rank,
      targetModules,
    });
  }
  for (const [i, id] of bottleneck.entries()) {
    await writeAdapterHubFolder(join(packDir, 'adapters', id), {
      backbone,
      seed: seed * 1000 + 500 + i,
      name: id,
    });
  }
  const manifestPath = join(packDir, 'manifest.json');
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as Record<string, unknown>;
  const group = (id: string, adapters: readonly string[], extra: Record<string, unknown>) => ({
    id,
    placement: 'layers',
    default_k: 1,
    ...extra,
    adapters: adapters.map((a) => ({ id: a, path: `adapters/${a}` })),
    gate: null,
    default_adapter: adapters[0],
  });
  manifest.groups = [
    ...(bottleneck.length > 0 ? [group('language', bottleneck, {})] : []),
    group('task', lora, { slots, rank }),
  ];
  await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
  return {
    packDir,
    backbone,
    padTokenId: hf.padTokenId,
    vocabSize: hf.vocabSize,
    rank,
    targetModules,
    lora,
    bottleneck,
  };
}

/** A PEFT LoRA folder that fits the pack's 'task' group; returns `dir`. */
export async function writeRuntimeLora(
  pack: LayerPack,
  dir: string,
  seed: number,
): Promise<string> {
  await writePeftLoraFolder(dir, {
    backbone: pack.backbone,
    seed,
    r: pack.rank,
    targetModules: pack.targetModules,
  });
  return dir;
}
