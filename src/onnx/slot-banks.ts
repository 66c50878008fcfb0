/**
 * The slot banks of each group kind: names, shapes and what a row holds. The graph compiler
 * declares them as inputs and reads them; the slot writer (adapters/slot-writer.ts) fills their
 * rows. Both follow this file, so the layout has one home.
 *
 * S slots per group; in-layer banks have one block of S rows per adapted layer, in the order of
 * `structure.layers` (row = layerPosition * S + slot).
 *
 *   every gated group   gate.index  int64 [S]           gate column of the adapter in the slot;
 *                                                       E (the gate's expert count) = not gated
 *   'top'               top.down_t  [S, R, d]   down projection, transposed (row j = unit j)
 *                       top.down_bias [S, R]
 *                       top.up      [S, R, d]
 *                       top.up_bias [S, d]
 *                       top.residual [S]        1: adapter(h) + h; 0: adapter(h)
 *   'lora', module m    m.lora_a    [L*S, R, in_m]  PEFT lora_A.weight, zero rows beyond its rank
 *                       m.lora_b    [L*S, R, out_m] scaling * lora_B.weight^T
 *   'bottleneck-layers', block b (attention, ffn)
 *                       b.down_t    [L*S, m, d]     adapter_down weight (LN-before affine folded in)
 *                       b.down_bias [L*S, m]
 *                       b.up        [L*S, m, d]     adapter_up weight^T, times scaling
 *                       b.up_bias   [L*S, d]
 * Zero rows are an adapter that does nothing there: a LoRA delta of 0, a bottleneck whose up
 * output is 0 (its block then computes exactly what the plain layer does).
 */
import type { LayerBlock, LinearModule } from '../pack/encoder-types.js';
import type { GroupStructure } from '../pack/types.js';
import { type BankSpec, bankName } from './pack-graph-contract.js';

/** Widths of the backbone that in-layer banks depend on. */
export interface BackboneDims {
  readonly hiddenSize: number; // d
  readonly intermediateSize: number; // f (0 when the backbone is external: no in-layer groups)
}

/** Input and output widths of each linear module of a layer. */
export function moduleWidths(module: LinearModule, dims: BackboneDims): [number, number] {
  const { hiddenSize: d, intermediateSize: f } = dims;
  if (module === 'intermediate') return [d, f];
  if (module === 'output') return [f, d];
  return [d, d];
}

/** The blocks a bottleneck-layers group adapts. */
export function bottleneckBlocks(structure: GroupStructure): LayerBlock[] {
  if (structure.kind !== 'bottleneck-layers') return [];
  const blocks: LayerBlock[] = [];
  if (structure.placement.attention) blocks.push('attention');
  if (structure.placement.ffn) blocks.push('ffn');
  return blocks;
}

export const GATE_SITE = 'gate';
export const TOP_SITE = 'top';

/** The banks of group `i`, in a fixed order. */
export function groupBanks(
  i: number,
  structure: GroupStructure,
  slots: number,
  gated: boolean,
  dims: BackboneDims,
): BankSpec[] {
  const S = slots;
  const d = dims.hiddenSize;
  const banks: BankSpec[] = [];
  const f32 = (site: string, part: string, rows: number, rowShape: number[]) =>
    banks.push({ name: bankName(i, site, part), dtype: 'float32', rows, rowShape });
  if (gated)
    banks.push({ name: bankName(i, GATE_SITE, 'index'), dtype: 'int64', rows: S, rowShape: [] });
  switch (structure.kind) {
    case 'top': {
      const R = structure.rank;
      f32(TOP_SITE, 'down_t', S, [R, d]);
      f32(TOP_SITE, 'down_bias', S, [R]);
      f32(TOP_SITE, 'up', S, [R, d]);
      f32(TOP_SITE, 'up_bias', S, [d]);
      f32(TOP_SITE, 'residual', S, []);
      break;
    }
    case 'lora': {
      const rows = structure.layers.length * S;
      for (const module of structure.modules) {
        const [inSize, outSize] = moduleWidths(module, dims);
        f32(module, 'lora_a', rows, [structure.rank, inSize]);
        f32(module, 'lora_b', rows, [structure.rank, outSize]);
      }
      break;
    }
    case 'bottleneck-layers': {
      const rows = structure.layers.length * S;
      const m = structure.size;
      for (const block of bottleneckBlocks(structure)) {
        f32(block, 'down_t', rows, [m, d]);
        f32(block, 'down_bias', rows, [m]);
        f32(block, 'up', rows, [m, d]);
        f32(block, 'up_bias', rows, [d]);
      }
      break;
    }
  }
  return banks;
}
