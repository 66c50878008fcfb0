/**
 * The engine host: a pool of engine worker threads that own the ORT sessions, a FIFO of batches
 * waiting for a worker, and the mixture graph currently served.
 *
 * Contracts
 * - `run(items)` answers every item: its result, or its own routing error (the other items still
 *   run). The whole promise rejects only when the batch could not run (a worker crash, ENGINE_*).
 * - Routing is resolved against the mixture that is current when the batch is dispatched, and the
 *   batch runs on exactly that graph, even if a newer one is installed meanwhile.
 * - `installMixture` swaps the graph atomically for all workers: every worker loads it first; only
 *   then do new batches use it; the old graph is released once its last batch finishes.
 * - A worker that dies fails its in-flight batches with ENGINE_WORKER_CRASHED and is replaced.
 * - Workers are stopped by message after they drain, never by terminate() mid-run, which aborts
 *   the whole process (FIELD-NOTES).
 * - The execution provider is never changed silently: when the requested one cannot start, `start`
 *   rejects with ENGINE_PROVIDER_UNAVAILABLE, or (with `allowProviderFallback`) the engine runs on
 *   cpu and `providerStatus` says so, with the reason.
 */
import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { MoeError } from '../errors.js';
import type { MixtureLayout } from '../onnx/mixture-contract.js';
import { decodeBatch, type EngineItemResult } from './decode.js';
import type {
  ExecutionProvider,
  HostMessage,
  MixtureGraph,
  RunOutputs,
  StageTimings,
  WorkerMessage,
} from './protocol.js';
import { type ItemRouting, type RoutedItem, routeItem, stackRouting } from './routing.js';

export interface EngineOptions {
  /** Path of the backbone ONNX file. */
  readonly backbonePath: string;
  /**
   * Engine worker threads. Default: half the cores (at least 1), each with 2 intra-op threads:
   * on 2 cores one worker with 2 threads gives the lowest latency per batch; two workers with
   * 1 thread each give ~10% more throughput under load (FIELD-NOTES). Keep workers x threads <= cores.
   */
  readonly workers?: number;
  /** ORT intra-op threads per worker. Default: cores / workers. */
  readonly intraOpThreads?: number;
  /** Default 'cpu'. */
  readonly executionProvider?: ExecutionProvider;
  /** GPU ordinal for 'cuda'. Default 0. */
  readonly deviceId?: number;
  /**
   * When the provider cannot start: run on cpu and report it (true), or reject `start` with
   * ENGINE_PROVIDER_UNAVAILABLE (false). Default false: a GPU deployment that quietly runs on CPU
   * is one that misses its latency and throughput targets with nothing on the dashboard red.
   */
  readonly allowProviderFallback?: boolean;
  /** Batches sent ahead to one worker so it never waits for the next one. Default 2. */
  readonly pipelineDepth?: number;
  /** Accept the test-only 'crash' message. Default false. */
  readonly allowFaultInjection?: boolean;
}

export interface EngineItem {
  /** Token ids, specials included, at most the pack's max length. */
  readonly ids: Int32Array | readonly number[];
  readonly routing: ItemRouting;
}

export type ItemOutcome =
  | { readonly ok: true; readonly result: EngineItemResult }
  | { readonly ok: false; readonly error: MoeError };

export interface BatchOutcome {
  readonly items: ItemOutcome[];
  /** Mixture version the batch ran on. */
  readonly version: number;
  /** Stage times of the batch (zero when no item could run). */
  readonly timings: StageTimings;
  /** Rows x padded length actually sent to the backbone. */
  readonly paddedTokens: number;
}

/** Which provider the engine runs on, and why it differs from the one asked for, if it does. */
export interface ProviderStatus {
  /** In use; undefined until the first worker is ready. */
  readonly provider: ExecutionProvider | undefined;
  readonly requested: ExecutionProvider;
  readonly deviceId: number;
  /** Why the requested provider could not start (set only after a fallback to cpu). */
  readonly fallbackReason: string | undefined;
}

/** The one warning line a process logs when its engine fell back from the requested provider. */
export function fallbackWarning(status: ProviderStatus): string | undefined {
  if (status.fallbackReason === undefined) return undefined;
  return `execution provider ${status.requested} could not start; running on ${status.provider} (PROVIDER_FALLBACK=true)`;
}

export interface EngineEvents {
  'worker-restart': [{ worker: number; reason: string }];
  'worker-ready': [{ worker: number; provider: ExecutionProvider }];
}

