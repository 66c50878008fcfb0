/**
 * The queue contract between API nodes and inference workers: what a job carries, what a worker
 * returns, how a failure travels, and the job options. Both roles import this file and nothing
 * else of each other; everything here is JSON (BullMQ stores job data and results as JSON).
 *
 * One job per request, not per input. Per request keeps an answer atomic (one job, one result,
 * one failure code; a retry re-runs the whole request, never half of it) and costs one Redis
 * round trip per request instead of one per input. Batching does not suffer: a worker takes up to
 * WORKER_CONCURRENCY jobs at once and submits all their inputs to one `Batcher`, which mixes
 * inputs of any jobs in its engine batches (as it mixes requests in embedded mode). The price: a
 * many-input request runs on one worker; requests are bounded by MAX_INPUTS.
 *
 * Exactly one answer per accepted request: the API resolves a pending request once (first
 * `completed` or `failed` event, or its deadline) and ignores later events of the same job, e.g.
 * the second completion of a job that stalled and ran twice.
 */

import type { Config } from '../config.js';
import type { RoutedAdapter, TaskOutput } from '../engine/decode.js';
import type { ItemRouting } from '../engine/routing.js';
import { type ErrorCode, MoeError } from '../errors.js';
import type { ReturnField } from '../inference/service.js';

/** Bumped when JobData or JobResult change incompatibly; workers refuse other versions. */
export const CONTRACT_VERSION = 1;

/** BullMQ job names: a synchronous request (an API node awaits it) or a durable job. */
export const JOB_NAMES = { request: 'infer', durable: 'job' } as const;
export type JobName = (typeof JOB_NAMES)[keyof typeof JOB_NAMES];

/** One request, tokenized and routed by the API node (Model.prepare), ready for an engine. */
export interface JobData {
  readonly v: typeof CONTRACT_VERSION;
  /** `name@version` of the pack the API tokenized with; a worker serving another pack refuses. */
  readonly model: string;
  /** Routing shared by every input of the request (pins, excludes, k), as adapter ids. */
  readonly routing: ItemRouting;
  /** Tasks whose outputs the answer keeps; null: all. */
  readonly tasks: readonly string[] | null;
  /** Token ids per input (specials included, at most the pack's max_length). */
  readonly items: readonly { readonly ids: readonly number[]; readonly truncated: boolean }[];
  /** Epoch milliseconds: a worker that takes the job later fails it with REQUEST_TIMEOUT unrun. */
  readonly deadline: number;
  /** Extra fields the client asked for; kept for GET /v1/jobs/{id}, unused by workers. */
  readonly returnFields: readonly ReturnField[];
}

/** One input's answer: `EngineItemResult` in JSON. */
export interface JobItemResult {
  readonly routing: Readonly<Record<string, readonly RoutedAdapter[]>>;
  readonly outputs: Readonly<Record<string, TaskOutput>>;
  /**
   * [d] float32, little-endian, base64 (`encodeEmbedding`). Not a JSON number array: the result
   * is stored in the job and copied into the events stream, and base64 is ~4x smaller, exact,
   * and much cheaper to write and read than 2 x d numbers formatted and parsed as text.
   */
  readonly embedding: string;
}

/** What a worker returns for a job (BullMQ's `returnvalue`). */
export interface JobResult {
  readonly v: typeof CONTRACT_VERSION;
  readonly results: readonly JobItemResult[];
  /** Milliseconds: in the worker's batcher (slowest input) and the batch stages it ran in. */
  readonly timings: {
    readonly queueMs: number;
    readonly forwardMs: number;
    /** From the job being queued in Redis to a worker taking it. */
    readonly waitMs: number;
  };
}

export function encodeEmbedding(embedding: Float32Array): string {
  const bytes = Buffer.from(embedding.buffer, embedding.byteOffset, embedding.byteLength);
  return (LITTLE_ENDIAN ? bytes : swap32(bytes)).toString('base64');
}

export function decodeEmbedding(base64: string): Float32Array {
  const bytes = Buffer.from(base64, 'base64');
  const aligned = new Float32Array(bytes.byteLength / 4);
  const view = new Uint8Array(aligned.buffer);
  view.set(LITTLE_ENDIAN ? bytes : swap32(bytes));
  return aligned;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function swap32(bytes: Buffer): Buffer {
  return Buffer.from(bytes).swap32();
}

/** Worker -> API: a failure travels as BullMQ's `failedReason` string. */
const FAILURE_PREFIX = 'moe-error:';

export function encodeFailure(error: MoeError): string {
  return FAILURE_PREFIX + JSON.stringify(error.toJSON());
}

/**
 * The catalogue error a failed job's client gets. Reasons that BullMQ itself wrote (a job that
 * stalled more than JOB_ATTEMPTS times: its workers kept dying) map to ENGINE_WORKER_CRASHED.
 */
export function decodeFailure(reason: string | undefined): MoeError {
  if (reason?.startsWith(FAILURE_PREFIX)) {
    try {
      const plain = JSON.parse(reason.slice(FAILURE_PREFIX.length)) as {
        code: ErrorCode;
        message: string;
        details?: Record<string, unknown>;
      };
      return new MoeError(plain.code, plain.message, plain.details);
    } catch {
      // fall through: not ours after all
    }
  }
  if (reason !== undefined && /stalled/i.test(reason)) {
    return new MoeError(
      'ENGINE_WORKER_CRASHED',
      'The workers running this request stopped repeatedly before finishing it; retry the request.',
      { reason },
    );
  }
  return new MoeError('INTERNAL', 'The job failed; the worker log has the details.', {
    reason: reason ?? 'unknown',
  });
}

/** Errors of the engine or its process: worth running the job again, maybe on another worker. */
export function isRetryable(error: MoeError): boolean {
  return (
    error.code === 'ENGINE_WORKER_CRASHED' ||
    error.code === 'ENGINE_FAILED' ||
    error.code === 'ENGINE_CLOSED' ||
    error.code === 'DRAINING' ||
    error.code === 'INTERNAL'
  );
}

/** What both roles must agree on to share a queue. */
export interface QueueSettings {
  readonly redisUrl: string;
  readonly name: string;
  /** Redis key prefix. */
  readonly prefix: string;
  /** Runs of a job at most, after failures (BullMQ `attempts`) and after stalls (`maxStalledCount`). */
  readonly attempts: number;
  /** First retry delay; doubles per retry. */
  readonly backoffMs: number;
  /** Finished jobs stay this long (seconds), for GET /v1/jobs/{id} and late readers. */
  readonly resultTtlSeconds: number;
}

export function queueSettings(config: Config): QueueSettings {
  return {
    redisUrl: config.REDIS_URL,
    name: config.QUEUE_NAME,
    prefix: config.QUEUE_PREFIX,
    attempts: config.JOB_ATTEMPTS,
    backoffMs: config.JOB_BACKOFF_MS,
    resultTtlSeconds: config.JOB_RESULT_TTL_SECONDS,
  };
}

/** Options of every job the API adds. */
export function jobOptions(settings: QueueSettings, jobId: string) {
  return {
    jobId,
    attempts: settings.attempts,
    backoff: { type: 'exponential', delay: settings.backoffMs },
    removeOnComplete: { age: settings.resultTtlSeconds },
    removeOnFail: { age: settings.resultTtlSeconds },
  } as const;
}
