/**
 * The `token_bag` gate as ONNX nodes: a fastText-like router that reads only the token ids, so it
 * can run before the backbone (and before any in-layer adapter that needs its routing).
 *
 * Contract of `tokenBagLogits(g, gate, inputs, options)`:
 *
 *   inputs.inputIds       int64 [B,T]  token ids; every id at a real position must be < V
 *   inputs.attentionMask  int64 [B,T]  1 for real tokens, 0 for padding (anywhere in the row)
 *   returns               float32 [B,E] the gate's logits, column e scoring options.columns[e]
 *                         (default gate.experts; a column the gate does not know is 0)
 *
 *   V = gate.embedding.shape[0] - gate.buckets, w = gate.embedding.shape[1]
 *   features of an item: the ids at its real positions, and when buckets N > 0, for every two
 *     adjacent positions t-1, t that are both real: V + (id[t-1] * TOKEN_BAG_BIGRAM_MULTIPLIER
 *     + id[t]) mod N (a hashed token bigram; int64 arithmetic, no overflow for ids < 2^43)
 *   pooled = sum of embedding[f] over the features / max(feature count, 1)      [B,w]
 *   x      = gate.hidden ? act(pooled @ hidden.weight + hidden.bias) : pooled   [B,w] or [B,h]
 *   logits = x @ outWeight + outBias                                            [B,E]
 * An item without real tokens pools to 0 (its logits are act(hidden.bias) @ out + bias, or the
 * bias alone). Padding ids are gathered and then weighted 0: they must be valid rows (< V) too.
 *
 * The nodes are added to `g`; the weights become initializers named `${prefix}.*` and the nodes
 * `${prefix}_*` (prefix default 'token_bag'), so one graph can hold several of these gates. Nothing
 * is declared as a graph input or output: the caller owns the inputs (they are shared with the
 * backbone) and decides what the logits feed (bias + top-k in the pack graph). Needs opset >= 13.
 *
 * Cost: two Gathers of [B,T,w] rows and two [B,1,T] x [B,T,w] MatMuls (one of each without
 * bigrams). Measured by bench/token-bag.ts at the demo's shapes (B=32, T<=64): the gate adds about
 * 0.3% to a batch's time, at width 32 and at width 64 with 16384 buckets alike.
 */
import type { Activation, TokenBagGate, Weight } from '../pack/types.js';
import { attr, type GraphBuilder } from './graph.js';

/**
 * Multiplier of the bigram hash, part of the pack format: a gate's bigram rows are only meaningful
 * with the hash it was trained with. A prime, so that (a * M + b) mod N spreads pairs for any N.
 */
export const TOKEN_BAG_BIGRAM_MULTIPLIER = 1_000_003;

export interface TokenBagInputs {
  /** Name of the int64 [B,T] token ids tensor. */
  readonly inputIds: string;
  /** Name of the int64 [B,T] attention mask tensor. */
  readonly attentionMask: string;
}

export interface TokenBagOptions {
  /** Prefix of initializer and node names; default 'token_bag'. */
  readonly prefix?: string;
  /** Column order of the logits (adapter ids); default gate.experts. */
  readonly columns?: readonly string[];
}

/** The vocabulary rows V of a token_bag gate's table (the rest are bigram buckets). */
export function tokenBagVocabRows(gate: TokenBagGate): number {
  return gate.embedding.shape[0]! - gate.buckets;
}

/**
 * The feature rows of one item in plain JS, exactly as the graph computes them (for trainers and
 * references): `ids` are the item's real tokens in order (padding removed).
 */
export function tokenBagFeatures(
  ids: ArrayLike<number>,
  vocabRows: number,
  buckets: number,
): Int32Array {
  const n = ids.length;
  const out = new Int32Array(buckets > 0 ? Math.max(0, 2 * n - 1) : n);
  for (let t = 0; t < n; t++) out[t] = ids[t]!;
  if (buckets > 0) {
    // a * M + b < 2^53 for ids < 2^33: exact in float64.
    for (let t = 1; t < n; t++) {
      out[n + t - 1] =
        vocabRows + ((ids[t - 1]! * TOKEN_BAG_BIGRAM_MULTIPLIER + ids[t]!) % buckets);
    }
  }
  return out;
}

function checkShape(w: Weight, expected: readonly number[], what: string): void {
  const ok =
    w.shape.length === expected.length &&
    w.shape.every((v, i) => v === expected[i]) &&
    w.data.length === expected.reduce((a, b) => a * b, 1);
  if (!ok) {
    throw new Error(
      `token_bag: ${what} has shape [${w.shape.join(',')}] (${w.data.length} values), expected [${expected.join(',')}]`,
    );
  }
}

/** Throws unless the gate's tensors agree with each other (the pack loader has checked files). */
export function checkTokenBagGate(gate: TokenBagGate): void {
  const rows = gate.embedding.shape[0] ?? 0;
  const w = gate.embedding.shape[1] ?? 0;
  if (!Number.isInteger(gate.buckets) || gate.buckets < 0) {
    throw new Error(`token_bag: buckets ${gate.buckets} must be an integer >= 0`);
  }
  if (rows - gate.buckets < 1 || w < 1) {
    throw new Error(
      `token_bag: embedding [${gate.embedding.shape.join(',')}] needs more than ${gate.buckets} (buckets) rows and >= 1 column`,
    );
  }
  checkShape(gate.embedding, [rows, w], 'embedding');
  const E = gate.experts.length;
  let width = w;
  if (gate.hidden !== undefined) {
    const h = gate.hidden.weight.shape[1] ?? 0;
    checkShape(gate.hidden.weight, [w, h], 'hidden.weight');
    checkShape(gate.hidden.bias, [h], 'hidden.bias');
    width = h;
  }
  checkShape(gate.outWeight, [width, E], 'out.weight');
  checkShape(gate.outBias, [E], 'out.bias');
}

