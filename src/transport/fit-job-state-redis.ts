/**
 * Fit job states in queue mode: one string key per job (`P:Q:fit:<id>`, JSON FitJobRecord), so
 * any API node answers GET /v1/jobs/{id} for a fit another node runs. Each write resets the
 * key's expiry to the result TTL (JOB_RESULT_TTL_SECONDS); a running job writes its progress
 * more often than that, so only finished jobs (or the jobs of a node that died) expire.
 */
import type { Redis } from 'ioredis';
import type { FitJobRecord, FitJobStates } from '../compositions/fit-jobs.js';
import { MoeError } from '../errors.js';
import type { QueueKeys } from './contract.js';
import { connectRedis, isUp } from './redis.js';

export class RedisFitJobStates implements FitJobStates {
  private readonly redis: Redis;

  constructor(
    redisUrl: string,
    private readonly keys: QueueKeys,
    private readonly ttlSeconds: number,
  ) {
    this.redis = connectRedis(redisUrl, { name: `moe-fit-jobs-${process.pid}`, failFast: true });
  }

  async save(record: FitJobRecord): Promise<void> {
    await this.command(() =>
      this.redis.set(this.keys.fitJob(record.id), JSON.stringify(record), 'EX', this.ttlSeconds),
    );
  }

  async get(id: string): Promise<FitJobRecord | undefined> {
    const raw = await this.command(() => this.redis.get(this.keys.fitJob(id)));
    return raw === null ? undefined : (JSON.parse(raw) as FitJobRecord);
  }

  async close(): Promise<void> {
    this.redis.disconnect();
  }

  private async command<T>(run: () => Promise<T>): Promise<T> {
    // The link fails fast while down; give a (re)connect in progress one short chance first.
    if (!isUp(this.redis)) await new Promise((resolve) => setTimeout(resolve, 200));
    try {
      return await run();
    } catch {
      throw new MoeError(
        'QUEUE_UNAVAILABLE',
        'Redis, which keeps fit jobs in queue mode, cannot be reached; retry after a second.',
        { retryAfterSeconds: 1 },
      );
    }
  }
}
