/**
 * The batching decision, as a pure function of the pending queue, the clock and the limits, so it
 * can be tested without timers (the habit of Triton's dynamic batcher).
 *
 * Rules
 * - Nothing is taken while the engine has no free slot: items keep accumulating, and the batcher
 *   asks again when a batch finishes (continuous batching: the next batch forms while one runs).
 * - While every worker is busy, only a full batch is sent ahead into a free pipeline slot; a partial
 *   one waits for a worker to go idle. Sending whatever is pending to the second slot made half
 *   the batches tiny (measured: mean batch ~ concurrency / 4 at depth 2) and cost throughput.
 * - The oldest pending item is always in the next batch, so nothing starves.
 * - The rest of the batch is filled with the items whose lengths are closest to the oldest one's,
 *   so that padding (rows x longest row) wastes little, up to `maxBatchItems` items and
 *   `maxBatchTokens` padded tokens.
 * - A batch is taken at once when it is full or when the oldest item has waited `maxQueueDelayMs`;
 *   otherwise the decision is to wait until that deadline.
 */

export interface BatchLimits {
  /** Most items in one batch. */
  readonly maxBatchItems: number;
  /** Most padded tokens in one batch: items x longest item. */
  readonly maxBatchTokens: number;
  /** Longest an item waits for company before its batch goes anyway. 0: go as soon as possible. */
  readonly maxQueueDelayMs: number;
}

export interface PendingView {
  /** Tokens of the item. */
  readonly tokens: number;
  /** When it was queued (ms, same clock as `now`). */
  readonly enqueuedAt: number;
  /**
   * Background item: taken only where interactive items leave room. The queue keeps every
   * interactive item ahead of every background one (Batcher), so the oldest item, the batch's
   * anchor, is interactive whenever one waits.
   */
  readonly background?: boolean;
}

export type BatchDecision =
  | { readonly kind: 'take'; readonly indexes: readonly number[] }
  | { readonly kind: 'wait'; readonly ms: number }
  | { readonly kind: 'idle' };

/** What the engine can take now. */
export interface EngineRoom {
  /** Some worker has no batch at all: a batch sent now starts at once. */
  readonly idleWorker: boolean;
  /** Some worker has a free pipeline slot (it would queue the batch behind the one it runs). */
  readonly freeSlot: boolean;
}

/** `pending` is in arrival order (index 0 is the oldest). */
export function decideBatch(
  pending: readonly PendingView[],
  now: number,
  limits: BatchLimits,
  engine: EngineRoom,
): BatchDecision {
  if (pending.length === 0 || !(engine.idleWorker || engine.freeSlot)) return { kind: 'idle' };
  const indexes = fillBatch(pending, limits);
  // Full: at the item limit, or the rest did not fit, so this batch is as big as it gets.
  const full = indexes.length >= limits.maxBatchItems || indexes.length < pending.length;
  if (!engine.idleWorker) return full ? { kind: 'take', indexes } : { kind: 'idle' };
  const waited = now - pending[0]!.enqueuedAt;
  if (full || waited >= limits.maxQueueDelayMs) return { kind: 'take', indexes };
  return { kind: 'wait', ms: limits.maxQueueDelayMs - waited };
}

/**
 * The oldest item plus the closest-length items that fit the limits, interactive items before
 * background ones; sorted indexes.
 */
export function fillBatch(pending: readonly PendingView[], limits: BatchLimits): number[] {
  const anchor = pending[0]!.tokens;
  const byCloseness = pending
    .map((item, index) => ({
      index,
      tokens: item.tokens,
      distance: Math.abs(item.tokens - anchor),
      background: item.background === true ? 1 : 0,
    }))
    .slice(1)
    .sort((a, b) => a.background - b.background || a.distance - b.distance || a.index - b.index);
  const taken = [0];
  let longest = anchor;
  for (const candidate of byCloseness) {
    if (taken.length >= limits.maxBatchItems) break;
    const nextLongest = Math.max(longest, candidate.tokens);
    if (nextLongest * (taken.length + 1) > limits.maxBatchTokens) continue;
    taken.push(candidate.index);
    longest = nextLongest;
  }
  return taken.sort((a, b) => a - b);
}