interface PendingBatch {
  readonly items: readonly EngineItem[];
  readonly resolve: (outcome: BatchOutcome) => void;
  readonly reject: (error: unknown) => void;
}

interface InFlightBatch {
  readonly batch: PendingBatch;
  readonly version: number;
  readonly layout: MixtureLayout;
  /** outcomes[i] is set for items that failed routing; the others await the worker. */
  readonly outcomes: (ItemOutcome | undefined)[];
  readonly runIndexes: number[];
  /** ks[row][group]: experts mixed, per item that runs. */
  readonly ks: number[][];
  readonly paddedTokens: number;
}

interface WorkerSlot {
  readonly index: number;
  worker: Worker;
  ready: boolean;
  /** Mixture versions this worker has loaded. */
  versions: Set<number>;
  inFlight: Map<number, InFlightBatch>;
  /** Pending acks of load-mixture, by version. */
  loadAcks: Map<number, { resolve: () => void; reject: (e: Error) => void }>;
  stopping: boolean;
}

interface LiveMixture {
  readonly graph: MixtureGraph;
  readonly layout: MixtureLayout;
}

export class Engine extends EventEmitter<EngineEvents> {
  private readonly options: Required<EngineOptions>;
  private readonly slots: WorkerSlot[] = [];
  private readonly queue: PendingBatch[] = [];
  /** Versions some worker may still need: the current one, one being installed, retiring ones. */
  private readonly live = new Map<number, LiveMixture>();
  private readonly inFlightByVersion = new Map<number, number>();
  private current: LiveMixture;
  private nextBatchId = 1;
  private swapChain: Promise<void> = Promise.resolve();
  private closing: Promise<void> | undefined;
  private restarts = 0;
  private providerInUse: ExecutionProvider | undefined;
  private fallbackReason: string | undefined;

  private constructor(options: EngineOptions, first: LiveMixture) {
    super();
    const cores = availableParallelism();
    const workers = options.workers ?? Math.max(1, Math.floor(cores / 2));
    this.options = {
      backbonePath: options.backbonePath,
      workers,
      intraOpThreads: options.intraOpThreads ?? Math.max(1, Math.floor(cores / workers)),
      executionProvider: options.executionProvider ?? 'cpu',
      deviceId: options.deviceId ?? 0,
      allowProviderFallback: options.allowProviderFallback ?? false,
      pipelineDepth: options.pipelineDepth ?? 2,
      allowFaultInjection: options.allowFaultInjection ?? false,
    };
    this.current = first;
    this.live.set(first.graph.version, first);
  }

  /** Start the workers with a first mixture graph; resolves when all are ready. */
  static async start(
    options: EngineOptions,
    layout: MixtureLayout,
    bytes: Uint8Array,
  ): Promise<Engine> {
    const engine = new Engine(options, { graph: toGraph(layout, bytes), layout });
    try {
      await Promise.all(
        Array.from({ length: engine.options.workers }, (_, i) => engine.spawn(i, true)),
      );
    } catch (error) {
      await engine.close();
      throw error;
    }
    return engine;
  }

  get layout(): MixtureLayout {
    return this.current.layout;
  }

  get settings(): Readonly<Required<EngineOptions>> {
    return this.options;
  }

  /** The execution provider the sessions really run on. */
  get provider(): ExecutionProvider | undefined {
    return this.providerInUse;
  }

  get providerStatus(): ProviderStatus {
    return {
      provider: this.providerInUse,
      requested: this.options.executionProvider,
      deviceId: this.options.deviceId,
      fallbackReason: this.fallbackReason,
    };
  }

  /** Ready workers with no batch in flight. */
  get idleWorkers(): number {
    return this.slots.filter((slot) => slot.ready && !slot.stopping && slot.inFlight.size === 0)
      .length;
  }

  /** Workers up and taking batches. */
  get readyWorkers(): number {
    return this.slots.filter((slot) => slot.ready && !slot.stopping).length;
  }

  get workerRestarts(): number {
    return this.restarts;
  }

  /** Batches waiting for a worker (not yet dispatched). */
  get queuedBatches(): number {
    return this.queue.length;
  }

  /** Batches that could be dispatched right now without queueing. */
  get freeCapacity(): number {
    let free = 0;
    for (const slot of this.slots) {
      if (slot.ready && !slot.stopping) free += this.options.pipelineDepth - slot.inFlight.size;
    }
    return Math.max(0, free - this.queue.length);
  }

