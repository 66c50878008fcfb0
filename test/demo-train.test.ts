import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { addAtB, matmulABt } from '../src/demo/kernels.js';
import {
  AdapterParams,
  type Example,
  exportLinear,
  forwardBackward,
  linearLogits,
  type MixtureModel,
  modelParams,
  Param,
  refreshModel,
  Scratch,
  softmaxRegressionLoss,
  standardiser,
  type TaskParams,
  topK,
  trainLinearGate,
  trainMixture,
} from '../src/demo/train.js';
import { Random } from '../src/util/random.js';

function randomArray(rng: Random, n: number, std = 1): Float64Array {
  return Float64Array.from(rng.normals(n, std));
}

function tinyModel(rng: Random, d: number, rL: number, rT: number, labels: number[]): MixtureModel {
  const language = [0, 1, 2].map(() => AdapterParams.init(d, rL, rng, 0.3));
  const tasks: TaskParams[] = labels.map((L) => {
    const weight = new Param([d, L], true);
    weight.value.set(rng.normals(d * L, 0.3));
    const bias = new Param([L], false);
    bias.value.set(rng.normals(L, 0.3));
    const adapter = AdapterParams.init(d, rT, rng, 0.3);
    adapter.downBias.value.set(rng.normals(rT, 0.3));
    adapter.upBias.value.set(rng.normals(d, 0.3));
    return {
      adapter,
      weight,
      bias,
      labelCount: L,
      mean: randomArray(rng, d, 0.1),
      scale: Float64Array.from({ length: d }, () => 0.5 + rng.next()),
    };
  });
  for (const a of language) {
    a.downBias.value.set(rng.normals(rL, 0.3));
    a.upBias.value.set(rng.normals(d, 0.3));
  }
  refreshModel({ hiddenSize: d, language, tasks });
  return { hiddenSize: d, language, tasks };
}

describe('demo kernels', () => {
  test('matmulABt and addAtB match the naive products, odd sizes included', () => {
    const rng = new Random(1);
    for (const [m, k, n] of [
      [5, 7, 9],
      [4, 8, 8],
      [1, 3, 2],
      [6, 16, 5],
    ] as const) {
      const A = randomArray(rng, m * k);
      const B = randomArray(rng, n * k);
      const C = new Float64Array(m * n);
      matmulABt(A, m, k, B, n, C);
      for (let r = 0; r < m; r++) {
        for (let c = 0; c < n; c++) {
          let s = 0;
          for (let i = 0; i < k; i++) s += A[r * k + i]! * B[c * k + i]!;
          assert.ok(Math.abs(C[r * n + c]! - s) < 1e-12);
        }
      }
      const X = randomArray(rng, k * m);
      const Y = randomArray(rng, k * n);
      const G = randomArray(rng, m * n);
      const G0 = Float64Array.from(G);
      addAtB(X, k, m, Y, n, G);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let s = G0[i * n + j]!;
          for (let t = 0; t < k; t++) s += X[t * m + i]! * Y[t * n + j]!;
          assert.ok(Math.abs(G[i * n + j]! - s) < 1e-12);
        }
      }
    }
  });
});

describe('demo trainer gradients', () => {
  test('forwardBackward matches central differences on every parameter (k = 2 routing)', () => {
    const rng = new Random(42);
    const d = 6;
    const model = tinyModel(rng, d, 5, 3, [4, 3]);
    const examples: Example[] = [
      {
        hidden: randomArray(rng, 5 * d),
        length: 5,
        experts: [2, 0],
        weights: [0.7, 0.3],
        labels: [1, 2],
      },
      { hidden: randomArray(rng, 3 * d), length: 3, experts: [1], weights: [1], labels: [3, 0] },
    ];
    const taskWeights = [1, 0.5];
    const scratch = new Scratch(model, 5, 2);
    const loss = () => {
      let sum = 0;
      for (const ex of examples) sum += forwardBackward(model, ex, scratch, 0, taskWeights);
      return sum / examples.length;
    };
    const params = modelParams(model);
    for (const p of params) p.grad.fill(0);
    for (const ex of examples)
      forwardBackward(model, ex, scratch, 1 / examples.length, taskWeights);
    const eps = 1e-6;
    let checked = 0;
    let maxErr = 0;
    for (const p of params) {
      for (let i = 0; i < p.value.length; i++) {
        const keep = p.value[i]!;
        p.value[i] = keep + eps;
        refreshModel(model);
        const up = loss();
        p.value[i] = keep - eps;
        refreshModel(model);
        const down = loss();
        p.value[i] = keep;
        refreshModel(model);
        const numeric = (up - down) / (2 * eps);
        const err =
          Math.abs(numeric - p.grad[i]!) / Math.max(1e-6, Math.abs(numeric) + Math.abs(p.grad[i]!));
        maxErr = Math.max(maxErr, err);
        checked++;
      }
    }
    assert.ok(checked > 200);
    assert.ok(maxErr < 1e-5, `max relative gradient error ${maxErr}`);
  });

  test('softmax regression gradient matches central differences', () => {
    const rng = new Random(3);
    const d = 5;
    const C = 4;
    const n = 6;
    const z = randomArray(rng, n * d);
    const labels = [0, 1, 2, 3, 1, 0];
    const W = randomArray(rng, d * C, 0.5);
    const b = randomArray(rng, C, 0.5);
    const gW = new Float64Array(d * C);
    const gb = new Float64Array(C);
    const scratchW = new Float64Array(d * C);
    const scratchB = new Float64Array(C);
    softmaxRegressionLoss(z, n, labels, W, b, 0.1, gW, gb);
    const eps = 1e-6;
    for (const [arr, grad] of [
      [W, gW],
      [b, gb],
    ] as const) {
      for (let i = 0; i < arr.length; i++) {
        const keep = arr[i]!;
        arr[i] = keep + eps;
        const up = softmaxRegressionLoss(z, n, labels, W, b, 0.1, scratchW, scratchB);
        arr[i] = keep - eps;
        const down = softmaxRegressionLoss(z, n, labels, W, b, 0.1, scratchW, scratchB);
        arr[i] = keep;
        const numeric = (up - down) / (2 * eps);
        assert.ok(Math.abs(numeric - grad[i]!) < 1e-7, `${numeric} vs ${grad[i]}`);
      }
    }
  });
});

