/**
 * The tensor contract of the compiled mixture graph: the names the compiler gives its inputs and
 * outputs, and the engine feeds and reads. Group i and head j are positions in MixtureSpec.
 *
 * Inputs
 *   hidden            float32 [B,T,d]   backbone last_hidden_state
 *   attention_mask    int64   [B,T]     1 for real tokens, 0 for padding
 *   g{i}_bias         float32 [B,E_i]   added to the gate logits: ROUTE_BLOCKED (exclude, not
 *                                        reachable), ROUTE_PINNED (pin), else 0
 *   g{i}_k            int64   [B]       experts mixed for each item, 1 <= k <= kmax
 *   g{i}_kmax         int64   [1]       TopK width for the batch, max over items of k, <= E_i
 * Outputs
 *   g{i}_experts      int64   [B,kmax]  bank indices, best first
 *   g{i}_weights      float32 [B,kmax]  softmax over the item's first k selected logits; 0 after k
 *   embedding         float32 [B,d]     pooled final hidden, L2-normalised unless pooling.normalize
 *                                        is false
 *   h{j}_scores       float32 [B,L_j]   softmax of head j's logits over the pooled final hidden
 *
 * pool() is the spec's pooling mode (masked mean by default; cls, masked max), the same for gates,
 * heads and the embedding.
 * Per group, in order:  pooled = pool(hidden); logits = gate(pooled) + bias;
 *   top-k; weights = softmax(selected logits, first k); hidden = sum_k w_k * (adapter_k(hidden)
 *   + residual_k * hidden).
 */
export const MIXTURE_INPUT_HIDDEN = 'hidden';
export const MIXTURE_INPUT_MASK = 'attention_mask';
export const MIXTURE_OUTPUT_EMBEDDING = 'embedding';
export const groupBiasName = (i: number) => `g${i}_bias`;
export const groupKName = (i: number) => `g${i}_k`;
export const groupKmaxName = (i: number) => `g${i}_kmax`;
export const groupExpertsName = (i: number) => `g${i}_experts`;
export const groupWeightsName = (i: number) => `g${i}_weights`;
export const headScoresName = (j: number) => `h${j}_scores`;

/** Bias that keeps an adapter out of the top-k (excluded, or unknown to the gate and not pinned). */
export const ROUTE_BLOCKED = -1e9;
/** Bias that puts a pinned adapter first whatever the gate says (pins use k = 1). */
export const ROUTE_PINNED = 1e9;

/**
 * What the engine must know about one compiled mixture graph to feed it and read its outputs.
 * Produced by the adapter registry next to the graph bytes; immutable.
 */
export interface MixtureLayout {
  /** Increases by one with every graph the registry compiles. */
  readonly version: number;
  readonly hiddenSize: number;
  readonly groups: readonly GroupLayout[];
  readonly heads: readonly { readonly id: string; readonly labels: readonly string[] }[];
}

export interface GroupLayout {
  readonly id: string;
  /** Bank order: adapters[e] is bank index e. */
  readonly adapters: readonly string[];
  /** Whether the group has a learned gate (otherwise it is routed by the request only). */
  readonly gated: boolean;
  /** Per bank index: the gate scores this adapter (false: reachable by pinning only). */
  readonly gateKnows: readonly boolean[];
  readonly defaultK: number;
  /** Used as the pin when a request pins nothing in an ungated group. */
  readonly defaultAdapter: string | undefined;
}
