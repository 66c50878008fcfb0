/**
 * The float64 adapter reference (test/support/adapter-reference.ts) on cases computed by hand,
 * and on imported folders against formulas written out here from the saved tensors: LoRA as PEFT
 * computes it, AdapterHub's pre_forward / forward / post_forward for every placement flag, the
 * per-item mixing and its relation to PEFT's "cat" merge and AdapterHub's Average, and the hooks.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { EncoderConfig } from '../src/pack/encoder-types.js';
import { parseHfConfig } from '../src/pack/hf-model.js';
import { importAdapterHubFolder } from '../src/pack/import/adapterhub.js';
import { importPeftFolder } from '../src/pack/import/peft.js';
import type {
  BottleneckBlockWeights,
  BottleneckLayerAdapter,
  BottleneckPlacement,
  LoraAdapter,
  LoraModuleWeights,
} from '../src/pack/layer-adapter-types.js';
import { Random } from '../src/util/random.js';
import {
  PEFT_LINEAR_PATHS,
  writeAdapterHubFolder,
  writePeftLoraFolder,
} from './support/adapter-fixtures.js';
import {
  adapterHubAverageBlock,
  type BlockInputs,
  bottleneckMixBlock,
  bottleneckStackBlock,
  bottleneckUp,
  layerAdapterHooks,
  layerNorm64,
  loraDelta,
  loraMix,
  peftCatMerge,
  plainBlock,
} from './support/adapter-reference.js';
import { hfEncoderReference } from './support/encoder-reference.js';
import { writeHfFolder } from './support/hf-folder.js';

const root = await mkdtemp(join(tmpdir(), 'adapter-reference-'));
after(() => rm(root, { recursive: true, force: true }));
let folders = 0;
const folder = () => join(root, `f${folders++}`);

function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance = 1e-9,
): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(
      Math.abs(actual[i]! - expected[i]!) <= tolerance * Math.max(1, Math.abs(expected[i]!)),
      `element ${i}: ${actual[i]} vs ${expected[i]}`,
    );
  }
}

const lora = (rank: number, scaling: number, a: number[], b: number[]): LoraModuleWeights => ({
  layer: 0,
  module: 'query',
  rank,
  scaling,
  a: Float32Array.from(a),
  b: Float32Array.from(b),
});

describe('LoRA', () => {
  test('identity-like A and B by hand: delta(x) = scaling * (x0, x1, 0)', () => {
    // A [2,3] picks x0 and x1; B [3,2] puts them back in rows 0 and 1; alpha 4 / r 2 = 2.
    const m = lora(2, 2, [1, 0, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0]);
    assertClose(loraDelta(m, [3, -2, 5], 3, 3), [6, -4, 0]);
    assertClose(loraMix([1, 1, 1], [3, -2, 5], 3, 3, [{ module: m, weight: 1 }]), [7, -3, 1]);
    // Two rows at once, and a second adapter (r 1: B A x = (x2, x2, x2), scaling 0.5).
    const n = lora(1, 0.5, [0, 0, 1], [1, 1, 1]);
    assertClose(
      loraMix([0, 0, 0, 0, 0, 0], [3, -2, 5, 1, 1, 2], 3, 3, [
        { module: m, weight: 0.25 },
        { module: n, weight: 0.75 },
        { weight: 0.5 }, // an adapter without this module adds nothing
      ]),
      // row 0: 0.25 * (6, -4, 0) + 0.75 * 0.5 * (5, 5, 5); row 1: 0.25 * (2, 2, 0) + 0.375 * (2, 2, 2)
      [1.5 + 1.875, -1 + 1.875, 1.875, 0.5 + 0.75, 0.5 + 0.75, 0.75],
    );
  });

  test("mixing k imported PEFT adapters equals PEFT's add_weighted_adapter with combination_type cat", async () => {
    const bert: EncoderConfig = {
      family: 'bert',
      vocabSize: 50,
      hiddenSize: 8,
      layers: 2,
      heads: 2,
      intermediateSize: 12,
      hiddenAct: 'gelu',
      layerNormEps: 1e-12,
      maxPositions: 16,
      padTokenId: 0,
      positions: 'absolute',
    };
    const shape = { family: 'bert' as const, hiddenSize: 8, intermediateSize: 12, layers: 2 };
    const adapters: LoraAdapter[] = [];
    for (const [seed, r, alpha, rslora] of [
      [1, 4, 8, false],
      [2, 2, 16, true],
      [3, 6, 3, false],
    ] as const) {
      const fixture = await writePeftLoraFolder(folder(), {
        backbone: shape,
        seed,
        r,
        loraAlpha: alpha,
        useRslora: rslora,
        targetModules: ['query', 'output.dense'],
      });
      adapters.push(
        await importPeftFolder(fixture.dir, { id: `a${seed}`, group: 'g', backbone: bert }),
      );
    }
    const weights = [0.2, 0.5, 0.3];
    const random = new Random(11);
    for (const module of ['query', 'output'] as const) {
      const [inSize, outSize] = module === 'output' ? [12, 8] : [8, 8];
      const x = Float64Array.from(random.normals(3 * inSize));
      const base = Float64Array.from(random.normals(3 * outSize));
      const members = adapters.map((adapter, k) => ({
        module: adapter.modules.find((m) => m.layer === 1 && m.module === module)!,
        weight: weights[k]!,
      }));
      const merged = peftCatMerge(members, inSize, outSize);
      assert.equal(merged.rank, 12);
      assert.equal(merged.scaling, 1);
      const viaMerge = loraMix(base, x, inSize, outSize, [{ module: merged, weight: 1 }]);
      assertClose(loraMix(base, x, inSize, outSize, members), viaMerge, 1e-6);
      // And the mixture is not the plain sum: weights matter.
      const unweighted = loraMix(
        base,
        x,
        inSize,
        outSize,
        members.map((m) => ({ ...m, weight: 1 })),
      );
      assert.ok(unweighted.some((v, i) => Math.abs(v - viaMerge[i]!) > 1e-3));
    }
  });
});

// ---------------------------------------------------------------------------------------------

/** A 2-wide, 1-deep adapter: down = (1, 1), up = (1, 0), no biases, identity activation. */
function tiny(placement: Partial<BottleneckPlacement>, id = 'tiny'): BottleneckLayerAdapter {
  const full: BottleneckPlacement = {
    attention: false,
    ffn: true,
    originalLnBefore: true,
    originalLnAfter: true,
    residualBeforeLn: true,
    lnBefore: false,
    activation: 'identity',
    ...placement,
  };
  const block: BottleneckBlockWeights = {
    layer: 0,
    block: 'ffn',
    down: Float32Array.from([1, 1]),
    downBias: Float32Array.from([0]),
    up: Float32Array.from([1, 0]),
    upBias: Float32Array.from([0, 0]),
    ...(full.lnBefore
      ? { lnBefore: { gamma: Float32Array.from([1, 1]), beta: Float32Array.from([0, 0]) } }
      : {}),
  };
  return {
    kind: 'bottleneck-layers',
    id,
    group: 'g',
    hiddenSize: 2,
    bottleneckSize: 1,
    placement: full,
    blocks: [block],
  };
}

