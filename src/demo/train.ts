/**
 * Training of the demo pack's learned parts, with hand-written gradients, on hidden states of the
 * frozen backbone. The model trained is exactly the mixture of `src/onnx/mixture-contract.ts`:
 *
 *   h0      = backbone last_hidden_state [T,d] (real tokens only; masked positions never count)
 *   route   = top-k of the language gate over mean_t h0, weights = softmax of the selected logits
 *   h1      = sum_k w_k (A_k(h0) + h0)              A(h) = relu(h Wd + bd) Wu + bu, per token
 *   per task j (its head pins its task adapter, k = 1, weight 1):
 *     h2    = S_j(h1) + h1                           S_j a bottleneck adapter like A
 *     q     = mean_t h2                              (un-normalised, as the heads see it)
 *     p     = softmax(q Hw_j + Hb_j)
 *
 * Since the pooling is a mean and S_j's up projection is linear, mean_t h2 = mean_t h1 +
 * (mean_t relu(h1 Sd + sbd)) Su + sbu: the trainer applies S_j's up projection after pooling, which
 * is the same function at a T-th of the cost.
 *
 * Heads and gates train on standardised inputs (z = (x - mean) * scale, with mean and scale fixed
 * from the training data beforehand); `exportLinear` folds the standardisation into the weight and
 * bias, so the exported layer is the plain `x @ W + b` that the pack format defines.
 *
 * Everything is float64 in training; exported weights are rounded to float32, and the evaluation
 * that the report quotes runs on the rounded weights.
 */
import { Random } from '../util/random.js';
import { addAtB, matmulABt, softmaxInPlace, transpose } from './kernels.js';

/** A trainable tensor with its gradient and Adam moments. */
export class Param {
  readonly value: Float64Array;
  readonly grad: Float64Array;
  readonly m: Float64Array;
  readonly v: Float64Array;

  constructor(
    readonly shape: readonly number[],
    /** Whether weight decay applies (weights yes, biases no). */
    readonly decay: boolean,
    /** Multiplies the optimiser's learning rate for this tensor. */
    public lrScale = 1,
  ) {
    const n = shape.reduce((a, b) => a * b, 1);
    this.value = new Float64Array(n);
    this.grad = new Float64Array(n);
    this.m = new Float64Array(n);
    this.v = new Float64Array(n);
  }
}

export interface AdamOptions {
  readonly lr: number;
  readonly beta1?: number;
  readonly beta2?: number;
  readonly eps?: number;
  /** Decoupled weight decay (AdamW), applied to params with `decay`. */
  readonly weightDecay?: number;
}

export class Adam {
  private t = 0;

  constructor(
    private readonly params: readonly Param[],
    private readonly options: AdamOptions,
  ) {}

  zeroGrad(): void {
    for (const p of this.params) p.grad.fill(0);
  }

  /** One update; `lr` overrides the configured rate (for schedules). */
  step(lr = this.options.lr): void {
    const b1 = this.options.beta1 ?? 0.9;
    const b2 = this.options.beta2 ?? 0.999;
    const eps = this.options.eps ?? 1e-8;
    const wd = this.options.weightDecay ?? 0;
    this.t++;
    const c1 = 1 - b1 ** this.t;
    const c2 = 1 - b2 ** this.t;
    for (const p of this.params) {
      const { value, grad, m, v } = p;
      const decay = p.decay ? wd : 0;
      const rate = lr * p.lrScale;
      for (let i = 0; i < value.length; i++) {
        const g = grad[i]!;
        const mi = b1 * m[i]! + (1 - b1) * g;
        const vi = b2 * v[i]! + (1 - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        value[i] = value[i]! - rate * (mi / c1 / (Math.sqrt(vi / c2) + eps) + decay * value[i]!);
      }
    }
  }
}

/** A bottleneck adapter's parameters: relu(h @ down + downBias) @ up + upBias, residual. */
export class AdapterParams {
  readonly down: Param; // [d,r]
  readonly downBias: Param; // [r]
  readonly up: Param; // [r,d]
  readonly upBias: Param; // [d]
  /** down^T [r,d] and up^T [d,r], for the forward kernels; `refresh()` after every update. */
  readonly downT: Float64Array;
  readonly upT: Float64Array;

