/**
 * In-memory form of adapters that sit inside every layer of the backbone: LoRA (as PEFT defines it)
 * and bottleneck adapters (as AdapterHub's `adapters` library defines them). Importers produce
 * these from PEFT / AdapterHub folders; the adapter registry writes them into slots; the graph
 * compiler only ever sees slot banks. (The top-of-backbone bottleneck kind is `BottleneckAdapter`
 * in types.ts.)
 *
 * Layout: these tensors keep PyTorch's layout, because they come straight from PyTorch checkpoints:
 * an nn.Linear weight is [out, in] and applied as x @ W^T + b. The slot writer owns any transpose.
 */
import type { EncoderActivation, LayerBlock, LinearModule } from './encoder-types.js';
import type { Head } from './types.js';

/**
 * One LoRA-adapted linear module: y = x @ W + b + scaling * (x @ a^T) @ b^T, as PEFT's
 * `lora.Linear.forward` computes it with dropout off.
 */
export interface LoraModuleWeights {
  readonly layer: number;
  readonly module: LinearModule;
  readonly rank: number; // r
  /** alpha / r, or alpha / sqrt(r) with use_rslora (PEFT's `scaling`). */
  readonly scaling: number;
  readonly a: Float32Array; // [r,in]  (PEFT lora_A.weight)
  readonly b: Float32Array; // [out,r] (PEFT lora_B.weight)
}

export interface LoraAdapter {
  readonly kind: 'lora';
  readonly id: string;
  readonly group: string;
  /** The base model it was trained on: hidden size and layer count, checked against the backbone. */
  readonly hiddenSize: number;
  /** The largest module rank (what a slot must hold). */
  readonly rank: number;
  /** Every adapted (layer, module); a module absent here is not adapted. */
  readonly modules: readonly LoraModuleWeights[];
  /** A task head saved with the adapter (PEFT `modules_to_save` classifier), if any. */
  readonly head?: Head;
}

/**
 * Where and how a bottleneck adapter sits in a layer block, with AdapterHub's BnConfig names.
 * For one block (attention or feed-forward), with `hidden` the block's output projection,
 * `input` the block's input and LN the block's own LayerNorm (see AdapterHub's
 * Adapter.pre_forward / forward / post_forward):
 *   residual = hidden                                   if residualBeforeLn === true
 *   if originalLnBefore: h = hidden + input; (residual = h if residualBeforeLn === 'post_add'); h = LN(h)
 *   else h = hidden
 *   residual = h                                        if residualBeforeLn === false
 *   up  = (act(lnBefore(h) @ down^T + downBias) @ up^T + upBias) * scaling
 *   out = up + residual
 *   out = LN(out + input)                               if originalLnAfter, else out (+ input if no LN)
 * Supported: the flags above with ln_after = false, use_gating = false, no PHM, not parallel.
 */
export interface BottleneckPlacement {
  /** mh_adapter: an adapter after the attention block. */
  readonly attention: boolean;
  /** output_adapter: an adapter after the feed-forward block. */
  readonly ffn: boolean;
  readonly originalLnBefore: boolean;
  readonly originalLnAfter: boolean;
  readonly residualBeforeLn: boolean | 'post_add';
  /** ln_before: a LayerNorm of the adapter's own on its input. */
  readonly lnBefore: boolean;
  readonly activation: BottleneckActivation;
}

/** AdapterHub non_linearity values we run (relu, gelu, swish = silu, tanh, gelu_new, identity). */
export type BottleneckActivation = EncoderActivation | 'identity' | 'leakyrelu';

/**
 * m is this block's own bottleneck width: AdapterHub's reduction_factor may be a per-layer mapping,
 * so blocks of one adapter may differ (m = down.length / d, at most the adapter's bottleneckSize;
 * a slot pads the rest with zeros, which adds exactly nothing).
 */
export interface BottleneckBlockWeights {
  readonly layer: number;
  readonly block: LayerBlock;
  readonly down: Float32Array; // [m,d] (adapter_down.0.weight)
  readonly downBias: Float32Array; // [m]
  /** Already multiplied by the adapter's `scaling` (a float, or per channel). */
  readonly up: Float32Array; // [d,m] (adapter_up.weight)
  readonly upBias: Float32Array; // [d]
  /** Only with placement.lnBefore: the adapter's own LayerNorm (nn.LayerNorm's eps, 1e-5). */
  readonly lnBefore?: { readonly gamma: Float32Array; readonly beta: Float32Array }; // [d] each
}

export interface BottleneckLayerAdapter {
  readonly kind: 'bottleneck-layers';
  readonly id: string;
  readonly group: string;
  readonly hiddenSize: number;
  /**
   * m = hidden_size // reduction_factor (at least 1): the bottleneck width, the largest over the
   * blocks when reduction_factor maps layers to factors (what a slot must hold).
   */
  readonly bottleneckSize: number;
  readonly placement: BottleneckPlacement;
  /** Every (layer, block) with an adapter; absent ones (leave_out) have none. */
  readonly blocks: readonly BottleneckBlockWeights[];
  /** A prediction head saved with the adapter, if any. */
  readonly head?: Head;
}

export type LayerAdapter = LoraAdapter | BottleneckLayerAdapter;
