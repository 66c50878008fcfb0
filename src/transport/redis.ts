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
