/**
 * Plain-JS reference of the top-of-backbone part of the pack graph, written from the contract in
 * `src/onnx/pack-graph-contract.ts` (not from the compiler): per item, in adapter ids, with float64
 * sums. It knows nothing of slots: the test maps the graph's slot indices back to ids.
 *
 * Per group, in order: pooled = masked mean of h; the gate's logits over its experts; then either
 * a fixed mixture (pin, explicit weights) or the gate's choice among the adapters it knows that are
 * loaded and not excluded: best first, k of them, fewer when the chosen ones' softmax probability
 * (over all candidates) reaches top_p; weights = softmax over the chosen logits. Then
 * h = sum_k w_k (adapter_k(h) + (residual_k ? h : 0)).
 */
import type { Activation, BottleneckAdapter, Gate, Head } from '../../src/pack/types.js';
import { gelu } from './encoder-reference.js';

export interface ReferenceGroup {
  readonly id: string;
  /** The adapters loaded, by id. */
  readonly adapters: ReadonlyMap<string, BottleneckAdapter>;
  readonly gate: Gate | null;
}

export type ReferencePlan =
  | {
      readonly mode: 'gate';
      readonly k: number;
      readonly topP: number;
      readonly exclude: readonly string[];
    }
  | { readonly mode: 'fixed'; readonly weights: Readonly<Record<string, number>> };

export interface ReferenceItem {
  readonly hidden: number[][]; // [T][d], real tokens only
  readonly plans: readonly ReferencePlan[]; // per group
}

export interface ReferenceGroupResult {
  /** Adapter ids mixed, best first, and their weights. */
  readonly chosen: { readonly id: string; readonly weight: number }[];
  /** Gated groups: entropy and top-1 margin of the gate's softmax over all its experts. */
  readonly entropy?: number;
  readonly margin?: number;
}

export interface ReferenceResult {
  readonly groups: ReferenceGroupResult[];
  readonly pooled: number[]; // [d], before normalisation
  readonly embedding: number[]; // [d]
  readonly scores: number[][]; // per head [L]
}

export function act(a: Activation, x: number): number {
  switch (a) {
    case 'relu':
      return Math.max(0, x);
    case 'tanh':
      return Math.tanh(x);
    case 'gelu':
      return gelu(x);
    case 'identity':
      return x;
  }
}

/** x @ W + b for W [in,out] row-major. */
export function affine(
  x: readonly number[],
  w: Float32Array,
  b: Float32Array,
  out: number,
): number[] {
  const y: number[] = [];
  for (let o = 0; o < out; o++) {
    let s = b[o]!;
    for (let i = 0; i < x.length; i++) s += x[i]! * w[i * out + o]!;
    y.push(s);
  }
  return y;
}

export function softmax(x: readonly number[]): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp(v - m));
  const total = e.reduce((a, v) => a + v, 0);
  return e.map((v) => v / total);
}

function mean(h: readonly number[][], d: number): number[] {
  const sum = new Array<number>(d).fill(0);
  for (const row of h) for (let j = 0; j < d; j++) sum[j]! += row[j]!;
  return sum.map((v) => v / Math.max(h.length, 1));
}

function gateLogits(gate: Gate, pooled: number[]): number[] {
  const E = gate.experts.length;
  if (gate.type === 'linear') return affine(pooled, gate.weight.data, gate.bias.data, E);
  if (gate.type === 'token_bag') {
    throw new Error(
      'pack reference: token_bag gates read token ids; test/token-bag.test.ts checks them',
    );
  }
  const width = gate.hiddenBias.data.length;
  const hidden = affine(pooled, gate.hiddenWeight.data, gate.hiddenBias.data, width).map((v) =>
    act(gate.activation, v),
  );
  return affine(hidden, gate.outWeight.data, gate.outBias.data, E);
}

function applyAdapter(a: BottleneckAdapter, h: readonly number[], d: number): number[] {
  const z = affine(h, a.down.data, a.downBias.data, a.rank).map((v) => act(a.activation, v));
  const y = affine(z, a.up.data, a.upBias.data, d);
  return a.residual ? y.map((v, j) => v + h[j]!) : y;
}

export function packReference(
  groups: readonly ReferenceGroup[],
  heads: readonly Head[],
  item: ReferenceItem,
  d: number,
): ReferenceResult {
  let h = item.hidden.map((row) => [...row]);
  const results: ReferenceGroupResult[] = groups.map((group, g) => {
    const plan = item.plans[g]!;
    const pooled = mean(h, d);
    let chosen: { id: string; weight: number }[];
    let health: { entropy?: number; margin?: number } = {};
    const logits = group.gate === null ? [] : gateLogits(group.gate, pooled);
    if (group.gate !== null) {
      const p = softmax(logits);
      const sorted = [...p].sort((a, b) => b - a);
      health = {
        entropy: -p.reduce((s, v) => s + (v > 0 ? v * Math.log(v) : 0), 0),
        margin: sorted.length > 1 ? sorted[0]! - sorted[1]! : sorted[0]!,
      };
    }
    if (plan.mode === 'fixed') {
      chosen = Object.entries(plan.weights)
        .filter(([, w]) => w > 0)
        .map(([id, weight]) => ({ id, weight }))
        .sort((a, b) => b.weight - a.weight);
    } else {
      const gate = group.gate!;
      const candidates = [...group.adapters.keys()]
        .filter((id) => gate.experts.includes(id) && !plan.exclude.includes(id))
        .map((id) => ({ id, logit: logits[gate.experts.indexOf(id)]! }))
        .sort((a, b) => b.logit - a.logit);
      const all = softmax(candidates.map((c) => c.logit));
      const k = Math.min(plan.k, candidates.length);
      let used = 0;
      let cumulative = 0;
      while (used < k) {
        used++;
        cumulative += all[used - 1]!;
        if (cumulative >= plan.topP) break;
      }
      const top = candidates.slice(0, used);
      const w = softmax(top.map((c) => c.logit));
      chosen = top.map((c, n) => ({ id: c.id, weight: w[n]! }));
    }
    h = h.map((row) => {
      const mixed = new Array<number>(d).fill(0);
      for (const { id, weight } of chosen) {
        const y = applyAdapter(group.adapters.get(id)!, row, d);
        for (let j = 0; j < d; j++) mixed[j]! += weight * y[j]!;
      }
      return mixed;
    });
    return { chosen, ...health };
  });
  const pooled = mean(h, d);
  const norm = Math.sqrt(pooled.reduce((a, v) => a + v * v, 0));
  return {
    groups: results,
    pooled,
    embedding: pooled.map((v) => v / Math.max(norm, 1e-12)),
    scores: heads.map((head) =>
      softmax(affine(pooled, head.weight.data, head.bias.data, head.labels.length)),
    ),
  };
}