/** hidden (1, 2), input (0.5, -1), and a stand-in "LayerNorm" x -> 2x that shows where it runs. */
const handInputs: BlockInputs = {
  hidden: Float64Array.from([1, 2]),
  input: Float64Array.from([0.5, -1]),
  layerNorm: (x) => x.map((v) => 2 * v),
};

describe('bottleneck placement by hand', () => {
  const run = (placement: Partial<BottleneckPlacement>) =>
    bottleneckMixBlock([{ adapter: tiny(placement), weight: 1 }], 0, 'ffn', handInputs);

  test('seq_bn (Pfeiffer): residual = hidden, h = LN(hidden + input), out = LN(up(h) + residual + input)', () => {
    // h = 2 * (1.5, 1) = (3, 2); up = (5, 0); out = (6, 2); LN((6.5, 1)) = (13, 2).
    assertClose(run({}), [13, 2]);
  });

  test('double_seq_bn (Houlsby): h = hidden', () => {
    // up(1, 2) = (3, 0); out = (4, 2); LN((4.5, 1)) = (9, 2).
    assertClose(run({ originalLnBefore: false }), [9, 2]);
  });

  test('residual_before_ln false, "post_add", original_ln_after false', () => {
    // residual = h = (3, 2); out = (8, 2); LN((8.5, 1)) = (17, 2).
    assertClose(run({ residualBeforeLn: false }), [17, 2]);
    // residual = hidden + input = (1.5, 1); out = (6.5, 1); LN((7, 0)) = (14, 0).
    assertClose(run({ residualBeforeLn: 'post_add' }), [14, 0]);
    // No closing residual add and LayerNorm: out = (6, 2).
    assertClose(run({ originalLnAfter: false }), [6, 2]);
  });

  test("ln_before: the adapter's own LayerNorm (eps 1e-5) in front of down", () => {
    // LN(3, 2) = (+c, -c): down = 0, up = 0, out = residual (1, 2); LN((1.5, 1)) = (3, 2).
    assertClose(run({ lnBefore: true }), [3, 2]);
  });

  test('stacked groups: each level pre_forwards the previous level out; the last post_forwards', () => {
    const houlsby = tiny({ originalLnBefore: false });
    // Level 1: (4, 2) as above. Level 2 on (4, 2): up = (6, 0), out = (10, 2). LN((10.5, 1)) = (21, 2).
    assertClose(
      bottleneckStackBlock(
        [[{ adapter: houlsby, weight: 1 }], [{ adapter: houlsby, weight: 1 }]],
        0,
        'ffn',
        handInputs,
      ),
      [21, 2],
    );
  });

  test('members without a block add nothing but keep their weight; no block at all is the plain block', () => {
    const houlsby = tiny({ originalLnBefore: false });
    const absent: BottleneckLayerAdapter = { ...houlsby, id: 'absent', blocks: [] };
    // out = 0.5 * (3, 0) + (1, 2) = (2.5, 2); LN((3, 1)) = (6, 2).
    assertClose(
      bottleneckMixBlock(
        [
          { adapter: houlsby, weight: 0.5 },
          { adapter: absent, weight: 0.5 },
        ],
        0,
        'ffn',
        handInputs,
      ),
      [6, 2],
    );
    // Where neither has a block (layer 1): LN(hidden + input) = (3, 2).
    assertClose(
      bottleneckMixBlock([{ adapter: houlsby, weight: 1 }], 1, 'ffn', handInputs),
      [3, 2],
    );
    assertClose(plainBlock(handInputs), [3, 2]);
    assert.throws(
      () =>
        bottleneckMixBlock(
          [
            { adapter: houlsby, weight: 0.5 },
            { adapter: tiny({}, 'pfeiffer'), weight: 0.5 },
          ],
          0,
          'ffn',
          handInputs,
        ),
      /one placement/,
    );
  });
});

