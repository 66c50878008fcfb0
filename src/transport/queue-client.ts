/**
 * The API role of queue mode: `QueueInference` implements `Inference` (and `JobQueue`) over a
 * BullMQ queue. It validates and tokenizes requests here (the pack and tokenizer, no engine),
 * puts one job per request on the queue, and answers from the workers' results.
 *
 * Contracts
 * - Results come back through ONE shared QueueEvents listener and a map of pending requests; the
 *   entry is registered before `add`, so a result can never arrive before its waiter exists.
 * - A pending request is settled exactly once: by its job's first `completed` or `failed` event,
 *   by its deadline (REQUEST_TIMEOUT), by its client leaving, or by Redis going away. Anything
 *   that arrives later for the same job (a second completion after a stall) is ignored.
 * - Events can be missed (the events link was down, the stream was trimmed, Redis restarted
 *   without its data): a sweep asks Redis for the state of requests waiting longer than
 *   SWEEP_AFTER_MS, and settles those that finished or vanished.
 * - Redis down: `infer` and `submit` fail at once with 503 QUEUE_UNAVAILABLE (the connection
 *   status is checked before `add`, `add` itself is bounded by QUEUE_ADD_TIMEOUT_MS), and
 *   requests already waiting get QUEUE_UNAVAILABLE once the link has been down LOST_AFTER_MS.
 *   ioredis reconnects by itself; nothing here exits the process.
 * - Adapters: API nodes serve the pack's adapter list read-only. Loading or unloading at run time
 *   is refused with QUEUE_MODE_UNSUPPORTED: it would have to reach every worker (and workers that
 *   start later), which a broadcast over the queue does not guarantee. Change the pack and
 *   restart the workers instead.
 */
import { randomUUID } from 'node:crypto';
import { type Job, Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import type { AdapterInfo } from '../adapters/registry.js';
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
  JOB_NAMES,
  type JobData,
  type JobName,
  type JobResult,
  jobOptions,
  type QueueSettings,
} from './contract.js';
import { connectRedis, isUp, within } from './redis.js';

export interface QueueClientOptions {
  readonly settings: QueueSettings;
  /** Longest wait for Redis to accept a job (QUEUE_ADD_TIMEOUT_MS). */
  readonly addTimeoutMs: number;
  /** Admission bound of this API node: inputs of requests waiting for their answer. */
  readonly maxQueuedItems: number;
  /** Deadline of durable jobs (JOB_TIMEOUT_MS). */
  readonly jobTimeoutMs: number;
  readonly log: Logger;
}

/** Requests waiting longer than this get their job's state read from Redis (missed events). */
const SWEEP_AFTER_MS = 1000;
/** Redis unreachable this long: requests waiting for an answer get QUEUE_UNAVAILABLE. */
const LOST_AFTER_MS = 1000;
/** Most job states read per sweep (one sweep a second). */
const SWEEP_LIMIT = 256;
/** A scrape of /metrics waits this long for the queue counts at most. */
const COUNTS_TIMEOUT_MS = 500;

interface Pending {
  readonly items: readonly PreparedItem[];
  /** performance.now() when `add` succeeded; undefined until then. */
  addedAt: number | undefined;
  checkedAt: number;
  readonly resolve: (result: JobResult) => void;
  readonly reject: (error: unknown) => void;
}

export class QueueInference implements Inference, JobQueue {
  /** Commands (add, state reads): fails fast while disconnected. */
  private readonly redis: Redis;
  /** QueueEvents' blocking XREAD needs a link of its own. */
  private readonly eventsRedis: Redis;
  private readonly queue: Queue<JobData, JobResult, JobName>;
  private readonly events: QueueEvents;
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
    this.eventsRedis = connectRedis(settings.redisUrl, { name: `moe-api-events-${process.pid}` });
    const base = { prefix: settings.prefix };
    this.queue = new Queue<JobData, JobResult, JobName>(settings.name, {
      ...base,
      connection: this.redis,
    });
    this.events = new QueueEvents(settings.name, { ...base, connection: this.eventsRedis });
    // BullMQ re-emits connection errors; the link state is logged once by onRedisChange.
    this.queue.on('error', () => undefined);
    this.events.on('error', () => undefined);
    this.events.on('completed', ({ jobId, returnvalue }) =>
      this.settle(jobId, returnvalue as unknown as JobResult),
    );
    this.events.on('failed', ({ jobId, failedReason }) =>
      this.settle(jobId, decodeFailure(failedReason)),
    );
    this.sweeper = setInterval(() => void this.sweep(), SWEEP_AFTER_MS);
    this.sweeper.unref();

