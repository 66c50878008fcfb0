/**
 * The worker role of queue mode: a BullMQ Worker whose processor hands each job's inputs to the
 * process's `EmbeddedInference`, i.e. the same batcher and engine as embedded mode. The Worker
 * takes up to `concurrency` jobs at once, so the inputs of every job in progress meet in one
 * batcher and share engine batches (BullMQ's open-source Worker has no batch consumer; this is
 * the "concurrency plus micro-batcher" way of FIELD-NOTES).
 *
 * Contracts
 * - A job past its deadline is not run: it fails with REQUEST_TIMEOUT, unretried, and its client
 *   (if still waiting) gets that code. The deadline also bounds the job's wait in the batcher.
 * - Errors of the request (routing, input) fail the job for good with their own code; errors of
 *   the engine (a crashed engine thread, a closing engine) are retried, JOB_ATTEMPTS runs in all,
 *   with exponential backoff.
 * - Locks last `lockMs` and are renewed every half of it (the JS thread never blocks: ORT runs in
 *   engine threads). A worker that dies, SIGKILL included, stops renewing; another worker's stall
 *   check (every half lock) moves its jobs back to the queue, where they are taken again. A job
 *   that ran twice is answered once: the API ignores its second result.
 * - close(): the Worker stops taking jobs and finishes the ones it holds, then the engine drains
 *   and stops (SIGTERM in worker.ts).
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
} from './contract.js';
import { connectRedis, isUp } from './redis.js';

export interface QueueWorkerOptions {
  readonly settings: QueueSettings;
  /** Jobs held at once (WORKER_CONCURRENCY). */
  readonly concurrency: number;
  /** Lock duration (JOB_LOCK_MS); the stall check runs every half of it. */
  readonly lockMs: number;
  readonly log: Logger;
}

/** Connection errors are expected while Redis is away; the link state is logged once instead. */
const CONNECTION_ERROR = /ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|Connection is closed|connect/i;

export class QueueWorker {
  private readonly redis: Redis;
  private readonly worker: Worker<JobData, JobResult, JobName>;
  private readonly modelTag: string;
  private closing: Promise<void> | undefined;

  constructor(
    model: Model,
    private readonly service: EmbeddedInference,
    private readonly metrics: Metrics,
    options: QueueWorkerOptions,
  ) {
    const { settings, log } = options;
    this.modelTag = `${model.name}@${model.pack.manifest.version}`;
    this.redis = connectRedis(settings.redisUrl, {
      name: `moe-worker-${process.pid}`,
      onChange: (up, error) =>
        up
          ? log('info', 'Redis reachable: taking jobs')
          : log('warn', 'Redis unreachable: waiting for it to return', { error: error?.message }),
    });
    this.worker = new Worker<JobData, JobResult, JobName>(
      settings.name,
      (job) => this.process(job),
      {
        connection: this.redis,
        prefix: settings.prefix,
        name: `${hostname()}:${process.pid}`,
        concurrency: options.concurrency,
        lockDuration: options.lockMs,
        stalledInterval: Math.max(500, Math.floor(options.lockMs / 2)),
        // Runs = 1 + recoveries: JOB_ATTEMPTS runs at most, whoever died.
        maxStalledCount: Math.max(0, settings.attempts - 1),
      },
    );
    this.worker.on('error', (error) => {
      if (!CONNECTION_ERROR.test(error.message)) {
        log('warn', 'queue worker error', { error: error.message });
      }
    });
    this.worker.on('stalled', (jobId) => {
      metrics.jobsStalled.inc();
      log('warn', 'job stalled (its worker died or blocked); queued again', { job: jobId });
    });
    log('info', 'queue worker taking jobs', {
      queue: settings.name,
      prefix: settings.prefix,
      concurrency: options.concurrency,
      lockMs: options.lockMs,
    });
  }

  readiness(): Readiness {
    const engine = this.service.readiness();
    const checks = { ...engine.checks, redis: isUp(this.redis), not_draining: !this.closing };
    return { ...engine, ready: Object.values(checks).every(Boolean), checks };
  }

  /** Stop taking jobs, finish those held, stop the engine. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.worker.close(); // waits for the jobs in progress
      await this.service.close(); // drains the batcher, stops engine threads by message
      this.redis.disconnect();
    })();
    return this.closing;
  }

  private async process(job: Job<JobData, JobResult, JobName>): Promise<JobResult> {
    const started = performance.now();
    const data = job.data;
    const waitMs = Math.max(0, Date.now() - job.timestamp);
    this.metrics.jobWaitDuration.observe(waitMs / 1000);
    if (job.attemptsStarted > 1) this.metrics.jobRetries.inc();
    try {
      if (data.v !== CONTRACT_VERSION || data.model !== this.modelTag) {
        // Another worker on this queue may serve the right pack: retryable.
        throw new MoeError(
          'ENGINE_FAILED',
          `This worker serves ${this.modelTag} (contract v${CONTRACT_VERSION}); the job was prepared for ${data.model} (v${data.v}). Run API nodes and workers of one QUEUE_NAME on the same pack.`,
        );
      }
      const remainingMs = data.deadline - Date.now();
      if (remainingMs <= 0) {
        this.metrics.jobsProcessed.inc({ result: 'expired' });
        this.metrics.rejected.inc({ reason: 'timeout' });
        throw new UnrecoverableError(
          encodeFailure(
            new MoeError(
              'REQUEST_TIMEOUT',
              `The job reached its deadline ${-remainingMs} ms before a worker took it, so it was not run. Add workers, or raise REQUEST_TIMEOUT_MS / JOB_TIMEOUT_MS.`,
              { ran: false },
            ),
          ),
        );
      }
      const items: PreparedItem[] = data.items.map((item) => ({
        ids: Int32Array.from(item.ids),
        routing: data.routing,
        truncated: item.truncated,
        tasks: data.tasks ?? undefined,
      }));
      const answer = await this.service.inferPrepared(items, {
        deadline: performance.now() + remainingMs,
      });
      this.metrics.jobsProcessed.inc({ result: 'completed' });
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
    } catch (error) {
      if (error instanceof UnrecoverableError) throw error;
      this.metrics.jobsProcessed.inc({ result: 'failed' });
      const moe =
        error instanceof MoeError
          ? error
          : new MoeError('INTERNAL', error instanceof Error ? error.message : String(error));
      const reason = encodeFailure(moe);
      throw isRetryable(moe) ? new Error(reason) : new UnrecoverableError(reason);
    } finally {
      this.metrics.jobRunDuration.observe((performance.now() - started) / 1000);
    }
  }
}