describe('bottleneck adapters imported from AdapterHub folders', () => {
  const bert: EncoderConfig = {
    family: 'bert',
    vocabSize: 50,
    hiddenSize: 16,
    layers: 2,
    heads: 2,
    intermediateSize: 24,
    hiddenAct: 'gelu',
    layerNormEps: 1e-12,
    maxPositions: 16,
    padTokenId: 0,
    positions: 'absolute',
  };
  const shape = { family: 'bert' as const, hiddenSize: 16, intermediateSize: 24, layers: 2 };
  const random = new Random(5);
  const gamma = random.normals(16, 0.1).map((v) => 1 + v);
  const beta = random.normals(16, 0.1);
  const inputs = (rows: number): BlockInputs => ({
    hidden: Float64Array.from(random.normals(rows * 16)),
    input: Float64Array.from(random.normals(rows * 16)),
    layerNorm: (x) => layerNorm64(x, 16, gamma, beta, 1e-12),
  });

  test("up(h) with ln_before and channel scaling equals the library's forward on the saved tensors", async () => {
    const fixture = await writeAdapterHubFolder(folder(), {
      backbone: shape,
      config: 'double_seq_bn',
      configOverrides: { ln_before: true, scaling: 'channel', reduction_factor: 4 },
    });
    const adapter = await importAdapterHubFolder(fixture.dir, {
      id: 'x',
      group: 'g',
      backbone: bert,
    });
    const saved = fixture.blocks.find((b) => b.layer === 1 && b.block === 'attention')!;
    const block = adapter.blocks.find((b) => b.layer === 1 && b.block === 'attention')!;
    const h = Float64Array.from(random.normals(16));
    // adapter_down = [LayerNorm, Linear, swish]; up = adapter_up(down) * scaling.
    const mean = h.reduce((s, v) => s + v, 0) / 16;
    const variance = h.reduce((s, v) => s + (v - mean) ** 2, 0) / 16;
    const normed = [...h].map(
      (v, i) =>
        ((v - mean) / Math.sqrt(variance + 1e-5)) * saved.lnBefore!.gamma[i]! +
        saved.lnBefore!.beta[i]!,
    );
    const down = Array.from({ length: saved.m }, (_, k) => {
      let s = saved.downBias[k]!;
      for (let i = 0; i < 16; i++) s += saved.down[k * 16 + i]! * normed[i]!;
      return s / (1 + Math.exp(-s)); // swish
    });
    const expected = Array.from({ length: 16 }, (_, j) => {
      let s = saved.upBias[j]!;
      for (let k = 0; k < saved.m; k++) s += saved.up[j * saved.m + k]! * down[k]!;
      return s * saved.scale[j]!;
    });
    assertClose(bottleneckUp(block, adapter.placement, h, 16), expected, 1e-5);
  });

  test('an all-zero adapter is the identity: the block is LN(hidden + input)', async () => {
    for (const config of ['seq_bn', 'double_seq_bn'] as const) {
      const fixture = await writeAdapterHubFolder(folder(), { backbone: shape, config, std: 0 });
      const adapter = await importAdapterHubFolder(fixture.dir, {
        id: 'zero',
        group: 'g',
        backbone: bert,
      });
      const site = inputs(3);
      const out = bottleneckMixBlock([{ adapter, weight: 1 }], 0, 'ffn', site);
      assertClose(out, plainBlock(site), 1e-12);
      // ... and a trained one is not.
      const trained = await importAdapterHubFolder(
        (await writeAdapterHubFolder(folder(), { backbone: shape, config })).dir,
        { id: 't', group: 'g', backbone: bert },
      );
      const changed = bottleneckMixBlock([{ adapter: trained, weight: 1 }], 0, 'ffn', site);
      assert.ok(changed.some((v, i) => Math.abs(v - out[i]!) > 1e-3));
    }
  });

  test("our mixture with weights w is AdapterHub's Average(weights = K w, normalize_weights=False), not Average(w) for K > 1", async () => {
    const members = await Promise.all(
      [1, 2, 3].map(async (seed, k) => ({
        adapter: await importAdapterHubFolder(
          (await writeAdapterHubFolder(folder(), { backbone: shape, seed })).dir,
          { id: `s${seed}`, group: 'g', backbone: bert },
        ),
        weight: [0.5, 0.3, 0.2][k]!,
      })),
    );
    const site = inputs(2);
    const ours = bottleneckMixBlock(members, 1, 'ffn', site);
    const scaled = members.map((m) => ({ ...m, weight: 3 * m.weight }));
    assertClose(adapterHubAverageBlock(scaled, 1, 'ffn', site, false), ours, 1e-9);
    const average = adapterHubAverageBlock(members, 1, 'ffn', site);
    assert.ok(average.some((v, i) => Math.abs(v - ours[i]!) > 1e-3));
    // One adapter: the same thing.
    assertClose(
      adapterHubAverageBlock([members[0]!], 1, 'ffn', site),
      bottleneckMixBlock([{ ...members[0]!, weight: 1 }], 1, 'ffn', site),
    );
  });
});