describe('demo trainer', () => {
  test('exportLinear folds the standardisation into a plain x @ W + b', () => {
    const rng = new Random(5);
    const d = 4;
    const L = 3;
    const rows = [0, 1, 2, 3, 4].map(() => randomArray(rng, d, 3));
    const { mean, scale } = standardiser(rows, d);
    const W = randomArray(rng, d * L);
    const b = randomArray(rng, L);
    const out = exportLinear(W, b, mean, scale);
    for (const x of rows) {
      const got = linearLogits(x, out.weight, out.bias);
      for (let c = 0; c < L; c++) {
        let want = b[c]!;
        for (let i = 0; i < d; i++) want += (x[i]! - mean[i]!) * scale[i]! * W[i * L + c]!;
        assert.ok(Math.abs(got[c]! - want) < 1e-4);
      }
    }
  });

  test('topK picks the largest logits and softmaxes over them only', () => {
    const r = topK([0.5, 2, -1, 2, 1], 2);
    assert.deepEqual(r.experts, [1, 3]);
    assert.deepEqual(r.weights, [0.5, 0.5]);
    const one = topK([0, 3, 1], 1);
    assert.deepEqual(one, { experts: [1], weights: [1] });
  });

  test('a linear gate learns separable classes', () => {
    const rng = new Random(9);
    const d = 8;
    const centres = [0, 1, 2].map(() => randomArray(rng, d, 2));
    const x: Float64Array[] = [];
    const y: number[] = [];
    for (let i = 0; i < 90; i++) {
      const c = i % 3;
      x.push(centres[c]!.map((v) => v + rng.normal() * 0.5));
      y.push(c);
    }
    const gate = trainLinearGate(x, y, 3, { steps: 200, lr: 0.05, l2: 1e-3 });
    let right = 0;
    x.forEach((row, i) => {
      if (topK(linearLogits(row, gate.weight, gate.bias), 1).experts[0] === y[i]) right++;
    });
    assert.ok(right / x.length > 0.95, `gate training accuracy ${right / x.length}`);
  });

  test('the mixture trainer lowers the loss and is deterministic', () => {
    const run = () => {
      const rng = new Random(11);
      const d = 8;
      const model = tinyModel(rng, d, 4, 4, [3, 2]);
      const examples: Example[] = [];
      for (let i = 0; i < 24; i++) {
        const length = 2 + (i % 4);
        const label = i % 3;
        const hidden = randomArray(rng, length * d, 0.5);
        for (let t = 0; t < length; t++) hidden[t * d + label] = hidden[t * d + label]! + 2;
        examples.push({ hidden, length, experts: [i % 3], weights: [1], labels: [label, i % 2] });
      }
      const losses: number[] = [];
      trainMixture(model, examples, {
        epochs: 15,
        batchSize: 4,
        lr: 0.01,
        weightDecay: 1e-4,
        seed: 1,
        onEpoch: (_, l) => losses.push(l),
      });
      return { losses, weights: modelParams(model).map((p) => Array.from(p.value)) };
    };
    const a = run();
    const b = run();
    assert.ok(a.losses.at(-1)! < a.losses[0]! * 0.8, `losses ${a.losses.join(', ')}`);
    assert.deepEqual(a.weights, b.weights);
  });
});
