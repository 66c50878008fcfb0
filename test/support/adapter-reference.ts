/**
 * Float64 reference of in-layer adapters, written from PEFT's and the `adapters` library's
 * source (not from our graph code), for checking imported adapters and the compiled mixture.
 *
 * LoRA (peft/tuners/lora/layer.py Linear.forward, dropout off):
 *   y = x W^T + b + scaling * (x A^T) B^T            A [r,in], B [out,r]
 * Bottleneck (adapters/methods/modeling.py Adapter.pre_forward / forward / post_forward, as
 * BottleneckLayer.bottleneck_layer_forward runs them for one adapter, a Stack of one):
 *   pre:  residual = hidden if residual_before_ln is True
 *         h = LN(hidden + input) if original_ln_before (residual = hidden + input first if "post_add")
 *         residual = h if residual_before_ln is False
 *   up:   up(h) = (act(lnBefore(h) down^T + downBias) up^T + upBias) * scaling   (folded: BottleneckBlockWeights.up)
 *   out:  up(h) + residual
 *   post: LN(out + input) if original_ln_after, else out
 *
 * Mixing k adapters per item with weights w (sum 1), the serving semantics:
 * - LoRA: y = base + sum_k w_k * delta_k(x). This is exactly PEFT's
 *   add_weighted_adapter(adapters, w, combination_type="cat") (tuners/lora/model.py): the merged
 *   module has A = cat_k(w_k * scaling_k * A_k) [sum r, in], B = cat_k(B_k) [out, sum r] and
 *   r = lora_alpha = sum r, so scaling 1, and B A = sum_k w_k scaling_k B_k A_k. (Two PEFT
 *   caveats: the merged config is a copy of the first adapter's, so with use_rslora there its
 *   scaling is sum_r / sqrt(sum_r), not 1, and its layers_to_transform is the first adapter's.)
 *   peftCatMerge builds that merged module; the tests check the equality.
 * - Bottleneck: pre_forward once (the group's placement is shared), then
 *     out = sum_k w_k * up_k(h) + residual,   then post_forward once.
 *   AdapterHub's own Average composition (composition.py Average, bottleneck.py
 *   BottleneckLayer.mean) differs: it runs the first adapter's pre_forward, each adapter's forward
 *   (up_k + residual), then torch.mean over k of w_k * (up_k + residual) with w normalised to sum
 *   1, i.e. (1/K) * (sum_k w_k up_k + residual): our result scaled by 1/K before post_forward.
 *   The two agree for K = 1, and ours with weights w equals Average(weights = K * w,
 *   normalize_weights=False); adapterHubAverageBlock computes the library's form, and the tests
 *   check that relation.
 * - A member without a block at (layer, block) (leave_out, or no mh_adapter) adds up = 0 but keeps
 *   its weight. When no member of the group has a block there, the block is the plain
 *   LN(hidden + input), as AdapterHub runs a layer where no active adapter sits (for the usual
 *   placements, residual_before_ln true and original_ln_after true, both are the same thing).
 * - Groups in composition order: LoRA groups add their mixtures to the same module's output; bottleneck
 *   groups in one block compose as AdapterHub's Stack (compose_stack): each level runs its own
 *   pre_forward on the running state (the previous level's out as hidden, the block input
 *   unchanged), mixes, and the last level's post_forward closes the block.
 *
 * Hooks: `layerAdapterHooks` returns the callbacks of hfEncoderReference (encoder-reference.ts),
 * which calls them per item at each linear module (after the base projection) and at the end of
 * each block (before the residual add and LayerNorm), on that item's T token rows.
 */

import type { LayerBlock } from '../../src/pack/encoder-types.js';
import type {
  BottleneckActivation,
  BottleneckBlockWeights,
  BottleneckLayerAdapter,
  BottleneckPlacement,
  LayerAdapter,
  LoraModuleWeights,
} from '../../src/pack/layer-adapter-types.js';
import { gelu, type ReferenceHooks } from './encoder-reference.js';

// ---------------------------------------------------------------------------------------------
// Elementwise