describe('hooks: per-item routing in one batch', () => {
  test('each item gets its own adapters at the linear modules and at the blocks', () => {
    const d = 2;
    const a: LoraAdapter = {
      kind: 'lora',
      id: 'a',
      group: 'task',
      hiddenSize: d,
      rank: 1,
      modules: [
        {
          layer: 0,
          module: 'value',
          rank: 1,
          scaling: 2,
          a: Float32Array.from([1, 0]),
          b: Float32Array.from([0, 1]),
        },
      ],
    };
    const b: LoraAdapter = {
      ...a,
      id: 'b',
      modules: [
        {
          ...a.modules[0]!,
          scaling: 1,
          a: Float32Array.from([0, 1]),
          b: Float32Array.from([1, 1]),
        },
      ],
    };
    const houlsby = tiny({ originalLnBefore: false });
    // Item 0: language houlsby, task a. Item 1: no language adapter, task a/b 0.5/0.5.
    const hooks = layerAdapterHooks([
      [[{ adapter: houlsby, weight: 1 }], []],
      [
        [{ adapter: a, weight: 1 }],
        [
          { adapter: a, weight: 0.5 },
          { adapter: b, weight: 0.5 },
        ],
      ],
    ]);
    const value = (item: number, input: number[]) =>
      hooks.linear!({
        layer: 0,
        module: 'value',
        input: Float64Array.from(input),
        output: new Float64Array(input.length),
        inSize: 2,
        outSize: 2,
        item,
      });
    // a: delta = 2 * (0, x0); b: delta = (x1, x1).
    assertClose(value(0, [1, 2, 3, 4]), [0, 2, 0, 6]);
    assertClose(value(1, [5, 6, 7, 8]), [3, 8, 4, 11]);
    // Query has no LoRA in either adapter.
    const query = hooks.linear!({
      layer: 0,
      module: 'query',
      input: Float64Array.from([5, 6]),
      output: Float64Array.from([1, 1]),
      inSize: 2,
      outSize: 2,
      item: 1,
    });
    assertClose(query, [1, 1]);
    const block = (item: number) =>
      hooks.block!({
        layer: 0,
        block: 'ffn',
        hidden: Float64Array.from([1, 2, 1, 2]),
        residual: Float64Array.from([0.5, -1, 0.5, -1]),
        layerNorm: (x) => x.map((v) => 2 * v),
        item,
      });
    // Item 0: the hand case (9, 2) per row; item 1: the plain block LN((1.5, 1)) = (3, 2).
    assertClose(block(0), [9, 2, 9, 2]);
    assertClose(block(1), [3, 2, 3, 2]);
  });
});

