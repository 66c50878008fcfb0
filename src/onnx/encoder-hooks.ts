/**
 * Hook points of the encoder graph builder: where adapters (and early gates) plug into every
 * layer of the backbone graph. The builder calls these while it emits nodes; a hook adds its own
 * nodes to the same GraphBuilder and returns the tensor the builder must use from then on.
 *
 * Tensor shapes: the builder works token-major, on 2-D views [N,width] with N = B*T (every
 * projection is then one Gemm). A hook that needs per-item structure reshapes with `tokensShape`.
 *
 * Contract of each hook (all optional; a builder without hooks emits the plain encoder):
 * - `embeddings(x)`: x [N,d] is the embedding output (after the embedding LayerNorm). Returns the
 *   tensor the first layer reads (usually x itself).
 * - `linear(site)`: called once per linear module of every layer, after the base projection:
 *   `input` [N,in] is the module's input, `output` [N,out] its base output x @ W + b. Returns the
 *   output to use (for LoRA: output + delta(input)). Query, key and value each get their own call
 *   with their own [N,d] output, even when the builder computes them with one fused Gemm.
 * - `block(site)`: called at the end of the attention block and of the feed-forward block of every
 *   layer. `hidden` [N,d] is the block's output projection (attention output dense, or the FFN's
 *   second dense), before the residual add; `residual` [N,d] is the block's input; `layerNorm(t)`
 *   emits that block's own LayerNorm over t. Returns the block's output; without the hook it is
 *   layerNorm(hidden + residual). (This is where AdapterHub bottleneck adapters sit.)
 * - `layerOutput(layer, x)`: x [N,d] is layer `layer`'s output. Returns the tensor the next layer
 *   (or the final output) reads.
 */
import type { LayerBlock, LinearModule } from '../pack/encoder-types.js';
import type { GraphBuilder } from './graph.js';

export interface HookContext {
  readonly g: GraphBuilder;
  /** int64 [2] tensor holding [B,T] of the current batch. */
  readonly tokensShape: string;
  /** int64 [B,T] attention mask (1 = real token). */
  readonly attentionMask: string;
  /** int64 [B,T] input ids. */
  readonly inputIds: string;
}

export interface LinearSite {
  readonly layer: number;
  readonly module: LinearModule;
  readonly input: string; // [N,in]
  readonly output: string; // [N,out]
  readonly inSize: number;
  readonly outSize: number;
}

export interface BlockSite {
  readonly layer: number;
  readonly block: LayerBlock;
  readonly hidden: string; // [N,d]
  readonly residual: string; // [N,d]
  readonly layerNorm: (x: string, name?: string) => string;
}

export interface EncoderHooks {
  embeddings?(x: string, ctx: HookContext): string;
  linear?(site: LinearSite, ctx: HookContext): string;
  block?(site: BlockSite, ctx: HookContext): string;
  layerOutput?(layer: number, x: string, ctx: HookContext): string;
}
