/**
 * The queue contract between API nodes and inference workers: what a job carries, how its answer
 * travels back, how a failure travels, the job options and the Redis keys besides BullMQ's. Both
 * roles import this file and nothing else of each other; everything here is JSON.
 *
 * One job per request, not per input. Per request keeps an answer atomic (one job, one result,
 * one failure code; a retry re-runs the whole request, never half of it) and costs one Redis
 * round trip per request instead of one per input. Batching does not suffer: a worker takes jobs
 * in bulk and submits all their inputs to one `Batcher`, which mixes inputs of any jobs in its
 * engine batches (as it mixes requests in embedded mode). The price: a many-input request runs on
 * one worker; requests are bounded by MAX_INPUTS.
 *
 * Answers travel back to the API node that waits for them, and only to it: a synchronous job
 * (`/v1/infer`, OpenAI, KServe) names its node in `replyTo`, and the worker appends the result (or
 * the final failure) to that node's reply stream before it completes the job in BullMQ. BullMQ
 * then deletes the job (removeOnComplete/removeOnFail: true): once answered, a synchronous request
 * leaves nothing in Redis. Durable jobs (`/v1/jobs`, `replyTo` null) keep their result in the job
 * for JOB_RESULT_TTL_SECONDS instead, where any API node reads it.
 *
 * Exactly one answer per accepted request: the API settles a waiting request once (first reply, or
 * its deadline, or its client leaving) and ignores later replies of the same job, e.g. the second
 * reply of a job that stalled and ran twice.
 *
 * Redis keys of one queue, besides BullMQ's own (`P:Q:wait`, `P:Q:active`, `P:Q:<job id>`, ...),
 * with P = QUEUE_PREFIX and Q = QUEUE_NAME (`queueKeys`):
 *   P:Q:replies:<node>          stream, one per API node: entries `j` (job id) and `r` (JobResult
 *                               JSON) or `f` (encoded failure). The node deletes what it has read;
 *                               the stream expires REPLY_TTL_MS after its last write (a node that
 *                               died leaves nothing for longer).
 *   P:Q:registry                hash: `version`, `adapters` (JSON RegistryEntry[]): the served
 *                               adapter set, see registry-sync.ts. Absent: version 0, the pack's.
 *   P:Q:registry:changed        pub/sub channel: a new registry version was committed.
 *   P:Q:registry:lock           string: the adapter change in progress (one at a time, cluster-wide).
 *   P:Q:registry:workers        set: worker names; P:Q:registry:worker:<name> string: that worker's
 *                               registry status (JSON), expiring when the worker stops renewing it.
 *   P:Q:compositions            hash: composition name -> StoredComposition JSON (named compositions,
 *                               composition-store-redis.ts); P:Q:compositions:changed pub/sub: the
 *                               name of a composition that was stored or deleted.
 *   P:Q:fit:<id>                string: a composition fit job's state (JSON), expiring
 *                               JOB_RESULT_TTL_SECONDS after its last write (fit-job-state-redis.ts).
 * Deadlines travel as remaining time (`budgetMs`) plus the moment of queueing on Redis's own clock
 * (`queuedAt`, see RedisClock): no host compares its clock with another host's.
 */

import type { Config } from '../config.js';
import type { RoutedAdapter, TaskOutput } from '../engine/decode.js';
import type { ItemRouting } from '../engine/routing.js';
import { type ErrorCode, MoeError } from '../errors.js';
import type { ReturnField } from '../inference/service.js';

/** Bumped when JobData, JobResult or the reply format change incompatibly; workers refuse other versions. */
export const CONTRACT_VERSION = 2;

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
  /** Milliseconds the request had left when it was queued. */
  readonly budgetMs: number;
  /**
   * When it was queued, in milliseconds on Redis's clock (RedisClock). A worker's remaining time
   * is `budgetMs - (its RedisClock now - queuedAt)`; at or below 0 it fails the job with
   * REQUEST_TIMEOUT unrun.
   */
  readonly queuedAt: number;
  /**
   * The adapter registry version the API node validated the routing against. A worker serves the
   * job only once it has applied this version or a later one (registry-sync.ts).
   */
  readonly registryVersion: number;
  /** The API node waiting for the answer (its reply stream), or null: a durable job. */
  readonly replyTo: string | null;
  /** Extra fields the client asked for; kept for GET /v1/jobs/{id}, unused by workers. */
  readonly returnFields: readonly ReturnField[];
  /**
   * Background work (InferOptions.background): the worker's batcher puts it behind interactive
   * items. Absent (older API nodes) means false. Jobs wait in Redis in arrival order either way.
   */
  readonly background?: boolean;
}

