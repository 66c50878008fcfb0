/**
 * The `Inference` interface the HTTP layer talks to, and its embedded implementation: tokenizer,
 * batcher and engine in this process. (Queue mode implements the same interface over Redis.)
 */

import type { AdapterInfo, LoadAdapterOptions } from '../adapters/registry.js';
import { MoeError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import type { BatchLimits } from './batch-policy.js';
import { Batcher, type BatchStats, type ItemAnswer } from './batcher.js';
import {
  type InferRequest,
  type InferResult,
  type Model,
  type ModelDescription,
  type PreparedItem,
  toResult,
} from './model.js';

export type { ModelDescription } from './model.js';

export interface InferOptions {
  /** Absolute deadline on the performance.now() clock. */
  readonly deadline: number;
  /** Aborted when the client goes away: its queued items are dropped. */
  readonly signal?: AbortSignal;
  /**
   * Background work (composition fits): its items join batches only where interactive items leave
   * room, and it is admitted into part of the admission bound only (Batcher), so a fit never makes
   * live requests wait behind it or get 429. Default false.
   */
  readonly background?: boolean;
}

/** Where a request's time went, in milliseconds (the slowest item's for queue and stages). */
export interface Timings {
  readonly tokenizeMs: number;
  readonly queueMs: number;
  /** The model's forward pass (one engine batch). */
  readonly forwardMs: number;
}

export interface InferAnswer {
  readonly model: string;
  readonly results: InferResult[];
  readonly inputTokens: number;
  readonly timings: Timings;
}

export interface Readiness {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, boolean>>;
  /** In use; undefined where this process runs no engine. */
  readonly executionProvider: string | undefined;
  readonly executionProviderRequested: string | undefined;
  /** Why the requested provider could not start (the engine fell back to cpu). */
  readonly providerFallbackReason: string | undefined;
}

export interface Inference {
  infer(request: InferRequest, options: InferOptions): Promise<InferAnswer>;
  describe(): ModelDescription;
  adapters(): AdapterInfo[];
  /** Load (or replace) an adapter folder; see AdapterRegistry.load for `options`. */
  loadAdapter(folder: string, options?: LoadAdapterOptions): Promise<AdapterInfo>;
  unloadAdapter(id: string): Promise<void>;
  readiness(): Readiness;
  /** Stop taking work, answer what was accepted, stop the engine. Idempotent. */
  close(): Promise<void>;
}

/** Extra per-result fields a client may ask for (the HTTP `return` option). */
export type ReturnField = 'embedding' | 'scores';

/** Where a durable job is. 'delayed': waiting for its retry after a failed attempt. */
export type JobState = 'waiting' | 'active' | 'delayed' | 'completed' | 'failed';

export interface JobStatus {
  readonly id: string;
  readonly state: JobState;
  readonly createdAt: Date;
  readonly finishedAt: Date | undefined;
  /** Times a worker started it. */
  readonly attempts: number;
  readonly returnFields: readonly ReturnField[];
  /** Set when completed. */
  readonly answer: InferAnswer | undefined;
  /** Set when failed for good: the error the request would have got. */
  readonly error: MoeError | undefined;
}

/**
 * Durable jobs: submit now, read the answer later, from any API node. Only queue mode has them
 * (the queue holds the jobs and their results); embedded mode has no implementation.
 */
export interface JobQueue {
  submit(
    request: InferRequest,
    options: { readonly returnFields: readonly ReturnField[] },
  ): Promise<JobStatus>;
  /** Rejects with JOB_NOT_FOUND when there is no such job (or its result expired). */
  status(id: string): Promise<JobStatus>;
}

export interface EmbeddedOptions extends BatchLimits {
  readonly maxQueuedItems: number;
}

export class EmbeddedInference implements Inference {
  private readonly batcher: Batcher;
  private draining = false;
  private closing: Promise<void> | undefined;
  private lastBatch = 0;

  constructor(
    private readonly model: Model,
    private readonly metrics: Metrics,
    options: EmbeddedOptions,
  ) {
    this.batcher = new Batcher(model.engine, {
      ...options,
      onBatch: (stats) => this.recordBatch(stats),
      onDrop: (reason) => metrics.rejected.inc({ reason }),
    });
    model.engine.on('worker-restart', () => metrics.workerRestarts.inc());
    model.engine.on('slot-miss', ({ group }) => metrics.adapterSlotMisses.inc({ group }));
    // A replacement worker brings capacity that no finishing batch will announce.
    model.engine.on('worker-ready', () => this.batcher.wake());
    model.registry.on('loaded', (e) => this.recordAdapterOperation('load', 'ok', e.seconds));
    model.registry.on('unloaded', (e) => this.recordAdapterOperation('unload', 'ok', e.seconds));
    model.registry.on('failed', (e) =>
      this.recordAdapterOperation(e.operation, 'error', e.seconds),
    );
    metrics.engineWorkers.set(model.engine.settings.workers);
    metrics.buildInfo.set({ model: model.name, version: model.pack.manifest.version }, 1);
    this.recordAdapterCounts();
    metrics.onCollect(() => {
      metrics.queueDepth.set(this.batcher.queued);
      for (const usage of model.engine.slotUsage()) {
        metrics.adapterSlots.set({ group: usage.group, state: 'capacity' }, usage.slots);
        metrics.adapterSlots.set({ group: usage.group, state: 'used' }, usage.used);
      }
      const provider = model.engine.provider;
      if (provider !== undefined) {
        metrics.executionProvider.set(
          { provider, requested: model.engine.settings.executionProvider },
          1,
        );
      }
    });
  }

  /** Items waiting for an engine batch (not running yet). */
  get queuedItems(): number {
    return this.batcher.queued;
  }

  /** Engine milliseconds (backbone + mixture) of the last batch that ran; 0 before the first. */
  get lastBatchMs(): number {
    return this.lastBatch;
  }

  async infer(request: InferRequest, options: InferOptions): Promise<InferAnswer> {
    if (this.draining)
      throw new MoeError('DRAINING', 'The server is shutting down; retry on another instance.');
    const t0 = performance.now();
    const items = await this.model.prepare(request);
    const tokenizeMs = performance.now() - t0;
    this.metrics.stageDuration.observe({ stage: 'tokenize' }, tokenizeMs / 1000);
    return this.inferPrepared(items, options, tokenizeMs);
  }

  /**
   * Run items that were tokenized and routed elsewhere (a queue worker gets them from the API
   * node that took the request), through the same batcher, admission and metrics as `infer`.
   */
  async inferPrepared(
    items: readonly PreparedItem[],
    options: InferOptions,
    tokenizeMs = 0,
  ): Promise<InferAnswer> {
    if (this.draining)
      throw new MoeError('DRAINING', 'The server is shutting down; retry on another instance.');
    let answers: ItemAnswer[];
    try {
      answers = await this.batcher.submit(items, options);
    } catch (error) {
      if (error instanceof MoeError && error.code === 'OVERLOADED')
        this.metrics.rejected.inc({ reason: 'overloaded' });
      throw error;
    }
    let inputTokens = 0;
    const results = answers.map((answer, i) => {
      const item = items[i]!;
      inputTokens += item.ids.length;
      this.metrics.stageDuration.observe({ stage: 'queue' }, answer.queueMs / 1000);
      this.recordRouting(answer.result);
      return toResult(answer.result, item);
    });
    this.metrics.inputTokens.inc(inputTokens);
    return {
      model: this.model.name,
      results,
      inputTokens,
      timings: {
        tokenizeMs,
        queueMs: Math.max(...answers.map((a) => a.queueMs)),
        forwardMs: Math.max(...answers.map((a) => a.forwardMs)),
      },
    };
  }

  describe(): ModelDescription {
    return this.model.describe();
  }

  adapters(): AdapterInfo[] {
    return this.model.registry.list();
  }

  async loadAdapter(folder: string, options: LoadAdapterOptions = {}): Promise<AdapterInfo> {
    const info = await this.model.registry.load(folder, options);
    this.recordAdapterCounts();
    return info;
  }

  async unloadAdapter(id: string): Promise<void> {
    await this.model.registry.unload(id);
    this.recordAdapterCounts();
  }

  readiness(): Readiness {
    const engine = this.model.engine;
    const checks = {
      model_loaded: true,
      engine_workers_up: engine.readyWorkers > 0,
      not_draining: !this.draining,
    };
    const provider = engine.providerStatus;
    return {
      ready: Object.values(checks).every(Boolean),
      checks,
      executionProvider: provider.provider,
      executionProviderRequested: provider.requested,
      providerFallbackReason: provider.fallbackReason,
    };
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      await this.batcher.close(); // every accepted item answered
      await this.model.close();
    })();
    return this.closing;
  }

  // --- metrics --------------------------------------------------------------------------------

  private recordBatch(stats: BatchStats): void {
    if (stats.paddedTokens === 0) return; // every item failed routing: nothing ran
    this.lastBatch = stats.forwardMs;
    const m = this.metrics;
    m.batchSize.observe(stats.items);
    m.batchTokens.observe(stats.paddedTokens);
    if (stats.paddedTokens > 0)
      m.batchPaddingRatio.observe(1 - stats.realTokens / stats.paddedTokens);
    m.stageDuration.observe({ stage: 'forward' }, stats.forwardMs / 1000);
  }

  private recordRouting(result: ItemAnswer['result']): void {
    for (const [group, chosen] of Object.entries(result.routing)) {
      for (const { adapter, weight } of chosen) {
        this.metrics.adapterSelections.inc({ group, adapter });
        this.metrics.adapterWeight.inc({ group, adapter }, weight);
      }
      this.metrics.routedExperts.observe({ group }, chosen.length);
    }
    for (const [group, gate] of Object.entries(result.gates)) {
      this.metrics.gateEntropy.observe({ group }, gate.entropy);
      this.metrics.gateMargin.observe({ group }, gate.margin);
    }
  }

  private recordAdapterOperation(
    operation: 'load' | 'unload',
    result: 'ok' | 'error',
    seconds: number,
  ): void {
    this.metrics.adapterOperations.inc({ operation, result });
    this.metrics.adapterOperationDuration.observe({ operation }, seconds);
  }

  private recordAdapterCounts(): void {
    for (const group of this.model.view.groups) {
      this.metrics.adaptersLoaded.set({ group: group.id }, group.adapters.length);
    }
  }
}
