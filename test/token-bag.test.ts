/**
 * The token_bag gate: its ONNX nodes against the plain-JS reference (test/support), its trainer's
 * hand-written gradients against numerical ones, and the gate served end to end (fixture pack,
 * engine workers, the mixture graph fed with input_ids).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import {
  embeddingGradient,
  exportTokenBag,
  type TokenBagExample,
  TokenBagModel,
  TokenBagScratch,
  type TokenBagShape,
  tokenBagBackward,
  tokenBagGateLogits,
  trainTokenBag,
} from '../src/demo/token-bag.js';
import { Model } from '../src/inference/model.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import { tokenBagFeatures, tokenBagLogits } from '../src/onnx/token-bag.js';
import type { Activation, TokenBagGate, Weight } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { buildFixturePack } from './support/fixture-pack.js';
import { tokenBagReference } from './support/token-bag-reference.js';

const weight = (rng: Random, shape: number[], std: number): Weight => ({
  shape,
  data: rng.normals(
    shape.reduce((a, b) => a * b, 1),
    std,
  ),
});

function randomGate(
  rng: Random,
  options: { vocab: number; buckets: number; width: number; experts: number; hidden?: Activation },
): TokenBagGate {
  const { vocab, buckets, width: w, experts: E } = options;
  const h = 6;
  return {
    type: 'token_bag',
    experts: Array.from({ length: E }, (_, e) => `x${e}`),
    buckets,
    embedding: weight(rng, [vocab + buckets, w], 1),
    ...(options.hidden === undefined
      ? {}
      : {
          hidden: {
            activation: options.hidden,
            weight: weight(rng, [w, h], 0.8),
            bias: weight(rng, [h], 0.3),
          },
        }),
    outWeight: weight(rng, [options.hidden === undefined ? w : h, E], 1),
    outBias: weight(rng, [E], 0.3),
  };
}

/** A graph with inputs input_ids and attention_mask and one output, the gate's logits. */
async function gateSession(gate: TokenBagGate, columns?: readonly string[]) {
  const g = new GraphBuilder();
  g.input('input_ids', 'int64', ['batch', 'sequence']);
  g.input('attention_mask', 'int64', ['batch', 'sequence']);
  const logits = tokenBagLogits(
    g,
    gate,
    { inputIds: 'input_ids', attentionMask: 'attention_mask' },
    columns === undefined ? {} : { columns },
  );
  g.output(logits, 'logits', 'float32', ['batch', (columns ?? gate.experts).length]);
  return ort.InferenceSession.create(g.toModel());
}

interface Batch {
  B: number;
  T: number;
  ids: number[]; // [B,T]
  mask: number[]; // [B,T]
}

/**
 * Items of several lengths, right-padded with random (valid) ids, one with a hole in its mask,
 * one without any real token: the padding must not count, whatever ids it holds.
 */
function randomBatch(rng: Random, vocab: number, B: number, T: number): Batch {
  const ids: number[] = [];
  const mask: number[] = [];
  for (let b = 0; b < B; b++) {
    const length = b === 0 ? T : b === B - 1 ? 0 : 1 + rng.int(T);
    for (let t = 0; t < T; t++) {
      ids.push(rng.int(vocab));
      mask.push(t < length && !(b === 1 && t === 1 && length > 2) ? 1 : 0);
    }
  }
  return { B, T, ids, mask };
}