  constructor(
    readonly hiddenSize: number,
    readonly rank: number,
  ) {
    this.down = new Param([hiddenSize, rank], true);
    this.downBias = new Param([rank], false);
    this.up = new Param([rank, hiddenSize], true);
    this.upBias = new Param([hiddenSize], false);
    this.downT = new Float64Array(rank * hiddenSize);
    this.upT = new Float64Array(hiddenSize * rank);
  }

  /** down ~ N(0, 1/d) (unit-scale activations), up ~ N(0, upStd^2): starts near the identity. */
  static init(hiddenSize: number, rank: number, rng: Random, upStd: number): AdapterParams {
    const a = new AdapterParams(hiddenSize, rank);
    a.down.value.set(rng.normals(hiddenSize * rank, 1 / Math.sqrt(hiddenSize)));
    a.up.value.set(rng.normals(rank * hiddenSize, upStd));
    a.refresh();
    return a;
  }

  params(): Param[] {
    return [this.down, this.downBias, this.up, this.upBias];
  }

  refresh(): void {
    transpose(this.down.value, this.hiddenSize, this.rank, this.downT);
    transpose(this.up.value, this.rank, this.hiddenSize, this.upT);
  }
}

/** A task: its adapter (pinned by its head) and its head over standardised pooled states. */
export interface TaskParams {
  readonly adapter: AdapterParams;
  readonly weight: Param; // [d,L]
  readonly bias: Param; // [L]
  readonly labelCount: number;
  /** Fixed standardisation of the head's input: z = (q - mean) * scale. */
  readonly mean: Float64Array;
  readonly scale: Float64Array;
}

export interface MixtureModel {
  readonly hiddenSize: number;
  readonly language: readonly AdapterParams[];
  readonly tasks: readonly TaskParams[];
}

export function modelParams(model: MixtureModel): Param[] {
  const out: Param[] = [];
  for (const a of model.language) out.push(...a.params());
  for (const t of model.tasks) out.push(...t.adapter.params(), t.weight, t.bias);
  // Tasks may share an adapter: each tensor once.
  return [...new Set(out)];
}

export function refreshModel(model: MixtureModel): void {
  for (const a of model.language) a.refresh();
  for (const t of model.tasks) t.adapter.refresh();
}

/** One sentence: its frozen backbone states, its routing in the language group, its labels. */
export interface Example {
  /** [length, d], real tokens only (the attention-mask positions), float64. */
  readonly hidden: Float64Array;
  readonly length: number;
  /** Language adapters (indices into model.language) and their mixing weights. */
  readonly experts: readonly number[];
  readonly weights: readonly number[];
  /** One label per task. */
  readonly labels: readonly number[];
}

/** Work buffers for one example, sized for the longest sentence. */
export class Scratch {
  readonly v: Float64Array[];
  readonly a: Float64Array[];
  readonly h1: Float64Array;
  readonly tmp: Float64Array;
  readonly gh1: Float64Array;
  readonly ga: Float64Array;
  readonly u: Float64Array[];
  readonly au: Float64Array[];
  readonly gu: Float64Array;
  readonly q: Float64Array;
  readonly z: Float64Array;
  readonly gq: Float64Array[];
  readonly m: Float64Array[];
  readonly gm: Float64Array;
  readonly pooled1: Float64Array;
  readonly probs: Float64Array[];

