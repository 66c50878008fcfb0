/**
 * Redis connections of both roles (ioredis), with one reconnect policy: try again at once, then
 * every 100 ms more up to once a second, forever. A process never exits because Redis went away;
 * it serves again within about a second of Redis coming back.
 *
 * `maxRetriesPerRequest: null` is what BullMQ requires (FIELD-NOTES): a command sent when the
 * link drops is re-sent after the reconnect instead of failing. Producers that must fail fast
 * (the API's `add`) also set `enableOfflineQueue: false`, so a command sent while disconnected
 * fails at once instead of waiting for Redis to return.
 */
import { Redis } from 'ioredis';
import { MoeError } from '../errors.js';

export interface ConnectOptions {
  /** Connection name shown by CLIENT LIST. */
  readonly name: string;
  /** Fail commands at once while disconnected (producers). Default false: queue them. */
  readonly failFast?: boolean;
  /** Called when the link goes down or comes back (each change once). */
  readonly onChange?: (up: boolean, error: Error | undefined) => void;
}

export function connectRedis(url: string, options: ConnectOptions): Redis {
  const redis = new Redis(url, {
    maxRetriesPerRequest: null,
    enableOfflineQueue: !options.failFast,
    connectionName: options.name,
    retryStrategy: (times) => Math.min(times * 100, 1000),
    // A half-open link (Redis frozen, network cut) is found by keep-alive, not after minutes.
    keepAlive: 5000,
    connectTimeout: 2000,
  });
  let up: boolean | undefined;
  let lastError: Error | undefined;
  redis.on('error', (error: Error) => {
    lastError = error; // reported with the 'down' change below; ioredis retries by itself
  });
  redis.on('ready', () => {
    if (up !== true) options.onChange?.(true, undefined);
    up = true;
  });
  redis.on('close', () => {
    if (up !== false) options.onChange?.(false, lastError);
    up = false;
  });
  return redis;
}

/** True while the connection can take commands. */
export function isUp(redis: Redis): boolean {
  return redis.status === 'ready';
}

/** Resolves when `redis` is ready, or after `ms`. */
export function whenReady(redis: Redis, ms: number): Promise<void> {
  if (isUp(redis)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      redis.off('ready', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    redis.on('ready', done);
  });
}

/**
 * 503 QUEUE_UNAVAILABLE for a change of shared state that Redis holds in queue mode (`what`: the
 * adapter registry, the compositions): nothing was changed.
 */
export function sharedStateUnavailable(what: string): MoeError {
  return new MoeError(
    'QUEUE_UNAVAILABLE',
    `Redis, which holds ${what} in queue mode, cannot be reached; nothing was changed. Retry after a second.`,
    { retryAfterSeconds: 1 },
  );
}

/** `promise`, or `onTimeout()` thrown after `ms`. */
export async function within<T>(
  promise: Promise<T>,
  ms: number,
  onTimeout: () => Error,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(onTimeout()), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Redis's clock, as seen from this process: the one clock every API node and worker shares, so
 * that a deadline can travel as "this much time left when queued at Redis time T" without any
 * host comparing its own clock with another's.
 *
 * `now()` is this process's monotonic clock plus an offset to Redis's TIME, measured on each
 * (re)connect and every RESAMPLE_MS, keeping the sample with the shortest round trip of the last
 * few (its error is at most half that round trip, well under a millisecond on a LAN). Before the
 * first sample it is the wall clock, which is all it can be.
 */
export class RedisClock {
  private offset = Date.now() - performance.now();
  private best: { rtt: number; at: number } | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly redis: Redis) {
    redis.on('ready', () => void this.sample());
    if (isUp(redis)) void this.sample();
    this.timer = setInterval(() => void this.sample(), RESAMPLE_MS);
    this.timer.unref();
  }

  /** Milliseconds since the epoch on Redis's clock. */
  now(): number {
    return performance.now() + this.offset;
  }

  close(): void {
    clearInterval(this.timer);
  }

  private async sample(): Promise<void> {
    if (!isUp(this.redis)) return;
    try {
      const t0 = performance.now();
      const [seconds, micros] = await this.redis.time();
      const t1 = performance.now();
      const rtt = t1 - t0;
      // A reply that waited for a reconnect or a stalled Redis says little about the offset.
      if (rtt > MAX_SAMPLE_RTT_MS) return;
      // A sample beats the kept one when its round trip is shorter, or when the kept one is old
      // (the two clocks drift apart slowly; a later sample also follows a stepped wall clock).
      if (this.best !== undefined && rtt > this.best.rtt && t1 - this.best.at < 4 * RESAMPLE_MS) {
        return;
      }
      this.best = { rtt, at: t1 };
      this.offset = Number(seconds) * 1000 + Number(micros) / 1000 - (t0 + t1) / 2;
    } catch {
      // Redis went away; the next (re)connect samples again.
    }
  }
}

const RESAMPLE_MS = 10_000;
const MAX_SAMPLE_RTT_MS = 200;

const corked = new WeakSet<object>();

/**
 * Hold the commands written to `redis` until this event-loop turn ends, then send them in one
 * write. A worker finishing a batch completes every job of it in one turn, one command each;
 * measured here, each write to a loopback Redis cost 0.1-0.6 ms of the writer's CPU (the kernel
 * delivers the bytes to Redis in the writer's time), more than the rest of the job's handling.
 */
export function corkTurn(redis: Redis): void {
  const stream = redis.stream;
  if (stream === undefined || stream === null || corked.has(stream)) return;
  corked.add(stream);
  stream.cork();
  setImmediate(() => {
    corked.delete(stream);
    stream.uncork();
  });
}
