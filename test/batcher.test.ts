/**
 * The batcher's scheduling of background work (composition fits) against interactive requests:
 * which items a batch takes, and who is admitted. The engine here is a scripted BatchRunner that
 * records each batch and answers when the test lets it: what is under test is the queue, not the
 * model (the engine and HTTP tests run the batcher with real ORT sessions).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EngineItemResult } from '../src/engine/decode.js';
import type { BatchOutcome, EngineItem } from '../src/engine/engine.js';
import { MoeError } from '../src/errors.js';
import { BACKGROUND_ADMISSION_SHARE, Batcher, type BatchRunner } from '../src/inference/batcher.js';

/** One worker, one batch at a time; each batch waits for `release()`. Items are told by ids[0]. */
class ScriptedRunner implements BatchRunner {
  readonly batches: number[][] = [];
  private releases: (() => void)[] = [];
  private running = 0;

  get freeCapacity(): number {
    return this.running === 0 ? 1 : 0;
  }

  get idleWorkers(): number {
    return this.running === 0 ? 1 : 0;
  }

  run(items: readonly EngineItem[]): Promise<BatchOutcome> {
    this.running++;
    this.batches.push(items.map((item) => item.ids[0]!));
    return new Promise((resolve) => {
      this.releases.push(() => {
        this.running--;
        resolve({
          // The batcher hands results through untouched; the tag stands in for one.
          items: items.map((item) => ({
            ok: true,
            result: { tag: item.ids[0] } as unknown as EngineItemResult,
          })),
          timings: { backboneMs: 0, bankSyncMs: 0, graphMs: 0 } as BatchOutcome['timings'],
          paddedTokens: 0,
        });
      });
    });
  }

  /** Let the oldest running batch answer. */
  release(): void {
    this.releases.shift()?.();
  }
}

const items = (...tags: number[]): EngineItem[] =>
  tags.map((tag) => ({ ids: [tag, 7, 7, 7], routing: {} }));
const later = () => new Promise((done) => setImmediate(done));
const deadline = () => performance.now() + 60_000;

describe('Batcher: background work', () => {
  it('queues background items behind interactive ones that arrive later', async () => {
    const runner = new ScriptedRunner();
    const batcher = new Batcher(runner, {
      maxBatchItems: 3,
      maxBatchTokens: 1000,
      maxQueueDelayMs: 0,
      maxQueuedItems: 100,
    });
    // Occupy the one worker, then queue a background request and, after it, an interactive one.
    const first = batcher.submit(items(1), { deadline: deadline() });
    await later();
    const fit = batcher.submit(items(10, 11, 12, 13), { deadline: deadline(), background: true });
    const live = batcher.submit(items(20, 21), { deadline: deadline() });
    await later();
    assert.deepEqual(runner.batches, [[1]]);

    runner.release();
    await first;
    await later();
    // The interactive items go first; the background ones only fill the room they leave.
    assert.deepEqual(runner.batches[1], [20, 21, 10]);
    runner.release();
    await live;
    await later();
    assert.deepEqual(runner.batches[2], [11, 12, 13]);
    runner.release();
    const answers = await fit;
    assert.deepEqual(
      answers.map((a) => (a.result as unknown as { tag: number }).tag),
      [10, 11, 12, 13],
      'a background request still gets its answers in order',
    );
  });

  it(`admits background work into ${BACKGROUND_ADMISSION_SHARE * 100}% of the admission bound only`, async () => {
    const runner = new ScriptedRunner();
    const batcher = new Batcher(runner, {
      maxBatchItems: 8,
      maxBatchTokens: 1000,
      maxQueueDelayMs: 0,
      maxQueuedItems: 10,
    });
    const background = batcher.submit(items(1, 2, 3, 4), {
      deadline: deadline(),
      background: true,
    });
    await assert.rejects(
      batcher.submit(items(5, 6), { deadline: deadline(), background: true }),
      (error: unknown) =>
        error instanceof MoeError &&
        error.code === 'OVERLOADED' &&
        /limit 5 for background work/.test(error.message),
    );
    // Interactive requests still have the rest of the bound.
    const live = batcher.submit(items(7, 8, 9, 10, 11, 12), { deadline: deadline() });
    await assert.rejects(
      batcher.submit(items(13), { deadline: deadline() }),
      (error: unknown) => error instanceof MoeError && error.code === 'OVERLOADED',
    );
    for (let i = 0; i < 3; i++) {
      await later();
      runner.release();
    }
    await Promise.all([background, live]);
  });
});