  constructor(model: MixtureModel, maxLength: number, maxK: number) {
    const d = model.hiddenSize;
    const rL = Math.max(1, ...model.language.map((a) => a.rank));
    const rT = Math.max(1, ...model.tasks.map((t) => t.adapter.rank));
    this.v = Array.from({ length: maxK }, () => new Float64Array(maxLength * rL));
    this.a = Array.from({ length: maxK }, () => new Float64Array(maxLength * rL));
    this.h1 = new Float64Array(maxLength * d);
    this.tmp = new Float64Array(maxLength * d);
    this.gh1 = new Float64Array(maxLength * d);
    this.ga = new Float64Array(maxLength * rL);
    this.u = model.tasks.map(() => new Float64Array(maxLength * rT));
    this.au = model.tasks.map(() => new Float64Array(maxLength * rT));
    this.gu = new Float64Array(maxLength * rT);
    this.q = new Float64Array(d);
    this.z = new Float64Array(d);
    this.gq = model.tasks.map(() => new Float64Array(d));
    this.m = model.tasks.map(() => new Float64Array(rT));
    this.gm = new Float64Array(rT);
    this.pooled1 = new Float64Array(d);
    this.probs = model.tasks.map((t) => new Float64Array(t.labelCount));
  }
}

/** u[t,:] = relu(h[t,:] @ down + bias) into `a`, pre-activation into `v`. */
function adapterDown(
  adapter: AdapterParams,
  h: Float64Array,
  T: number,
  v: Float64Array,
  a: Float64Array,
): void {
  const r = adapter.rank;
  matmulABt(h, T, adapter.hiddenSize, adapter.downT, r, v);
  const b = adapter.downBias.value;
  for (let t = 0; t < T; t++) {
    const o = t * r;
    for (let j = 0; j < r; j++) {
      const x = v[o + j]! + b[j]!;
      v[o + j] = x;
      a[o + j] = Math.max(x, 0);
    }
  }
}

/**
 * Forward pass of one example (and, when `gradScale` > 0, its backward pass, adding
 * gradScale * dLoss/dParam to every param's `grad`). Returns the summed cross-entropy over tasks;
 * the class probabilities are left in `s.probs`.
 */
export function forwardBackward(
  model: MixtureModel,
  ex: Example,
  s: Scratch,
  gradScale: number,
  taskWeights?: readonly number[],
): number {
  const d = model.hiddenSize;
  const T = ex.length;
  const h0 = ex.hidden;
  const { h1, tmp } = s;
  // Language group: h1 = sum_k w_k (A_k(h0) + h0).
  let wsum = 0;
  for (const w of ex.weights) wsum += w;
  for (let i = 0; i < T * d; i++) h1[i] = wsum * h0[i]!;
  ex.experts.forEach((e, k) => {
    const A = model.language[e]!;
    const w = ex.weights[k]!;
    adapterDown(A, h0, T, s.v[k]!, s.a[k]!);
    matmulABt(s.a[k]!, T, A.rank, A.upT, d, tmp);
    const ub = A.upBias.value;
    for (let t = 0; t < T; t++) {
      const o = t * d;
      for (let i = 0; i < d; i++) h1[o + i] = h1[o + i]! + w * (tmp[o + i]! + ub[i]!);
    }
  });
  const pooled1 = s.pooled1;
  pooled1.fill(0);
  for (let t = 0; t < T; t++) {
    const o = t * d;
    for (let i = 0; i < d; i++) pooled1[i] = pooled1[i]! + h1[o + i]!;
  }
  for (let i = 0; i < d; i++) pooled1[i] = pooled1[i]! / T;

  // Task group, one pinned adapter per task, then its head.
  let loss = 0;
  model.tasks.forEach((task, j) => {
    const S = task.adapter;
    const rT = S.rank;
    const u = s.u[j]!;
    const au = s.au[j]!;
    adapterDown(S, h1, T, u, au);
    const m = s.m[j]!;
    m.fill(0);
    for (let t = 0; t < T; t++) for (let c = 0; c < rT; c++) m[c] = m[c]! + au[t * rT + c]!;
    for (let c = 0; c < rT; c++) m[c] = m[c]! / T;
    const q = s.q;
    const up = S.up.value;
    const ub = S.upBias.value;
    for (let i = 0; i < d; i++) q[i] = pooled1[i]! + ub[i]!;
    for (let c = 0; c < rT; c++) {
      const mc = m[c]!;
      const o = c * d;
      for (let i = 0; i < d; i++) q[i] = q[i]! + mc * up[o + i]!;
    }
    const z = s.z;
    for (let i = 0; i < d; i++) z[i] = (q[i]! - task.mean[i]!) * task.scale[i]!;
    const L = task.labelCount;
    const p = s.probs[j]!;
    const W = task.weight.value;
    p.set(task.bias.value);
    for (let i = 0; i < d; i++) {
      const zi = z[i]!;
      const o = i * L;
      for (let c = 0; c < L; c++) p[c] = p[c]! + zi * W[o + c]!;
    }
    const label = ex.labels[j]!;
    const tw = taskWeights?.[j] ?? 1;
    const lse = softmaxInPlace(p);
    loss += tw * -Math.log(Math.max(p[label]!, 1e-300));
    void lse;
    if (gradScale <= 0) return;
    // Backward through the head: gl = tw * scale * (p - onehot).
    const g = gradScale * tw;
    const gW = task.weight.grad;
    const gb = task.bias.grad;
    const gq = s.gq[j]!;
    for (let c = 0; c < L; c++) {
      const gl = g * (p[c]! - (c === label ? 1 : 0));
      gb[c] = gb[c]! + gl;
    }
    for (let i = 0; i < d; i++) {
      const zi = z[i]!;
      const o = i * L;
      let acc = 0;
      for (let c = 0; c < L; c++) {
        const gl = g * (p[c]! - (c === label ? 1 : 0));
        gW[o + c] = gW[o + c]! + zi * gl;
        acc += W[o + c]! * gl;
      }
      gq[i] = acc * task.scale[i]!;
    }
  });
  if (gradScale <= 0) return loss;

  // Backward through the task adapters into gh1.
  const gh1 = s.gh1;
  for (let t = 0; t < T; t++) {
    const o = t * d;
    for (let i = 0; i < d; i++) {
      let acc = 0;
      for (let j = 0; j < model.tasks.length; j++) acc += s.gq[j]![i]!;
      gh1[o + i] = acc / T;
    }
  }
  model.tasks.forEach((task, j) => {
    const S = task.adapter;
    const rT = S.rank;
    const gq = s.gq[j]!;
    const m = s.m[j]!;
    const up = S.up.value;
    const gup = S.up.grad;
    const gub = S.upBias.grad;
    for (let i = 0; i < d; i++) gub[i] = gub[i]! + gq[i]!;
    const gm = s.gm;
    for (let c = 0; c < rT; c++) {
      const mc = m[c]!;
      const o = c * d;
      let acc = 0;
      for (let i = 0; i < d; i++) {
        gup[o + i] = gup[o + i]! + mc * gq[i]!;
        acc += up[o + i]! * gq[i]!;
      }
      gm[c] = acc / T;
    }
    const u = s.u[j]!;
    const gu = s.gu;
    const gdb = S.downBias.grad;
    for (let t = 0; t < T; t++) {
      const o = t * rT;
      for (let c = 0; c < rT; c++) {
        const x = u[o + c]! > 0 ? gm[c]! : 0;
        gu[o + c] = x;
        gdb[c] = gdb[c]! + x;
      }
    }
    addAtB(h1, T, d, gu, rT, S.down.grad);
    matmulABt(gu, T, rT, S.down.value, d, gh1, true);
  });

  // Backward through the language adapters.
  ex.experts.forEach((e, k) => {
    const A = model.language[e]!;
    const w = ex.weights[k]!;
    const rL = A.rank;
    for (let i = 0; i < T * d; i++) tmp[i] = w * gh1[i]!;
    const gub = A.upBias.grad;
    for (let t = 0; t < T; t++) {
      const o = t * d;
      for (let i = 0; i < d; i++) gub[i] = gub[i]! + tmp[o + i]!;
    }
    const a = s.a[k]!;
    const v = s.v[k]!;
    addAtB(a, T, rL, tmp, d, A.up.grad);
    const ga = s.ga;
    matmulABt(tmp, T, d, A.up.value, rL, ga);
    const gdb = A.downBias.grad;
    for (let t = 0; t < T; t++) {
      const o = t * rL;
      for (let c = 0; c < rL; c++) {
        const x = v[o + c]! > 0 ? ga[o + c]! : 0;
        ga[o + c] = x;
        gdb[c] = gdb[c]! + x;
      }
    }
    addAtB(h0, T, d, ga, rL, A.down.grad);
  });
  return loss;
}

/** Per-feature mean and 1/std (std floored) of rows of `x` [n,d]. */
export function standardiser(
  rows: readonly Float64Array[],
  d: number,
): { mean: Float64Array; scale: Float64Array } {
  const mean = new Float64Array(d);
  const scale = new Float64Array(d);
  for (const r of rows) for (let i = 0; i < d; i++) mean[i] = mean[i]! + r[i]!;
  for (let i = 0; i < d; i++) mean[i] = mean[i]! / rows.length;
  for (const r of rows) {
    for (let i = 0; i < d; i++) scale[i] = scale[i]! + (r[i]! - mean[i]!) ** 2;
  }
  for (let i = 0; i < d; i++) scale[i] = 1 / Math.sqrt(Math.max(scale[i]! / rows.length, 1e-8));
  return { mean, scale };
}

/** The plain `x @ W + b` equal to `((x - mean) * scale) @ weight + bias`, rounded to float32. */
export function exportLinear(
  weight: Float64Array,
  bias: Float64Array,
  mean: Float64Array,
  scale: Float64Array,
): { weight: Float32Array; bias: Float32Array } {
  const d = mean.length;
  const L = bias.length;
  const w = new Float32Array(d * L);
  const b = new Float64Array(bias);
  for (let i = 0; i < d; i++) {
    for (let c = 0; c < L; c++) {
      const folded = weight[i * L + c]! * scale[i]!;
      w[i * L + c] = folded;
      b[c] = b[c]! - mean[i]! * folded;
    }
  }
  return { weight: w, bias: Float32Array.from(b) };
}

/**
 * Softmax regression (a linear gate): mean cross-entropy of softmax(z W + b) over the rows of `z`
 * [n,d] plus (l2/2)|W|^2. Writes dLoss/dW and dLoss/db into gW and gb; returns the loss.
 */
export function softmaxRegressionLoss(
  z: Float64Array,
  n: number,
  labels: readonly number[],
  W: Float64Array,
  b: Float64Array,
  l2: number,
  gW: Float64Array,
  gb: Float64Array,
): number {
  const C = b.length;
  const d = W.length / C;
  const WT = new Float64Array(C * d);
  transpose(W, d, C, WT);
  const logits = new Float64Array(n * C);
  matmulABt(z, n, d, WT, C, logits);
  const row = new Float64Array(C);
  let loss = 0;
  gb.fill(0);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < C; c++) row[c] = logits[r * C + c]! + b[c]!;
    softmaxInPlace(row);
    const y = labels[r]!;
    loss -= Math.log(Math.max(row[y]!, 1e-300));
    row[y] = row[y]! - 1;
    for (let c = 0; c < C; c++) {
      logits[r * C + c] = row[c]! / n;
      gb[c] = gb[c]! + row[c]! / n;
    }
  }
  gW.fill(0);
  addAtB(z, n, d, logits, C, gW);
  let reg = 0;
  for (let i = 0; i < W.length; i++) {
    reg += W[i]! * W[i]!;
    gW[i] = gW[i]! + l2 * W[i]!;
  }
  return loss / n + 0.5 * l2 * reg;
}

