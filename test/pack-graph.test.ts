/**
 * The pack graph's top-of-backbone part against the plain-JS reference (test/support/
 * pack-reference.ts): real ORT sessions over graphs the compiler builds, slot banks filled by the
 * real slot writer, routing feeds made by the real `groupFeeds` from plans in adapter ids.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { type SlotAdapter, type SlotGroup, slotWrites } from '../src/adapters/slot-writer.js';
import { type GroupPlan, groupFeeds } from '../src/engine/routing.js';
import { compilePackGraph, type GraphGroup, packGraphBytes } from '../src/onnx/pack-graph.js';
import {
  type BankSpec,
  GRAPH_INPUT_HIDDEN,
  GRAPH_INPUT_MASK,
  GRAPH_OUTPUT_EMBEDDING,
  groupBiasName,
  groupEntropyName,
  groupExpertsName,
  groupGateScaleName,
  groupKmaxName,
  groupKName,
  groupKUsedName,
  groupMarginName,
  groupTopPName,
  groupWeightsName,
  headScoresName,
  rowSize,
} from '../src/onnx/pack-graph-contract.js';
import type {
  Activation,
  BottleneckAdapter,
  Gate,
  GroupStructure,
  Head,
  Weight,
} from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { packReference, type ReferencePlan } from './support/pack-reference.js';

const D = 16;
const TOL = 1e-4;

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

function head(rng: Random, id: string, labels: number): Head {
  return {
    id,
    labels: Array.from({ length: labels }, (_, i) => `${id}-${i}`),
    weight: weight(rng, [D, labels], 1),
    bias: weight(rng, [labels], 0.3),
  };
}

/** A group of the test pack: its graph spec, its adapters, and where each sits. */
interface TestGroup {
  readonly graph: GraphGroup;
  readonly slot: SlotGroup;
  readonly adapters: Map<string, BottleneckAdapter>;
  /** slot -> adapter id */
  readonly slots: (string | undefined)[];
}

function testGroup(
  index: number,
  id: string,
  slots: number,
  rank: number,
  activation: Activation,
  gate: Gate | null,
  adapters: BottleneckAdapter[],
  placement: number[],
): TestGroup {
  const structure: GroupStructure = { kind: 'top', rank, activation };
  const slotTable: (string | undefined)[] = new Array(slots).fill(undefined);
  adapters.forEach((a, n) => {
    slotTable[placement[n]!] = a.id;
  });
  return {
    graph: { id, slots, structure, gate },
    slot: {
      index,
      id,
      slots,
      structure,
      gated: gate !== null,
      gateExperts: gate?.experts.length ?? 0,
      dims: { hiddenSize: D, intermediateSize: 0 },
    },
    adapters: new Map(adapters.map((a) => [a.id, a])),
    slots: slotTable,
  };
}

/**
 * language: 4 relu adapters of ranks 4/8/2/4 ("l2" without residual, "l3" unknown to the gate) in
 * 7 slots out of order, a linear gate whose columns differ from any order and that scores a
 * "ghost" adapter that is not loaded. task: 3 gelu adapters in 4 slots, an MLP gate or none.
 */
function makePack(seed: number, taskGated: boolean) {
  const rng = new Random(seed);
  const language = testGroup(
    0,
    'language',
    7,
    8,
    'relu',
    {
      type: 'linear',
      experts: ['l2', 'ghost', 'l0', 'l1'],
      weight: weight(rng, [D, 4], 1),
      bias: weight(rng, [4], 0.5),
    },
    [
      adapter(rng, 'language', 'l0', 4, 'relu'),
      adapter(rng, 'language', 'l1', 8, 'relu'),
      adapter(rng, 'language', 'l2', 2, 'relu', false),
      adapter(rng, 'language', 'l3', 4, 'relu'),
    ],
    [5, 0, 3, 6],
  );
  const taskGate: Gate | null = taskGated
    ? {
        type: 'mlp',
        experts: ['t1', 't2', 't0'],
        activation: 'tanh',
        hiddenWeight: weight(rng, [D, 6], 1),
        hiddenBias: weight(rng, [6], 0.5),
        outWeight: weight(rng, [6, 3], 1),
        outBias: weight(rng, [3], 0.5),
      }
    : null;
  const task = testGroup(
    1,
    'task',
    4,
    8,
    'gelu',
    taskGate,
    [
      adapter(rng, 'task', 't0', 2, 'gelu'),
      adapter(rng, 'task', 't1', 8, 'gelu'),
      adapter(rng, 'task', 't2', 4, 'gelu', false),
    ],
    [2, 1, 3],
  );
  return { groups: [language, task], heads: [head(rng, 'sentiment', 3), head(rng, 'topic', 5)] };
}

