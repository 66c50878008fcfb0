/**
 * Training of a `token_bag` gate (TokenBagGate in src/pack/types.ts; graph in
 * src/onnx/token-bag.ts), the way fastText's supervised mode trains its classifiers:
 *
 *   features f_1..f_n  the item's token ids and, with buckets, its hashed token bigrams
 *                      (tokenBagFeatures, the same function the graph computes)
 *   pooled = (1/n) sum_i E[f_i]                                   [w]
 *   x      = hidden ? act(pooled @ Hw + hb) : pooled              [w] or [h]
 *   p      = softmax(x @ O + ob)                                  [C]
 *   loss   = -log p[label]
 *
 * optimised by plain SGD, one example at a time in an order reshuffled every epoch by a seeded
 * generator, with a learning rate that falls linearly to 0 over the run (fastText's schedule). The
 * embedding starts uniform in [-1/w, 1/w] and the output layer at 0, as fastText's do. Gradients
 * are hand-written (test/token-bag.test.ts checks them against numerical ones):
 *
 *   dlogits = p - onehot(label)                                   [C]
 *   dO = x^T dlogits, dob = dlogits, dx = O dlogits
 *   hidden: dz = dx * act'(z), dHw = pooled^T dz, dhb = dz, dpooled = Hw dz; else dpooled = dx
 *   dE[f_i] += dpooled / n for every feature occurrence (sparse: only the item's rows change)
 *
 * Everything is float64 and deterministic (same examples, options and seed: same weights); the
 * exported gate is rounded to float32, and `tokenBagGateLogits` evaluates that exported form.
 */

import { tokenBagFeatures, tokenBagVocabRows } from '../onnx/token-bag.js';
import type { TokenBagGate } from '../pack/types.js';
import { Random } from '../util/random.js';
import { softmaxInPlace } from './kernels.js';

/** Hidden-layer non-linearities the trainer has derivatives for. */
export type TokenBagActivation = 'relu' | 'tanh';

export interface TokenBagShape {
  /** Rows for token ids: ids must be < vocabRows (the tokenizer's vocabulary size, or more). */
  readonly vocabRows: number;
  /** Hashed token-bigram rows after them; 0: unigrams only. */
  readonly buckets: number;
  /** Embedding width w. */
  readonly width: number;
  readonly classes: number;
  /** Optional hidden layer of `size` units. */
  readonly hidden?: { readonly size: number; readonly activation: TokenBagActivation };
}

export interface TokenBagTrainOptions {
  readonly epochs: number;
  /** Starting learning rate of SGD; falls linearly to 0. */
  readonly lr: number;
  readonly seed: number;
  /** Called after every epoch with the mean training loss. */
  readonly onEpoch?: (epoch: number, loss: number) => void;
}

/** One training item: its real tokens' ids (special tokens included) and its class. */
export interface TokenBagExample {
  readonly ids: ArrayLike<number>;
  readonly label: number;
}

/** The trainable parameters, float64, math layout (x @ W). */
export class TokenBagModel {
  readonly rows: number;
  readonly embedding: Float64Array; // [rows,w]
  readonly hiddenWeight: Float64Array; // [w,h] (empty without a hidden layer)
  readonly hiddenBias: Float64Array; // [h]
  readonly outWeight: Float64Array; // [x,C], x = h or w
  readonly outBias: Float64Array; // [C]
  /** Width of the output layer's input: h with a hidden layer, else w. */
  readonly inputWidth: number;

  constructor(readonly shape: TokenBagShape) {
    const { vocabRows, buckets, width: w, classes: C } = shape;
    if (!Number.isInteger(vocabRows) || vocabRows < 1) throw new Error('vocabRows must be >= 1');
    if (!Number.isInteger(buckets) || buckets < 0) throw new Error('buckets must be >= 0');
    const h = shape.hidden?.size ?? 0;
    this.rows = vocabRows + buckets;
    this.inputWidth = shape.hidden === undefined ? w : h;
    this.embedding = new Float64Array(this.rows * w);
    this.hiddenWeight = new Float64Array(w * h);
    this.hiddenBias = new Float64Array(h);
    this.outWeight = new Float64Array(this.inputWidth * C);
    this.outBias = new Float64Array(C);
  }