export interface GateTrainOptions {
  readonly steps: number;
  readonly lr: number;
  readonly l2: number;
}

/**
 * Trains a linear softmax gate on pooled states `x` [n,d] (standardised inside), full batch with
 * Adam. Returns the exported float32 `x @ W + b` form and the final training loss.
 */
export function trainLinearGate(
  x: readonly Float64Array[],
  labels: readonly number[],
  classes: number,
  options: GateTrainOptions,
): { weight: Float32Array; bias: Float32Array; loss: number } {
  const d = x[0]!.length;
  const { mean, scale } = standardiser(x, d);
  const n = x.length;
  const z = new Float64Array(n * d);
  x.forEach((r, row) => {
    for (let i = 0; i < d; i++) z[row * d + i] = (r[i]! - mean[i]!) * scale[i]!;
  });
  const W = new Param([d, classes], false);
  const b = new Param([classes], false);
  const adam = new Adam([W, b], { lr: options.lr });
  let loss = 0;
  for (let step = 0; step < options.steps; step++) {
    loss = softmaxRegressionLoss(z, n, labels, W.value, b.value, options.l2, W.grad, b.grad);
    adam.step();
  }
  return { ...exportLinear(W.value, b.value, mean, scale), loss };
}

/** logits = x @ W + b for a float32 layer [d,L], computed in float64. */
export function linearLogits(
  x: ArrayLike<number>,
  weight: Float32Array,
  bias: Float32Array,
): Float64Array {
  const L = bias.length;
  const d = weight.length / L;
  const out = Float64Array.from(bias);
  for (let i = 0; i < d; i++) {
    const xi = x[i]!;
    const o = i * L;
    for (let c = 0; c < L; c++) out[c] = out[c]! + xi * weight[o + c]!;
  }
  return out;
}

