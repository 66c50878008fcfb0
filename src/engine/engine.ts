/**
 * The engine host: a pool of engine worker threads that own the ORT session of the pack graph and
 * its slot banks, a FIFO of batches waiting for a worker, and which adapter sits in which slot.
 *
 * Contracts
 * - `run(items)` answers every item: its result, or its own routing error (the other items still
 *   run). The whole promise rejects only when the batch could not run (ENGINE_*).
 * - Routing is resolved at dispatch, against the adapters registered and the slots they sit in
 *   then. Every worker holds the same slot contents: each slot write is posted to all of them, and
 *   a worker handles messages in order, so a batch reads exactly the slots it was routed on even
 *   when a later write reuses one of them. That is also why an unloaded adapter's slot can be
 *   cleared at once: batches routed to it before are ahead of the clear in every queue.
 * - `putAdapter` resolves once every worker has the adapter in a slot (or, for an adapter the
 *   gate cannot choose and no slot is free, once it is in the host cache: it is written into a
 *   slot when a batch needs it, evicting the least recently used). Replacing an adapter writes
 *   the new weights into another slot first; the old one serves until then.
 * - Watchdog: a batch past `batchTimeoutMs` fails with ENGINE_TIMEOUT and its worker is replaced
 *   (stopped by message, never terminated: terminate() mid-run aborts the process, FIELD-NOTES).
 *   A worker not ready within `startTimeoutMs`, or a slot write not acknowledged within
 *   `slotWriteTimeoutMs`, fails the same way.
 * - A worker that dies fails its in-flight batches with ENGINE_WORKER_CRASHED and is replaced; its
 *   replacement gets every occupied slot written before any batch.
 * - The execution provider is never changed silently (see `allowProviderFallback`).
 */
import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { SlotAdapter, SlotGroup } from '../adapters/slot-writer.js';
import { MoeError } from '../errors.js';
import { SerialQueue } from '../util/serial.js';
import type { BankResidency, BankResidencySetting } from './bank-residency.js';
import { decodeBatch, type EngineItemResult } from './decode.js';
import type {
  ExecutionProvider,
  HostMessage,
  RunOutputs,
  StageTimings,
  WorkerGraph,
  WorkerMessage,
} from './protocol.js';
import {
  groupFeeds,
  type ItemPlan,
  type ItemRouting,
  planItem,
  type RoutingView,
} from './routing.js';
import { SlotTable } from './slot-table.js';

export interface EngineOptions {
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
  /** A batch still running after this long fails (ENGINE_TIMEOUT) and its worker is replaced. Default 60000. */
  readonly batchTimeoutMs?: number;
  /** A worker not ready after this long (sessions created) counts as failed. Default 300000. */
  readonly startTimeoutMs?: number;
  /** A slot write not acknowledged by every worker after this long fails. Default 30000. */
  readonly slotWriteTimeoutMs?: number;
  /** Accept the test-only 'crash' and 'stall' messages. Default false. */
  readonly allowFaultInjection?: boolean;
  /**
   * Where the workers keep the slot banks. Default 'auto': the provider's own choice
   * (bank-residency.ts: host arrays on cpu, device copies on webgpu, session initializers on
   * cuda). The others force a mode on any provider, for tests and bench/gpu-check; no deployment
   * setting reaches this.
   */
  readonly bankResidency?: BankResidencySetting;
}

/** What the engine runs: the pack graph, and what it must know to feed and decode it. */
export interface EngineGraph {
  readonly worker: WorkerGraph;
  /** In the graph's group order. */
  readonly groups: readonly SlotGroup[];
  readonly heads: readonly { readonly id: string; readonly labels: readonly string[] }[];
  readonly hiddenSize: number;
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
  /** Stage times of the batch (zero when no item could run). */
  readonly timings: StageTimings;
  /** Rows x padded length actually sent to the model. */
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
  /** An adapter was written into a slot because a batch needed it (a host-cache miss). */
  'slot-miss': [{ group: string; adapter: string; evicted: string | undefined }];
}

interface PendingBatch {
  readonly items: readonly EngineItem[];
  readonly resolve: (outcome: BatchOutcome) => void;
  readonly reject: (error: unknown) => void;
}

