/**
 * The API role of queue mode: `QueueInference` implements `Inference` (and `JobQueue`) over a
 * BullMQ queue. It validates and tokenizes requests here (the pack, tokenizer and adapter
 * registry, no engine), puts one job per request on the queue, and answers from the workers'
 * replies.
 *
 * Contracts
 * - Replies come back on this node's own stream (`P:Q:replies:<node>`, contract.ts), read by one
 *   blocking XREAD loop into a map of pending requests: a node reads only its own answers, so its
 *   work per request does not grow with the number of API nodes. The entry is registered before
 *   `add`, so a reply can never arrive before its waiter exists; read entries are deleted.
 * - A pending request is settled exactly once: by its job's first reply, by its deadline
 *   (REQUEST_TIMEOUT), by its client leaving, or by Redis going away. Anything that arrives later
 *   for the same job (a second reply after a stall) is ignored. A request that is settled
 *   without a reply removes its job if no worker holds it yet, so it never runs.
 * - Replies can be missed (Redis restarted without its data): a sweep asks Redis for the job of
 *   requests waiting longer than SWEEP_AFTER_MS, and fails those whose job is gone twice in a
 *   row (once could be a reply on its way).
 * - Redis down: `infer` and `submit` fail at once with 503 QUEUE_UNAVAILABLE (the connection
 *   status is checked before `add`, `add` itself is bounded by QUEUE_ADD_TIMEOUT_MS), and
 *   requests already waiting get QUEUE_UNAVAILABLE once the link has been down LOST_AFTER_MS.
 *   ioredis reconnects by itself; nothing here exits the process.
 * - Adapters: this node's registry follows the cluster's (registry-sync.ts); requests are
 *   validated against it and their job carries its version. Loads and unloads are admin changes
 *   through `RegistrySync.change`: applied here first (embedded mode's validation and errors),
 *   then committed and applied by every worker, or rolled back with a worker's error.
 */

