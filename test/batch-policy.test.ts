import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type BatchLimits, decideBatch, fillBatch } from '../src/inference/batch-policy.js';

const limits: BatchLimits = { maxBatchItems: 4, maxBatchTokens: 100, maxQueueDelayMs: 5 };
const item = (tokens: number, enqueuedAt = 0) => ({ tokens, enqueuedAt });
const idle = { idleWorker: true, freeSlot: true };
const busyWithSlot = { idleWorker: false, freeSlot: true };
const full = { idleWorker: false, freeSlot: false };

describe('decideBatch', () => {
  it('is idle with nothing pending or no room in the engine', () => {
    assert.deepEqual(decideBatch([], 0, limits, idle), { kind: 'idle' });
    assert.deepEqual(decideBatch([item(5)], 100, limits, full), { kind: 'idle' });
  });

  it('waits for company until the oldest item has waited maxQueueDelayMs', () => {
    assert.deepEqual(decideBatch([item(5, 10)], 12, limits, idle), { kind: 'wait', ms: 3 });
    assert.deepEqual(decideBatch([item(5, 10)], 15, limits, idle), { kind: 'take', indexes: [0] });
  });

  it('takes at once with no delay configured', () => {
    const now = { ...limits, maxQueueDelayMs: 0 };
    assert.deepEqual(decideBatch([item(5, 10)], 10, now, idle), { kind: 'take', indexes: [0] });
  });

  it('takes a full batch at once, however young', () => {
    const pending = [item(5), item(5), item(5), item(5), item(5)];
    assert.deepEqual(decideBatch(pending, 0, limits, idle), {
      kind: 'take',
      indexes: [0, 1, 2, 3],
    });
  });

  it('sends only a full batch ahead while every worker is busy', () => {
    const five = [item(5), item(5), item(5), item(5), item(5)];
    assert.deepEqual(decideBatch(five, 0, limits, busyWithSlot), {
      kind: 'take',
      indexes: [0, 1, 2, 3],
    });
    assert.deepEqual(decideBatch([item(5, 0), item(5, 0)], 100, limits, busyWithSlot), {
      kind: 'idle',
    });
  });

  it('takes at once when the token budget leaves items behind', () => {
    const pending = [item(40), item(40), item(40)]; // 3 x 40 > 100
    assert.deepEqual(decideBatch(pending, 0, limits, idle), { kind: 'take', indexes: [0, 1] });
  });
});

describe('fillBatch', () => {
  it('always includes the oldest item, even when it alone exceeds the token budget', () => {
    assert.deepEqual(fillBatch([item(500), item(3)], limits), [0]);
  });

  it('fills with the lengths closest to the oldest item, to waste little padding', () => {
    const pending = [item(10), item(30), item(11), item(9), item(50), item(12)];
    assert.deepEqual(fillBatch(pending, limits), [0, 2, 3, 5]);
  });

  it('takes interactive items before background ones, however close their lengths', () => {
    const bg = (tokens: number) => ({ tokens, enqueuedAt: 0, background: true });
    // The anchor (10) is interactive; the background 10s are closer in length than 40 and 50.
    const pending = [item(10), item(40), bg(10), bg(10), item(50)];
    assert.deepEqual(fillBatch(pending, { ...limits, maxBatchTokens: 1000 }), [0, 1, 2, 4]);
  });

  it('counts padded tokens as items x longest item', () => {
    // 10 and 30: 2 x 30 = 60 fits; adding 31 would make 3 x 31 = 93 fit; a 4th at 31 is 124.
    const pending = [item(10), item(30), item(31), item(31)];
    assert.deepEqual(fillBatch(pending, limits), [0, 1, 2]);
  });
});
