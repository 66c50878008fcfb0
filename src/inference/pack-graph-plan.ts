/**
 * From a loaded pack to what the engine runs: the slot groups (what each group's slots hold) and
 * the pack graph compiled from the pack's fixed parts (backbone, group structures, gates, heads,
 * pooling). Adapters are not compiled in; the registry hands them to the engine, which writes them
 * into slots, so loading one never rebuilds anything here.
 *
 * - A Hugging Face backbone is built into the pack graph (one ORT run per batch, with hook points
 *   in every layer for in-layer groups). That graph holds the backbone's weights, so it is built
 *   once and cached on disk (graph-cache.ts): `<pack>/.cache/graph/<key>/model.onnx`, or
 *   `<cacheDir>/<pack name>-<key>/` for a pack on read-only storage. The key digests the builder
 *   versions, the weight files, how the backbone is built (manifest backbone.quantize: 'int8'
 *   gives int8 projections, src/onnx/bert.ts), and every fixed part of the pack the graph holds.
 * - An ONNX backbone (a file, or an export folder) runs as its own session before the pack graph,
 *   which then takes its hidden states; that graph is small and compiled at every start.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { SlotGroup } from '../adapters/slot-writer.js';
import type { EngineGraph } from '../engine/engine.js';
import { BERT_BUILDER_VERSION, bertBackbone } from '../onnx/bert.js';
import { cachedGraph, filesDigest } from '../onnx/graph-cache.js';
import { compilePackGraph, type PackGraphSpec, packGraphBytes } from '../onnx/pack-graph.js';
import { groupBanks } from '../onnx/slot-banks.js';
import type { PackBackbone } from '../pack/backbone.js';
import { readHfWeights } from '../pack/hf-model.js';
import type { LoadedPack } from '../pack/load.js';
import { hashValue } from '../util/digest.js';

/**
 * Version of what this file and the pack graph compiler emit for the same pack: part of the cache
 * key. Bump it whenever the compiled graph changes for the same inputs.
 */
export const PACK_GRAPH_VERSION = 1;

export interface PrepareGraphOptions {
  /** Cache folder outside the pack (read-only packs); default `<pack>/.cache/graph`. */
  readonly cacheDir?: string;
  /** Progress lines (building a large model's graph takes a while). */
  readonly log?: (line: string) => void;
}

/** The slot groups of a pack, in its group order (no graph needed: the API role uses these). */
export function slotGroupsOf(pack: LoadedPack): SlotGroup[] {
  const intermediateSize =
    pack.backbone.kind === 'huggingface' ? pack.backbone.info.config.intermediateSize : 0;
  return pack.groups.map((group, index) => ({
    index,
    id: group.id,
    slots: group.slots,
    structure: group.structure,
    gated: group.gate !== null,
    gateExperts: group.gate?.experts.length ?? 0,
    dims: { hiddenSize: pack.hiddenSize, intermediateSize },
  }));
}

/** Build (or find in the cache) the pack's graph and describe it for the engine. */
export async function prepareEngineGraph(
  pack: LoadedPack,
  options: PrepareGraphOptions = {},
): Promise<EngineGraph & { readonly built: boolean }> {
  const groups = slotGroupsOf(pack);
  const fixed = fixedParts(pack);
  const backbone = pack.backbone;
  // The slot layout follows from the group structures alone (the compiler declares the same).
  const banks = groups.flatMap((g) => groupBanks(g.index, g.structure, g.slots, g.gated, g.dims));
  const describe = (
    model: string | Uint8Array,
    externalBackbone: string | undefined,
    padTokenId: number,
  ) => ({
    worker: {
      model,
      externalBackbone,
      banks,
      groupCount: groups.length,
      gatedGroups: groups.map((g) => g.gated),
      headCount: pack.heads.length,
      padTokenId,
    },
    groups,
    heads: pack.heads.map((head) => ({ id: head.id, labels: head.labels })),
    hiddenSize: pack.hiddenSize,
  });

  if (backbone.kind !== 'huggingface') {
    const compiled = compilePackGraph({
      ...fixed,
      backbone: { kind: 'external', hiddenSize: pack.hiddenSize },
    });
    return { ...describe(packGraphBytes(compiled), backbone.path, 0), built: false };
  }

  const key = await graphKey(backbone, fixed);
  const shared = options.cacheDir !== undefined;
  const cached = await cachedGraph({
    parent: options.cacheDir ?? join(pack.dir, '.cache', 'graph'),
    name: shared ? `${pack.manifest.name}-${key}` : key,
    removeOthers: !shared,
    hint: 'BACKBONE_CACHE_DIR',
    ...(options.log === undefined ? {} : { log: options.log }),
    build: async (path) => {
      const weights = await readHfWeights(backbone.info);
      const compiled = compilePackGraph({
        ...fixed,
        backbone: bertBackbone(backbone.info.config, weights, { quantize: backbone.quantize }),
      });
      await compiled.graph.writeModel(path, compiled.model);
    },
  });
  return {
    ...describe(cached.path, undefined, backbone.info.config.padTokenId),
    built: cached.built,
  };
}

/** What the pack graph holds besides the backbone. */
function fixedParts(pack: LoadedPack): Omit<PackGraphSpec, 'backbone'> {
  return {
    pooling: pack.pooling,
    groups: pack.groups.map((group) => ({
      id: group.id,
      slots: group.slots,
      structure: group.structure,
      gate: group.gate,
    })),
    heads: pack.heads,
  };
}

/**
 * 32 hex digits of sha256 over the builders' versions, the config, backbone.quantize (only when not
 * 'none', so float32 keys are those of builds before the option), the weights and the fixed parts.
 */
async function graphKey(
  backbone: Extract<PackBackbone, { kind: 'huggingface' }>,
  fixed: Omit<PackGraphSpec, 'backbone'>,
): Promise<string> {
  const hash = createHash('sha256');
  hash.update(
    `moe-serve pack graph v${PACK_GRAPH_VERSION}, bert builder v${BERT_BUILDER_VERSION}\n`,
  );
  hash.update(`${JSON.stringify(backbone.info.config)}\n`);
  if (backbone.quantize !== 'none') hash.update(`quantize ${backbone.quantize}\n`);
  hash.update(`${await filesDigest(backbone.info.weightFiles)}\n`);
  hashValue(hash, fixed);
  return hash.digest('hex').slice(0, 32);
}
