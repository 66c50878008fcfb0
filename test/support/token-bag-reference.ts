/**
 * Plain-JS reference of a token_bag gate, written from the contract in src/onnx/token-bag.ts and
 * src/pack/types.ts (not from the graph or the trainer): one item at a time, the bigram hash in
 * BigInt arithmetic, float64 sums.
 */
import type { Activation, TokenBagGate } from '../../src/pack/types.js';
import { gelu } from './encoder-reference.js';

/** The documented hash multiplier, restated here so that a change to it fails the tests. */
const MULTIPLIER = 1000003n;

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

/**
 * Logits [E] in the gate's expert order for one item: `ids` and `mask` are its row of the batch
 * ([T] each, padding anywhere the mask is 0).
 */
export function tokenBagReference(
  gate: TokenBagGate,
  ids: readonly number[],
  mask: readonly number[],
): number[] {
  const [rows, w] = gate.embedding.shape as [number, number];
  const V = rows - gate.buckets;
  const features: number[] = [];
  ids.forEach((id, t) => {
    if (mask[t] !== 0) features.push(id);
  });
  if (gate.buckets > 0) {
    for (let t = 1; t < ids.length; t++) {
      if (mask[t - 1] === 0 || mask[t] === 0) continue;
      const key = BigInt(ids[t - 1]!) * MULTIPLIER + BigInt(ids[t]!);
      features.push(V + Number(key % BigInt(gate.buckets)));
    }
  }
  const pooled = new Array<number>(w).fill(0);
  for (const f of features) {
    for (let j = 0; j < w; j++) pooled[j]! += gate.embedding.data[f * w + j]!;
  }
  const x0 = pooled.map((v) => v / Math.max(features.length, 1));
  let x = x0;
  if (gate.hidden !== undefined) {
    const h = gate.hidden.bias.data.length;
    x = [];
    for (let u = 0; u < h; u++) {
      let s = gate.hidden.bias.data[u]!;
      for (let j = 0; j < w; j++) s += x0[j]! * gate.hidden.weight.data[j * h + u]!;
      x.push(act(gate.hidden.activation, s));
    }
  }
  const E = gate.experts.length;
  const logits: number[] = [];
  for (let e = 0; e < E; e++) {
    let s = gate.outBias.data[e]!;
    for (let j = 0; j < x.length; j++) s += x[j]! * gate.outWeight.data[j * E + e]!;
    logits.push(s);
  }
  return logits;
}