describe('through the encoder reference on generated Hugging Face folders', () => {
  const batch = {
    ids: [
      [2, 5, 6, 7, 3],
      [2, 8, 9, 3, 0],
    ],
    mask: [
      [1, 1, 1, 1, 1],
      [1, 1, 1, 1, 0],
    ],
  };
  const one = (i: number) => ({ ids: [batch.ids[i]!], mask: [batch.mask[i]!] });

  for (const family of ['bert', 'distilbert'] as const) {
    test(`${family}: LoRA hooks per item equal the base model with that item's mixture merged into its weights`, async () => {
      const hf = await writeHfFolder(folder(), {
        family,
        hiddenSize: 16,
        layers: 2,
        heads: 2,
        intermediateSize: 24,
        seed: 3,
      });
      const backbone = parseHfConfig(hf.config, 'config.json');
      const shape = { family, hiddenSize: 16, intermediateSize: 24, layers: 2 };
      const names = PEFT_LINEAR_PATHS[family === 'distilbert' ? 'distilbert' : 'bert'];
      const importOne = async (seed: number, targets: string[], useRslora: boolean) => {
        const fixture = await writePeftLoraFolder(folder(), {
          backbone: shape,
          seed,
          r: 4,
          loraAlpha: 8,
          useRslora,
          targetModules: targets,
        });
        return importPeftFolder(fixture.dir, { id: `p${seed}`, group: 'task', backbone });
      };
      const a = await importOne(1, [names.query, names.value, names.intermediate], false);
      const b = await importOne(2, [names.key, names.output, names.value], true);
      const routing = [
        [{ adapter: a, weight: 1 }],
        [
          { adapter: a, weight: 0.3 },
          { adapter: b, weight: 0.7 },
        ],
      ];
      const got = hfEncoderReference(hf.config, hf.tensors, batch, layerAdapterHooks([routing]));
      const plain = hfEncoderReference(hf.config, hf.tensors, batch);
      const layerList = family === 'distilbert' ? 'transformer.layer' : 'encoder.layer';
      for (const [item, members] of routing.entries()) {
        // W' = W + sum_k w_k s_k B_k A_k on every adapted module, by its Hugging Face name.
        const merged = new Map(hf.tensors);
        for (const { adapter, weight } of members) {
          for (const m of adapter.modules) {
            const name = `${layerList}.${m.layer}.${names[m.module]}.weight`;
            const w = merged.get(name)!;
            const [outSize, inSize] = w.shape as [number, number];
            const data = new Float32Array(w.data);
            const delta = loraDelta(m, identity(inSize), inSize, outSize); // rows: delta(e_i) = column i
            for (let o = 0; o < outSize; o++) {
              for (let i = 0; i < inSize; i++)
                data[o * inSize + i]! += weight * delta[i * outSize + o]!;
            }
            merged.set(name, { shape: w.shape, data });
          }
        }
        const expected = hfEncoderReference(hf.config, merged, one(item))[0]!;
        assertClose(got[item]!, expected, 1e-5);
        assert.ok(got[item]!.some((v, i) => Math.abs(v - plain[item]![i]!) > 1e-3));
      }
    });
  }

  test('bottleneck and LoRA groups in one run: a zero bottleneck changes nothing, routing is per item', async () => {
    const hf = await writeHfFolder(folder(), {
      family: 'bert',
      hiddenSize: 16,
      layers: 2,
      heads: 2,
      intermediateSize: 24,
      seed: 4,
    });
    const backbone = parseHfConfig(hf.config, 'config.json');
    const shape = { family: 'bert' as const, hiddenSize: 16, intermediateSize: 24, layers: 2 };
    const hub = async (config: 'seq_bn' | 'double_seq_bn', std: number, seed = 1) =>
      importAdapterHubFolder(
        (await writeAdapterHubFolder(folder(), { backbone: shape, config, std, seed })).dir,
        { id: `${config}${std}${seed}`, group: 'language', backbone },
      );
    const zero = await hub('double_seq_bn', 0);
    const pfeiffer = await hub('seq_bn', 0.2, 2);
    const houlsby = await hub('double_seq_bn', 0.2, 3);
    const lora = await importPeftFolder(
      (await writePeftLoraFolder(folder(), { backbone: shape, seed: 5 })).dir,
      { id: 'l', group: 'task', backbone },
    );
    const taskOnly = hfEncoderReference(
      hf.config,
      hf.tensors,
      batch,
      layerAdapterHooks([[[{ adapter: lora, weight: 1 }], []]]),
    );
    const withZero = hfEncoderReference(
      hf.config,
      hf.tensors,
      batch,
      layerAdapterHooks([
        [[{ adapter: zero, weight: 1 }], [{ adapter: zero, weight: 1 }]],
        [[{ adapter: lora, weight: 1 }], []],
      ]),
    );
    assertClose(withZero[0]!, taskOnly[0]!, 1e-12);
    const plain = hfEncoderReference(hf.config, hf.tensors, batch);
    assertClose(withZero[1]!, plain[1]!, 1e-12);
    // Each item's answer is the one it gets alone: the hooks index items, not positions in a batch.
    const routing = [
      [{ adapter: pfeiffer, weight: 1 }],
      [
        { adapter: houlsby, weight: 0.4 },
        { adapter: zero, weight: 0.6 },
      ],
    ];
    const together = hfEncoderReference(hf.config, hf.tensors, batch, layerAdapterHooks([routing]));
    for (const item of [0, 1]) {
      const alone = hfEncoderReference(
        hf.config,
        hf.tensors,
        one(item),
        layerAdapterHooks([[routing[item]!]]),
      )[0]!;
      assertClose(together[item]!, alone, 1e-12);
      assert.ok(together[item]!.some((v, i) => Math.abs(v - plain[item]![i]!) > 1e-3));
    }
  });
});

/** The n x n identity as n rows. */
function identity(n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = 1;
  return out;
}