  run(items: readonly EngineItem[]): Promise<BatchOutcome> {
    if (this.closing !== undefined) {
      return Promise.reject(
        new MoeError('ENGINE_CLOSED', 'The engine is shutting down; retry on another instance.'),
      );
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ items, resolve, reject });
      this.pump();
    });
  }

  /**
   * Make `bytes` (compiled from `layout`) the served mixture in every worker. Serialised with
   * other installs. Rejects, leaving the current graph in place, if any worker cannot load it.
   */
  installMixture(layout: MixtureLayout, bytes: Uint8Array): Promise<void> {
    const next = this.swapChain.then(() => this.swap({ graph: toGraph(layout, bytes), layout }));
    this.swapChain = next.catch(() => undefined);
    return next;
  }

  /** Fault injection for tests: make worker `index` crash at its next message. */
  crashWorkerForTest(index: number): void {
    this.slots[index]?.worker.postMessage({ type: 'crash' } satisfies HostMessage);
  }

  /** Stop accepting, finish every accepted batch, stop the workers by message. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.drainAndStop();
    return this.closing;
  }

  // --- dispatch -----------------------------------------------------------------------------

  private pump(): void {
    while (this.queue.length > 0) {
      const slot = this.pickSlot();
      if (slot === undefined) return;
      this.dispatch(slot, this.queue.shift()!);
    }
    if (this.closing !== undefined) this.maybeFinishDrain();
  }

  /** The ready worker with the fewest batches in flight that has the current graph loaded. */
  private pickSlot(): WorkerSlot | undefined {
    let best: WorkerSlot | undefined;
    for (const slot of this.slots) {
      if (!slot.ready || slot.stopping || !slot.versions.has(this.current.graph.version)) continue;
      if (slot.inFlight.size >= this.options.pipelineDepth) continue;
      if (best === undefined || slot.inFlight.size < best.inFlight.size) best = slot;
    }
    return best;
  }

  private dispatch(slot: WorkerSlot, batch: PendingBatch): void {
    const { layout, graph } = this.current;
    const outcomes: (ItemOutcome | undefined)[] = [];
    const routed: RoutedItem[] = [];
    const runIndexes: number[] = [];
    batch.items.forEach((item, i) => {
      try {
        routed.push(routeItem(layout, item.routing));
        runIndexes.push(i);
        outcomes.push(undefined);
      } catch (error) {
        if (!(error instanceof MoeError)) throw error;
        outcomes.push({ ok: false, error });
      }
    });
    if (runIndexes.length === 0) {
      batch.resolve({
        items: outcomes as ItemOutcome[],
        version: graph.version,
        timings: { backboneMs: 0, mixtureMs: 0 },
        paddedTokens: 0,
      });
      return;
    }
    const rows = runIndexes.map((i) => batch.items[i]!.ids);
    const seq = Math.max(...rows.map((ids) => ids.length));
    const inputIds = new BigInt64Array(rows.length * seq);
    const attentionMask = new BigInt64Array(rows.length * seq);
    rows.forEach((ids, b) => {
      for (let t = 0; t < ids.length; t++) {
        inputIds[b * seq + t] = BigInt(ids[t]!);
        attentionMask[b * seq + t] = 1n;
      }
    });
    const groups = stackRouting(layout, routed);
    const id = this.nextBatchId++;
    slot.inFlight.set(id, {
      batch,
      version: graph.version,
      layout,
      outcomes,
      runIndexes,
      ks: routed.map((item) => item.map((group) => group.k)),
      paddedTokens: rows.length * seq,
    });
    this.inFlightByVersion.set(graph.version, (this.inFlightByVersion.get(graph.version) ?? 0) + 1);
    const message: HostMessage = {
      type: 'run',
      id,
      version: graph.version,
      batchSize: rows.length,
      sequenceLength: seq,
      inputIds,
      attentionMask,
      groups,
    };
    const transfer = [
      inputIds.buffer,
      attentionMask.buffer,
      ...groups.flatMap((g) => [g.bias.buffer, g.k.buffer]),
    ] as ArrayBuffer[];
    slot.worker.postMessage(message, transfer);
  }

  private settle(
    slot: WorkerSlot,
    id: number,
    outputs: RunOutputs | Error,
    timings?: StageTimings,
  ): void {
    const flight = slot.inFlight.get(id);
    if (flight === undefined) return;
    slot.inFlight.delete(id);
    this.batchDone(flight.version);
    if (outputs instanceof Error) {
      flight.batch.reject(outputs);
    } else {
      const results = decodeBatch(flight.layout, outputs, flight.ks);
      flight.runIndexes.forEach((itemIndex, row) => {
        flight.outcomes[itemIndex] = { ok: true, result: results[row]! };
      });
      flight.batch.resolve({
        items: flight.outcomes as ItemOutcome[],
        version: flight.version,
        timings: timings ?? { backboneMs: 0, mixtureMs: 0 },
        paddedTokens: flight.paddedTokens,
      });
    }
    this.pump();
  }

  private batchDone(version: number): void {
    const left = (this.inFlightByVersion.get(version) ?? 1) - 1;
    this.inFlightByVersion.set(version, left);
    if (left === 0 && version !== this.current.graph.version) this.retire(version);
  }

  // --- mixture swap -------------------------------------------------------------------------

  private async swap(next: LiveMixture): Promise<void> {
    const version = next.graph.version;
    this.live.set(version, next);
    const acks = this.slots
      .filter((slot) => slot.ready && !slot.stopping)
      .map(
        (slot) =>
          new Promise<void>((resolve, reject) => {
            slot.loadAcks.set(version, { resolve, reject });
            slot.worker.postMessage({
              type: 'load-mixture',
              graph: next.graph,
            } satisfies HostMessage);
          }),
      );
    try {
      await Promise.all(acks);
    } catch (error) {
      this.live.delete(version);
      this.releaseEverywhere(version);
      throw error;
    }
    const previous = this.current;
    this.current = next;
    if ((this.inFlightByVersion.get(previous.graph.version) ?? 0) === 0) {
      this.retire(previous.graph.version);
    }
    this.pump();
  }

  private retire(version: number): void {
    this.inFlightByVersion.delete(version);
    this.live.delete(version);
    this.releaseEverywhere(version);
  }

  private releaseEverywhere(version: number): void {
    for (const slot of this.slots) {
      if (slot.versions.delete(version)) {
        slot.worker.postMessage({ type: 'release-mixture', version } satisfies HostMessage);
      }
    }
  }

  // --- worker lifecycle ---------------------------------------------------------------------

  private spawn(index: number, initial: boolean): Promise<void> {
    const graphs = [...this.live.values()].map((m) => m.graph);
    const worker = new Worker(new URL('./engine-worker.js', import.meta.url), {
      workerData: {
        backbonePath: this.options.backbonePath,
        session: {
          // After a fallback, replacements start on cpu at once: every worker runs on one provider.
          executionProvider: this.providerInUse ?? this.options.executionProvider,
          deviceId: this.options.deviceId,
          allowFallback: this.options.allowProviderFallback,
          intraOpThreads: this.options.intraOpThreads,
        },
        mixtures: graphs,
        allowFaultInjection: this.options.allowFaultInjection,
      },
    });
    const slot: WorkerSlot = {
      index,
      worker,
      ready: false,
      versions: new Set(graphs.map((g) => g.version)),
      inFlight: new Map(),
      loadAcks: new Map(),
      stopping: false,
    };
    this.slots[index] = slot;
    return new Promise((resolve, reject) => {
      let initError: string | undefined;
      let providerError: MoeError | undefined;
      worker.on('message', (message: WorkerMessage) => {
        switch (message.type) {
          case 'ready':
            slot.ready = true;
            this.providerInUse = message.provider;
            this.fallbackReason ??= message.fallbackReason;
            this.emit('worker-ready', { worker: index, provider: message.provider });
            this.catchUp(slot);
            resolve();
            this.pump();
            return;
          case 'init-failed':
            initError = message.message;
            return;
          case 'provider-failed':
            initError = message.message;
            providerError = providerUnavailable(
              message.provider,
              this.options.deviceId,
              message.message,
            );
            return;
          case 'result':
            this.settle(slot, message.id, message.outputs, message.timings);
            return;
          case 'run-failed':
            this.settle(
              slot,
              message.id,
              new MoeError(
                'ENGINE_FAILED',
                `The engine could not run the batch: ${message.message}`,
              ),
            );
            return;
          case 'mixture-loaded':
            slot.versions.add(message.version);
            slot.loadAcks.get(message.version)?.resolve();
            slot.loadAcks.delete(message.version);
            this.pump();
            return;
          case 'mixture-failed':
            slot.loadAcks
              .get(message.version)
              ?.reject(
                new MoeError(
                  'ENGINE_FAILED',
                  `An engine worker could not load the mixture graph: ${message.message}`,
                ),
              );
            slot.loadAcks.delete(message.version);
            return;
        }
      });
      worker.on('error', (error) => {
        initError ??= error.message;
      });
      worker.on('exit', (code) => {
        const reason = initError ?? `exit code ${code}`;
        if (!slot.ready) {
          // Never came up: a broken backbone or graph is not worth restarting in a loop.
          const error =
            providerError ??
            new MoeError('ENGINE_FAILED', `An engine worker could not start: ${reason}`);
          reject(error);
          if (!initial && this.closing === undefined) this.respawnLater(index, reason);
          return;
        }
        this.onWorkerExit(slot, code, reason);
      });
    });
  }

  /** Load versions that went live while this worker was starting. */
  private catchUp(slot: WorkerSlot): void {
    for (const [version, mixture] of this.live) {
      if (!slot.versions.has(version)) {
        slot.worker.postMessage({
          type: 'load-mixture',
          graph: mixture.graph,
        } satisfies HostMessage);
      }
    }
  }

  private onWorkerExit(slot: WorkerSlot, code: number, reason: string): void {
    slot.ready = false;
    for (const ack of slot.loadAcks.values()) ack.resolve(); // its replacement loads live versions
    slot.loadAcks.clear();
    const crashed = new MoeError(
      'ENGINE_WORKER_CRASHED',
      `The engine worker running this batch stopped unexpectedly (${reason}); the batch was not completed. Retry the request.`,
    );
    for (const [id] of slot.inFlight) this.settle(slot, id, crashed);
    if (slot.stopping || this.closing !== undefined) {
      this.maybeFinishDrain();
      return;
    }
    this.restarts++;
    this.emit('worker-restart', { worker: slot.index, reason: code === 0 ? 'exited' : reason });
    this.respawnLater(slot.index, reason);
  }

  private respawnLater(index: number, reason: string): void {
    // Back off when a worker dies again and again; a healthy restart is immediate.
    const delay = Math.min(5000, this.restarts > 3 ? 250 * 2 ** (this.restarts - 3) : 0);
    setTimeout(() => {
      if (this.closing !== undefined) return;
      this.spawn(index, false).catch(() => {
        this.restarts++;
        this.emit('worker-restart', { worker: index, reason });
      });
    }, delay).unref();
  }

  // --- shutdown -----------------------------------------------------------------------------

  private drainResolve: (() => void) | undefined;

  private async drainAndStop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.drainResolve = resolve;
      this.maybeFinishDrain();
    });
    await Promise.all(
      this.slots.map(
        (slot) =>
          new Promise<void>((resolve) => {
            slot.stopping = true;
            if (slot.worker.threadId === -1) return resolve(); // already exited
            slot.worker.once('exit', () => resolve());
            slot.worker.postMessage({ type: 'stop' } satisfies HostMessage);
          }),
      ),
    );
  }

  private maybeFinishDrain(): void {
    if (this.drainResolve === undefined) return;
    const busy = this.slots.some((slot) => slot.inFlight.size > 0);
    const canRun = this.slots.some((slot) => slot.ready);
    if (busy || (this.queue.length > 0 && canRun)) return;
    // Nothing can run what is still queued (no live worker): fail it rather than hang.
    for (const batch of this.queue.splice(0)) {
      batch.reject(
        new MoeError('ENGINE_CLOSED', 'The engine shut down before this batch could run.'),
      );
    }
    const resolve = this.drainResolve;
    this.drainResolve = undefined;
    resolve();
  }
}

