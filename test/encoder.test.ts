import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import {
  buildEncoder,
  buildEncoderWithWeights,
  ENCODER_INPUT_IDS,
  ENCODER_INPUT_MASK,
  ENCODER_OUTPUT,
  type EncoderOptions,
} from '../src/onnx/encoder.js';
import { Random } from '../src/util/random.js';
import { encoderReference } from './support/encoder-reference.js';

const tiny: EncoderOptions = {
  vocabSize: 50,
  hiddenSize: 32,
  layers: 2,
  heads: 2,
  ffnSize: 64,
  maxLength: 16,
  seed: 7,
};

async function run(
  session: ort.InferenceSession,
  ids: number[],
  mask: number[],
  batch: number,
  seq: number,
): Promise<Float32Array> {
  const feeds = {
    [ENCODER_INPUT_IDS]: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [batch, seq]),
    [ENCODER_INPUT_MASK]: new ort.Tensor('int64', BigInt64Array.from(mask, BigInt), [batch, seq]),
  };
  const out = await session.run(feeds);
  const hidden = out[ENCODER_OUTPUT]!;
  assert.deepEqual(hidden.dims.slice(0, 2), [batch, seq]);
  return hidden.data as Float32Array;
}

/** ids/mask [B,T] with real lengths `lengths` (right padding with id 0). */
function randomBatch(rng: Random, vocab: number, lengths: number[], seq: number) {
  const ids: number[] = [];
  const mask: number[] = [];
  for (const len of lengths) {
    for (let t = 0; t < seq; t++) {
      ids.push(t < len ? 1 + rng.int(vocab - 1) : 0);
      mask.push(t < len ? 1 : 0);
    }
  }
  return { ids, mask };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('encoder', () => {
  test('matches the plain-JS reference on a padded batch, at every optimization level', async () => {
    const { model, weights } = buildEncoderWithWeights(tiny);
    const rng = new Random(11);
    const seq = 10;
    const lengths = [10, 6, 3];
    const { ids, mask } = randomBatch(rng, tiny.vocabSize, lengths, seq);
    const expected = encoderReference(tiny, weights, ids, mask, lengths.length, seq);
    for (const level of ['disabled', 'all'] as const) {
      const session = await ort.InferenceSession.create(model, { graphOptimizationLevel: level });
      assert.deepEqual(session.inputNames, [ENCODER_INPUT_IDS, ENCODER_INPUT_MASK]);
      assert.deepEqual(session.outputNames, [ENCODER_OUTPUT]);
      const got = await run(session, ids, mask, lengths.length, seq);
      const err = maxAbsDiff(got, expected);
      assert.ok(err <= 1e-4, `level ${level}: max abs error ${err}`);
      await session.release();
    }
  });

  test('padding does not change the states of real tokens', async () => {
    const session = await ort.InferenceSession.create(buildEncoder(tiny));
    const rng = new Random(3);
    const len = 5;
    const { ids } = randomBatch(rng, tiny.vocabSize, [len], len);
    const alone = await run(session, ids, Array(len).fill(1), 1, len);
    const seq = 12;
    const paddedIds = [...ids, ...Array(seq - len).fill(0)];
    const paddedMask = [...Array(len).fill(1), ...Array(seq - len).fill(0)];
    const padded = await run(session, paddedIds, paddedMask, 1, seq);
    const d = tiny.hiddenSize;
    const err = maxAbsDiff(padded.subarray(0, len * d), alone);
    assert.ok(err <= 1e-5, `padding changed real tokens by ${err}`);
    await session.release();
  });

  test('batch items are independent', async () => {
    const session = await ort.InferenceSession.create(buildEncoder(tiny));
    const rng = new Random(5);
    const seq = 8;
    const { ids, mask } = randomBatch(rng, tiny.vocabSize, [8, 4], seq);
    const both = await run(session, ids, mask, 2, seq);
    const second = await run(session, ids.slice(seq), mask.slice(seq), 1, seq);
    const d = tiny.hiddenSize;
    assert.ok(maxAbsDiff(both.subarray(seq * d), second) <= 1e-5);
    await session.release();
  });

  test('builds and runs at demo-pack size (d=256, 4 layers, 4 heads, ffn 1024, T=128)', async () => {
    const options: EncoderOptions = {
      vocabSize: 8000,
      hiddenSize: 256,
      layers: 4,
      heads: 4,
      ffnSize: 1024,
      maxLength: 128,
      seed: 1,
    };
    const session = await ort.InferenceSession.create(buildEncoder(options));
    const rng = new Random(9);
    const { ids, mask } = randomBatch(rng, options.vocabSize, [128, 40], 128);
    const out = await run(session, ids, mask, 2, 128);
    assert.equal(out.length, 2 * 128 * 256);
    assert.ok(out.every(Number.isFinite));
    await session.release();
  });

  test('rejects heads that do not divide the hidden size', () => {
    assert.throws(() => buildEncoder({ ...tiny, heads: 3 }), /not divisible by heads 3/);
  });
});