/** transformers' ACT2FN forms, in float64. */
export function activation(name: BottleneckActivation, x: number): number {
  switch (name) {
    case 'gelu':
      return gelu(x);
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
      return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
    case 'quick_gelu':
      return x / (1 + Math.exp(-1.702 * x));
    case 'silu':
    case 'swish':
      return x / (1 + Math.exp(-x));
    case 'relu':
      return Math.max(0, x);
    case 'tanh':
      return Math.tanh(x);
    case 'leakyrelu':
      return x >= 0 ? x : 0.01 * x;
    case 'identity':
      return x;
  }
}

/** LayerNorm over each row of x [rows, d]. */
export function layerNorm64(
  x: ArrayLike<number>,
  d: number,
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  eps: number,
): Float64Array {
  const rows = x.length / d;
  const out = new Float64Array(x.length);
  for (let i = 0; i < rows; i++) {
    let mean = 0;
    for (let j = 0; j < d; j++) mean += x[i * d + j]!;
    mean /= d;
    let variance = 0;
    for (let j = 0; j < d; j++) variance += (x[i * d + j]! - mean) ** 2;
    variance /= d;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let j = 0; j < d; j++)
      out[i * d + j] = (x[i * d + j]! - mean) * inv * gamma[j]! + beta[j]!;
  }
  return out;
}

function add(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! + b[i]!;
  return out;
}

