/**
 * A plain-JS forward pass of a demo pack's trained parts, from the weights exactly as the pack
 * stores them (float32, math layout), following src/onnx/mixture-contract.ts: the language gate
 * (a linear gate over the masked mean of the backbone states, or a token_bag gate over the token
 * ids), top-k and softmax over the selected logits, the
 * weighted sum of residual adapters, then for each head its pinned task adapter (k = 1), the
 * un-normalised masked mean, and the head's softmax. The report's accuracies come from this.
 */
import type { BottleneckAdapter, Head, LinearGate, TokenBagGate } from '../pack/types.js';
import { matmulABt, softmaxInPlace, transpose } from './kernels.js';
import { tokenBagGateLogits } from './token-bag.js';
import { linearLogits, meanPool, topK } from './train.js';

export interface DemoParts {
  readonly hiddenSize: number;
  /** Scores the language adapters, column j = language[j]. */
  readonly gate: LinearGate | TokenBagGate;
  readonly languageK: number;
  readonly language: readonly BottleneckAdapter[];
  /** Each head with the task adapter its pin selects. */
  readonly tasks: readonly { readonly adapter: BottleneckAdapter; readonly head: Head }[];
}

export interface DemoPrediction {
  /** Language adapters (indices into parts.language), best first, and their weights. */
  readonly experts: number[];
  readonly weights: number[];
  /** Per task: the head's class probabilities. */
  readonly scores: Float64Array[];
}

interface PreparedAdapter {
  readonly rank: number;
  readonly residual: boolean;
  readonly downT: Float64Array; // [r,d]
  readonly downBias: Float64Array;
  readonly upT: Float64Array; // [d,r]
  readonly upBias: Float64Array;
}

function prepare(adapter: BottleneckAdapter): PreparedAdapter {
  if (adapter.activation !== 'relu') {
    throw new Error(`demo forward: adapter ${adapter.id} uses ${adapter.activation}, only relu`);
  }
  const d = adapter.hiddenSize;
  const r = adapter.rank;
  const downT = new Float64Array(r * d);
  const upT = new Float64Array(d * r);
  transpose(Float64Array.from(adapter.down.data), d, r, downT);
  transpose(Float64Array.from(adapter.up.data), r, d, upT);
  return {
    rank: r,
    residual: adapter.residual,
    downT,
    downBias: Float64Array.from(adapter.downBias.data),
    upT,
    upBias: Float64Array.from(adapter.upBias.data),
  };
}

/** out[T,d] = adapter(h) + (residual ? h : 0), per token. */
function applyAdapter(a: PreparedAdapter, h: Float64Array, T: number, d: number): Float64Array {
  const act = new Float64Array(T * a.rank);
  matmulABt(h, T, d, a.downT, a.rank, act);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < a.rank; j++) {
      const x = act[t * a.rank + j]! + a.downBias[j]!;
      act[t * a.rank + j] = Math.max(x, 0);
    }
  }
  const out = new Float64Array(T * d);
  matmulABt(act, T, a.rank, a.upT, d, out);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < d; i++) {
      out[t * d + i] = out[t * d + i]! + a.upBias[i]! + (a.residual ? h[t * d + i]! : 0);
    }
  }
  return out;
}

/**
 * Returns predict(hidden, ids, k): hidden is the backbone's [length,d] states of the item's real
 * tokens, ids those tokens (length = ids.length).
 */
export function createPredictor(
  parts: DemoParts,
): (hidden: ArrayLike<number>, ids: ArrayLike<number>, k?: number) => DemoPrediction {
  const d = parts.hiddenSize;
  const language = parts.language.map(prepare);
  const tasks = parts.tasks.map((t) => ({ adapter: prepare(t.adapter), head: t.head }));
  const gate = parts.gate;
  return (hidden, ids, k = parts.languageK) => {
    const length = ids.length;
    const h0 = Float64Array.from({ length: length * d }, (_, i) => hidden[i]!);
    const logits =
      gate.type === 'token_bag'
        ? tokenBagGateLogits(gate, ids)
        : linearLogits(meanPool(h0, length, d), gate.weight.data, gate.bias.data);
    const route = topK(logits, k);
    const h1 = new Float64Array(length * d);
    route.experts.forEach((e, slot) => {
      const y = applyAdapter(language[e]!, h0, length, d);
      const w = route.weights[slot]!;
      for (let i = 0; i < h1.length; i++) h1[i] = h1[i]! + w * y[i]!;
    });
    const scores = tasks.map((task) => {
      const h2 = applyAdapter(task.adapter, h1, length, d);
      const logits = linearLogits(
        meanPool(h2, length, d),
        task.head.weight.data,
        task.head.bias.data,
      );
      softmaxInPlace(logits);
      return logits;
    });
    return { experts: route.experts, weights: route.weights, scores };
  };
}

/** Index of the largest value (lower index on ties). */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}
