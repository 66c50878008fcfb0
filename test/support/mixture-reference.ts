/**
 * Plain-JS reference of the mixture graph, written from `src/onnx/mixture-contract.ts` and
 * `src/pack/types.ts` (not from the ONNX compiler): loops per item and token, float64 sums.
 */
import type { Activation, BottleneckAdapter, Gate, MixtureSpec } from '../../src/pack/types.js';
import { gelu } from './encoder-reference.js';

export interface MixtureGroupInputs {
  bias: Float32Array; // [B,E]
  k: readonly number[]; // [B]
  kmax: number;
}

export interface MixtureInputs {
  batch: number;
  seq: number;
  hidden: Float32Array; // [B,T,d]
  mask: readonly number[]; // [B,T]
  groups: readonly MixtureGroupInputs[];
}

export interface MixtureReferenceResult {
  /** Per group: [B][kmax] bank indices and weights. */
  groups: { experts: number[][]; weights: number[][] }[];
  embedding: number[][]; // [B][d]
  /** Per head: [B][L]. */
  scores: number[][][];
}

function act(a: Activation, x: number): number {
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
function affine(x: readonly number[], w: Float32Array, b: Float32Array, out: number): number[] {
  const y: number[] = [];
  for (let o = 0; o < out; o++) {
    let s = b[o]!;
    for (let i = 0; i < x.length; i++) s += x[i]! * w[i * out + o]!;
    y.push(s);
  }
  return y;
}

function softmax(x: readonly number[]): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp(v - m));
  const total = e.reduce((a, v) => a + v, 0);
  return e.map((v) => v / total);
}

/** The spec's pooling (default mean): masked mean, the first token, or masked max. */
function pool(h: number[][], mask: readonly number[], d: number, mode = 'mean'): number[] {
  if (mode === 'cls') return [...h[0]!];
  if (mode === 'max') {
    return Array.from({ length: d }, (_, j) =>
      Math.max(...h.map((row, t) => (mask[t] === 0 ? -1e9 : row[j]!))),
    );
  }
  return maskedMean(h, mask, d);
}

function maskedMean(h: number[][], mask: readonly number[], d: number): number[] {
  const sum = new Array<number>(d).fill(0);
  let count = 0;
  h.forEach((row, t) => {
    if (mask[t] === 0) return;
    count++;
    for (let j = 0; j < d; j++) sum[j]! += row[j]!;
  });
  return sum.map((v) => v / Math.max(count, 1));
}

/** The gate's logit for each bank adapter (0 for adapters the gate does not name). */
function gateLogits(gate: Gate, pooled: number[], bankIds: readonly string[]): number[] {
  const Eg = gate.experts.length;
  let perGateExpert: number[];
  if (gate.type === 'linear') {
    perGateExpert = affine(pooled, gate.weight.data, gate.bias.data, Eg);
  } else {
    const h = gate.hiddenBias.data.length;
    const hidden = affine(pooled, gate.hiddenWeight.data, gate.hiddenBias.data, h).map((v) =>
      act(gate.activation, v),
    );
    perGateExpert = affine(hidden, gate.outWeight.data, gate.outBias.data, Eg);
  }
  return bankIds.map((id) => {
    const j = gate.experts.indexOf(id);
    return j < 0 ? 0 : perGateExpert[j]!;
  });
}

/** adapter(h) = act(h @ down + downBias) @ up + upBias, plus h when residual. */
function applyAdapter(a: BottleneckAdapter, h: readonly number[], d: number): number[] {
  const z = affine(h, a.down.data, a.downBias.data, a.rank).map((v) => act(a.activation, v));
  const y = affine(z, a.up.data, a.upBias.data, d);
  return a.residual ? y.map((v, j) => v + h[j]!) : y;
}

export function mixtureReference(spec: MixtureSpec, inputs: MixtureInputs): MixtureReferenceResult {
  const d = spec.hiddenSize;
  const { batch: B, seq: T } = inputs;
  const result: MixtureReferenceResult = {
    groups: spec.groups.map(() => ({ experts: [], weights: [] })),
    embedding: [],
    scores: spec.heads.map(() => []),
  };
  for (let b = 0; b < B; b++) {
    const mask = inputs.mask.slice(b * T, (b + 1) * T);
    let h: number[][] = [];
    for (let t = 0; t < T; t++) {
      h.push(Array.from(inputs.hidden.subarray((b * T + t) * d, (b * T + t + 1) * d)));
    }
    spec.groups.forEach((group, i) => {
      const gi = inputs.groups[i]!;
      const E = group.adapters.length;
      const bankIds = group.adapters.map((a) => a.id);
      const pooled = pool(h, mask, d, spec.pooling?.mode);
      const logits = group.gate ? gateLogits(group.gate, pooled, bankIds) : bankIds.map(() => 0);
      const scores = logits.map((v, e) => v + gi.bias[b * E + e]!);
      const order = scores
        .map((s, e) => ({ s, e }))
        .sort((x, y) => y.s - x.s)
        .slice(0, gi.kmax)
        .map((x) => x.e);
      const k = gi.k[b]!;
      const firstK = softmax(order.slice(0, k).map((e) => scores[e]!));
      const weights = order.map((_, n) => (n < k ? firstK[n]! : 0));
      result.groups[i]!.experts.push(order);
      result.groups[i]!.weights.push(weights);
      h = h.map((row) => {
        const mixed = new Array<number>(d).fill(0);
        for (let n = 0; n < k; n++) {
          const y = applyAdapter(group.adapters[order[n]!]!, row, d);
          for (let j = 0; j < d; j++) mixed[j]! += weights[n]! * y[j]!;
        }
        return mixed;
      });
    });
    const pooled = pool(h, mask, d, spec.pooling?.mode);
    const norm = Math.sqrt(pooled.reduce((a, v) => a + v * v, 0));
    const normalize = spec.pooling?.normalize ?? true;
    result.embedding.push(pooled.map((v) => (normalize ? v / Math.max(norm, 1e-12) : v)));
    spec.heads.forEach((head, j) => {
      result.scores[j]!.push(
        softmax(affine(pooled, head.weight.data, head.bias.data, head.labels.length)),
      );
    });
  }
  return result;
}
