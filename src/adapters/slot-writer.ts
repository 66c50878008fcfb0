/**
 * Adapters into slot rows: what a slot write puts into each bank (layout: onnx/slot-banks.ts), and
 * whether an adapter fits a group's slots at all. Pure functions, run by the engine workers (the
 * transposes and copies happen off the HTTP thread) and by the registry (the fit check, before
 * anything is written).
 */

import { bankName } from '../onnx/pack-graph-contract.js';
import {
  type BackboneDims,
  bottleneckBlocks,
  GATE_SITE,
  moduleWidths,
  TOP_SITE,
} from '../onnx/slot-banks.js';
import type { LayerAdapter } from '../pack/layer-adapter-types.js';
import type { BottleneckAdapter, GroupStructure } from '../pack/types.js';

/** Any adapter a slot can hold. */
export type SlotAdapter = BottleneckAdapter | LayerAdapter;

/** What the writer needs to know about a group (the same for every slot of it). */
export interface SlotGroup {
  /** Position of the group in the pack (bank names carry it). */
  readonly index: number;
  readonly id: string;
  readonly slots: number;
  readonly structure: GroupStructure;
  readonly gated: boolean;
  /** Columns of the group's gate (0 when ungated); a slot the gate does not score maps here. */
  readonly gateExperts: number;
  readonly dims: BackboneDims;
}

/** Rows of one bank to overwrite; `data` holds whole rows, starting at `row`. */
export interface BankWrite {
  readonly bank: string;
  readonly row: number;
  readonly data: Float32Array | BigInt64Array;
}

export type SlotAdapterKind = 'bottleneck' | 'lora' | 'bottleneck-layers';

/** Kind of adapter each group structure holds. */
export function adapterKindFor(structure: GroupStructure): SlotAdapterKind {
  if (structure.kind === 'top') return 'bottleneck';
  if (structure.kind === 'lora') return 'lora';
  return 'bottleneck-layers';
}

export function kindOf(adapter: SlotAdapter): SlotAdapterKind {
  return 'kind' in adapter ? adapter.kind : adapter.type;
}

/**
 * Why `adapter` cannot sit in `group`'s slots, as a sentence naming the field and both values; or
 * undefined when it fits. (The importer has already checked it against the backbone itself.)
 */
export function misfit(group: SlotGroup, adapter: SlotAdapter): string | undefined {
  const s = group.structure;
  const kind = kindOf(adapter);
  const want = adapterKindFor(s);
  if (kind !== want) {
    return `adapter kind '${kind}' cannot go into group '${group.id}', which holds '${want}' adapters (${describeStructure(s)})`;
  }
  if (adapter.hiddenSize !== group.dims.hiddenSize) {
    return `hidden size ${adapter.hiddenSize} does not match the backbone's ${group.dims.hiddenSize}`;
  }
  if (s.kind === 'top') {
    const a = adapter as BottleneckAdapter;
    if (a.rank > s.rank) {
      return `rank ${a.rank} is above group '${group.id}''s slot rank ${s.rank}; retrain at rank <= ${s.rank} or raise the group's slot rank in the pack`;
    }
    if (a.activation !== s.activation) {
      return `activation '${a.activation}' differs from group '${group.id}''s '${s.activation}'`;
    }
    return undefined;
  }
  if (s.kind === 'lora') {
    const a = adapter as Extract<LayerAdapter, { kind: 'lora' }>;
    if (a.rank > s.rank) {
      return `rank ${a.rank} is above group '${group.id}''s slot rank ${s.rank}; retrain at rank <= ${s.rank} or raise the group's slot rank in the pack`;
    }
    for (const module of a.modules) {
      if (!s.modules.includes(module.module)) {
        return `target module '${module.module}' is not one group '${group.id}' adapts (${s.modules.join(', ')})`;
      }
      if (!s.layers.includes(module.layer)) {
        return `layer ${module.layer} is not one group '${group.id}' adapts (${s.layers.join(', ')})`;
      }
    }
    return undefined;
  }
  const a = adapter as Extract<LayerAdapter, { kind: 'bottleneck-layers' }>;
  if (a.bottleneckSize > s.size) {
    return `bottleneck size ${a.bottleneckSize} is above group '${group.id}''s slot size ${s.size}`;
  }
  for (const key of Object.keys(s.placement) as (keyof typeof s.placement)[]) {
    if (a.placement[key] !== s.placement[key]) {
      return `placement '${key}' is ${JSON.stringify(a.placement[key])}, group '${group.id}' uses ${JSON.stringify(s.placement[key])}`;
    }
  }
  for (const block of a.blocks) {
    if (!s.layers.includes(block.layer)) {
      return `layer ${block.layer} is not one group '${group.id}' adapts (${s.layers.join(', ')})`;
    }
  }
  return undefined;
}

export function describeStructure(s: GroupStructure): string {
  switch (s.kind) {
    case 'top':
      return `top-of-backbone bottleneck, rank <= ${s.rank}, ${s.activation}`;
    case 'lora':
      return `LoRA on ${s.modules.join('/')}, rank <= ${s.rank}`;
    case 'bottleneck-layers':
      return `in-layer bottleneck (${bottleneckBlocks(s).join('+')}), size <= ${s.size}`;
  }
}