type Pack = ReturnType<typeof makePack>;

/** The banks of a compiled graph, with every group's adapters written into their slots. */
function fillBanks(
  banks: readonly BankSpec[],
  groups: readonly TestGroup[],
): Map<string, Float32Array | BigInt64Array> {
  const arrays = new Map<string, Float32Array | BigInt64Array>();
  for (const bank of banks) {
    const size = bank.rows * rowSize(bank);
    arrays.set(
      bank.name,
      bank.dtype === 'int64' ? new BigInt64Array(size) : new Float32Array(size),
    );
  }
  for (const group of groups) {
    const gate = group.graph.gate;
    group.slots.forEach((id, slot) => {
      const a = id === undefined ? undefined : group.adapters.get(id);
      const column = a === undefined || gate === null ? undefined : gate.experts.indexOf(a.id);
      write(
        arrays,
        banks,
        slotWrites(
          group.slot,
          slot,
          a as SlotAdapter | undefined,
          column === undefined || column < 0 ? undefined : column,
        ),
      );
    });
  }
  return arrays;
}

function write(
  arrays: Map<string, Float32Array | BigInt64Array>,
  banks: readonly BankSpec[],
  writes: ReturnType<typeof slotWrites>,
): void {
  for (const w of writes) {
    const bank = banks.find((b) => b.name === w.bank)!;
    (arrays.get(w.bank) as Float32Array).set(w.data as Float32Array, w.row * rowSize(bank));
  }
}

interface Case {
  readonly lengths: number[];
  /** Per item, per group. */
  readonly plans: ReferencePlan[][];
}

/** The plan `planItem` would make: k capped at the adapters the gate may still choose. */
function toGroupPlan(plan: ReferencePlan, group: TestGroup): GroupPlan {
  if (plan.mode === 'fixed') return { mode: 'fixed', weights: Object.entries(plan.weights) };
  const usable = [...group.adapters.keys()].filter(
    (id) => group.graph.gate?.experts.includes(id) && !plan.exclude.includes(id),
  );
  return {
    mode: 'gate',
    k: Math.min(plan.k, usable.length),
    topP: plan.topP,
    excluded: new Set(plan.exclude),
  };
}