/**
 * The mixture contract's routing: the k largest logits (ties: lower index first), and the softmax
 * over those k logits.
 */
export function topK(
  logits: ArrayLike<number>,
  k: number,
): { experts: number[]; weights: number[] } {
  const order = Array.from({ length: logits.length }, (_, i) => i).sort(
    (a, b) => logits[b]! - logits[a]! || a - b,
  );
  const experts = order.slice(0, k);
  const sel = Float64Array.from(experts.map((e) => logits[e]!));
  softmaxInPlace(sel);
  return { experts, weights: Array.from(sel) };
}

/** Masked mean over the first `length` rows of `hidden` [length,d]. */
export function meanPool(hidden: ArrayLike<number>, length: number, d: number): Float64Array {
  const out = new Float64Array(d);
  for (let t = 0; t < length; t++) {
    const o = t * d;
    for (let i = 0; i < d; i++) out[i] = out[i]! + hidden[o + i]!;
  }
  for (let i = 0; i < d; i++) out[i] = out[i]! / length;
  return out;
}

export interface MixtureTrainOptions {
  readonly epochs: number;
  readonly batchSize: number;
  readonly lr: number;
  readonly weightDecay: number;
  readonly seed: number;
  readonly taskWeights?: readonly number[];
  /** Learning-rate multipliers of the language and the task adapters (heads: 1); default 1. */
  readonly languageLrScale?: number;
  readonly taskLrScale?: number;
  /** Called after every epoch with the mean training loss. */
  readonly onEpoch?: (epoch: number, loss: number) => void;
}