async function runGate(
  session: ort.InferenceSession,
  batch: Batch,
): Promise<{ out: Float32Array; E: number }> {
  const dims = [batch.B, batch.T];
  const result = await session.run({
    input_ids: new ort.Tensor('int64', BigInt64Array.from(batch.ids, BigInt), dims),
    attention_mask: new ort.Tensor('int64', BigInt64Array.from(batch.mask, BigInt), dims),
  });
  const out = result.logits!.data as Float32Array;
  return { out, E: out.length / batch.B };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('tokenBagLogits (ONNX) against the plain-JS reference', () => {
  const cases: { name: string; buckets: number; hidden?: Activation }[] = [
    { name: 'token ids only', buckets: 0 },
    { name: 'with hashed bigrams', buckets: 37 },
    { name: 'bigrams and a gelu hidden layer', buckets: 37, hidden: 'gelu' },
    { name: 'one bucket and a relu hidden layer', buckets: 1, hidden: 'relu' },
    { name: 'tanh hidden layer, no bigrams', buckets: 0, hidden: 'tanh' },
  ];
  for (const c of cases) {
    test(`${c.name}: padded batch, a hole in a mask, an empty item; max abs error <= 1e-5`, async () => {
      const rng = new Random(11 + c.buckets);
      const vocab = 50;
      const gate = randomGate(rng, {
        vocab,
        buckets: c.buckets,
        width: 8,
        experts: 5,
        hidden: c.hidden,
      });
      const session = await gateSession(gate);
      try {
        for (const [B, T] of [
          [6, 9],
          [3, 1],
          [4, 2],
        ] as const) {
          const batch = randomBatch(rng, vocab, B, T);
          const { out, E } = await runGate(session, batch);
          const expected: number[] = [];
          for (let b = 0; b < B; b++) {
            const row = (x: number[]) => x.slice(b * T, (b + 1) * T);
            expected.push(...tokenBagReference(gate, row(batch.ids), row(batch.mask)));
          }
          assert.equal(E, 5);
          const err = maxAbsDiff(out, expected);
          assert.ok(err <= 1e-5, `B=${B} T=${T}: max abs error ${err}`);
        }
      } finally {
        await session.release();
      }
    });
  }

  test('padding ids do not change the logits of an item', async () => {
    const rng = new Random(5);
    const gate = randomGate(rng, { vocab: 30, buckets: 13, width: 4, experts: 3 });
    const session = await gateSession(gate);
    const batch = (pad: number): Batch => ({
      B: 1,
      T: 6,
      ids: [1, 7, 9, 4, pad, pad],
      mask: [1, 1, 1, 1, 0, 0],
    });
    const a = await runGate(session, batch(0));
    const b = await runGate(session, batch(29));
    assert.ok(maxAbsDiff(a.out, b.out) <= 1e-6);
    // ...while a real token does: the mask is what decides.
    const c = await runGate(session, { ...batch(29), mask: [1, 1, 1, 1, 1, 0] });
    assert.ok(maxAbsDiff(a.out, c.out) > 1e-3);
    await session.release();
  });

  test('columns re-order the logits; a column the gate does not know is 0', async () => {
    const rng = new Random(9);
    const gate = randomGate(rng, { vocab: 20, buckets: 7, width: 4, experts: 3 });
    const columns = ['x2', 'ghost', 'x0', 'x1'];
    const session = await gateSession(gate, columns);
    const batch = randomBatch(rng, 20, 3, 5);
    const { out, E } = await runGate(session, batch);
    assert.equal(E, 4);
    for (let b = 0; b < 3; b++) {
      const row = (x: number[]) => x.slice(b * 5, (b + 1) * 5);
      const ref = tokenBagReference(gate, row(batch.ids), row(batch.mask));
      const got = out.subarray(b * 4, (b + 1) * 4);
      assert.ok(maxAbsDiff(got, [ref[2]!, 0, ref[0]!, ref[1]!]) <= 1e-5);
    }
    await session.release();
  });

  test('rejects tensors that do not fit together, naming them', () => {
    const rng = new Random(1);
    const gate = randomGate(rng, { vocab: 10, buckets: 3, width: 4, experts: 2 });
    const g = new GraphBuilder();
    const inputs = { inputIds: 'ids', attentionMask: 'mask' };
    assert.throws(
      () => tokenBagLogits(g, { ...gate, outWeight: weight(rng, [5, 2], 1) }, inputs),
      /out\.weight has shape \[5,2\].*expected \[4,2\]/,
    );
    assert.throws(
      () => tokenBagLogits(g, { ...gate, buckets: 13 }, inputs),
      /needs more than 13 \(buckets\) rows/,
    );
  });
});

describe('token bag trainer', () => {
  const shapes: { name: string; shape: TokenBagShape }[] = [
    { name: 'linear, bigrams', shape: { vocabRows: 7, buckets: 5, width: 4, classes: 3 } },
    {
      name: 'relu hidden layer',
      shape: {
        vocabRows: 7,
        buckets: 5,
        width: 4,
        classes: 3,
        hidden: { size: 5, activation: 'relu' },
      },
    },
    {
      name: 'tanh hidden layer, no bigrams',
      shape: {
        vocabRows: 9,
        buckets: 0,
        width: 3,
        classes: 4,
        hidden: { size: 4, activation: 'tanh' },
      },
    },
  ];
  for (const { name, shape } of shapes) {
    test(`${name}: hand-written gradients match central differences`, () => {
      const rng = new Random(21);
      const model = TokenBagModel.init(shape, rng);
      // Away from the start (output 0) so that every gradient is exercised.
      for (const p of [model.outWeight, model.outBias, model.hiddenBias]) {
        p.set(rng.normals(p.length, 0.7));
      }
      const features = model.features([0, 3, 3, 6, 1, 2]);
      const s = new TokenBagScratch(model);
      const label = 2;
      tokenBagBackward(model, features, label, s);
      const analytic = new Map<Float64Array, Float64Array>([
        [model.embedding, embeddingGradient(model, features, s)],
        [model.outWeight, Float64Array.from(s.dOutWeight)],
        [model.outBias, Float64Array.from(s.dOutBias)],
        [model.hiddenWeight, Float64Array.from(s.dHiddenWeight)],
        [model.hiddenBias, Float64Array.from(s.dHiddenBias)],
      ]);
      const probe = new TokenBagScratch(model);
      const eps = 1e-6;
      let checked = 0;
      for (const [param, grad] of analytic) {
        for (let i = 0; i < param.length; i++) {
          const keep = param[i]!;
          param[i] = keep + eps;
          const up = tokenBagBackward(model, features, label, probe);
          param[i] = keep - eps;
          const down = tokenBagBackward(model, features, label, probe);
          param[i] = keep;
          const numeric = (up - down) / (2 * eps);
          const err = Math.abs(numeric - grad[i]!);
          assert.ok(
            err <= 1e-6 + 1e-4 * Math.abs(numeric),
            `param[${i}]: ${grad[i]} vs ${numeric}`,
          );
          checked++;
        }
      }
      assert.ok(checked > model.embedding.length);
      // Rows of features the item does not use get no gradient at all (the update is sparse).
      const used = new Set(features);
      const dE = analytic.get(model.embedding)!;
      for (let r = 0; r < model.rows; r++) {
        const rowNorm = dE.subarray(r * shape.width, (r + 1) * shape.width).some((v) => v !== 0);
        assert.equal(rowNorm, used.has(r), `row ${r}`);
      }
    });
  }

  /** Three classes told apart by which of three token groups an item mostly uses. */
  function toyData(rng: Random, n: number): TokenBagExample[] {
    return Array.from({ length: n }, () => {
      const label = rng.int(3);
      const length = 3 + rng.int(6);
      const ids = Array.from({ length }, () =>
        rng.next() < 0.7 ? 1 + label * 4 + rng.int(4) : rng.int(15),
      );
      return { ids, label };
    });
  }

  test('learns a separable task, deterministically, and exports what it trained', () => {
    const train = toyData(new Random(3), 300);
    const heldout = toyData(new Random(4), 100);
    const shape: TokenBagShape = { vocabRows: 15, buckets: 11, width: 8, classes: 3 };
    const options = { epochs: 5, lr: 0.5, seed: 8 };
    const losses: number[] = [];
    const first = trainTokenBag(train, shape, { ...options, onEpoch: (_, l) => losses.push(l) });
    const second = trainTokenBag(train, shape, options);
    assert.deepEqual(first.model.embedding, second.model.embedding);
    assert.deepEqual(first.model.outWeight, second.model.outWeight);
    assert.ok(losses[losses.length - 1]! < losses[0]! / 2, `losses ${losses.join(', ')}`);
    const gate = exportTokenBag(first.model, ['a', 'b', 'c']);
    const argmax = (x: ArrayLike<number>) => {
      let best = 0;
      for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
      return best;
    };
    const right = heldout.filter((e) => argmax(tokenBagGateLogits(gate, e.ids)) === e.label);
    assert.ok(right.length / heldout.length >= 0.9, `held-out accuracy ${right.length / 100}`);
    // The exported float32 gate, evaluated in JS, is the graph's function (the reference's).
    for (const e of heldout.slice(0, 20)) {
      const ids = Array.from(e.ids);
      const ref = tokenBagReference(
        gate,
        ids,
        ids.map(() => 1),
      );
      assert.ok(maxAbsDiff(tokenBagGateLogits(gate, ids), ref) <= 1e-9);
    }
  });

  test('features: token ids, then the hashed bigrams after the vocabulary rows', () => {
    assert.deepEqual([...tokenBagFeatures([4, 2, 9], 10, 0)], [4, 2, 9]);
    const f = [...tokenBagFeatures([4, 2, 9], 10, 7)];
    assert.deepEqual(f.slice(0, 3), [4, 2, 9]);
    assert.deepEqual(f.slice(3), [10 + ((4 * 1000003 + 2) % 7), 10 + ((2 * 1000003 + 9) % 7)]);
    assert.deepEqual([...tokenBagFeatures([5], 10, 7)], [5]);
    assert.throws(() =>
      new TokenBagModel({ vocabRows: 4, buckets: 0, width: 2, classes: 2 }).features([4]),
    );
  });
});

describe('a token_bag gate served by the engine', () => {
  let root: string;
  let model: Model;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'token-bag-'));
    const dir = await buildFixturePack(join(root, 'pack'), { seed: 5, gate: 'token_bag' });
    model = await Model.open({ packDir: dir, engine: { workers: 1, intraOpThreads: 1 } });
  });
  after(async () => {
    await model?.close();
    await rm(root, { recursive: true, force: true });
  });

  test('routes every item of a padded batch as the reference does from its token ids', async () => {
    const texts = [
      'the weather is good today and the market is open',
      'das wetter ist heute gut',
      'le temps',
      'сегодня хорошая погода, и рынок открыт, и команда выиграла матч',
      'ok',
    ];
    const gate = model.pack.groups[0]!.gate as TokenBagGate;
    assert.equal(gate.type, 'token_bag');
    const results = await model.infer({ inputs: texts, topK: 2 });
    const routed = new Set<string>();
    for (const [i, text] of texts.entries()) {
      const ids = Array.from((await model.tokenizer.encode(text, 'truncate')).ids);
      const logits = tokenBagReference(
        gate,
        ids,
        ids.map(() => 1),
      );
      const order = logits
        .map((v, e) => ({ v, e }))
        .sort((a, b) => b.v - a.v)
        .map((x) => gate.experts[x.e]);
      const got = results[i]!.routing.language!.map((r) => r.adapter);
      assert.deepEqual(got, order.slice(0, 2), text);
      routed.add(got[0]!);
    }
    // The random gate does route differently by input (the test would be blind otherwise).
    assert.ok(routed.size >= 2, [...routed].join(','));
  });
});