async function check(
  pack: Pack,
  c: Case,
  arrays?: Map<string, Float32Array | BigInt64Array>,
): Promise<void> {
  const compiled = compilePackGraph({
    backbone: { kind: 'external', hiddenSize: D },
    pooling: { mode: 'mean', normalize: true },
    groups: pack.groups.map((g) => g.graph),
    heads: pack.heads,
  });
  const banks = compiled.banks.flat();
  const bankData = arrays ?? fillBanks(banks, pack.groups);
  const rng = new Random(11);
  const B = c.lengths.length;
  const T = Math.max(...c.lengths);
  const hidden = rng.normals(B * T * D, 1);
  const mask = new BigInt64Array(B * T);
  c.lengths.forEach((len, b) => {
    for (let t = 0; t < len; t++) mask[b * T + t] = 1n;
  });
  const feeds: Record<string, ort.Tensor> = {
    [GRAPH_INPUT_HIDDEN]: new ort.Tensor('float32', hidden, [B, T, D]),
    [GRAPH_INPUT_MASK]: new ort.Tensor('int64', mask, [B, T]),
  };
  pack.groups.forEach((group, g) => {
    const gate = group.graph.gate;
    const f = groupFeeds(
      c.plans.map((item) => toGroupPlan(item[g]!, group)),
      group.graph.slots,
      (id) => group.slots.indexOf(id),
      group.slots.flatMap((id, slot) =>
        id !== undefined && gate?.experts.includes(id) ? [{ slot, id }] : [],
      ),
    );
    feeds[groupBiasName(g)] = new ort.Tensor('float32', f.bias, [B, group.graph.slots]);
    feeds[groupGateScaleName(g)] = new ort.Tensor('float32', f.gateScale, [B]);
    feeds[groupKName(g)] = new ort.Tensor('int64', f.k, [B]);
    feeds[groupKmaxName(g)] = new ort.Tensor('int64', BigInt64Array.of(BigInt(f.kmax)), [1]);
    feeds[groupTopPName(g)] = new ort.Tensor('float32', f.topP, [B]);
  });
  for (const bank of banks)
    feeds[bank.name] = new ort.Tensor(bank.dtype, bankData.get(bank.name)!, [
      bank.rows,
      ...bank.rowShape,
    ]);
  const session = await ort.InferenceSession.create(packGraphBytes(compiled));
  const out = await session.run(feeds);
  await session.release();

  for (let b = 0; b < B; b++) {
    const rows: number[][] = [];
    for (let t = 0; t < c.lengths[b]!; t++)
      rows.push(Array.from(hidden.subarray((b * T + t) * D, (b * T + t + 1) * D)));
    const ref = packReference(
      pack.groups.map((g) => ({
        id: g.graph.id,
        adapters: new Map([...g.adapters].filter(([id]) => g.slots.includes(id))),
        gate: g.graph.gate,
      })),
      pack.heads,
      { hidden: rows, plans: c.plans[b]! },
      D,
    );
    pack.groups.forEach((group, g) => {
      const where = `item ${b} group ${group.graph.id}`;
      const experts = out[groupExpertsName(g)]!.data as BigInt64Array;
      const weights = out[groupWeightsName(g)]!.data as Float32Array;
      const kmax = experts.length / B;
      const used = Number((out[groupKUsedName(g)]!.data as BigInt64Array)[b]);
      const expected = ref.groups[g]!;
      assert.equal(used, expected.chosen.length, `${where}: adapters mixed`);
      // As a mixture (id -> weight): ties may come in either order.
      const mixture = new Map<string, number>();
      for (let n = 0; n < used; n++) {
        mixture.set(group.slots[Number(experts[b * kmax + n])]!, weights[b * kmax + n]!);
        if (n > 0) {
          assert.ok(
            weights[b * kmax + n]! <= weights[b * kmax + n - 1]! + 1e-6,
            `${where}: best first`,
          );
        }
      }
      for (const { id, weight } of expected.chosen) {
        const got = mixture.get(id);
        assert.ok(
          got !== undefined && Math.abs(got - weight) <= TOL,
          `${where}: ${id} weight ${got} vs ${weight}`,
        );
      }
      for (let n = used; n < kmax; n++)
        assert.equal(weights[b * kmax + n], 0, `${where}: weight beyond k`);
      if (group.graph.gate !== null) {
        assert.ok(
          Math.abs((out[groupEntropyName(g)]!.data as Float32Array)[b]! - expected.entropy!) <= TOL,
          `${where}: entropy`,
        );
        assert.ok(
          Math.abs((out[groupMarginName(g)]!.data as Float32Array)[b]! - expected.margin!) <= TOL,
          `${where}: margin`,
        );
      }
    });
    const embedding = (out[GRAPH_OUTPUT_EMBEDDING]!.data as Float32Array).subarray(
      b * D,
      (b + 1) * D,
    );
    const err = Math.max(...ref.embedding.map((v, j) => Math.abs(v - embedding[j]!)));
    assert.ok(err <= TOL, `item ${b}: embedding error ${err}`);
    pack.heads.forEach((h, j) => {
      const L = h.labels.length;
      const scores = (out[headScoresName(j)]!.data as Float32Array).subarray(b * L, (b + 1) * L);
      const headErr = Math.max(...ref.scores[j]!.map((v, l) => Math.abs(v - scores[l]!)));
      assert.ok(headErr <= TOL, `item ${b}: head ${h.id} error ${headErr}`);
    });
  }
}

