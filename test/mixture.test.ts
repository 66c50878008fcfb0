import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { compileMixture } from '../src/onnx/mixture.js';
import {
  groupBiasName,
  groupExpertsName,
  groupKmaxName,
  groupKName,
  groupWeightsName,
  headScoresName,
  MIXTURE_INPUT_HIDDEN,
  MIXTURE_INPUT_MASK,
  MIXTURE_OUTPUT_EMBEDDING,
  ROUTE_BLOCKED,
  ROUTE_PINNED,
} from '../src/onnx/mixture-contract.js';
import type {
  Activation,
  BottleneckAdapter,
  Gate,
  Head,
  MixtureGroup,
  MixtureSpec,
  Weight,
} from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { type MixtureInputs, mixtureReference } from './support/mixture-reference.js';

const D = 16;

const weight = (rng: Random, shape: number[], std: number): Weight => ({
  shape,
  data: rng.normals(
    shape.reduce((a, b) => a * b, 1),
    std,
  ),
});

function adapter(
  rng: Random,
  group: string,
  id: string,
  rank: number,
  activation: Activation,
  residual = true,
): BottleneckAdapter {
  return {
    id,
    group,
    type: 'bottleneck',
    hiddenSize: D,
    rank,
    activation,
    residual,
    down: weight(rng, [D, rank], 0.4),
    downBias: weight(rng, [rank], 0.2),
    up: weight(rng, [rank, D], 0.4),
    upBias: weight(rng, [D], 0.2),
  };
}

function linearGate(rng: Random, experts: string[]): Gate {
  return {
    type: 'linear',
    experts,
    weight: weight(rng, [D, experts.length], 1),
    bias: weight(rng, [experts.length], 0.5),
  };
}

function mlpGate(rng: Random, experts: string[], hidden: number): Gate {
  return {
    type: 'mlp',
    experts,
    activation: 'tanh',
    hiddenWeight: weight(rng, [D, hidden], 1),
    hiddenBias: weight(rng, [hidden], 0.5),
    outWeight: weight(rng, [hidden, experts.length], 1),
    outBias: weight(rng, [experts.length], 0.5),
  };
}

function head(rng: Random, id: string, labels: number): Head {
  return {
    id,
    labels: Array.from({ length: labels }, (_, i) => `${id}-${i}`),
    weight: weight(rng, [D, labels], 1),
    bias: weight(rng, [labels], 0.3),
  };
}

/**
 * Group 0: 4 adapters, ranks 4/8/2/4, relu, "l2" without residual; linear gate whose column order
 * differs from the bank, which does not know "l3" and scores an adapter "ghost" not in the bank.
 */
function languageGroup(rng: Random): MixtureGroup {
  const adapters = [
    adapter(rng, 'language', 'l0', 4, 'relu'),
    adapter(rng, 'language', 'l1', 8, 'relu'),
    adapter(rng, 'language', 'l2', 2, 'relu', false),
    adapter(rng, 'language', 'l3', 4, 'relu'),
  ];
  return { id: 'language', adapters, gate: linearGate(rng, ['l2', 'ghost', 'l0', 'l1']) };
}

/** Group 1: 3 gelu adapters (ranks 2/8/4), gated by an MLP (order differs) or ungated. */
function taskGroup(rng: Random, gated: boolean): MixtureGroup {
  const adapters = [
    adapter(rng, 'task', 't0', 2, 'gelu'),
    adapter(rng, 'task', 't1', 8, 'gelu'),
    adapter(rng, 'task', 't2', 4, 'gelu', false),
  ];
  return { id: 'task', adapters, gate: gated ? mlpGate(rng, ['t1', 't2', 't0'], 6) : null };
}

function makeSpec(seed: number, taskGated: boolean): MixtureSpec {
  const rng = new Random(seed);
  return {
    hiddenSize: D,
    groups: [languageGroup(rng), taskGroup(rng, taskGated)],
    heads: [head(rng, 'sentiment', 3), head(rng, 'topic', 5)],
  };
}

interface Routing {
  k: number[];
  pins: (number | null)[]; // bank index pinned for the item (k must be 1)
  excludes: number[][]; // bank indices blocked for the item
}

/** Random hidden states and padding (real lengths 1..T, one full), plus the routing per group. */
function makeInputs(
  seed: number,
  spec: MixtureSpec,
  routing: Routing[],
  seq: number,
): MixtureInputs {
  const rng = new Random(seed);
  const batch = routing[0]!.k.length;
  const mask: number[] = [];
  for (let b = 0; b < batch; b++) {
    const len = b === 0 ? seq : 1 + rng.int(seq);
    for (let t = 0; t < seq; t++) mask.push(t < len ? 1 : 0);
  }
  const groups = spec.groups.map((group, i) => {
    const r = routing[i]!;
    const E = group.adapters.length;
    const bias = new Float32Array(batch * E);
    for (let b = 0; b < batch; b++) {
      for (const e of r.excludes[b] ?? []) bias[b * E + e] = ROUTE_BLOCKED;
      const pin = r.pins[b];
      if (pin !== null && pin !== undefined) bias[b * E + pin] = ROUTE_PINNED;
    }
    return { bias, k: r.k, kmax: Math.max(...r.k) };
  });
  return { batch, seq, hidden: rng.normals(batch * seq * D, 1), mask, groups };
}

