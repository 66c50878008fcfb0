/**
 * The worker role of queue mode: takes jobs from the BullMQ queue in bulk and hands their inputs
 * to the process's `EmbeddedInference`, i.e. the same batcher and engine as embedded mode, so
 * the inputs of every job it holds meet in one batcher and share engine batches.
 *
 * Taking jobs (BullMQ's Worker without a processor, "manual processing": its fetch, lock and
 * stall primitives, our loop)
 * - BullMQ's own loop fetches one job per round trip and one more per finished job, so jobs
 *   trickled in and the engine ran whatever had arrived (measured here at 64 clients, one worker:
 *   9-14 items per batch, against 21-30 with the fetches below). Here a fetch reads how many
 *   jobs wait (LLEN), then sends that many `getNextJob` calls at once, bounded by the room left:
 *   one round trip for all of them. Every job of a fetch reaches the batcher in the same turn, so
 *   they leave in one batch. While the engine is busy anyway, the worker takes jobs every tenth
 *   of a batch's time, so jobs arriving one by one are still taken several at a time.
 * - Room: at most `concurrency` jobs held, and no fetch while a full batch (MAX_BATCH_ITEMS) of
 *   items already waits in the batcher. So a busy worker holds about one running and one waiting
 *   batch, and leaves the rest in Redis for idle workers. With nothing waiting it blocks on
 *   BullMQ's marker until a job is added (the c = 1 path: one wake-up, one fetch).
 * - Locks last `lockMs` and are renewed together (one call) every half of it; the stall check
 *   runs every half lock. A worker that dies, SIGKILL included, stops renewing; another worker's
 *   stall check puts its jobs back, where they are taken again. A job that ran twice is answered
 *   once: the API ignores the second reply.
 *
 * Contracts of a job
 * - Its deadline is what it had left when queued minus its wait, both on Redis's clock. Past it,
 *   the job fails with REQUEST_TIMEOUT, unrun and unretried.
 * - It runs only on a registry at least as new as the one it was validated against: a job
 *   stamped with a newer version waits up to VERSION_WAIT_MS for this worker to apply it, else
 *   fails with ADAPTERS_SYNCING, which is retried (maybe on another worker). A worker that cannot
 *   apply the registry (e.g. a folder it cannot read) takes no jobs until it can.
 * - Errors of the request (routing, input) fail it for good with their own code; errors of the
 *   engine are retried, JOB_ATTEMPTS runs in all, with exponential backoff.
 * - The answer of a synchronous job goes to its node's reply stream first, then the job is
 *   completed in BullMQ (which deletes it). A final failure goes the same way. A durable job's
 *   result stays in the job instead.
 * - close(): stop taking jobs, finish those held, then the engine drains and stops (SIGTERM in
 *   worker.ts).
 */