    metrics.buildInfo.set({ model: front.name, version: front.pack.manifest.version }, 1);
    for (const group of front.view.groups) {
      metrics.adaptersLoaded.set({ group: group.id }, group.adapters.length);
    }
    metrics.onCollect(() => this.collectQueueCounts());
    log('info', 'queue mode: requests go to Redis', {
      queue: settings.name,
      prefix: settings.prefix,
      redis: redactUrl(settings.redisUrl),
    });
  }

  // --- Inference ----------------------------------------------------------------------------

  async infer(request: InferRequest, options: InferOptions): Promise<InferAnswer> {
    this.assertOpen();
    const t0 = performance.now();
    const items = this.front.prepare(request);
    const tokenizeMs = performance.now() - t0;
    this.metrics.stageDuration.observe({ stage: 'tokenize' }, tokenizeMs / 1000);
    if (items.length === 0) {
      const none = { queueMs: 0, forwardMs: 0, waitMs: 0 };
      return this.toAnswer({ v: CONTRACT_VERSION, results: [], timings: none }, [], tokenizeMs);
    }
    this.assertAdmits(items.length);
    const deadline = Date.now() + Math.max(0, options.deadline - performance.now());
    const id = randomUUID();
    const answer = this.await(id, items, options);
    this.add(JOB_NAMES.request, this.jobData(items, deadline, []), id).then(
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

  async loadAdapter(): Promise<AdapterInfo> {
    throw adaptersFixed();
  }

  async unloadAdapter(): Promise<void> {
    throw adaptersFixed();
  }

  readiness(): Readiness {
    const checks = { model_loaded: true, redis: isUp(this.redis), not_draining: !this.draining };
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
      clearInterval(this.sweeper);
      clearTimeout(this.lostTimer);
      await Promise.allSettled([this.events.close(), this.queue.close()]);
      this.redis.disconnect();
      this.eventsRedis.disconnect();
    })();
    return this.closing;
  }

  // --- JobQueue -----------------------------------------------------------------------------

  async submit(
    request: InferRequest,
    options: { readonly returnFields: readonly ReturnField[] },
  ): Promise<JobStatus> {
    this.assertOpen();
    const items = this.front.prepare(request);
    if (items.length === 0) {
      throw new MoeError('INPUT_INVALID', 'The request has no inputs; send at least one.', {
        field: 'inputs',
      });
    }
    const id = randomUUID();
    const createdAt = new Date();
    const deadline = createdAt.getTime() + this.options.jobTimeoutMs;
    await this.add(JOB_NAMES.durable, this.jobData(items, deadline, options.returnFields), id);
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
      return job === undefined ? undefined : { job, state };
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
    return {
      id,
      state,
      createdAt: new Date(job.timestamp),
      finishedAt: job.finishedOn === undefined ? undefined : new Date(job.finishedOn),
      attempts: job.attemptsStarted,
      returnFields: job.data.returnFields ?? [],
      answer: state === 'completed' ? this.toAnswer(job.returnvalue, items, 0) : undefined,
      error: state === 'failed' ? decodeFailure(job.failedReason) : undefined,
    };
  }

  // --- the pending map: the one place a waiting request is settled --------------------------

  private await(id: string, items: readonly PreparedItem[], options: InferOptions) {
    return new Promise<JobResult>((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.metrics.rejected.inc({ reason: 'timeout' });
          this.settle(
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
        this.settle(id, new MoeError('CLIENT_CLOSED', 'The client went away before the answer.'));
        // Best effort: a job no worker has taken yet is removed; a locked one finishes unread.
        this.queue.remove(id).catch(() => undefined);
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.pendingItems += items.length;
      this.pending.set(id, {
        items,
        addedAt: undefined,
        checkedAt: 0,
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

  /** Settle a pending request once; unknown ids (other nodes' jobs, repeats) are ignored. */
  private settle(id: string, outcome: JobResult | unknown): void {
    const entry = this.pending.get(id);
    if (entry === undefined) return;
    this.pending.delete(id);
    this.pendingItems -= entry.items.length;
    if (isJobResult(outcome)) entry.resolve(outcome);
    else entry.reject(outcome);
  }

  /** Read the state of requests that waited long: their events may have been missed. */
  private async sweep(): Promise<void> {
    if (!isUp(this.redis) || this.pending.size === 0) return;
    const now = performance.now();
    const due: string[] = [];
    for (const [id, entry] of this.pending) {
      if (entry.addedAt === undefined || now - entry.addedAt < SWEEP_AFTER_MS) continue;
      if (now - entry.checkedAt < SWEEP_AFTER_MS) continue;
      entry.checkedAt = now;
      due.push(id);
      if (due.length >= SWEEP_LIMIT) break;
    }
    await Promise.allSettled(
      due.map(async (id) => {
        const job = await this.queue.getJob(id);
        if (job === undefined) {
          this.settle(id, jobLost());
          return;
        }
        const state = await job.getState();
        if (state === 'completed') this.settle(id, job.returnvalue);
        else if (state === 'failed') this.settle(id, decodeFailure(job.failedReason));
        else if (state === 'unknown') this.settle(id, jobLost());
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
      this.adds.push({ name, data, opts: jobOptions(this.options.settings, id), resolve, reject });
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
    deadline: number,
    returnFields: readonly ReturnField[],
  ): JobData {
    const first = items[0]!; // prepare() gives >= 1 item: the schema requires one input
    return {
      v: CONTRACT_VERSION,
      model: this.modelTag,
      routing: first.routing,
      tasks: first.tasks ?? null,
      items: items.map((item) => ({ ids: Array.from(item.ids), truncated: item.truncated })),
      deadline,
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
    'The job of this request is no longer in Redis (Redis restarted without its data?); retry the request.',
    { retryAfterSeconds: 1 },
  );
}

function adaptersFixed(): MoeError {
  return new MoeError(
    'QUEUE_MODE_UNSUPPORTED',
    "Adapters cannot be loaded or unloaded at run time in queue mode (QUEUE=redis): the workers serve their model pack's adapters. Change the pack and restart the workers.",
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