/**
 * The writes that put `adapter` into `slot` of `group` (every row of every bank of the slot, so
 * nothing of a previous occupant survives), or clear the slot when `adapter` is undefined.
 * `gateColumn`: the gate's column for this adapter; undefined when the gate does not know it.
 */
export function slotWrites(
  group: SlotGroup,
  slot: number,
  adapter: SlotAdapter | undefined,
  gateColumn: number | undefined,
): BankWrite[] {
  const i = group.index;
  const S = group.slots;
  const d = group.dims.hiddenSize;
  const writes: BankWrite[] = [];
  if (group.gated) {
    const column =
      adapter === undefined || gateColumn === undefined ? group.gateExperts : gateColumn;
    writes.push({
      bank: bankName(i, GATE_SITE, 'index'),
      row: slot,
      data: BigInt64Array.of(BigInt(column)),
    });
  }
  const s = group.structure;
  if (s.kind === 'top') {
    const R = s.rank;
    const downT = new Float32Array(R * d);
    const downBias = new Float32Array(R);
    const up = new Float32Array(R * d);
    const upBias = new Float32Array(d);
    let residual = 0;
    if (adapter !== undefined) {
      const a = adapter as BottleneckAdapter;
      const r = a.rank;
      // down is [d,r] (math layout): row j of the bank is column j of down.
      for (let row = 0; row < d; row++) {
        for (let j = 0; j < r; j++) downT[j * d + row] = a.down.data[row * r + j]!;
      }
      downBias.set(a.downBias.data);
      up.set(a.up.data); // [r,d]; rows r..R-1 stay 0
      upBias.set(a.upBias.data);
      residual = a.residual ? 1 : 0;
    }
    writes.push(
      { bank: bankName(i, TOP_SITE, 'down_t'), row: slot, data: downT },
      { bank: bankName(i, TOP_SITE, 'down_bias'), row: slot, data: downBias },
      { bank: bankName(i, TOP_SITE, 'up'), row: slot, data: up },
      { bank: bankName(i, TOP_SITE, 'up_bias'), row: slot, data: upBias },
      { bank: bankName(i, TOP_SITE, 'residual'), row: slot, data: Float32Array.of(residual) },
    );
    return writes;
  }
  if (s.kind === 'lora') {
    const R = s.rank;
    const a = adapter as Extract<LayerAdapter, { kind: 'lora' }> | undefined;
    for (const module of s.modules) {
      const [inSize, outSize] = moduleWidths(module, group.dims);
      s.layers.forEach((layer, pos) => {
        const loraA = new Float32Array(R * inSize); // [R,in]
        const loraB = new Float32Array(R * outSize); // [R,out]
        const weights = a?.modules.find((m) => m.layer === layer && m.module === module);
        if (weights !== undefined) {
          const r = weights.rank;
          loraA.set(weights.a.subarray(0, r * inSize)); // [r,in] rows as they are
          // lora_B.weight is [out,r]; the bank row is its transpose, times the scaling.
          for (let o = 0; o < outSize; o++) {
            for (let j = 0; j < r; j++)
              loraB[j * outSize + o] = weights.b[o * r + j]! * weights.scaling;
          }
        }
        const row = pos * S + slot;
        writes.push(
          { bank: bankName(i, module, 'lora_a'), row, data: loraA },
          { bank: bankName(i, module, 'lora_b'), row, data: loraB },
        );
      });
    }
    return writes;
  }
  const m = s.size;
  const a = adapter as Extract<LayerAdapter, { kind: 'bottleneck-layers' }> | undefined;
  for (const block of bottleneckBlocks(s)) {
    s.layers.forEach((layer, pos) => {
      const downT = new Float32Array(m * d); // [m,d]
      const downBias = new Float32Array(m);
      const up = new Float32Array(m * d); // [m,d]
      const upBias = new Float32Array(d);
      const weights = a?.blocks.find((b) => b.layer === layer && b.block === block);
      if (weights !== undefined && a !== undefined) {
        const width = a.bottleneckSize;
        // adapter_down weight is [width,d] = the bank rows; with its own LayerNorm before it,
        // down(gamma * n + beta) = (gamma (.) down) n + (down beta + bias): fold the affine in.
        for (let j = 0; j < width; j++) {
          let bias = weights.downBias[j]!;
          for (let c = 0; c < d; c++) {
            const w = weights.down[j * d + c]!;
            downT[j * d + c] = weights.lnBefore ? w * weights.lnBefore.gamma[c]! : w;
            if (weights.lnBefore) bias += w * weights.lnBefore.beta[c]!;
          }
          downBias[j] = bias;
        }
        // adapter_up weight is [d,width]: the bank row j is its column j.
        for (let c = 0; c < d; c++) {
          for (let j = 0; j < width; j++) up[j * d + c] = weights.up[c * width + j]!;
        }
        upBias.set(weights.upBias);
      }
      const row = pos * S + slot;
      writes.push(
        { bank: bankName(i, block, 'down_t'), row, data: downT },
        { bank: bankName(i, block, 'down_bias'), row, data: downBias },
        { bank: bankName(i, block, 'up'), row, data: up },
        { bank: bankName(i, block, 'up_bias'), row, data: upBias },
      );
    });
  }
  return writes;
}