import { hostname } from 'node:os';
import { type Job, UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { MoeError } from '../errors.js';
import type { Model, PreparedItem } from '../inference/model.js';
import type { EmbeddedInference, Readiness } from '../inference/service.js';
import type { Metrics } from '../metrics.js';
import type { Logger } from '../util/log.js';
import {
  CONTRACT_VERSION,
  encodeEmbedding,
  encodeFailure,
  isRetryable,
  type JobData,
  type JobName,
  type JobResult,
  type QueueSettings,
  queueKeys,
  REPLY_MAX_LEN,
  REPLY_TTL_MS,
  type Reply,
  replyFields,
} from './contract.js';
import { connectRedis, corkTurn, isUp, RedisClock } from './redis.js';
import { RegistrySync } from './registry-sync.js';

export interface QueueWorkerOptions {
  readonly settings: QueueSettings;
  /** Jobs held at most (WORKER_CONCURRENCY). */
  readonly concurrency: number;
  /** MAX_BATCH_ITEMS: more jobs are taken only while fewer items than this wait in the batcher. */
  readonly batchItems: number;
  /** Lock duration (JOB_LOCK_MS); locks are renewed and the stall check runs every half of it. */
  readonly lockMs: number;
  /** ADAPTER_ROOT: where the registry's folders are, on this host. */
  readonly adapterRoot: string;
  /** ADAPTER_SYNC_TIMEOUT_MS. */
  readonly syncTimeoutMs: number;
  readonly log: Logger;
}

/** A job stamped with a registry version this worker has not applied waits this long for it. */
const VERSION_WAIT_MS = 2000;
/** Longest pause of a worker with no room, in case no finished job announces room (a backstop). */
const ROOM_RECHECK_MS = 50;
/** Pause after a failed fetch (Redis unreachable) before the next. */
const FETCH_RETRY_MS = 250;
/** While the engine is busy, jobs are taken every tenth of a batch's time, or this often. */
const GATHER_MAX_MS = 20;
/** An idle worker looks at the wait list at least this often (a lost wake-up costs this much). */
const IDLE_RECHECK_MS = 1000;
/** close() waits this long at most for a blocking fetch in flight (drainDelay is 1 s). */
const CLOSE_FETCH_WAIT_MS = 2000;

/** Connection errors are expected while Redis is away; the link state is logged once instead. */
const CONNECTION_ERROR = /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|Connection is closed|connect/i;

/** A synchronous job completes with null: its result went to the reply stream. */
type QueueJob = Job<JobData, JobResult | null, JobName>;

/** How a job attempt ended. `final`: no retry, whatever the code; `ran: false`: expired unrun. */
type Outcome =
  | { readonly ok: true; readonly result: JobResult }
  | {
      readonly ok: false;
      readonly error: MoeError;
      readonly final: boolean;
      readonly ran: boolean;
    };

export class QueueWorker {
  /** The BullMQ name of this worker (`processedBy` of its jobs): host:pid. */
  readonly name = `${hostname()}:${process.pid}`;
  readonly registry: RegistrySync;
  private readonly redis: Redis;
  private readonly worker: Worker<JobData, JobResult | null, JobName>;
  private readonly clock: RedisClock;
  private readonly keys: ReturnType<typeof queueKeys>;
  private readonly modelTag: string;
  /** Jobs taken and not finished, by id. */
  private readonly held = new Map<string, QueueJob>();
  /** Held jobs being completed or failed in Redis: no lock renewal (their lock goes with them). */
  private readonly finishing = new Set<string>();
  private tokens = 0;
  private stopping = false;
  private wake: { readonly onRoom: boolean; readonly resolve: () => void } | undefined;
  private intake: Promise<void> | undefined;
  /** The blocking fetch in flight, if any (at most one). */
  private blocking: Promise<void> | undefined;
  private renewer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  private replies: {
    readonly stream: string;
    readonly fields: string[];
    readonly resolve: () => void;
    readonly reject: (error: unknown) => void;
  }[] = [];

  constructor(
    model: Model,
    private readonly service: EmbeddedInference,
    private readonly metrics: Metrics,
    private readonly options: QueueWorkerOptions,
  ) {
    const { settings, log } = options;
    this.modelTag = `${model.name}@${model.pack.manifest.version}`;
    this.keys = queueKeys(settings);
    this.redis = connectRedis(settings.redisUrl, {
      name: `moe-worker-${process.pid}`,
      onChange: (up, error) => {
        if (up) log('info', 'Redis reachable: taking jobs');
        else log('warn', 'Redis unreachable: waiting for it to return', { error: error?.message });
        this.poke();
      },
    });
    this.clock = new RedisClock(this.redis);
    this.worker = new Worker<JobData, JobResult | null, JobName>(settings.name, null, {
      connection: this.redis,
      prefix: settings.prefix,
      name: this.name,
      autorun: false,
      lockDuration: options.lockMs,
      stalledInterval: Math.max(500, Math.floor(options.lockMs / 2)),
      // Runs = 1 + recoveries: JOB_ATTEMPTS runs at most, whoever died.
      maxStalledCount: Math.max(0, settings.attempts - 1),
      // Seconds a fetch blocks waiting for a job; close() waits out at most one.
      drainDelay: 1,
    });
    this.worker.on('error', (error) => {
      if (!CONNECTION_ERROR.test(error.message)) {
        log('warn', 'queue worker error', { error: error.message });
      }
    });
    this.worker.on('stalled', (jobId) => {
      metrics.jobsStalled.inc();
      log('warn', 'job stalled (its worker died or blocked); queued again', { job: jobId });
    });
    this.registry = new RegistrySync(
      {
        load: (folder, id, group) => service.loadAdapter(folder, { id, group }),
        unload: (id) => service.unloadAdapter(id),
      },
      {
        redis: this.redis,
        redisUrl: settings.redisUrl,
        keys: this.keys,
        pack: model.pack,
        adapterRoot: options.adapterRoot,
        role: 'worker',
        name: this.name,
        syncTimeoutMs: options.syncTimeoutMs,
        log,
      },
    );
    this.registry.on('change', () => {
      metrics.registryVersion.set(this.registry.version);
      metrics.registrySynced.set(this.registry.synced ? 1 : 0);
      this.poke();
    });
    metrics.registryVersion.set(0);
    metrics.registrySynced.set(1);
  }

  /** Apply the adapter registry, then take jobs. */
  async start(): Promise<void> {
    await this.registry.start();
    await this.worker.startStalledCheckTimer();
    this.renewer = setInterval(() => void this.renewLocks(), Math.floor(this.options.lockMs / 2));
    this.intake = this.takeJobs();
    this.options.log('info', 'queue worker taking jobs', {
      queue: this.options.settings.name,
      prefix: this.options.settings.prefix,
      concurrency: this.options.concurrency,
      lockMs: this.options.lockMs,
      registryVersion: this.registry.version,
    });
  }

  readiness(): Readiness {
    const engine = this.service.readiness();
    const checks = {
      ...engine.checks,
      redis: isUp(this.redis),
      adapters_synced: this.registry.synced,
      not_draining: !this.closing,
    };
    return { ...engine, ready: Object.values(checks).every(Boolean), checks };
  }

  /** Stop taking jobs, finish those held, stop the engine. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopping = true;
      this.poke();
      await this.intake;
      // A blocking fetch in flight returns within drainDelay; a job it brings is run too. (One
      // that comes later stays locked until its lock lapses, and another worker runs it.)
      await Promise.race([this.blocking, sleep(CLOSE_FETCH_WAIT_MS)]);
      while (this.held.size > 0) await this.nextPoke(ROOM_RECHECK_MS);
      clearInterval(this.renewer);
      await this.registry.close();
      await this.worker.close();
      await this.service.close(); // drains the batcher, stops engine threads by message
      this.clock.close();
      this.redis.disconnect();
    })();
    return this.closing;
  }

  // --- taking jobs ----------------------------------------------------------------------------

  /**
   * The intake loop.
   * - Busy (items wait in the batcher for the engine): jobs taken now would only wait too. Every
   *   gather interval (a tenth of the last batch's engine time, GATHER_MAX_MS at most), the loop
   *   reads how many jobs wait and takes them all in one round trip, instead of one round trip
   *   per job as they trickle in.
   * - Not busy, jobs waiting: take them at once, as many as wait, in one round trip.
   * - Not busy, none waiting: one BullMQ blocking fetch waits for the next job (a wake-up on the
   *   queue's marker, then one job). The loop waits on it for IDLE_RECHECK_MS at most, or until
   *   the link or the registry changes: a wake-up can be lost when the link breaks (BullMQ
   *   #4479), and BullMQ then blocks for up to 10 s; the wait list's length is the truth.
   */
  private async takeJobs(): Promise<void> {
    let bulk = false;
    while (!this.stopping) {
      if (this.room() === 0) {
        await this.nextPoke(ROOM_RECHECK_MS);
        continue;
      }
      try {
        const busy = this.service.queuedItems > 0;
        if (busy) {
          await sleep(Math.min(GATHER_MAX_MS, this.service.lastBatchMs / 10));
        }
        if (busy || bulk) {
          const room = this.room();
          if (room === 0) continue;
          // Ask for as many as wait: no call comes back empty but by a race with other workers.
          const waiting = await this.redis.llen(this.worker.keys.wait!);
          bulk = waiting > 0;
          if (bulk) this.begin(await this.fetch(Math.min(room, waiting)));
          continue;
        }
        this.blocking ??= this.worker.getNextJob(this.token(), { block: true }).then(
          (job) => {
            this.blocking = undefined;
            if (job !== undefined) this.begin([job]);
          },
          () => {
            this.blocking = undefined;
          },
        );
        await Promise.race([this.blocking, this.nextPoke(IDLE_RECHECK_MS, false)]);
        bulk = true; // a job came, or time passed: look at the wait list
      } catch {
        await sleep(FETCH_RETRY_MS); // Redis unreachable; the link logs its state
      }
    }
  }

  /** Jobs this worker may take now. */
  private room(): number {
    if (this.stopping || !this.registry.synced) return 0;
    if (this.service.queuedItems >= this.options.batchItems) return 0;
    return Math.max(0, this.options.concurrency - this.held.size);
  }

  /** `n` non-blocking fetches sent together: one round trip. */
  private async fetch(n: number): Promise<QueueJob[]> {
    corkTurn(this.redis);
    const calls = Array.from({ length: n }, () =>
      this.worker.getNextJob(this.token(), { block: false }),
    );
    const settled = await Promise.allSettled(calls);
    const jobs: QueueJob[] = [];
    let failure: unknown;
    for (const outcome of settled) {
      if (outcome.status === 'rejected') failure = outcome.reason;
      else if (outcome.value !== undefined) jobs.push(outcome.value);
    }
    if (jobs.length === 0 && failure !== undefined) throw failure;
    return jobs;
  }

  /** Start the jobs of one fetch together: their items reach the batcher in the same turn. */
  private begin(jobs: readonly QueueJob[]): void {
    if (jobs.length === 0) return;
    this.metrics.jobsFetched.observe(jobs.length);
    for (const job of jobs) {
      this.held.set(job.id!, job);
      void this.run(job).finally(() => {
        this.held.delete(job.id!);
        this.finishing.delete(job.id!);
        this.poke('room');
      });
    }
  }

  private token(): string {
    return `${this.name}:${++this.tokens}`;
  }

  /**
   * Wake the intake loop: `room` when a job finished (only a loop waiting for room cares), else
   * the registry or the link changed, or closing.
   */
  private poke(why: 'room' | 'change' = 'change'): void {
    if (this.wake === undefined || (why === 'room' && !this.wake.onRoom)) return;
    const { resolve } = this.wake;
    this.wake = undefined;
    resolve();
  }

  /** Resolves on the next poke (a `room` one too when `onRoom`), or after `ms`. */
  private nextPoke(ms: number, onRoom = true): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = {
        onRoom,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
    });
  }

  private async renewLocks(): Promise<void> {
    if (this.held.size === 0 || !isUp(this.redis)) return;
    const jobs = [...this.held.values()].filter((job) => !this.finishing.has(job.id!));
    if (jobs.length === 0) return;
    try {
      const lost = await this.worker.extendJobLocks(
        jobs.map((job) => job.id!),
        jobs.map((job) => job.token!),
        this.options.lockMs,
      );
      if (lost.length > 0) {
        this.options.log('warn', 'lost the lock of jobs; another worker may run them again', {
          jobs: lost,
        });
      }
    } catch {
      // Redis went away; the next renewal tries again (locks outlive two missed renewals).
    }
  }

  // --- one job --------------------------------------------------------------------------------

  private async run(job: QueueJob): Promise<void> {
    const started = performance.now();
    let outcome: Outcome;
    try {
      outcome = { ok: true, result: await this.execute(job) };
    } catch (error) {
      outcome =
        error instanceof FinalFailure
          ? { ok: false, error: error.error, final: true, ran: error.ran }
          : { ok: false, error: toMoeError(error), final: false, ran: true };
    }
    this.metrics.jobRunDuration.observe((performance.now() - started) / 1000);
    // Expired jobs were counted as such where they expired.
    if (outcome.ok || outcome.ran) {
      this.metrics.jobsProcessed.inc({ result: outcome.ok ? 'completed' : 'failed' });
    }
    this.finishing.add(job.id!);
    try {
      await this.finish(job, outcome);
    } catch (error) {
      // Lock lost (the job stalled and was taken again) or Redis gone: the job is taken again
      // from 'active' by a stall check, and its client ignores a second reply.
      this.options.log('warn', 'could not finish a job; it will be taken again', {
        job: job.id,
        error: error instanceof Error ? error.message : String(error),
      });
    }
  }

  private async execute(job: QueueJob): Promise<JobResult> {
    const data = job.data;
    if (job.attemptsStarted > 1) this.metrics.jobRetries.inc();
    if (data.v !== CONTRACT_VERSION || data.model !== this.modelTag) {
      // Another worker on this queue may serve the right pack: retryable.
      throw new MoeError(
        'ENGINE_FAILED',
        `This worker serves ${this.modelTag} (contract v${CONTRACT_VERSION}); the job was prepared for ${data.model} (v${data.v}). Run API nodes and workers of one QUEUE_NAME on the same pack and version.`,
      );
    }
    const waitMs = Math.max(0, this.clock.now() - data.queuedAt);
    this.metrics.jobWaitDuration.observe(waitMs / 1000);
    if (job.deferredFailure) {
      // BullMQ's verdict on a job whose workers kept dying: fail it, do not run it again.
      throw new FinalFailure(
        new MoeError(
          'ENGINE_WORKER_CRASHED',
          'The workers running this request stopped repeatedly before finishing it; retry the request.',
          { reason: job.deferredFailure },
        ),
      );
    }
    const deadline = performance.now() + data.budgetMs - waitMs;
    this.assertBefore(deadline, 'a worker took it');
    if (data.registryVersion > this.registry.version) {
      const wait = Math.min(VERSION_WAIT_MS, deadline - performance.now());
      if (!(await this.registry.reach(data.registryVersion, wait))) {
        this.assertBefore(deadline, 'this worker had the adapter registry it was checked against');
        throw new MoeError(
          'ADAPTERS_SYNCING',
          `The request was checked against adapter registry version ${data.registryVersion}; the worker that took it is at version ${this.registry.version}${this.registry.error === undefined ? '' : ` and cannot apply it (${this.registry.error.message})`}. Retry in a second.`,
          { retryAfterSeconds: 1, registryVersion: data.registryVersion },
        );
      }
    }
    const items: PreparedItem[] = data.items.map((item) => ({
      ids: Int32Array.from(item.ids),
      routing: data.routing,
      truncated: item.truncated,
      tasks: data.tasks ?? undefined,
    }));
    const answer = await this.service.inferPrepared(items, {
      deadline,
      background: data.background === true,
    });
    return {
      v: CONTRACT_VERSION,
      results: answer.results.map((result) => ({
        routing: result.routing,
        outputs: result.outputs,
        embedding: encodeEmbedding(result.embedding),
      })),
      timings: {
        queueMs: answer.timings.queueMs,
        forwardMs: answer.timings.forwardMs,
        waitMs,
      },
    };
  }

  /** Throws the final REQUEST_TIMEOUT of a job not run, if `deadline` has passed. */
  private assertBefore(deadline: number, before: string): void {
    const late = performance.now() - deadline;
    if (late < 0) return;
    this.metrics.jobsProcessed.inc({ result: 'expired' });
    this.metrics.rejected.inc({ reason: 'timeout' });
    throw new FinalFailure(
      new MoeError(
        'REQUEST_TIMEOUT',
        `The job reached its deadline ${Math.round(late)} ms before ${before}, so it was not run. Add workers, or raise REQUEST_TIMEOUT_MS / JOB_TIMEOUT_MS.`,
        { ran: false },
      ),
      false,
    );
  }

  /** Answer the waiting node (if any), then complete or fail the job in BullMQ. */
  private async finish(job: QueueJob, outcome: Outcome): Promise<void> {
    const { replyTo } = job.data;
    const id = job.id!;
    const token = job.token!;
    if (outcome.ok) {
      if (replyTo === null) {
        await job.moveToCompleted(outcome.result, token, false);
        return;
      }
      await this.reply(replyTo, { job: id, result: outcome.result });
      await job.moveToCompleted(null, token, false);
      return;
    }
    const reason = encodeFailure(outcome.error);
    const final =
      outcome.final ||
      !isRetryable(outcome.error) ||
      job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    if (final && typeof replyTo === 'string') {
      await this.reply(replyTo, { job: id, failure: reason });
    }
    await job.moveToFailed(
      final ? new UnrecoverableError(reason) : new Error(reason),
      token,
      false,
    );
  }

  /**
   * Append a reply to its node's stream. Replies of one event-loop turn (the jobs of one engine
   * batch) go to Redis together: one pipeline, one round trip.
   */
  private reply(node: string, reply: Reply): Promise<void> {
    return new Promise((resolve, reject) => {
      this.replies.push({
        stream: this.keys.replies(node),
        fields: replyFields(reply),
        resolve,
        reject,
      });
      if (this.replies.length === 1) setImmediate(() => this.flushReplies());
    });
  }

  private flushReplies(): void {
    const batch = this.replies;
    this.replies = [];
    const pipeline = this.redis.pipeline();
    const streams = new Set<string>();
    for (const entry of batch) {
      pipeline.xadd(entry.stream, 'MAXLEN', '~', REPLY_MAX_LEN, '*', ...entry.fields);
      streams.add(entry.stream);
    }
    for (const stream of streams) pipeline.pexpire(stream, REPLY_TTL_MS);
    pipeline.exec().then(
      (results) => {
        corkTurn(this.redis); // the jobs' completions, which follow in this turn: one write
        batch.forEach((entry, i) => {
          const error = results?.[i]?.[0];
          if (error) entry.reject(error);
          else entry.resolve();
        });
      },
      (error: unknown) => {
        for (const entry of batch) entry.reject(error);
      },
    );
  }
}

/** A failure that must not be retried whatever its code (deadline passed, stalled too often). */
class FinalFailure extends Error {
  constructor(
    readonly error: MoeError,
    /** false: the job expired before it ran. */
    readonly ran = true,
  ) {
    super(error.message);
  }
}

function toMoeError(error: unknown): MoeError {
  return error instanceof MoeError
    ? error
    : new MoeError('INTERNAL', error instanceof Error ? error.message : String(error));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