/** x [rows,in] @ W^T + bias, W in PyTorch layout [out,in]. */
function linearT(
  x: ArrayLike<number>,
  inSize: number,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | undefined,
  outSize: number,
): Float64Array {
  const rows = x.length / inSize;
  const out = new Float64Array(rows * outSize);
  for (let i = 0; i < rows; i++) {
    for (let o = 0; o < outSize; o++) {
      let sum = bias ? bias[o]! : 0;
      for (let j = 0; j < inSize; j++) sum += x[i * inSize + j]! * w[o * inSize + j]!;
      out[i * outSize + o] = sum;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// LoRA

/** delta(x) = scaling * (x A^T) B^T for x [rows,in] -> [rows,out]. */
export function loraDelta(
  module: LoraModuleWeights,
  x: ArrayLike<number>,
  inSize: number,
  outSize: number,
): Float64Array {
  const ax = linearT(x, inSize, module.a, undefined, module.rank); // [rows,r]
  const out = linearT(ax, module.rank, module.b, undefined, outSize); // [rows,out]
  for (let i = 0; i < out.length; i++) out[i]! *= module.scaling;
  return out;
}

/** y = base + sum_k w_k * delta_k(x); a member with no module here adds nothing. */
export function loraMix(
  base: ArrayLike<number>,
  x: ArrayLike<number>,
  inSize: number,
  outSize: number,
  members: readonly { readonly module?: LoraModuleWeights; readonly weight: number }[],
): Float64Array {
  const out = Float64Array.from(base);
  for (const { module, weight } of members) {
    if (!module) continue;
    const delta = loraDelta(module, x, inSize, outSize);
    for (let i = 0; i < out.length; i++) out[i]! += weight * delta[i]!;
  }
  return out;
}

/**
 * PEFT's add_weighted_adapter(..., combination_type="cat") for one module: A = cat_k(w_k s_k A_k)
 * along rows, B = cat_k(B_k) along columns, scaling 1 (r = lora_alpha = sum of ranks).
 */
export function peftCatMerge(
  members: readonly { readonly module: LoraModuleWeights; readonly weight: number }[],
  inSize: number,
  outSize: number,
): LoraModuleWeights {
  const rank = members.reduce((sum, m) => sum + m.module.rank, 0);
  const a = new Float32Array(rank * inSize);
  const b = new Float32Array(outSize * rank);
  let offset = 0;
  for (const { module, weight } of members) {
    const factor = weight * module.scaling;
    for (let k = 0; k < module.rank; k++) {
      for (let i = 0; i < inSize; i++) {
        a[(offset + k) * inSize + i] = factor * module.a[k * inSize + i]!;
      }
      for (let o = 0; o < outSize; o++) b[o * rank + offset + k] = module.b[o * module.rank + k]!;
    }
    offset += module.rank;
  }
  const first = members[0]!.module;
  // lora_alpha = r = sum of ranks: scaling 1.
  return { layer: first.layer, module: first.module, rank, scaling: 1, a, b };
}

// ---------------------------------------------------------------------------------------------
// Bottleneck

/** The block site of one token row (or many): hidden, block input, the block's LayerNorm. */
export interface BlockInputs {
  readonly hidden: Float64Array; // [T,d] the block's output projection
  readonly input: Float64Array; // [T,d] the block's input (residual)
  /** The block's own LayerNorm over [T,d] (the encoder reference's, for one item). */
  readonly layerNorm: (x: Float64Array) => Float64Array;
}

/** Adapter.pre_forward: the adapter's input h and its residual. */
export function bottleneckPreForward(
  placement: BottleneckPlacement,
  hidden: Float64Array,
  inputs: BlockInputs,
): { h: Float64Array; residual: Float64Array } {
  let h: Float64Array = Float64Array.from(hidden);
  let residual: Float64Array | undefined;
  if (placement.residualBeforeLn === true) residual = h;
  if (placement.originalLnBefore) {
    h = add(h, inputs.input);
    if (placement.residualBeforeLn === 'post_add') residual = h;
    h = inputs.layerNorm(h);
  }
  if (placement.residualBeforeLn === false) residual = h;
  if (!residual)
    throw new Error('reference: residual_before_ln "post_add" needs original_ln_before');
  return { h, residual };
}

/** up(h) = act(lnBefore(h) down^T + downBias) up^T + upBias (scaling already in up). */
export function bottleneckUp(
  block: BottleneckBlockWeights,
  placement: BottleneckPlacement,
  h: ArrayLike<number>,
  d: number,
): Float64Array {
  const m = block.downBias.length;
  let x: ArrayLike<number> = h;
  if (placement.lnBefore) {
    if (!block.lnBefore) throw new Error('reference: lnBefore placement without LayerNorm weights');
    x = layerNorm64(h, d, block.lnBefore.gamma, block.lnBefore.beta, 1e-5); // nn.LayerNorm eps
  }
  const down = linearT(x, d, block.down, block.downBias, m);
  for (let i = 0; i < down.length; i++) down[i] = activation(placement.activation, down[i]!);
  return linearT(down, m, block.up, block.upBias, d);
}

/** Adapter.post_forward. */
export function bottleneckPostForward(
  placement: BottleneckPlacement,
  out: ArrayLike<number>,
  inputs: BlockInputs,
): Float64Array {
  return placement.originalLnAfter
    ? inputs.layerNorm(add(out, inputs.input))
    : Float64Array.from(out);
}

/** The plain block, no adapter: LN(hidden + input). */
export function plainBlock(inputs: BlockInputs): Float64Array {
  return inputs.layerNorm(add(inputs.hidden, inputs.input));
}

export interface BottleneckMember {
  readonly adapter: BottleneckLayerAdapter;
  readonly weight: number;
}

function blockOf(adapter: BottleneckLayerAdapter, layer: number, block: LayerBlock) {
  return adapter.blocks.find((b) => b.layer === layer && b.block === block);
}

function samePlacement(a: BottleneckPlacement, b: BottleneckPlacement): boolean {
  return (
    a.originalLnBefore === b.originalLnBefore &&
    a.originalLnAfter === b.originalLnAfter &&
    a.residualBeforeLn === b.residualBeforeLn &&
    a.lnBefore === b.lnBefore
  );
}

/** One level of mixing on a running hidden state: pre_forward, sum_k w_k up_k + residual. */
function mixLevel(
  members: readonly BottleneckMember[],
  layer: number,
  block: LayerBlock,
  hidden: Float64Array,
  inputs: BlockInputs,
): { out: Float64Array; placement: BottleneckPlacement } | undefined {
  const present = members.filter((m) => blockOf(m.adapter, layer, block));
  if (present.length === 0) return undefined;
  const placement = present[0]!.adapter.placement;
  for (const m of members) {
    if (!samePlacement(m.adapter.placement, placement)) {
      throw new Error(
        `reference: adapters '${present[0]!.adapter.id}' and '${m.adapter.id}' mixed in one block need one placement`,
      );
    }
  }
  const { h, residual } = bottleneckPreForward(placement, hidden, inputs);
  const out = Float64Array.from(residual);
  for (const m of present) {
    const up = bottleneckUp(
      blockOf(m.adapter, layer, block)!,
      m.adapter.placement,
      h,
      m.adapter.hiddenSize,
    );
    for (let i = 0; i < out.length; i++) out[i]! += m.weight * up[i]!;
  }
  return { out, placement };
}

/** One group's mixture in one block (the serving semantics; see the header). */
export function bottleneckMixBlock(
  members: readonly BottleneckMember[],
  layer: number,
  block: LayerBlock,
  inputs: BlockInputs,
): Float64Array {
  return bottleneckStackBlock([members], layer, block, inputs);
}

/** Groups stacked in one block, as AdapterHub's Stack composes (see the header). */
export function bottleneckStackBlock(
  levels: readonly (readonly BottleneckMember[])[],
  layer: number,
  block: LayerBlock,
  inputs: BlockInputs,
): Float64Array {
  let hidden: Float64Array = inputs.hidden;
  let last: BottleneckPlacement | undefined;
  for (const members of levels) {
    const level = mixLevel(members, layer, block, hidden, inputs);
    if (!level) continue;
    hidden = level.out;
    last = level.placement;
  }
  return last ? bottleneckPostForward(last, hidden, inputs) : plainBlock(inputs);
}

/**
 * AdapterHub's Average composition of single adapters in one block, for comparison:
 * the first adapter's pre_forward, then mean_k(w_k * (up_k + residual)), then post_forward;
 * w normalised to sum 1 unless normalizeWeights is false (composition.py Average).
 */
export function adapterHubAverageBlock(
  members: readonly BottleneckMember[],
  layer: number,
  block: LayerBlock,
  inputs: BlockInputs,
  normalizeWeights = true,
): Float64Array {
  const total = members.reduce((sum, m) => sum + m.weight, 0);
  const weights = members.map((m) => (normalizeWeights ? m.weight / total : m.weight));
  const placement = members[0]!.adapter.placement;
  const { h, residual } = bottleneckPreForward(placement, inputs.hidden, inputs);
  const out = new Float64Array(residual.length);
  members.forEach((m, k) => {
    const up = bottleneckUp(
      blockOf(m.adapter, layer, block)!,
      m.adapter.placement,
      h,
      m.adapter.hiddenSize,
    );
    for (let i = 0; i < out.length; i++)
      out[i]! += (weights[k]! * (up[i]! + residual[i]!)) / members.length;
  });
  return bottleneckPostForward(placement, out, inputs);
}

// ---------------------------------------------------------------------------------------------
// Hooks for the float64 encoder reference (test/support/encoder-reference.ts)

/** One item's members in one group: which adapters, with which weights (summing to 1). */
export type ItemRouting = readonly { readonly adapter: LayerAdapter; readonly weight: number }[];

/**
 * Hooks for hfEncoderReference applying in-layer adapter groups in composition order:
 * `groups[g][b]` routes item b in group g (an empty list: the item uses no adapter of that group).
 * LoRA members act at the linear modules, bottleneck members at the blocks.
 */
export function layerAdapterHooks(groups: readonly (readonly ItemRouting[])[]): ReferenceHooks {
  return {
    linear(site) {
      let y: Float64Array = site.output;
      for (const group of groups) {
        const members = (group[site.item] ?? []).flatMap(({ adapter, weight }) =>
          adapter.kind === 'lora'
            ? [
                {
                  weight,
                  module: adapter.modules.find(
                    (m) => m.layer === site.layer && m.module === site.module,
                  ),
                },
              ]
            : [],
        );
        if (members.length > 0) y = loraMix(y, site.input, site.inSize, site.outSize, members);
      }
      return y;
    },
    block(site) {
      const levels = groups
        .map((group) =>
          (group[site.item] ?? []).flatMap(({ adapter, weight }) =>
            adapter.kind === 'bottleneck-layers' ? [{ adapter, weight }] : [],
          ),
        )
        .filter((members) => members.length > 0);
      return bottleneckStackBlock(levels, site.layer, site.block, {
        hidden: site.hidden,
        input: site.residual,
        layerNorm: site.layerNorm,
      });
    },
  };
}