function feeds(inputs: MixtureInputs): Record<string, ort.Tensor> {
  const { batch, seq } = inputs;
  const f: Record<string, ort.Tensor> = {
    [MIXTURE_INPUT_HIDDEN]: new ort.Tensor('float32', inputs.hidden, [batch, seq, D]),
    [MIXTURE_INPUT_MASK]: new ort.Tensor('int64', BigInt64Array.from(inputs.mask, BigInt), [
      batch,
      seq,
    ]),
  };
  inputs.groups.forEach((g, i) => {
    f[groupBiasName(i)] = new ort.Tensor('float32', g.bias, [batch, g.bias.length / batch]);
    f[groupKName(i)] = new ort.Tensor('int64', BigInt64Array.from(g.k, BigInt), [batch]);
    f[groupKmaxName(i)] = new ort.Tensor('int64', BigInt64Array.of(BigInt(g.kmax)), [1]);
  });
  return f;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Runs the compiled graph and checks every output against the reference and the routing rules. */
async function check(
  spec: MixtureSpec,
  inputs: MixtureInputs,
  routing: Routing[],
  options: { foldLastPool?: boolean } = {},
): Promise<void> {
  const session = await ort.InferenceSession.create(compileMixture(spec, options));
  const out = await session.run(feeds(inputs));
  const ref = mixtureReference(spec, inputs);
  const { batch } = inputs;
  const tol = 1e-4;

  spec.groups.forEach((group, i) => {
    const { k, kmax } = inputs.groups[i]!;
    const experts = out[groupExpertsName(i)]!;
    const weights = out[groupWeightsName(i)]!;
    assert.deepEqual(experts.dims, [batch, kmax]);
    assert.deepEqual(weights.dims, [batch, kmax]);
    const ids = Array.from(experts.data as BigInt64Array, Number);
    const w = weights.data as Float32Array;
    for (let b = 0; b < batch; b++) {
      const row = ids.slice(b * kmax, (b + 1) * kmax);
      const wRow = Array.from(w.subarray(b * kmax, (b + 1) * kmax));
      const kb = k[b]!;
      const where = `group ${group.id} item ${b}`;
      assert.deepEqual(
        row.slice(0, kb),
        ref.groups[i]!.experts[b]!.slice(0, kb),
        `${where}: experts`,
      );
      assert.ok(maxAbsDiff(wRow, ref.groups[i]!.weights[b]!) <= tol, `${where}: weights ${wRow}`);
      assert.ok(Math.abs(wRow.reduce((a, v) => a + v, 0) - 1) <= 1e-5, `${where}: weights sum`);
      for (let n = kb; n < kmax; n++) assert.equal(wRow[n], 0, `${where}: weight beyond k`);
      const pin = routing[i]!.pins[b];
      if (pin !== null && pin !== undefined) {
        assert.equal(row[0], pin, `${where}: pinned adapter first`);
        assert.equal(wRow[0], 1, `${where}: pinned weight`);
      }
      for (const e of routing[i]!.excludes[b] ?? []) {
        assert.ok(!row.slice(0, kb).includes(e), `${where}: excluded ${e} selected`);
      }
    }
  });

  const embedding = out[MIXTURE_OUTPUT_EMBEDDING]!;
  assert.deepEqual(embedding.dims, [batch, D]);
  const embErr = maxAbsDiff(embedding.data as Float32Array, ref.embedding.flat());
  assert.ok(embErr <= tol, `embedding error ${embErr}`);
  for (let b = 0; b < batch; b++) {
    const row = (embedding.data as Float32Array).subarray(b * D, (b + 1) * D);
    const empty = inputs.mask.slice(b * inputs.seq, (b + 1) * inputs.seq).every((m) => m === 0);
    const norm = Math.hypot(...row);
    if (empty) assert.equal(norm, 0, 'an item without tokens pools to zero');
    else if (spec.pooling?.normalize ?? true) {
      assert.ok(Math.abs(norm - 1) <= 1e-5, 'embedding is unit length');
    }
  }
  spec.heads.forEach((h, j) => {
    const scores = out[headScoresName(j)]!;
    assert.deepEqual(scores.dims, [batch, h.labels.length]);
    const err = maxAbsDiff(scores.data as Float32Array, ref.scores[j]!.flat());
    assert.ok(err <= tol, `head ${h.id} scores error ${err}`);
  });
  await session.release();
}

// Group 0 (E=4): k 1..4, a pin (k=1) and excludes; group 1 (E=3): k 1..3, a pin, an exclude.
const routing: Routing[] = [
  {
    k: [1, 1, 2, 4, 3, 2],
    pins: [null, 2, null, null, null, null],
    excludes: [[], [], [0, 3], [], [1], []],
  },
  {
    k: [1, 2, 2, 3, 1, 3],
    pins: [1, null, null, null, null, null],
    excludes: [[], [], [0], [], [], []],
  },
];

describe('compileMixture', () => {
  test('matches the reference: linear gate + MLP gate, mixed ranks, pins, excludes, padding', async () => {
    const spec = makeSpec(1, true);
    await check(spec, makeInputs(2, spec, routing, 7), routing);
  });

  test('matches the reference without folding the last pooling', async () => {
    const spec = makeSpec(1, true);
    await check(spec, makeInputs(2, spec, routing, 7), routing, { foldLastPool: false });
  });

  test('matches the reference with an ungated group and kmax < E', async () => {
    const spec = makeSpec(3, false);
    const r: Routing[] = [
      { k: [2, 1, 2, 1], pins: [null, 3, null, null], excludes: [[1], [], [], [0, 2]] },
      // Ungated: the bias alone routes; pin or exclude so that the first k are well defined.
      { k: [1, 1, 2, 1], pins: [2, 0, null, 1], excludes: [[], [], [1], []] },
    ];
    await check(spec, makeInputs(4, spec, r, 5), r);
  });

  test('matches the reference with one group and no heads, for several seeds', async () => {
    for (const seed of [5, 6, 7]) {
      const rng = new Random(seed);
      const spec: MixtureSpec = { hiddenSize: D, groups: [languageGroup(rng)], heads: [] };
      const r = [routing[0]!];
      await check(spec, makeInputs(seed, spec, r, 9), r);
    }
  });

  test('pools the way the pack says (cls, max; normalised or not) for gates, heads and the embedding', async () => {
    for (const pooling of [
      { mode: 'cls', normalize: false },
      { mode: 'max', normalize: true },
      { mode: 'max', normalize: false },
    ] as const) {
      const spec = { ...makeSpec(1, true), pooling };
      const inputs = makeInputs(2, spec, routing, 7);
      await check(spec, inputs, routing);
      await check(spec, inputs, routing, { foldLastPool: false });
      // The mode changes the answer: the same inputs pooled by mean give other embeddings.
      const mean = mixtureReference(
        { ...spec, pooling: { mode: 'mean', normalize: pooling.normalize } },
        inputs,
      );
      const other = mixtureReference(spec, inputs);
      assert.ok(maxAbsDiff(mean.embedding.flat(), other.embedding.flat()) > 1e-3, pooling.mode);
    }
  });

  test('an item without real tokens pools to zero and stays finite', async () => {
    const spec = makeSpec(8, true);
    const inputs = makeInputs(9, spec, routing, 4);
    const mask = [...inputs.mask];
    for (let t = 0; t < 4; t++) mask[4 + t] = 0; // item 1: all padding
    await check(spec, { ...inputs, mask }, routing);
  });

  test('declares the contract inputs and outputs', async () => {
    const spec = makeSpec(1, true);
    const session = await ort.InferenceSession.create(compileMixture(spec));
    assert.deepEqual(session.inputNames, [
      'hidden',
      'attention_mask',
      'g0_bias',
      'g0_k',
      'g0_kmax',
      'g1_bias',
      'g1_k',
      'g1_kmax',
    ]);
    assert.deepEqual(session.outputNames, [
      'g0_experts',
      'g0_weights',
      'g1_experts',
      'g1_weights',
      'embedding',
      'h0_scores',
      'h1_scores',
    ]);
    await session.release();
  });

  test('rejects a group whose adapters use different activations, naming them', () => {
    const rng = new Random(1);
    const group: MixtureGroup = {
      id: 'language',
      adapters: [
        adapter(rng, 'language', 'a', 2, 'relu'),
        adapter(rng, 'language', 'b', 2, 'gelu'),
      ],
      gate: null,
    };
    assert.throws(
      () => compileMixture({ hiddenSize: D, groups: [group], heads: [] }),
      /group "language".*"a".*relu.*"b".*gelu/,
    );
  });

  test('rejects weights of the wrong shape, naming the adapter', () => {
    const rng = new Random(1);
    const bad = { ...adapter(rng, 'language', 'a', 2, 'relu'), rank: 3 };
    const group: MixtureGroup = { id: 'language', adapters: [bad], gate: null };
    assert.throws(
      () => compileMixture({ hiddenSize: D, groups: [group], heads: [] }),
      /adapter "a" of group "language": down/,
    );
  });
});
