/**
 * In-memory form of a model pack's mixture parts, as the pack loader produces them and the mixture
 * compiler consumes them. Weights are float32, row-major, in "math" layout: a projection from
 * width a to width b is stored [a,b] and applied as x @ W (not PyTorch's [out,in]).
 */

import type { LinearModule } from './encoder-types.js';
import type { BottleneckPlacement } from './layer-adapter-types.js';

export type Activation = 'relu' | 'gelu' | 'tanh' | 'identity';

/** A float32 tensor with its shape, row-major. */
export interface Weight {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * A bottleneck adapter (Houlsby/Pfeiffer style):
 *   adapter(h) = act(h @ down + downBias) @ up + upBias
 *   h' = adapter(h) + (residual ? h : 0)
 * applied to every token's hidden state.
 */
export interface BottleneckAdapter {
  readonly id: string;
  readonly group: string;
  readonly type: 'bottleneck';
  readonly hiddenSize: number;
  readonly rank: number;
  readonly activation: Activation;
  readonly residual: boolean;
  readonly down: Weight; // [d,r]
  readonly downBias: Weight; // [r]
  readonly up: Weight; // [r,d]
  readonly upBias: Weight; // [d]
}

/** logits = pooled @ weight + bias; `experts[j]` names the adapter that column j scores. */
export interface LinearGate {
  readonly type: 'linear';
  readonly experts: readonly string[];
  readonly weight: Weight; // [d,E]
  readonly bias: Weight; // [E]
}

/** logits = act(pooled @ hiddenWeight + hiddenBias) @ outWeight + outBias. */
export interface MlpGate {
  readonly type: 'mlp';
  readonly experts: readonly string[];
  readonly activation: Activation;
  readonly hiddenWeight: Weight; // [d,h]
  readonly hiddenBias: Weight; // [h]
  readonly outWeight: Weight; // [h,E]
  readonly outBias: Weight; // [E]
}

/**
 * A router over the input's token ids alone (fastText-like), computed before the backbone:
 *   features = the real tokens' ids t_1..t_n, and, when buckets > 0, for each pair of adjacent real
 *              tokens the row V + (t_{i-1} * TOKEN_BAG_BIGRAM_MULTIPLIER + t_i) mod buckets
 *   pooled   = mean over the features of embedding[feature]                  [w]
 *   x        = hidden ? act(pooled @ hidden.weight + hidden.bias) : pooled   [w] or [h]
 *   logits   = x @ outWeight + outBias                                       [E]
 * V = embedding rows - buckets: token ids must be < V (the loader checks it against the tokenizer).
 * The graph is src/onnx/token-bag.ts; the trainer src/demo/token-bag.ts.
 */
export interface TokenBagGate {
  readonly type: 'token_bag';
  readonly experts: readonly string[];
  /** Hashed token-bigram rows at the end of the table; 0: unigrams only. */
  readonly buckets: number;
  readonly embedding: Weight; // [V + buckets, w]
  /** Optional hidden layer between the pooled bag and the output. */
  readonly hidden?: {
    readonly activation: Activation;
    readonly weight: Weight; // [w,h]
    readonly bias: Weight; // [h]
  };
  readonly outWeight: Weight; // [w or h, E]
  readonly outBias: Weight; // [E]
}

export type Gate = LinearGate | MlpGate | TokenBagGate;

/** An optional layer between pooling and the output layer: act(pooled @ weight + bias). */
export interface HeadHidden {
  readonly weight: Weight; // [d,h]
  readonly bias: Weight; // [h]
  readonly activation: Activation;
}

/**
 * A task head:
 *   pooled = pool(final hidden state)       by the head's `pooling`, else the pack's
 *   x      = hidden ? act(pooled @ hidden.weight + hidden.bias) : pooled
 *   logits = x @ weight + bias
 * Without `pooling` and `hidden` this is the pack format's linear head over the pack's pooling.
 * Heads imported with an adapter carry their own: Hugging Face sequence-classification heads read
 * the first token whatever the pack pools, BertForSequenceClassification = cls + pooler (tanh) +
 * classifier; RoBERTa / XLM-R = cls + classifier.dense (tanh) + classifier.out_proj; DistilBERT =
 * cls + pre_classifier (relu) + classifier.
 */
export interface Head {
  readonly id: string;
  readonly labels: readonly string[];
  /** The head's own pooling mode (imported heads: 'cls'); absent: the pack's. */
  readonly pooling?: PoolingMode;
  readonly hidden?: HeadHidden;
  readonly weight: Weight; // [d,L], or [h,L] after a hidden layer
  readonly bias: Weight; // [L]
}

/** sentence-transformers' Pooling modes this server runs. */
export const POOLING_MODES = ['mean', 'cls', 'max'] as const;
export type PoolingMode = (typeof POOLING_MODES)[number];

/**
 * How gates, heads and the embedding output pool the hidden state [B,T,d] into [B,d]:
 * mean = masked mean, cls = the first token, max = masked max (padding at -1e9 first), as
 * sentence-transformers' Pooling; normalize = L2-normalise the embedding output (its Normalize).
 */
export interface Pooling {
  readonly mode: PoolingMode;
  readonly normalize: boolean;
}

/**
 * Where a group's adapters sit and the shape of one slot, fixed by the pack (so the graph is built
 * once): every adapter loaded into the group must fit it.
 * - 'top': bottleneck adapters on the backbone's last hidden state (BottleneckAdapter), bottleneck
 *   width up to `rank`, all with the group's activation.
 * - 'lora': LoRA on `modules` of `layers`, rank up to `rank` (LoraAdapter).
 * - 'bottleneck-layers': AdapterHub bottleneck adapters in `layers`, width up to `size`, all with
 *   the group's placement (BottleneckLayerAdapter).
 */
export type GroupStructure =
  | { readonly kind: 'top'; readonly rank: number; readonly activation: Activation }
  | {
      readonly kind: 'lora';
      readonly rank: number;
      readonly modules: readonly LinearModule[];
      readonly layers: readonly number[];
    }
  | {
      readonly kind: 'bottleneck-layers';
      readonly size: number;
      readonly placement: BottleneckPlacement;
      readonly layers: readonly number[];
    };
