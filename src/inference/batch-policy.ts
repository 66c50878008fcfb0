/**
 * The batching decision, as a pure function of the pending queue, the clock and the limits, so it
 * can be tested without timers (the habit of Triton's dynamic batcher).
 *
 * Rules
 * - Nothing is taken while the engine has no free slot: items keep accumulating, and the batcher
 *   asks again when a batch finishes (continuous batching: the next batch forms while one runs).
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
}

export type BatchDecision =
  | { readonly kind: 'take'; readonly indexes: readonly number[] }
  | { readonly kind: 'wait'; readonly ms: number }
  | { readonly kind: 'idle' };

/**
 * `pending` is in arrival order (index 0 is the oldest). `engineHasRoom`: the engine would start
 * the batch now rather than queue it.
 */
export function decideBatch(
  pending: readonly PendingView[],
  now: number,
  limits: BatchLimits,
  engineHasRoom: boolean,
): BatchDecision {
  if (pending.length === 0 || !engineHasRoom) return { kind: 'idle' };
  const indexes = fillBatch(pending, limits);
  const full = indexes.length >= limits.maxBatchItems || indexes.length < pending.length; // the rest did not fit: this batch is as big as it gets
  const waited = now - pending[0]!.enqueuedAt;
  if (full || waited >= limits.maxQueueDelayMs) return { kind: 'take', indexes };
  return { kind: 'wait', ms: limits.maxQueueDelayMs - waited };
}

/** The oldest item plus the closest-length items that fit the limits; sorted indexes. */
export function fillBatch(pending: readonly PendingView[], limits: BatchLimits): number[] {
  const anchor = pending[0]!.tokens;
  const byCloseness = pending
    .map((item, index) => ({
      index,
      tokens: item.tokens,
      distance: Math.abs(item.tokens - anchor),
    }))
    .slice(1)
    .sort((a, b) => a.distance - b.distance || a.index - b.index);
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