import { randomBytes, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { type Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { AdapterInfo, LoadAdapterOptions } from '../adapters/registry.js';
import { MoeError } from '../errors.js';
import type { InferRequest, InferResult, ModelFrontend, PreparedItem } from '../inference/model.js';
import type {
  InferAnswer,
  Inference,
  InferOptions,
  JobQueue,
  JobState,
  JobStatus,
  ModelDescription,
  Readiness,
  ReturnField,
} from '../inference/service.js';
import type { Metrics } from '../metrics.js';
import type { Logger } from '../util/log.js';
import {
  CONTRACT_VERSION,
  decodeEmbedding,
  decodeFailure,
  EVENTS_MAX_LEN,
  JOB_NAMES,
  type JobData,
  type JobName,
  type JobResult,
  jobOptions,
  parseReply,
  type QueueSettings,
  queueKeys,
} from './contract.js';
import { connectRedis, isUp, RedisClock, within } from './redis.js';
import { type RegistryEntry, RegistrySync } from './registry-sync.js';

export interface QueueClientOptions {
  readonly settings: QueueSettings;
  /** Longest wait for Redis to accept a job (QUEUE_ADD_TIMEOUT_MS). */
  readonly addTimeoutMs: number;
  /** Admission bound of this API node: inputs of requests waiting for their answer. */
  readonly maxQueuedItems: number;
  /** Deadline of durable jobs (JOB_TIMEOUT_MS). */
  readonly jobTimeoutMs: number;
  /** ADAPTER_ROOT: where adapter folders are, here and (the same volume) on every worker. */
  readonly adapterRoot: string;
  /** ADAPTER_SYNC_TIMEOUT_MS. */
  readonly syncTimeoutMs: number;
  readonly log: Logger;
}

/** Requests waiting longer than this get their job looked up in Redis (missed replies). */
const SWEEP_AFTER_MS = 1000;
/** Redis unreachable this long: requests waiting for an answer get QUEUE_UNAVAILABLE. */
const LOST_AFTER_MS = 1000;
/** Most jobs looked up per sweep (one sweep a second). */
const SWEEP_LIMIT = 256;
/** A scrape of /metrics waits this long for the queue counts at most. */
const COUNTS_TIMEOUT_MS = 500;
/** Most replies one read takes; a read blocks this long at most when none is there. */
const REPLY_BATCH = 1024;
const REPLY_BLOCK_MS = 2000;
/** Replies read are deleted within this long. */
const REPLY_TRIM_MS = 100;

interface Pending {
  readonly items: readonly PreparedItem[];
  /** performance.now() when `add` succeeded; undefined until then. */
  addedAt: number | undefined;
  checkedAt: number;
  /** The last sweep found no job: the next one that finds none fails the request. */
  missing: boolean;
  readonly resolve: (result: JobResult) => void;
  readonly reject: (error: unknown) => void;
}

export class QueueInference implements Inference, JobQueue {
  /** This node's name: its reply stream, and the `replyTo` of its synchronous jobs. */
  readonly node = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  /** Commands (add, state reads, the registry): fails fast while disconnected. */
  private readonly redis: Redis;
  /** The blocking XREAD of this node's reply stream needs a link of its own. */
  private readonly replyRedis: Redis;
  private readonly queue: Queue<JobData, JobResult | null, JobName>;
  private readonly clock: RedisClock;
  private readonly registry: RegistrySync;
  private readonly replyStream: string;
  /** The id of the last reply read. */
  private replyCursor = '0';
  private reading: Promise<void> | undefined;
  private trimTimer: NodeJS.Timeout | undefined;
  private readonly pending = new Map<string, Pending>();
  /** Jobs waiting for the end of this event-loop turn to be added together. */
  private readonly adds: {
    readonly name: JobName;
    readonly data: JobData;
    readonly opts: ReturnType<typeof jobOptions>;
    readonly resolve: () => void;
    readonly reject: (error: unknown) => void;
  }[] = [];
  private pendingItems = 0;
  private readonly sweeper: NodeJS.Timeout;
  private lostTimer: NodeJS.Timeout | undefined;
  private draining = false;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly modelTag: string;

  constructor(
    private readonly front: ModelFrontend,
    private readonly metrics: Metrics,
    private readonly options: QueueClientOptions,
  ) {
    const { settings, log } = options;
    this.modelTag = `${front.name}@${front.pack.manifest.version}`;
    this.redis = connectRedis(settings.redisUrl, {
      name: `moe-api-${process.pid}`,
      failFast: true,
      onChange: (up, error) => this.onRedisChange(up, error),
    });
    this.replyRedis = connectRedis(settings.redisUrl, { name: `moe-api-replies-${process.pid}` });
    this.clock = new RedisClock(this.redis);
    const keys = queueKeys(settings);
    this.replyStream = keys.replies(this.node);
    this.queue = new Queue<JobData, JobResult | null, JobName>(settings.name, {
      prefix: settings.prefix,
      connection: this.redis,
      streams: { events: { maxLen: EVENTS_MAX_LEN } },
    });
    // BullMQ re-emits connection errors; the link state is logged once by onRedisChange.
    this.queue.on('error', () => undefined);
    this.registry = new RegistrySync(
      {
        load: (folder, id, group) => front.registry.load(folder, { id, group }),
        unload: (id) => front.registry.unload(id),
      },
      {
        redis: this.redis,
        redisUrl: settings.redisUrl,
        keys,
        pack: front.pack,
        adapterRoot: options.adapterRoot,
        role: 'api',
        name: this.node,
        syncTimeoutMs: options.syncTimeoutMs,
        log,
      },
    );
    this.registry.on('change', () => {
      metrics.registryVersion.set(this.registry.version);
      metrics.registrySynced.set(this.registry.synced ? 1 : 0);
      this.recordAdapterCounts();
    });
    this.sweeper = setInterval(() => void this.sweep(), SWEEP_AFTER_MS);
    this.sweeper.unref();

    metrics.buildInfo.set({ model: front.name, version: front.pack.manifest.version }, 1);
    metrics.registryVersion.set(0);
    metrics.registrySynced.set(1);
    this.recordAdapterCounts();
    metrics.onCollect(() => this.collectQueueCounts());
    log('info', 'queue mode: requests go to Redis', {
      queue: settings.name,
      prefix: settings.prefix,
      redis: redactUrl(settings.redisUrl),
      node: this.node,
    });
  }

  /** Follow the adapter registry (catching up first) and read this node's replies. */
  async start(): Promise<void> {
    await this.registry.start();
    this.reading ??= this.readReplies();
  }

  // --- Inference ----------------------------------------------------------------------------

  async infer(request: InferRequest, options: InferOptions): Promise<InferAnswer> {
    this.assertOpen();
    const t0 = performance.now();
    const items = await this.front.prepare(request);
    // Read after validating: a job may claim a newer registry than it was checked against
    // (harmless: a worker then waits for a version it needs not), never an older one.
    const registryVersion = this.registry.version;
    const tokenizeMs = performance.now() - t0;
    this.metrics.stageDuration.observe({ stage: 'tokenize' }, tokenizeMs / 1000);
    if (items.length === 0) {
      const none = { queueMs: 0, forwardMs: 0, waitMs: 0 };
      return this.toAnswer({ v: CONTRACT_VERSION, results: [], timings: none }, [], tokenizeMs);
    }
    this.assertAdmits(items.length);
    const id = randomUUID();
    const answer = this.await(id, items, options);
    const budgetMs = Math.max(0, options.deadline - performance.now());
    const data = {
      ...this.jobData(items, budgetMs, registryVersion, this.node, []),
      ...(options.background === true ? { background: true } : {}),
    };
    this.add(JOB_NAMES.request, data, id).then(
      () => {
        const entry = this.pending.get(id);
        if (entry !== undefined) entry.addedAt = performance.now();
      },
      (error: unknown) => this.settle(id, error),
    );
    const result = await answer;
    return this.toAnswer(result, items, tokenizeMs);
  }

  describe(): ModelDescription {
    return this.front.describe();
  }

  adapters(): AdapterInfo[] {
    return this.front.registry.list();
  }

  async loadAdapter(folder: string, options: LoadAdapterOptions = {}): Promise<AdapterInfo> {
    this.assertOpen();
    return this.registry.change(async (current, version) => {
      const before = new Map(this.front.registry.list().map((a) => [a.id, a.loadedAt?.getTime()]));
      const info = await this.front.registry.load(folder, options);
      const was = before.get(info.id);
      if (was !== undefined && was === info.loadedAt?.getTime()) {
        return { result: info, next: undefined }; // the same contents again: nothing changes
      }
      const entry = this.registry.entry(info.id, info.group, folder, version);
      return { result: info, next: upsert(current, entry) };
    });
  }

  async unloadAdapter(id: string): Promise<void> {
    this.assertOpen();
    return this.registry.change(async (current) => {
      await this.front.registry.unload(id); // ADAPTER_NOT_FOUND, ADAPTER_LAST_IN_GROUP, ...
      const served = current.some((entry) => entry.id === id);
      // Not served: a failed load's record, cleared here only.
      return { result: undefined, next: served ? current.filter((e) => e.id !== id) : undefined };
    });
  }

  readiness(): Readiness {
    const checks = {
      model_loaded: true,
      redis: isUp(this.redis),
      adapters_synced: this.registry.synced,
      not_draining: !this.draining,
    };
    return {
      ready: Object.values(checks).every(Boolean),
      checks,
      executionProvider: undefined, // the workers run the model
      executionProviderRequested: undefined,
      providerFallbackReason: undefined,
    };
  }

  /** After the HTTP server stopped taking requests: answer what waits, then close the links. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      const limit = performance.now() + 60_000;
      while (this.pending.size > 0 && performance.now() < limit) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      this.closed = true;
      clearInterval(this.sweeper);
      clearTimeout(this.lostTimer);
      if (this.trimTimer !== undefined) {
        clearTimeout(this.trimTimer);
        await this.redis
          .xtrim(this.replyStream, 'MINID', after(this.replyCursor))
          .catch(() => undefined);
      }
      await this.registry.close();
      await this.queue.close().catch(() => undefined);
      this.clock.close();
      this.replyRedis.disconnect();
      await this.reading;
      this.redis.disconnect();
    })();
    return this.closing;
  }

  // --- JobQueue -----------------------------------------------------------------------------

  async submit(
    request: InferRequest,
    options: { readonly returnFields: readonly ReturnField[] },
  ): Promise<JobStatus> {
    this.assertOpen();
    const items = await this.front.prepare(request);
    const registryVersion = this.registry.version;
    if (items.length === 0) {
      throw new MoeError('INPUT_INVALID', 'The request has no inputs; send at least one.', {
        field: 'inputs',
      });
    }
    const id = randomUUID();
    const createdAt = new Date();
    const data = this.jobData(
      items,
      this.options.jobTimeoutMs,
      registryVersion,
      null,
      options.returnFields,
    );
    await this.add(JOB_NAMES.durable, data, id);
    return {
      id,
      state: 'waiting',
      createdAt,
      finishedAt: undefined,
      attempts: 0,
      returnFields: options.returnFields,
      answer: undefined,
      error: undefined,
    };
  }

  async status(id: string): Promise<JobStatus> {
    this.assertRedis();
    // State first, then the job: completed and failed are final, so a job read after its state
    // said so carries its result or reason. (Job first, state second reported a job that finished
    // in between as 'failed' with no reason, i.e. INTERNAL, or 'completed' with no result.)
    const read = async () => {
      const state = await this.queue.getJobState(id);
      if (state === 'unknown') return undefined;
      const job = await this.queue.getJob(id);
      return job === undefined || job.data.replyTo !== null ? undefined : { job, state };
    };
    const found = await within(read(), this.options.addTimeoutMs, unavailable);
    if (found === undefined) {
      throw new MoeError(
        'JOB_NOT_FOUND',
        `No job '${id}': it never existed, or it finished more than JOB_RESULT_TTL_SECONDS ago and its result was removed.`,
        { id },
      );
    }
    const { job } = found;
    const state = publicState(found.state);
    const items = job.data.items.map(toPreparedShape);
    const result = job.returnvalue;
    return {
      id,
      state,
      createdAt: new Date(job.timestamp),
      finishedAt: job.finishedOn === undefined ? undefined : new Date(job.finishedOn),
      attempts: job.attemptsStarted,
      returnFields: job.data.returnFields ?? [],
      answer:
        state === 'completed' && result !== null ? this.toAnswer(result, items, 0) : undefined,
      error: state === 'failed' ? decodeFailure(job.failedReason) : undefined,
    };
  }

  // --- the pending map: the one place a waiting request is settled --------------------------

  private await(id: string, items: readonly PreparedItem[], options: InferOptions) {
    return new Promise<JobResult>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.metrics.rejected.inc({ reason: 'timeout' });
          this.abandon(
            id,
            new MoeError(
              'REQUEST_TIMEOUT',
              'The request was not answered within its deadline; its job will not run past it. Retry later, add workers, or raise REQUEST_TIMEOUT_MS.',
            ),
          );
        },
        Math.max(0, options.deadline - performance.now()),
      );
      const onAbort = () => {
        this.metrics.rejected.inc({ reason: 'client_gone' });
        this.abandon(id, new MoeError('CLIENT_CLOSED', 'The client went away before the answer.'));
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.pendingItems += items.length;
      this.pending.set(id, {
        items,
        addedAt: undefined,
        checkedAt: 0,
        missing: false,
        resolve: (result) => {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
          resolve(result);
        },
        reject: (error) => {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      });
    });
  }

  /**
   * Settle a pending request once; unknown ids (repeats, requests settled already) are ignored.
   * True when this settled it.
   */
  private settle(id: string, outcome: JobResult | unknown): boolean {
    const entry = this.pending.get(id);
    if (entry === undefined) return false;
    this.pending.delete(id);
    this.pendingItems -= entry.items.length;
    if (isJobResult(outcome)) entry.resolve(outcome);
    else entry.reject(outcome);
    return true;
  }

  /** Settle without a reply, and remove the job unless a worker holds it: it will not run. */
  private abandon(id: string, error: MoeError): void {
    if (!this.settle(id, error)) return;
    if (isUp(this.redis)) this.queue.remove(id).catch(() => undefined);
  }

  /** Read this node's reply stream until closed; delete what was read. */
  private async readReplies(): Promise<void> {
    while (!this.closed) {
      let read: [string, [string, string[]][]][] | null;
      try {
        read = (await this.replyRedis.xread(
          'COUNT',
          REPLY_BATCH,
          'BLOCK',
          REPLY_BLOCK_MS,
          'STREAMS',
          this.replyStream,
          this.replyCursor,
        )) as [string, [string, string[]][]][] | null;
      } catch {
        if (this.closed) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      if (read === null) continue;
      for (const [, entries] of read) {
        for (const [entryId, fields] of entries) {
          this.replyCursor = entryId;
          const reply = parseReply(fields);
          if (reply === undefined) continue;
          const answered = this.settle(
            reply.job,
            'result' in reply ? reply.result : decodeFailure(reply.failure),
          );
          this.metrics.replies.inc({ outcome: answered ? 'answered' : 'late' });
        }
      }
      this.trimSoon();
    }
  }

  /**
   * Delete what has been read, REPLY_TRIM_MS after the first read since the last deletion: one
   * command for all the reads in between (each write to Redis costs CPU; see corkTurn).
   */
  private trimSoon(): void {
    this.trimTimer ??= setTimeout(() => {
      this.trimTimer = undefined;
      this.redis.xtrim(this.replyStream, 'MINID', after(this.replyCursor)).catch(() => undefined);
    }, REPLY_TRIM_MS);
  }

  /** Look up the jobs of requests that waited long: their reply may have been lost. */
  private async sweep(): Promise<void> {
    if (!isUp(this.redis) || this.pending.size === 0) return;
    const now = performance.now();
    const due: [string, Pending][] = [];
    for (const [id, entry] of this.pending) {
      if (entry.addedAt === undefined || now - entry.addedAt < SWEEP_AFTER_MS) continue;
      if (now - entry.checkedAt < SWEEP_AFTER_MS) continue;
      entry.checkedAt = now;
      due.push([id, entry]);
      if (due.length >= SWEEP_LIMIT) break;
    }
    await Promise.allSettled(
      due.map(async ([id, entry]) => {
        const state = await this.queue.getJobState(id);
        if (state !== 'unknown') {
          entry.missing = false;
        } else if (entry.missing) {
          this.settle(id, jobLost());
        } else {
          entry.missing = true; // maybe finished just now, its reply on the way: look again
        }
      }),
    );
  }

  private onRedisChange(up: boolean, error: Error | undefined): void {
    if (up) {
      clearTimeout(this.lostTimer);
      this.lostTimer = undefined;
      this.options.log('info', 'Redis reachable: queue mode serving');
      return;
    }
    this.options.log(
      'warn',
      'Redis unreachable: requests get 503 QUEUE_UNAVAILABLE until it returns',
      {
        error: error?.message,
      },
    );
    this.lostTimer ??= setTimeout(() => {
      this.lostTimer = undefined;
      if (isUp(this.redis)) return;
      for (const id of [...this.pending.keys()]) {
        this.metrics.rejected.inc({ reason: 'queue_unavailable' });
        this.settle(
          id,
          new MoeError(
            'QUEUE_UNAVAILABLE',
            'The connection to Redis was lost while this request waited for its answer; retry the request.',
            { retryAfterSeconds: 1 },
          ),
        );
      }
    }, LOST_AFTER_MS);
  }

  // --- helpers ------------------------------------------------------------------------------

  private async add(name: JobName, data: JobData, id: string): Promise<void> {
    this.assertRedis();
    try {
      await within(this.coalesce(name, data, id), this.options.addTimeoutMs, unavailable);
    } catch (error) {
      this.metrics.rejected.inc({ reason: 'queue_unavailable' });
      throw error instanceof MoeError ? error : unavailable();
    }
  }

  /**
   * Jobs added during one turn of the event loop go to Redis together (`addBulk`: one write,
   * one transaction) at the end of that turn. Under load many requests arrive per turn; alone, a
   * job waits for nothing (setImmediate runs right after the current I/O callbacks).
   */
  private coalesce(name: JobName, data: JobData, id: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const opts = jobOptions(this.options.settings, id, name);
      this.adds.push({ name, data, opts, resolve, reject });
      if (this.adds.length > 1) return;
      setImmediate(() => {
        const batch = this.adds.splice(0);
        const added =
          batch.length === 1
            ? this.queue.add(batch[0]!.name, batch[0]!.data, batch[0]!.opts)
            : this.queue.addBulk(batch);
        added.then(
          () => {
            for (const job of batch) job.resolve();
          },
          (error: unknown) => {
            for (const job of batch) job.reject(error);
          },
        );
      });
    });
  }

  private jobData(
    items: readonly PreparedItem[],
    budgetMs: number,
    registryVersion: number,
    replyTo: string | null,
    returnFields: readonly ReturnField[],
  ): JobData {
    const first = items[0]!; // prepare() gives >= 1 item: the schema requires one input
    return {
      v: CONTRACT_VERSION,
      model: this.modelTag,
      routing: first.routing,
      tasks: first.tasks ?? null,
      items: items.map((item) => ({ ids: Array.from(item.ids), truncated: item.truncated })),
      budgetMs,
      queuedAt: this.clock.now(),
      registryVersion,
      replyTo,
      returnFields,
    };
  }

  private toAnswer(
    result: JobResult,
    items: readonly Pick<PreparedItem, 'ids' | 'truncated'>[],
    tokenizeMs: number,
  ): InferAnswer {
    let inputTokens = 0;
    const results: InferResult[] = result.results.map((item, i) => {
      const tokens = items[i]!.ids.length;
      inputTokens += tokens;
      return {
        routing: item.routing,
        outputs: item.outputs,
        embedding: decodeEmbedding(item.embedding),
        tokens,
        truncated: items[i]!.truncated,
      };
    });
    const t = result.timings;
    this.metrics.stageDuration.observe({ stage: 'queue' }, (t.waitMs + t.queueMs) / 1000);
    this.metrics.inputTokens.inc(inputTokens);
    return {
      model: this.front.name,
      results,
      inputTokens,
      timings: {
        tokenizeMs,
        queueMs: t.waitMs + t.queueMs,
        forwardMs: t.forwardMs,
      },
    };
  }

  private recordAdapterCounts(): void {
    for (const group of this.front.view.groups) {
      this.metrics.adaptersLoaded.set({ group: group.id }, group.adapters.length);
    }
  }

  private async collectQueueCounts(): Promise<void> {
    if (!isUp(this.redis)) return;
    try {
      const counts = await within(
        this.queue.getJobCounts('waiting', 'active', 'delayed', 'failed'),
        COUNTS_TIMEOUT_MS,
        unavailable,
      );
      for (const [state, count] of Object.entries(counts)) {
        this.metrics.queueJobs.set({ state }, count);
      }
    } catch {
      // Redis went away during the scrape: keep the last counts; readiness shows the outage.
    }
  }

  private assertOpen(): void {
    if (this.draining) {
      throw new MoeError('DRAINING', 'The server is shutting down; retry on another instance.');
    }
    this.assertRedis();
  }

  private assertRedis(): void {
    if (!isUp(this.redis)) {
      this.metrics.rejected.inc({ reason: 'queue_unavailable' });
      throw unavailable();
    }
  }

  private assertAdmits(inputs: number): void {
    if (this.pendingItems + inputs > this.options.maxQueuedItems) {
      this.metrics.rejected.inc({ reason: 'overloaded' });
      throw new MoeError(
        'OVERLOADED',
        `This server waits for ${this.pendingItems} inputs already (limit ${this.options.maxQueuedItems}, MAX_QUEUED_ITEMS); retry after a second.`,
        { retryAfterSeconds: 1 },
      );
    }
  }
}

/** `entries` with `entry` in place of the one with its id (same position), or appended. */
function upsert(entries: readonly RegistryEntry[], entry: RegistryEntry): RegistryEntry[] {
  const at = entries.findIndex((e) => e.id === entry.id);
  return at < 0 ? [...entries, entry] : entries.map((e, i) => (i === at ? entry : e));
}

/** The stream id right after `id` ("ms-seq"): XTRIM MINID of it deletes `id` and all before. */
function after(id: string): string {
  const [ms, seq] = id.split('-');
  return `${ms}-${Number(seq ?? 0) + 1}`;
}

function unavailable(): MoeError {
  return new MoeError(
    'QUEUE_UNAVAILABLE',
    'The job queue (Redis) cannot be reached; nothing was queued. Retry after a second; /health/ready shows when Redis is back.',
    { retryAfterSeconds: 1 },
  );
}

function jobLost(): MoeError {
  return new MoeError(
    'QUEUE_UNAVAILABLE',
    'The job of this request is gone from Redis without an answer (Redis restarted without its data?); retry the request.',
    { retryAfterSeconds: 1 },
  );
}

function isJobResult(value: unknown): value is JobResult {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { v?: unknown }).v === CONTRACT_VERSION &&
    Array.isArray((value as { results?: unknown }).results)
  );
}

function publicState(state: Awaited<ReturnType<Job['getState']>>): JobState {
  switch (state) {
    case 'completed':
    case 'failed':
    case 'active':
    case 'delayed':
      return state;
    default:
      return 'waiting'; // waiting, prioritized, waiting-children
  }
}

function toPreparedShape(item: JobData['items'][number]): Pick<PreparedItem, 'ids' | 'truncated'> {
  return { ids: Int32Array.from(item.ids), truncated: item.truncated };
}

function redactUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.password !== '') parsed.password = '***';
  return parsed.toString();
}
