/**
 * The batcher: the one owner of the queue of items waiting for the engine. Items from any number of
 * concurrent requests, whatever their routing, share batches.
 *
 * - `submit` admits a request's items (all or none: 429 OVERLOADED past `maxQueuedItems`) and
 *   resolves with one result per item, in order, or rejects with the first item's error.
 * - Background requests (composition fits) queue behind every interactive item, fill batches only
 *   where interactive items leave room, and are admitted only while the items in progress stay
 *   within BACKGROUND_ADMISSION_SHARE of `maxQueuedItems`: live traffic keeps the rest.
 * - Only the scheduling loop (`schedule`) takes items off the queue; `decideBatch` (pure) says
 *   what and when.
 * - An item whose request was aborted (client gone) or whose deadline passed is dropped before it
 *   runs; a request past its deadline gets REQUEST_TIMEOUT at once, queued or not.
 */

import type { EngineItemResult } from '../engine/decode.js';
import type { BatchOutcome, EngineItem } from '../engine/engine.js';
import { MoeError } from '../errors.js';
import { type BatchLimits, decideBatch } from './batch-policy.js';

/** Share of the admission bound that background requests may fill (the rest is kept for live ones). */
export const BACKGROUND_ADMISSION_SHARE = 0.5;

/** What the batcher needs from the engine. */
export interface BatchRunner {
  run(items: readonly EngineItem[]): Promise<BatchOutcome>;
  /** Batches the engine would accept now (started at once or queued in a worker's pipeline). */
  readonly freeCapacity: number;
  /** Workers with no batch in flight: a batch sent now starts at once. */
  readonly idleWorkers: number;
}

export interface BatcherOptions extends BatchLimits {
  /** Admission bound: items queued or running. */
  readonly maxQueuedItems: number;
  /** Called once per batch the engine ran (for metrics). */
  readonly onBatch?: (stats: BatchStats) => void;
  /** Called with every item the batcher drops before it runs. */
  readonly onDrop?: (reason: 'client_gone' | 'timeout') => void;
}

export interface BatchStats {
  readonly items: number;
  readonly paddedTokens: number;
  readonly realTokens: number;
  /** The model's forward pass in the engine worker. */
  readonly forwardMs: number;
}

/** Per item: the engine's answer and where its time went. */
export interface ItemAnswer {
  readonly result: EngineItemResult;
  readonly queueMs: number;
  readonly forwardMs: number;
  readonly batchSize: number;
}

export interface SubmitOptions {
  /** Absolute deadline (performance.now() clock). */
  readonly deadline: number;
  /** Aborted when the client goes away. */
  readonly signal?: AbortSignal;
  /** Background work: see the module comment. Default false. */
  readonly background?: boolean;
}

interface Entry {
  readonly item: EngineItem;
  readonly tokens: number;
  readonly enqueuedAt: number;
  readonly background: boolean;
  readonly request: RequestState;
  readonly index: number;
}