  /** fastText's start: embedding uniform in [-1/w, 1/w], output 0; hidden layer Glorot-uniform. */
  static init(shape: TokenBagShape, rng: Random): TokenBagModel {
    const model = new TokenBagModel(shape);
    const w = shape.width;
    for (let i = 0; i < model.embedding.length; i++) model.embedding[i] = (2 * rng.next() - 1) / w;
    if (shape.hidden !== undefined) {
      const limit = Math.sqrt(6 / (w + shape.hidden.size));
      for (let i = 0; i < model.hiddenWeight.length; i++) {
        model.hiddenWeight[i] = (2 * rng.next() - 1) * limit;
      }
    }
    return model;
  }

  /** Feature rows of one item (see tokenBagFeatures). */
  features(ids: ArrayLike<number>): Int32Array {
    for (let t = 0; t < ids.length; t++) {
      const id = ids[t]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.shape.vocabRows) {
        throw new Error(`token id ${id} is outside the gate's ${this.shape.vocabRows} rows`);
      }
    }
    return tokenBagFeatures(ids, this.shape.vocabRows, this.shape.buckets);
  }
}

/** Work buffers and the gradients of the dense layers for one example. */
export class TokenBagScratch {
  readonly pooled: Float64Array; // [w]
  readonly z: Float64Array; // [h] pre-activation
  readonly x: Float64Array; // [inputWidth]
  readonly probs: Float64Array; // [C]
  readonly dx: Float64Array; // [inputWidth]
  readonly dz: Float64Array; // [h]
  /** dLoss/dpooled; each feature's embedding row gets dPooled / n. */
  readonly dPooled: Float64Array; // [w]
  readonly dHiddenWeight: Float64Array;
  readonly dHiddenBias: Float64Array;
  readonly dOutWeight: Float64Array;
  readonly dOutBias: Float64Array;

  constructor(model: TokenBagModel) {
    const w = model.shape.width;
    const h = model.hiddenBias.length;
    this.pooled = new Float64Array(w);
    this.z = new Float64Array(h);
    this.x = new Float64Array(model.inputWidth);
    this.probs = new Float64Array(model.shape.classes);
    this.dx = new Float64Array(model.inputWidth);
    this.dz = new Float64Array(h);
    this.dPooled = new Float64Array(w);
    this.dHiddenWeight = new Float64Array(model.hiddenWeight.length);
    this.dHiddenBias = new Float64Array(h);
    this.dOutWeight = new Float64Array(model.outWeight.length);
    this.dOutBias = new Float64Array(model.shape.classes);
  }
}

/** Forward pass: leaves pooled, z, x and the class probabilities in `s`. */
export function tokenBagForward(model: TokenBagModel, features: Int32Array, s: TokenBagScratch) {
  const w = model.shape.width;
  const C = model.shape.classes;
  const n = features.length;
  s.pooled.fill(0);
  for (let i = 0; i < n; i++) {
    const o = features[i]! * w;
    for (let j = 0; j < w; j++) s.pooled[j] = s.pooled[j]! + model.embedding[o + j]!;
  }
  const inv = 1 / Math.max(n, 1);
  for (let j = 0; j < w; j++) s.pooled[j] = s.pooled[j]! * inv;
  const hidden = model.shape.hidden;
  if (hidden === undefined) {
    s.x.set(s.pooled);
  } else {
    const h = hidden.size;
    s.z.set(model.hiddenBias);
    for (let j = 0; j < w; j++) {
      const pj = s.pooled[j]!;
      const o = j * h;
      for (let u = 0; u < h; u++) s.z[u] = s.z[u]! + pj * model.hiddenWeight[o + u]!;
    }
    for (let u = 0; u < h; u++) {
      const z = s.z[u]!;
      s.x[u] = hidden.activation === 'relu' ? Math.max(z, 0) : Math.tanh(z);
    }
  }
  s.probs.set(model.outBias);
  for (let j = 0; j < model.inputWidth; j++) {
    const xj = s.x[j]!;
    const o = j * C;
    for (let c = 0; c < C; c++) s.probs[c] = s.probs[c]! + xj * model.outWeight[o + c]!;
  }
  softmaxInPlace(s.probs);
}