/** One input's answer: `EngineItemResult` in JSON. */
export interface JobItemResult {
  readonly routing: Readonly<Record<string, readonly RoutedAdapter[]>>;
  readonly outputs: Readonly<Record<string, TaskOutput>>;
  /**
   * [d] float32, little-endian, base64 (`encodeEmbedding`). Not a JSON number array: base64 is
   * ~4x smaller, exact, and much cheaper to write and read than 2 x d numbers formatted and
   * parsed as text.
   */
  readonly embedding: string;
}

/** What a worker answers for a job: a reply entry (synchronous) or BullMQ's `returnvalue` (durable). */
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

/** A reply on an API node's stream: a job's result, or its final failure (`encodeFailure`). */
export type Reply =
  | { readonly job: string; readonly result: JobResult }
  | { readonly job: string; readonly failure: string };

/** Stream entry fields of a reply, flat as XADD takes them. */
export function replyFields(reply: Reply): string[] {
  return 'result' in reply
    ? ['j', reply.job, 'r', JSON.stringify(reply.result)]
    : ['j', reply.job, 'f', reply.failure];
}

/** The reply in a stream entry's fields, or undefined when they are not one. */
export function parseReply(fields: readonly string[]): Reply | undefined {
  let job: string | undefined;
  let result: string | undefined;
  let failure: string | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const value = fields[i + 1]!;
    if (fields[i] === 'j') job = value;
    else if (fields[i] === 'r') result = value;
    else if (fields[i] === 'f') failure = value;
  }
  if (job === undefined) return undefined;
  if (failure !== undefined) return { job, failure };
  if (result === undefined) return undefined;
  try {
    return { job, result: JSON.parse(result) as JobResult };
  } catch {
    return {
      job,
      failure: 'moe-error:{"code":"INTERNAL","message":"A worker sent an unreadable result."}',
    };
  }
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

/**
 * Errors of the engine or its process, or a worker behind on the adapter registry: worth running
 * the job again, maybe on another worker.
 */
export function isRetryable(error: MoeError): boolean {
  return (
    error.code === 'ADAPTERS_SYNCING' ||
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
  /** Finished durable jobs stay this long (seconds), for GET /v1/jobs/{id}. */
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

/**
 * Options of every job the API adds. A synchronous job is deleted as soon as it finishes (its
 * answer went to the waiting node's reply stream); a durable one keeps its result or error for
 * the TTL.
 */
export function jobOptions(settings: QueueSettings, jobId: string, name: JobName) {
  const keep = name === JOB_NAMES.durable ? { age: settings.resultTtlSeconds } : true;
  return {
    jobId,
    attempts: settings.attempts,
    backoff: { type: 'exponential', delay: settings.backoffMs },
    removeOnComplete: keep,
    removeOnFail: keep,
  } as const;
}

/**
 * BullMQ's event stream (`P:Q:events`) is capped at this many entries (its default is 10,000).
 * Nothing here reads it (answers travel on reply streams); it stays for diagnostics, bounded.
 */
export const EVENTS_MAX_LEN = 1000;

/** A reply stream expires this long after its last write (the node that reads it is gone). */
export const REPLY_TTL_MS = 60_000;
/** Most entries in one reply stream; a node that stops reading loses the oldest beyond it. */
export const REPLY_MAX_LEN = 10_000;

/** The keys and channel of one queue besides BullMQ's own (see the header). */
export function queueKeys(settings: Pick<QueueSettings, 'prefix' | 'name'>) {
  const base = `${settings.prefix}:${settings.name}`;
  return {
    replies: (node: string) => `${base}:replies:${node}`,
    registry: `${base}:registry`,
    registryChanged: `${base}:registry:changed`,
    registryLock: `${base}:registry:lock`,
    registryWorkers: `${base}:registry:workers`,
    registryWorker: (worker: string) => `${base}:registry:worker:${worker}`,
    compositions: `${base}:compositions`,
    compositionsChanged: `${base}:compositions:changed`,
    fitJob: (id: string) => `${base}:fit:${id}`,
  };
}
export type QueueKeys = ReturnType<typeof queueKeys>;