function activate(g: GraphBuilder, act: Activation, x: string, name: string): string {
  switch (act) {
    case 'relu':
      return g.op('Relu', [x], {}, name);
    case 'tanh':
      return g.op('Tanh', [x], {}, name);
    case 'gelu':
      return g.geluErf(x, name);
    case 'identity':
      return x;
  }
}

/** out.weight / out.bias with columns re-ordered to `columns` (unknown ids: zero columns). */
function outColumns(
  gate: TokenBagGate,
  columns: readonly string[],
): { weight: Float32Array; bias: Float32Array } {
  const rows = gate.outWeight.shape[0]!;
  const cols = gate.experts.length;
  const E = columns.length;
  const weight = new Float32Array(rows * E);
  const bias = new Float32Array(E);
  columns.forEach((id, e) => {
    const j = gate.experts.indexOf(id);
    if (j < 0) return;
    for (let r = 0; r < rows; r++) weight[r * E + e] = gate.outWeight.data[r * cols + j]!;
    bias[e] = gate.outBias.data[j]!;
  });
  return { weight, bias };
}

/** Adds the gate's nodes to `g`; returns the name of its float32 [B,E] logits. See the header. */
export function tokenBagLogits(
  g: GraphBuilder,
  gate: TokenBagGate,
  inputs: TokenBagInputs,
  options: TokenBagOptions = {},
): string {
  checkTokenBagGate(gate);
  const p = options.prefix ?? 'token_bag';
  const columns = options.columns ?? gate.experts;
  const [rows, w] = gate.embedding.shape as [number, number];
  const V = rows - gate.buckets;
  const table = g.initializer(`${p}.embedding`, gate.embedding.data, [rows, w]); // [V+N,w]

  const maskF = g.cast(inputs.attentionMask, 'float32', `${p}_mask`); // [B,T]
  // Sum of the real tokens' rows as one batched MatMul: [B,1,T] @ [B,T,w].
  const unigrams = g.gather(table, inputs.inputIds, 0, `${p}_unigram_rows`); // [B,T,w]
  let sum = g.matMul(g.unsqueeze(maskF, [1], `${p}_mask_row`), unigrams, `${p}_unigram_sum`); // [B,1,w]
  let count = g.reduceSum(maskF, [1], true, `${p}_unigram_count`); // [B,1]

  if (gate.buckets > 0) {
    const left = (x: string, name: string) =>
      g.op('Slice', [x, g.constInt64([0]), g.constInt64([-1]), g.constInt64([1])], {}, name); // [B,T-1]
    const right = (x: string, name: string) =>
      g.op(
        'Slice',
        [x, g.constInt64([1]), g.constInt64([Number.MAX_SAFE_INTEGER]), g.constInt64([1])],
        {},
        name,
      ); // [B,T-1]
    const hashed = g.op(
      'Mod',
      [
        g.add(
          g.mul(
            left(inputs.inputIds, `${p}_previous_ids`),
            g.constInt64(TOKEN_BAG_BIGRAM_MULTIPLIER),
            `${p}_previous_scaled`,
          ),
          right(inputs.inputIds, `${p}_next_ids`),
          `${p}_pair_key`,
        ),
        g.constInt64(gate.buckets),
      ],
      { fmod: attr.int(0) },
      `${p}_pair_hash`,
    ); // [B,T-1] in [0,N)
    const pairRows = g.add(hashed, g.constInt64(V), `${p}_pair_rows`); // [B,T-1]
    const pairMask = g.mul(
      left(maskF, `${p}_mask_previous`),
      right(maskF, `${p}_mask_next`),
      `${p}_pair_mask`,
    ); // [B,T-1], 1 where both tokens are real
    const bigrams = g.gather(table, pairRows, 0, `${p}_bigram_rows`); // [B,T-1,w]
    const bigramSum = g.matMul(
      g.unsqueeze(pairMask, [1], `${p}_pair_mask_row`),
      bigrams,
      `${p}_bigram_sum`,
    ); // [B,1,w]
    sum = g.add(sum, bigramSum, `${p}_feature_sum`);
    count = g.add(
      count,
      g.reduceSum(pairMask, [1], true, `${p}_bigram_count`),
      `${p}_feature_count`,
    );
  }
  const pooled = g.div(
    g.reshape(sum, [-1, w], `${p}_sum_2d`),
    g.max(count, g.constFloat(1), `${p}_count_min1`),
    `${p}_pooled`,
  ); // [B,w]

  let x = pooled;
  let width = w;
  if (gate.hidden !== undefined) {
    const h = gate.hidden.weight.shape[1]!;
    x = activate(
      g,
      gate.hidden.activation,
      g.op(
        'Gemm',
        [
          pooled,
          g.initializer(`${p}.hidden.weight`, gate.hidden.weight.data, [w, h]),
          g.initializer(`${p}.hidden.bias`, gate.hidden.bias.data, [h]),
        ],
        {},
        `${p}_hidden`,
      ),
      `${p}_hidden_act`,
    ); // [B,h]
    width = h;
  }
  const out = outColumns(gate, columns);
  return g.op(
    'Gemm',
    [
      x,
      g.initializer(`${p}.out.weight`, out.weight, [width, columns.length]),
      g.initializer(`${p}.out.bias`, out.bias, [columns.length]),
    ],
    {},
    `${p}_logits`,
  ); // [B,E]
}