const PROVIDER_NEEDS: Record<ExecutionProvider, string> = {
  cpu: '',
  cuda: ' It needs an NVIDIA GPU with its driver, CUDA 12 and cuDNN 9, and the CUDA provider libraries of onnxruntime-node (installed with ONNXRUNTIME_NODE_INSTALL=cuda12; the cuda image target has them).',
  webgpu: ' It needs a GPU adapter that Dawn reaches through Vulkan (libvulkan.so.1 and a driver).',
};

function providerUnavailable(
  provider: ExecutionProvider,
  deviceId: number,
  reason: string,
): MoeError {
  const device = provider === 'cuda' ? ` (device ${deviceId})` : '';
  return new MoeError(
    'ENGINE_PROVIDER_UNAVAILABLE',
    `The execution provider '${provider}'${device} cannot start: ${reason}.${PROVIDER_NEEDS[provider]} ` +
      'To run on CPU instead, allow the fallback (PROVIDER_FALLBACK=true) or ask for cpu (EXECUTION_PROVIDER=cpu).',
    { provider, deviceId, reason },
  );
}

function toGraph(layout: MixtureLayout, bytes: Uint8Array): MixtureGraph {
  return {
    version: layout.version,
    bytes,
    groupCount: layout.groups.length,
    headCount: layout.heads.length,
  };
}