const gate = (k: number, exclude: string[] = [], topP = 1): ReferencePlan => ({
  mode: 'gate',
  k,
  topP,
  exclude,
});
const fixed = (weights: Record<string, number>): ReferencePlan => ({ mode: 'fixed', weights });

describe('pack graph, top-of-backbone groups in slots', () => {
  test('matches the reference: gate routing with k, excludes, pins and explicit weights per item, padding', async () => {
    await check(makePack(1, true), {
      lengths: [7, 3, 5, 1, 6, 7, 2],
      plans: [
        [gate(1), gate(1)],
        [fixed({ l3: 1 }), gate(2)],
        [gate(2, ['l0']), fixed({ t1: 1 })],
        [gate(3), gate(3, ['t0'])],
        [fixed({ l1: 0.3, l3: 0.7 }), fixed({ t0: 0.5, t2: 0.5 })],
        [gate(3, ['l1', 'l2']), gate(2)],
        [fixed({ l0: 0.25, l1: 0.25, l2: 0.25, l3: 0.25 }), gate(1)],
      ],
    });
  });

  test('top-p takes the fewest adapters whose gate probabilities reach p, at most k', async () => {
    const c: Case = {
      lengths: [5, 4, 6, 3, 5],
      plans: [
        [gate(3, [], 0.01), gate(3, [], 0.01)],
        [gate(3, [], 0.5), gate(3, [], 0.5)],
        [gate(3, [], 0.97), gate(3, [], 0.9)],
        [gate(2, [], 0.999), gate(1, [], 0.3)],
        [gate(3), fixed({ t2: 1 })],
      ],
    };
    await check(makePack(2, true), c);
  });

  test('an ungated group is routed by the request alone', async () => {
    await check(makePack(3, false), {
      lengths: [4, 2, 4],
      plans: [
        [gate(2), fixed({ t0: 1 })],
        [fixed({ l2: 1 }), fixed({ t1: 0.6, t2: 0.4 })],
        [gate(1, ['l2']), fixed({ t2: 1 })],
      ],
    });
  });

  test('a slot reused for another adapter serves only the new weights', async () => {
    const pack = makePack(4, true);
    const language = pack.groups[0]!;
    const compiled = compilePackGraph({
      backbone: { kind: 'external', hiddenSize: D },
      pooling: { mode: 'mean', normalize: true },
      groups: pack.groups.map((g) => g.graph),
      heads: pack.heads,
    });
    const banks = compiled.banks.flat();
    const arrays = fillBanks(banks, pack.groups);
    // l1 sat in slot 0 (rank 8); m0 (rank 2, no residual) takes it over after an unload.
    const m0 = adapter(new Random(40), 'language', 'm0', 2, 'relu', false);
    write(arrays, banks, slotWrites(language.slot, 0, undefined, undefined));
    write(arrays, banks, slotWrites(language.slot, 0, m0, undefined));
    language.adapters.delete('l1');
    language.adapters.set('m0', m0);
    language.slots[0] = 'm0';
    await check(
      pack,
      {
        lengths: [5, 3],
        plans: [
          [fixed({ m0: 1 }), gate(1)],
          [fixed({ m0: 0.5, l0: 0.5 }), gate(2)],
        ],
      },
      arrays,
    );
  });

  test('in-layer groups need a backbone built from weights', () => {
    const structure: GroupStructure = { kind: 'lora', rank: 4, modules: ['query'], layers: [0] };
    assert.throws(
      () =>
        compilePackGraph({
          backbone: { kind: 'external', hiddenSize: D },
          pooling: { mode: 'mean', normalize: true },
          groups: [{ id: 'task', slots: 2, structure, gate: null }],
          heads: [],
        }),
      /inside the backbone's layers/,
    );
  });
});