interface InFlightBatch {
  readonly batch: PendingBatch;
  /** outcomes[i] is set for items that failed routing; the others await the worker. */
  readonly outcomes: (ItemOutcome | undefined)[];
  readonly runIndexes: number[];
  /** Per group, the adapter in each slot when the batch was dispatched. */
  readonly slotIds: readonly (readonly (string | undefined)[])[];
  readonly paddedTokens: number;
  readonly timer: NodeJS.Timeout;
}

interface WorkerSlot {
  readonly index: number;
  readonly worker: Worker;
  ready: boolean;
  /** Set when the worker is being replaced or stopped: it takes no more batches. */
  retired: boolean;
  inFlight: Map<number, InFlightBatch>;
}

/** What the engine keeps of each registered adapter: enough to write it into a slot again. */
interface CachedAdapter {
  readonly group: number;
  readonly adapter: SlotAdapter;
  readonly gateColumn: number | undefined;
}

interface PendingAck {
  readonly waiting: Set<Worker>;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export class Engine extends EventEmitter<EngineEvents> {
  private readonly options: Required<EngineOptions>;
  private readonly workers: WorkerSlot[] = [];
  private readonly queue: PendingBatch[] = [];
  private readonly tables: SlotTable[];
  private readonly cache = new Map<string, CachedAdapter>();
  private readonly acks = new Map<number, PendingAck>();
  private view: () => RoutingView;
  private nextBatchId = 1;
  private nextAck = 1;
  private readonly adapterChanges = new SerialQueue();
  private closing: Promise<void> | undefined;
  private restarts = 0;
  private providerInUse: ExecutionProvider | undefined;
  private fallbackReason: string | undefined;
  private bankResidencyInUse: BankResidency | undefined;

  private constructor(
    options: EngineOptions,
    readonly graph: EngineGraph,
  ) {
    super();
    const cores = availableParallelism();
    const workers = options.workers ?? Math.max(1, Math.floor(cores / 2));
    this.options = {
      workers,
      intraOpThreads: options.intraOpThreads ?? Math.max(1, Math.floor(cores / workers)),
      executionProvider: options.executionProvider ?? 'cpu',
      deviceId: options.deviceId ?? 0,
      allowProviderFallback: options.allowProviderFallback ?? false,
      pipelineDepth: options.pipelineDepth ?? 2,
      batchTimeoutMs: options.batchTimeoutMs ?? 60_000,
      startTimeoutMs: options.startTimeoutMs ?? 300_000,
      slotWriteTimeoutMs: options.slotWriteTimeoutMs ?? 30_000,
      allowFaultInjection: options.allowFaultInjection ?? false,
      bankResidency: options.bankResidency ?? 'auto',
    };
    this.tables = graph.groups.map((group) => new SlotTable(group.slots));
    this.view = () => ({ groups: [] });
  }

  /** Start the workers; resolves when all are ready. Adapters come next, with `putAdapter`. */
  static async start(options: EngineOptions, graph: EngineGraph): Promise<Engine> {
    const engine = new Engine(options, graph);
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

  /** Where routing requests are checked: the registry's view of the adapters it serves. */
  setRoutingView(view: () => RoutingView): void {
    this.view = view;
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

  /** Where the workers keep the slot banks; undefined until the first worker is ready. */
  get bankResidency(): BankResidency | undefined {
    return this.bankResidencyInUse;
  }

  /** Ready workers with no batch in flight. */
  get idleWorkers(): number {
    return this.workers.filter((w) => w.ready && !w.retired && w.inFlight.size === 0).length;
  }

  /** Workers up and taking batches. */
  get readyWorkers(): number {
    return this.workers.filter((w) => w.ready && !w.retired).length;
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
    for (const w of this.workers) {
      if (w.ready && !w.retired) free += this.options.pipelineDepth - w.inFlight.size;
    }
    return Math.max(0, free - this.queue.length);
  }

  /** Slots in use and their capacity, per group id. */
  slotUsage(): { group: string; used: number; slots: number; cached: number }[] {
    return this.graph.groups.map((group, g) => ({
      group: group.id,
      used: this.tables[g]!.used,
      slots: group.slots,
      cached: [...this.cache.values()].filter((c) => c.group === g).length,
    }));
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
   * Register `adapter` as `id` in group `group` (replacing any adapter of that id), with
   * `gateColumn` the gate's column for it (undefined: the gate cannot choose it). Serialised with
   * the other adapter operations. Rejects with ADAPTER_SLOTS_FULL when the gate must be able to
   * choose it and every slot holds an adapter the gate can choose; ENGINE_* when a worker fails.
   */
  putAdapter(
    id: string,
    group: number,
    adapter: SlotAdapter,
    gateColumn: number | undefined,
  ): Promise<void> {
    return this.adapterChanges.run(async () => {
      const table = this.tables[group]!;
      const sticky = gateColumn !== undefined;
      // A replacement overwrites its own slot: batches routed to the old weights are ahead of the
      // write in every worker's queue, and batches dispatched after it read the new ones.
      const current = table.slotOf(id);
      const found =
        current === undefined ? table.findSlot(new Set()) : { slot: current, evicted: undefined };
      if (found === undefined) {
        if (sticky) {
          throw new MoeError(
            'ADAPTER_SLOTS_FULL',
            `Every one of group '${this.graph.groups[group]!.id}''s ${table.size} slots holds an adapter its gate can choose; unload one first, or give the group more slots in the pack.`,
            { group: this.graph.groups[group]!.id, slots: table.size },
          );
        }
        // No slot now: it waits in the host cache and is written into one when a batch needs it.
        this.cache.set(id, { group, adapter, gateColumn });
        return;
      }
      if (found.evicted !== undefined) table.remove(found.evicted);
      const previous = this.cache.get(id);
      table.assign(found.slot, id, sticky);
      this.cache.set(id, { group, adapter, gateColumn });
      try {
        await this.writeEverywhere(group, found.slot, adapter, gateColumn);
      } catch (error) {
        // Put back what was there: the previous version of this id, or nothing.
        if (previous === undefined) {
          this.cache.delete(id);
          table.remove(id);
          this.postWrite(group, found.slot, undefined, undefined);
        } else {
          this.cache.set(id, previous);
          this.postWrite(group, found.slot, previous.adapter, previous.gateColumn);
        }
        throw error;
      }
    });
  }

  /**
   * Forget adapter `id`. No batch dispatched from now on routes to it; its slot is cleared in
   * each worker after the batches already routed to it, and this resolves once every worker has
   * done so (the slot is free everywhere).
   */
  removeAdapter(id: string): Promise<void> {
    return this.adapterChanges.run(async () => {
      const cached = this.cache.get(id);
      if (cached === undefined) return;
      this.cache.delete(id);
      const slot = this.tables[cached.group]!.remove(id);
      if (slot !== undefined) await this.writeEverywhere(cached.group, slot, undefined, undefined);
    });
  }

  /** Fault injection for tests: make worker `index` crash at its next message. */
  crashWorkerForTest(index: number): void {
    this.workers[index]?.worker.postMessage({ type: 'crash' } satisfies HostMessage);
  }

  /** Fault injection for tests: worker `index` blocks for `ms` at its next batch or slot write. */
  stallWorkerForTest(index: number, ms: number): void {
    this.workers[index]?.worker.postMessage({ type: 'stall', ms } satisfies HostMessage);
  }

  /** Stop accepting, finish every accepted batch, stop the workers by message. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.drainAndStop();
    return this.closing;
  }

  // --- slot writes --------------------------------------------------------------------------

  /** Post a write of `slot` to every live worker, without waiting. */
  private postWrite(
    group: number,
    slot: number,
    adapter: SlotAdapter | undefined,
    gateColumn: number | undefined,
    ack?: number,
  ): Worker[] {
    const targets = this.workers.filter((w) => !w.retired).map((w) => w.worker);
    for (const worker of targets) {
      worker.postMessage({
        type: 'write-slot',
        group: this.graph.groups[group]!,
        slot,
        adapter,
        gateColumn,
        ack,
      } satisfies HostMessage);
    }
    return targets;
  }

  /** Write `slot` in every live worker (undefined: clear it) and wait until each has. */
  private writeEverywhere(
    group: number,
    slot: number,
    adapter: SlotAdapter | undefined,
    gateColumn: number | undefined,
  ): Promise<void> {
    const ack = this.nextAck++;
    const targets = this.postWrite(group, slot, adapter, gateColumn, ack);
    if (targets.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(ack);
        reject(
          new MoeError(
            'ENGINE_TIMEOUT',
            `An engine worker did not take the adapter into its slot within ${this.options.slotWriteTimeoutMs} ms; retry the load.`,
          ),
        );
      }, this.options.slotWriteTimeoutMs);
      timer.unref();
      this.acks.set(ack, { waiting: new Set(targets), resolve, reject, timer });
    });
  }

  private settleAck(worker: Worker, ack: number, error?: string): void {
    const pending = this.acks.get(ack);
    if (pending === undefined) return;
    if (error !== undefined) {
      this.acks.delete(ack);
      clearTimeout(pending.timer);
      pending.reject(
        new MoeError(
          'ENGINE_FAILED',
          `An engine worker could not write the adapter's slot: ${error}`,
        ),
      );
      return;
    }
    pending.waiting.delete(worker);
    if (pending.waiting.size === 0) {
      this.acks.delete(ack);
      clearTimeout(pending.timer);
      pending.resolve();
    }
  }

  // --- dispatch -----------------------------------------------------------------------------

  private pump(): void {
    while (this.queue.length > 0) {
      const target = this.pickWorker();
      if (target === undefined) break;
      this.dispatch(target, this.queue.shift()!);
    }
    if (this.closing !== undefined) this.maybeFinishDrain();
  }

  /** The ready worker with the fewest batches in flight. */
  private pickWorker(): WorkerSlot | undefined {
    let best: WorkerSlot | undefined;
    for (const w of this.workers) {
      if (!w.ready || w.retired || w.inFlight.size >= this.options.pipelineDepth) continue;
      if (best === undefined || w.inFlight.size < best.inFlight.size) best = w;
    }
    return best;
  }

  private dispatch(target: WorkerSlot, batch: PendingBatch): void {
    const view = this.view();
    const outcomes: (ItemOutcome | undefined)[] = [];
    const plans: ItemPlan[] = [];
    const runIndexes: number[] = [];
    batch.items.forEach((item, i) => {
      try {
        plans.push(planItem(view, item.routing));
        runIndexes.push(i);
        outcomes.push(undefined);
      } catch (error) {
        if (!(error instanceof MoeError)) throw error;
        outcomes.push({ ok: false, error });
      }
    });
    // Adapters the batch names explicitly must be in slots: write the missing ones now (ahead of
    // the run in every worker's queue), evicting the least recently used the batch does not need.
    this.graph.groups.forEach((_, g) => {
      const needed = new Set<string>();
      for (const plan of plans) {
        const groupPlan = plan[g]!;
        if (groupPlan.mode === 'fixed') for (const [id] of groupPlan.weights) needed.add(id);
      }
      const table = this.tables[g]!;
      for (const id of needed) {
        if (table.slotOf(id) !== undefined) continue;
        const cached = this.cache.get(id);
        const found = cached === undefined ? undefined : table.findSlot(needed);
        if (cached === undefined || found === undefined) {
          this.failItemsNaming(plans, runIndexes, outcomes, g, id);
          continue;
        }
        table.assign(found.slot, id, false);
        this.postWrite(g, found.slot, cached.adapter, cached.gateColumn);
        this.emit('slot-miss', {
          group: this.graph.groups[g]!.id,
          adapter: id,
          evicted: found.evicted,
        });
      }
      table.touch(needed);
    });
    const running = runIndexes.filter((i) => outcomes[i] === undefined);
    const runningPlans = running.map((i) => plans[runIndexes.indexOf(i)]!);
    if (running.length === 0) {
      batch.resolve({
        items: outcomes as ItemOutcome[],
        timings: { backboneMs: 0, bankSyncMs: 0, graphMs: 0 },
        paddedTokens: 0,
      });
      return;
    }

    const rows = running.map((i) => batch.items[i]!.ids);
    const seq = Math.max(...rows.map((ids) => ids.length));
    const pad = BigInt(this.graph.worker.padTokenId);
    const inputIds = new BigInt64Array(rows.length * seq).fill(pad);
    const attentionMask = new BigInt64Array(rows.length * seq);
    rows.forEach((ids, b) => {
      for (let t = 0; t < ids.length; t++) {
        inputIds[b * seq + t] = BigInt(ids[t]!);
        attentionMask[b * seq + t] = 1n;
      }
    });
    const groups = this.graph.groups.map((group, g) => {
      const table = this.tables[g]!;
      const slotOf = (id: string) => table.slotOf(id)!;
      const gateSlots = group.gated
        ? table.occupied().filter(({ id }) => this.cache.get(id)?.gateColumn !== undefined)
        : [];
      return groupFeeds(
        runningPlans.map((plan) => plan[g]!),
        group.slots,
        slotOf,
        gateSlots,
      );
    });
    const id = this.nextBatchId++;
    const timer = setTimeout(() => this.onBatchTimeout(target, id), this.options.batchTimeoutMs);
    timer.unref();
    target.inFlight.set(id, {
      batch,
      outcomes,
      runIndexes: running,
      slotIds: this.tables.map((table) => table.snapshot()),
      paddedTokens: rows.length * seq,
      timer,
    });
    const message: HostMessage = {
      type: 'run',
      id,
      batchSize: rows.length,
      sequenceLength: seq,
      inputIds,
      attentionMask,
      groups,
    };
    const transfer = [
      inputIds.buffer,
      attentionMask.buffer,
      ...groups.flatMap((g) => [g.bias.buffer, g.gateScale.buffer, g.k.buffer, g.topP.buffer]),
    ] as ArrayBuffer[];
    target.worker.postMessage(message, transfer);
  }

  /** Items that need adapter `id` of group g, which can have no slot now: 503, retriable. */
  private failItemsNaming(
    plans: ItemPlan[],
    runIndexes: number[],
    outcomes: (ItemOutcome | undefined)[],
    g: number,
    id: string,
  ): void {
    const group = this.graph.groups[g]!;
    const error = new MoeError(
      'ADAPTER_SLOTS_BUSY',
      `Adapter '${id}' needs a slot of group '${group.id}', and all ${group.slots} hold adapters this batch or the gate needs; retry in a moment.`,
      { group: group.id, adapter: id, retryAfterSeconds: 1 },
    );
    plans.forEach((plan, row) => {
      const groupPlan = plan[g]!;
      if (groupPlan.mode === 'fixed' && groupPlan.weights.some(([name]) => name === id)) {
        outcomes[runIndexes[row]!] = { ok: false, error };
      }
    });
  }

  private settle(
    target: WorkerSlot,
    id: number,
    outputs: RunOutputs | Error,
    timings?: StageTimings,
  ): void {
    const flight = target.inFlight.get(id);
    if (flight === undefined) return;
    target.inFlight.delete(id);
    clearTimeout(flight.timer);
    if (outputs instanceof Error) {
      flight.batch.reject(outputs);
    } else {
      const results = decodeBatch(this.graph, outputs, flight.slotIds, flight.runIndexes.length);
      flight.runIndexes.forEach((itemIndex, row) => {
        flight.outcomes[itemIndex] = { ok: true, result: results[row]! };
      });
      flight.batch.resolve({
        items: flight.outcomes as ItemOutcome[],
        timings: timings ?? { backboneMs: 0, bankSyncMs: 0, graphMs: 0 },
        paddedTokens: flight.paddedTokens,
      });
    }
    this.pump();
  }

  // --- worker lifecycle ---------------------------------------------------------------------

  private spawn(index: number, initial: boolean): Promise<void> {
    const worker = new Worker(new URL('./engine-worker.js', import.meta.url), {
      workerData: {
        graph: this.graph.worker,
        session: {
          // After a fallback, replacements start on cpu at once: every worker runs on one provider.
          executionProvider: this.providerInUse ?? this.options.executionProvider,
          deviceId: this.options.deviceId,
          allowFallback: this.options.allowProviderFallback,
          intraOpThreads: this.options.intraOpThreads,
          bankResidency: this.options.bankResidency,
        },
        allowFaultInjection: this.options.allowFaultInjection,
      },
    });
    const slot: WorkerSlot = { index, worker, ready: false, retired: false, inFlight: new Map() };
    this.workers[index] = slot;
    // Catch up: every occupied slot, queued before any batch can reach this worker.
    this.tables.forEach((table, g) => {
      for (const { slot: s, id } of table.occupied()) {
        const cached = this.cache.get(id);
        if (cached === undefined) continue;
        worker.postMessage({
          type: 'write-slot',
          group: this.graph.groups[g]!,
          slot: s,
          adapter: cached.adapter,
          gateColumn: cached.gateColumn,
          ack: undefined,
        } satisfies HostMessage);
      }
    });
    return new Promise((resolve, reject) => {
      let initError: string | undefined;
      let providerError: MoeError | undefined;
      const startTimer = setTimeout(() => {
        if (slot.ready || slot.retired) return;
        initError = `not ready within ${this.options.startTimeoutMs} ms`;
        this.retire(slot);
        reject(new MoeError('ENGINE_TIMEOUT', `An engine worker did not start: ${initError}.`));
        if (!initial && this.closing === undefined) this.respawnLater(index, initError);
      }, this.options.startTimeoutMs);
      startTimer.unref();
      worker.on('message', (message: WorkerMessage) => {
        if (slot.retired && message.type !== 'slot-written' && message.type !== 'slot-failed')
          return;
        switch (message.type) {
          case 'ready':
            clearTimeout(startTimer);
            slot.ready = true;
            this.providerInUse = message.provider;
            this.bankResidencyInUse = message.bankResidency;
            this.fallbackReason ??= message.fallbackReason;
            this.emit('worker-ready', { worker: index, provider: message.provider });
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
          case 'slot-written':
            this.settleAck(worker, message.ack);
            return;
          case 'slot-failed':
            if (message.ack !== undefined) {
              this.settleAck(worker, message.ack, message.message);
              return;
            }
            // A catch-up or on-demand write failed: this worker's slots no longer match the
            // table, so nothing it runs can be trusted. Replace it.
            this.replace(slot, `a slot write failed: ${message.message}`);
            return;
        }
      });
      worker.on('error', (error) => {
        initError ??= error.message;
      });
      worker.on('exit', (code) => {
        clearTimeout(startTimer);
        this.forgetAcks(worker);
        if (slot.retired) {
          this.maybeFinishDrain();
          return;
        }
        const reason = initError ?? `exit code ${code}`;
        if (!slot.ready) {
          // Never came up: a broken graph is not worth restarting in a loop.
          slot.retired = true;
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

  /** A worker that exits no longer owes acks; its replacement is caught up on spawn. */
  private forgetAcks(worker: Worker): void {
    for (const [ack] of this.acks) this.settleAck(worker, ack);
  }

  /** Stop giving `slot` work and ask it to exit once its current message is done. */
  private retire(slot: WorkerSlot): void {
    slot.retired = true;
    slot.ready = false;
    slot.worker.postMessage({ type: 'stop' } satisfies HostMessage);
    this.forgetAcks(slot.worker);
  }

  private onBatchTimeout(slot: WorkerSlot, id: number): void {
    if (!slot.inFlight.has(id) || slot.retired) return;
    this.replace(
      slot,
      'batch timeout',
      new MoeError(
        'ENGINE_TIMEOUT',
        `The engine did not finish this batch within ${this.options.batchTimeoutMs} ms; its worker is being replaced. Retry the request.`,
        { retryAfterSeconds: 1 },
      ),
    );
  }

  /**
   * Give up on a live worker that cannot be trusted (wedged, or its slots out of step): it takes
   * no more work and stops by message once its current call returns; its batches fail with
   * `error`; a replacement starts (caught up on every slot).
   */
  private replace(
    slot: WorkerSlot,
    reason: string,
    error = new MoeError(
      'ENGINE_WORKER_CRASHED',
      `The engine worker running this batch was replaced (${reason}). Retry the request.`,
      { retryAfterSeconds: 1 },
    ),
  ): void {
    if (slot.retired) return;
    this.retire(slot);
    for (const [batchId, flight] of slot.inFlight) {
      clearTimeout(flight.timer);
      slot.inFlight.delete(batchId);
      flight.batch.reject(error);
    }
    this.restarts++;
    this.emit('worker-restart', { worker: slot.index, reason });
    if (this.closing === undefined) this.respawnLater(slot.index, reason);
    else this.maybeFinishDrain();
  }

  private onWorkerExit(slot: WorkerSlot, code: number, reason: string): void {
    slot.ready = false;
    const crashed = new MoeError(
      'ENGINE_WORKER_CRASHED',
      `The engine worker running this batch stopped unexpectedly (${reason}); the batch was not completed. Retry the request.`,
    );
    for (const [id] of slot.inFlight) this.settle(slot, id, crashed);
    slot.retired = true;
    if (this.closing !== undefined) {
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
      this.workers.map(
        (slot) =>
          new Promise<void>((resolve) => {
            if (slot.worker.threadId === -1) return resolve(); // already exited
            slot.worker.once('exit', () => resolve());
            slot.retired = true;
            slot.worker.postMessage({ type: 'stop' } satisfies HostMessage);
          }),
      ),
    );
  }

  private maybeFinishDrain(): void {
    if (this.drainResolve === undefined) return;
    const busy = this.workers.some((slot) => !slot.retired && slot.inFlight.size > 0);
    const canRun = this.workers.some((slot) => slot.ready && !slot.retired);
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
