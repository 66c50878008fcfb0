/**
 * From a loaded pack to what the engine runs: the slot groups (what each group's slots hold) and
 * the pack graph compiled from the pack's fixed parts. Adapters are not compiled in; the registry
 * hands them to the engine, which writes them into slots.
 */
import type { SlotGroup } from '../adapters/slot-writer.js';
import type { EngineGraph } from '../engine/engine.js';
import { compilePackGraph } from '../onnx/pack-graph.js';
import type { LoadedPack } from '../pack/load.js';

/** The slot groups of a pack, in its group order (no graph needed: the API role uses these). */
export function slotGroupsOf(pack: LoadedPack): SlotGroup[] {
  return pack.groups.map((group, index) => ({
    index,
    id: group.id,
    slots: group.slots,
    structure: group.structure,
    gated: group.gate !== null,
    gateExperts: group.gate?.experts.length ?? 0,
    dims: { hiddenSize: pack.hiddenSize, intermediateSize: 0 },
  }));
}

/**
 * Compile the pack's graph and describe it for the engine. `backbonePath` is the ONNX file the
 * engine runs before it (for a Hugging Face backbone, the graph prepareBackbone built).
 */
export function engineGraphOf(pack: LoadedPack, backbonePath: string): EngineGraph {
  const groups = slotGroupsOf(pack);
  const compiled = compilePackGraph({
    backbone: { kind: 'external', hiddenSize: pack.hiddenSize },
    pooling: pack.pooling,
    groups: pack.groups.map((group) => ({
      id: group.id,
      slots: group.slots,
      structure: group.structure,
      gate: group.gate,
    })),
    heads: pack.heads,
  });
  return {
    worker: {
      model: compiled.bytes,
      externalBackbone: backbonePath,
      banks: compiled.banks.flat(),
      groupCount: groups.length,
      gatedGroups: groups.map((g) => g.gated),
      headCount: pack.heads.length,
      // Padding ids: the model's own pad token (RoBERTa-style positions treat it as padding).
      padTokenId: pack.backbone.kind === 'huggingface' ? pack.backbone.info.config.padTokenId : 0,
    },
    groups,
    heads: pack.heads.map((head) => ({ id: head.id, labels: head.labels })),
    hiddenSize: pack.hiddenSize,
  };
}