/**
 * Forward and backward pass of one example: returns its loss, and writes into `s` the gradients of
 * the dense layers (overwritten, not accumulated) and dPooled. The embedding's gradient is sparse:
 * row f_i gets dPooled / n for every feature occurrence (see `embeddingGradient`).
 */
export function tokenBagBackward(
  model: TokenBagModel,
  features: Int32Array,
  label: number,
  s: TokenBagScratch,
): number {
  tokenBagForward(model, features, s);
  const C = model.shape.classes;
  const w = model.shape.width;
  const loss = -Math.log(Math.max(s.probs[label]!, 1e-300));
  const g = s.dOutBias; // dlogits = p - onehot
  g.set(s.probs);
  g[label] = g[label]! - 1;
  for (let j = 0; j < model.inputWidth; j++) {
    const xj = s.x[j]!;
    const o = j * C;
    let dxj = 0;
    for (let c = 0; c < C; c++) {
      s.dOutWeight[o + c] = xj * g[c]!;
      dxj += model.outWeight[o + c]! * g[c]!;
    }
    s.dx[j] = dxj;
  }
  const hidden = model.shape.hidden;
  if (hidden === undefined) {
    s.dPooled.set(s.dx);
  } else {
    const h = hidden.size;
    for (let u = 0; u < h; u++) {
      const z = s.z[u]!;
      const slope = hidden.activation === 'relu' ? (z > 0 ? 1 : 0) : 1 - s.x[u]! * s.x[u]!;
      s.dz[u] = s.dx[u]! * slope;
    }
    s.dHiddenBias.set(s.dz);
    for (let j = 0; j < w; j++) {
      const pj = s.pooled[j]!;
      const o = j * h;
      let dp = 0;
      for (let u = 0; u < h; u++) {
        s.dHiddenWeight[o + u] = pj * s.dz[u]!;
        dp += model.hiddenWeight[o + u]! * s.dz[u]!;
      }
      s.dPooled[j] = dp;
    }
  }
  return loss;
}

/** The dense embedding gradient [rows,w] of one example, from `s.dPooled` (for tests). */
export function embeddingGradient(
  model: TokenBagModel,
  features: Int32Array,
  s: TokenBagScratch,
): Float64Array {
  const w = model.shape.width;
  const out = new Float64Array(model.embedding.length);
  const inv = 1 / Math.max(features.length, 1);
  for (const f of features) {
    for (let j = 0; j < w; j++) out[f * w + j] = out[f * w + j]! + s.dPooled[j]! * inv;
  }
  return out;
}

/** One SGD step on one example; returns its loss (before the step). */
function sgdStep(
  model: TokenBagModel,
  features: Int32Array,
  label: number,
  s: TokenBagScratch,
  lr: number,
): number {
  const loss = tokenBagBackward(model, features, label, s);
  const w = model.shape.width;
  const step = lr / Math.max(features.length, 1);
  for (const f of features) {
    const o = f * w;
    for (let j = 0; j < w; j++)
      model.embedding[o + j] = model.embedding[o + j]! - step * s.dPooled[j]!;
  }
  const update = (p: Float64Array, d: Float64Array) => {
    for (let i = 0; i < p.length; i++) p[i] = p[i]! - lr * d[i]!;
  };
  update(model.outWeight, s.dOutWeight);
  update(model.outBias, s.dOutBias);
  if (model.shape.hidden !== undefined) {
    update(model.hiddenWeight, s.dHiddenWeight);
    update(model.hiddenBias, s.dHiddenBias);
  }
  return loss;
}