/**
 * Mini-batch AdamW over the examples, in an order reshuffled every epoch by a seeded generator,
 * with a linear decay of the learning rate to 10% over the run.
 */
export function trainMixture(
  model: MixtureModel,
  examples: readonly Example[],
  options: MixtureTrainOptions,
): number {
  const params = modelParams(model);
  for (const a of model.language)
    for (const p of a.params()) p.lrScale = options.languageLrScale ?? 1;
  for (const t of model.tasks)
    for (const p of t.adapter.params()) p.lrScale = options.taskLrScale ?? 1;
  const adam = new Adam(params, { lr: options.lr, weightDecay: options.weightDecay });
  const maxLength = Math.max(...examples.map((e) => e.length));
  const maxK = Math.max(...examples.map((e) => e.experts.length));
  const scratch = new Scratch(model, maxLength, maxK);
  const rng = new Random(options.seed);
  const order = examples.map((_, i) => i);
  const totalSteps = options.epochs * Math.ceil(examples.length / options.batchSize);
  let step = 0;
  let last = 0;
  for (let epoch = 0; epoch < options.epochs; epoch++) {
    rng.shuffle(order);
    let sum = 0;
    for (let start = 0; start < order.length; start += options.batchSize) {
      const batch = order.slice(start, start + options.batchSize);
      adam.zeroGrad();
      for (const i of batch) {
        sum += forwardBackward(model, examples[i]!, scratch, 1 / batch.length, options.taskWeights);
      }
      const lr = options.lr * (1 - (0.9 * step) / Math.max(1, totalSteps - 1));
      adam.step(lr);
      refreshModel(model);
      step++;
    }
    last = sum / examples.length;
    options.onEpoch?.(epoch, last);
  }
  return last;
}

/** Rounds every parameter to float32 (what the pack stores), then refreshes the caches. */
export function roundToFloat32(model: MixtureModel): void {
  for (const p of modelParams(model)) {
    for (let i = 0; i < p.value.length; i++) p.value[i] = Math.fround(p.value[i]!);
  }
  refreshModel(model);
}