interface RequestState {
  readonly answers: (ItemAnswer | undefined)[];
  remaining: number;
  settled: boolean;
  readonly resolve: (answers: ItemAnswer[]) => void;
  readonly reject: (error: unknown) => void;
  readonly signal: AbortSignal | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class Batcher {
  private readonly pending: Entry[] = [];
  /** Items admitted and not yet answered (queued or running). */
  private admitted = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly drainWaiters: (() => void)[] = [];

  constructor(
    private readonly engine: BatchRunner,
    private readonly options: BatcherOptions,
  ) {}

  /** Items waiting for a batch. */
  get queued(): number {
    return this.pending.length;
  }

  /** Items admitted and not answered yet. */
  get inFlight(): number {
    return this.admitted;
  }

  submit(items: readonly EngineItem[], options: SubmitOptions): Promise<ItemAnswer[]> {
    if (this.closed) {
      return Promise.reject(
        new MoeError('DRAINING', 'The server is shutting down; retry on another instance.'),
      );
    }
    const background = options.background === true;
    const limit = background
      ? Math.floor(this.options.maxQueuedItems * BACKGROUND_ADMISSION_SHARE)
      : this.options.maxQueuedItems;
    if (this.admitted + items.length > limit) {
      return Promise.reject(
        new MoeError(
          'OVERLOADED',
          `The server has ${this.admitted} items in progress (limit ${limit}${background ? ' for background work' : ''}); retry after a second.`,
          { retryAfterSeconds: 1 },
        ),
      );
    }
    if (items.length === 0) return Promise.resolve([]);
    return new Promise<ItemAnswer[]>((resolve, reject) => {
      const request: RequestState = {
        answers: new Array(items.length),
        remaining: items.length,
        settled: false,
        resolve,
        reject,
        signal: options.signal,
        timer: undefined,
      };
      const now = performance.now();
      request.timer = setTimeout(
        () =>
          this.fail(
            request,
            new MoeError('REQUEST_TIMEOUT', timeoutMessage(options.deadline - now)),
          ),
        Math.max(0, options.deadline - now),
      );
      options.signal?.addEventListener('abort', () => this.fail(request, abortError()), {
        once: true,
      });
      this.admitted += items.length;
      const entries = items.map((item, index) => ({
        item,
        tokens: item.ids.length,
        enqueuedAt: now,
        background,
        request,
        index,
      }));
      // Interactive entries go ahead of the first background one: every interactive item stays
      // ahead of every background item, each kind in arrival order.
      const at = background ? -1 : this.pending.findIndex((entry) => entry.background);
      if (at < 0) this.pending.push(...entries);
      else this.pending.splice(at, 0, ...entries);
      this.schedule();
    });
  }

  /** Look at the queue again: the engine gained capacity (e.g. a restarted worker came up). */
  wake(): void {
    this.schedule();
  }

  /** Refuse new work; resolves when every admitted item has its answer. */
  close(): Promise<void> {
    this.closed = true;
    return new Promise((resolve) => {
      this.drainWaiters.push(resolve);
      this.notifyDrained();
    });
  }

  private notifyDrained(): void {
    if (this.admitted > 0 || this.drainWaiters.length === 0) return;
    for (const resolve of this.drainWaiters.splice(0)) resolve();
  }

  // --- the scheduling loop: the only code that takes items off `pending` ----------------------

  private schedule(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    for (;;) {
      this.dropDead();
      const decision = decideBatch(this.pending, performance.now(), this.options, {
        idleWorker: this.engine.idleWorkers > 0,
        freeSlot: this.engine.freeCapacity > 0,
      });
      if (decision.kind === 'idle') return;
      if (decision.kind === 'wait') {
        this.timer = setTimeout(() => this.schedule(), decision.ms);
        return;
      }
      const taken = new Set(decision.indexes);
      const batch = this.pending.filter((_, i) => taken.has(i));
      const rest = this.pending.filter((_, i) => !taken.has(i));
      this.pending.length = 0;
      this.pending.push(...rest);
      this.launch(batch);
    }
  }

  /** Remove entries whose request is already settled (timed out, aborted, failed). */
  private dropDead(): void {
    let kept = 0;
    for (const entry of this.pending) {
      if (entry.request.settled) {
        this.admitted--;
        continue;
      }
      this.pending[kept++] = entry;
    }
    this.pending.length = kept;
    this.notifyDrained();
  }

  private launch(batch: Entry[]): void {
    const started = performance.now();
    this.engine.run(batch.map((entry) => entry.item)).then(
      (outcome) => {
        const { backboneMs, bankSyncMs, graphMs } = outcome.timings;
        const forwardMs = backboneMs + bankSyncMs + graphMs;
        this.options.onBatch?.({
          items: batch.length,
          paddedTokens: outcome.paddedTokens,
          realTokens: batch.reduce((sum, entry) => sum + entry.tokens, 0),
          forwardMs,
        });
        outcome.items.forEach((item, i) => {
          const entry = batch[i]!;
          this.admitted--;
          if (!item.ok) {
            this.fail(entry.request, item.error);
            return;
          }
          this.answer(entry, {
            result: item.result,
            queueMs: started - entry.enqueuedAt,
            forwardMs,
            batchSize: batch.length,
          });
        });
        this.schedule();
      },
      (error: unknown) => {
        for (const entry of batch) {
          this.admitted--;
          this.fail(entry.request, error);
        }
        this.schedule();
      },
    );
  }

  private answer(entry: Entry, answer: ItemAnswer): void {
    const request = entry.request;
    if (request.settled) return;
    request.answers[entry.index] = answer;
    if (--request.remaining === 0) {
      request.settled = true;
      clearTimeout(request.timer);
      request.resolve(request.answers as ItemAnswer[]);
    }
  }

  private fail(request: RequestState, error: unknown): void {
    if (request.settled) return;
    request.settled = true;
    clearTimeout(request.timer);
    if (error instanceof MoeError && error.code === 'REQUEST_TIMEOUT')
      this.options.onDrop?.('timeout');
    if (isAbort(error)) this.options.onDrop?.('client_gone');
    request.reject(error);
    // Its queued entries are dropped by the loop; run it now so admission frees at once.
    this.dropDead();
  }
}

function timeoutMessage(ms: number): string {
  return `The request was not answered within its ${Math.round(ms)} ms deadline; send fewer inputs at once, retry later, or raise REQUEST_TIMEOUT_MS.`;
}

function abortError(): MoeError {
  return new MoeError(
    'CLIENT_CLOSED',
    'The client went away before the answer; its queued items were dropped.',
  );
}

function isAbort(error: unknown): boolean {
  return error instanceof MoeError && error.code === 'CLIENT_CLOSED';
}