/** Trains a token-bag classifier on `examples`; returns the model and the last epoch's mean loss. */
export function trainTokenBag(
  examples: readonly TokenBagExample[],
  shape: TokenBagShape,
  options: TokenBagTrainOptions,
): { model: TokenBagModel; loss: number } {
  if (examples.length === 0) throw new Error('token bag: no training examples');
  const rng = new Random(options.seed);
  const model = TokenBagModel.init(shape, rng);
  const features = examples.map((e) => {
    if (!Number.isInteger(e.label) || e.label < 0 || e.label >= shape.classes) {
      throw new Error(`token bag: label ${e.label} is not a class of ${shape.classes}`);
    }
    return model.features(e.ids);
  });
  const scratch = new TokenBagScratch(model);
  const order = examples.map((_, i) => i);
  const total = options.epochs * examples.length;
  let step = 0;
  let loss = 0;
  for (let epoch = 0; epoch < options.epochs; epoch++) {
    rng.shuffle(order);
    let sum = 0;
    for (const i of order) {
      const lr = options.lr * (1 - step / total);
      sum += sgdStep(model, features[i]!, examples[i]!.label, scratch, lr);
      step++;
    }
    loss = sum / examples.length;
    options.onEpoch?.(epoch, loss);
  }
  return { model, loss };
}

/** The pack's form of a trained model: float32 tensors, columns named by `experts`. */
export function exportTokenBag(model: TokenBagModel, experts: readonly string[]): TokenBagGate {
  const { width: w, buckets, classes: C, hidden } = model.shape;
  if (experts.length !== C)
    throw new Error(`token bag: ${experts.length} experts for ${C} classes`);
  const f32 = (x: Float64Array) => Float32Array.from(x);
  return {
    type: 'token_bag',
    experts: [...experts],
    buckets,
    embedding: { shape: [model.rows, w], data: f32(model.embedding) },
    ...(hidden === undefined
      ? {}
      : {
          hidden: {
            activation: hidden.activation,
            weight: { shape: [w, hidden.size], data: f32(model.hiddenWeight) },
            bias: { shape: [hidden.size], data: f32(model.hiddenBias) },
          },
        }),
    outWeight: { shape: [model.inputWidth, C], data: f32(model.outWeight) },
    outBias: { shape: [C], data: f32(model.outBias) },
  };
}

/**
 * Logits of a stored (float32) token_bag gate for one item's real token ids, computed in float64
 * in the gate's expert order: the plain-JS form of the graph, for reports and tools.
 */
export function tokenBagGateLogits(gate: TokenBagGate, ids: ArrayLike<number>): Float64Array {
  const [rows, w] = gate.embedding.shape as [number, number];
  const features = tokenBagFeatures(ids, tokenBagVocabRows(gate), gate.buckets);
  const pooled = new Float64Array(w);
  for (const f of features) {
    if (f < 0 || f >= rows) throw new Error(`token bag: feature row ${f} outside ${rows}`);
    for (let j = 0; j < w; j++) pooled[j] = pooled[j]! + gate.embedding.data[f * w + j]!;
  }
  for (let j = 0; j < w; j++) pooled[j] = pooled[j]! / Math.max(features.length, 1);
  let x: Float64Array = pooled;
  if (gate.hidden !== undefined) {
    const h = gate.hidden.weight.shape[1]!;
    const z = Float64Array.from(gate.hidden.bias.data);
    for (let j = 0; j < w; j++) {
      for (let u = 0; u < h; u++) z[u] = z[u]! + pooled[j]! * gate.hidden.weight.data[j * h + u]!;
    }
    x = z.map((v) => activation(gate.hidden!.activation, v));
  }
  const C = gate.experts.length;
  const logits = Float64Array.from(gate.outBias.data);
  for (let j = 0; j < x.length; j++) {
    for (let c = 0; c < C; c++) logits[c] = logits[c]! + x[j]! * gate.outWeight.data[j * C + c]!;
  }
  return logits;
}

function activation(kind: string, v: number): number {
  switch (kind) {
    case 'relu':
      return Math.max(v, 0);
    case 'tanh':
      return Math.tanh(v);
    case 'identity':
      return v;
    default:
      throw new Error(`token bag: activation ${kind} has no plain-JS form here`);
  }
}
