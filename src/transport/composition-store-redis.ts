/**
 * Named compositions in queue mode: one Redis hash (`P:Q:compositions`, name -> StoredComposition
 * JSON) shared by every API node, each node reading from its own snapshot of it (the
 * CompositionStore contract, compositions/store.ts). The approach of registry-sync.ts, smaller:
 *
 * - A change is a compare-and-set on the name's version in one Lua script (the stored version
 *   must still be the one this node read), which also announces the name on
 *   `P:Q:compositions:changed`. Two nodes replacing one name at once: one wins, the other reads
 *   again and stores the version after it. This node's snapshot takes the change only once Redis
 *   has it: until then the previous version serves, here and everywhere.
 * - Every node converges on the hash: on each announcement, on each (re)connect (catch-up after
 *   an outage), every REFRESH_MS (a missed message), and when a request names a composition this
 *   node has not seen (`find`: created on another node a moment ago).
 * - Redis down: reads keep serving the last snapshot; changes fail with QUEUE_UNAVAILABLE and
 *   change nothing.
 */
import type { Redis } from 'ioredis';
import type {
  CompositionDefinition,
  Provenance,
  StoredComposition,
} from '../compositions/composition.js';
import { type CompositionStore, nextVersion, type PutResult } from '../compositions/store.js';
import { MoeError } from '../errors.js';
import type { Logger } from '../util/log.js';
import { SerialQueue } from '../util/serial.js';
import type { QueueKeys } from './contract.js';
import { connectRedis, isUp, sharedStateUnavailable, whenReady } from './redis.js';

export interface RedisCompositionStoreOptions {
  readonly redisUrl: string;
  readonly keys: QueueKeys;
  readonly log: Logger;
}

/** A node reads the whole hash this often besides announcements. */
const REFRESH_MS = 5000;
/** start() waits this long at most for Redis before it goes on (and catches up on connect). */
const START_WAIT_MS = 5000;
/** A change that keeps losing the compare-and-set gives up after this many tries. */
const PUT_TRIES = 8;

/** Store ARGV[3] under ARGV[1] if the name's stored version is still ARGV[2] (0: absent). */
const PUT_SCRIPT = `
local current = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if current then version = cjson.decode(current).version end
if version ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1`;

/** Delete ARGV[1]; answer what was stored (false: nothing). */
const DELETE_SCRIPT = `
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return current`;

export class RedisCompositionStore implements CompositionStore {
  private readonly redis: Redis;
  private readonly subscriber: Redis;
  private snapshot = new Map<string, StoredComposition>();
  private refreshing: Promise<void> | undefined;
  private queuedRefresh: Promise<void> | undefined;
  /** Changes made by this node; a refresh that overlaps one is not applied. */
  private changes = 0;
  private readonly serial = new SerialQueue();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: RedisCompositionStoreOptions) {
    this.redis = connectRedis(options.redisUrl, {
      name: `moe-compositions-${process.pid}`,
      failFast: true,
    });
    this.subscriber = connectRedis(options.redisUrl, {
      name: `moe-compositions-sub-${process.pid}`,
    });
    this.subscriber.on('message', (channel: string) => {
      if (channel === options.keys.compositionsChanged) void this.refresh();
    });
    this.subscriber.on('ready', () => void this.refresh());
    this.redis.on('ready', () => void this.refresh());
  }

  async start(): Promise<void> {
    await this.subscriber.subscribe(this.options.keys.compositionsChanged).catch(() => undefined);
    await whenReady(this.redis, START_WAIT_MS);
    await this.refresh();
    this.timer = setInterval(() => void this.refresh(), REFRESH_MS);
    this.timer.unref();
  }

  get(name: string): StoredComposition | undefined {
    return this.snapshot.get(name);
  }

  list(): StoredComposition[] {
    return [...this.snapshot.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  async find(name: string): Promise<StoredComposition | undefined> {
    const known = this.snapshot.get(name);
    if (known !== undefined || !isUp(this.redis)) return known;
    await this.refresh();
    return this.snapshot.get(name);
  }

  put(definition: CompositionDefinition, provenance: Provenance): Promise<PutResult> {
    return this.serial.run(async () => {
      const { keys } = this.options;
      for (let attempt = 0; attempt < PUT_TRIES; attempt++) {
        const raw = await this.command(() => this.redis.hget(keys.compositions, definition.name));
        const previous = raw === null ? undefined : (JSON.parse(raw) as StoredComposition);
        const stored = nextVersion(definition, provenance, previous);
        const done = await this.command(() =>
          this.redis.eval(
            PUT_SCRIPT,
            2,
            keys.compositions,
            keys.compositionsChanged,
            definition.name,
            String(previous?.version ?? 0),
            JSON.stringify(stored),
          ),
        );
        if (done === 1) {
          this.changes++;
          this.snapshot = new Map(this.snapshot).set(stored.name, stored);
          return { stored, created: previous === undefined };
        }
      }
      throw new MoeError(
        'COMPOSITION_STORE_FAILED',
        `Composition '${definition.name}' kept changing on other nodes while this one stored it; nothing changed here. Retry.`,
      );
    });
  }

  delete(name: string): Promise<StoredComposition | undefined> {
    return this.serial.run(async () => {
      const { keys } = this.options;
      const raw = await this.command(() =>
        this.redis.eval(DELETE_SCRIPT, 2, keys.compositions, keys.compositionsChanged, name),
      );
      const next = new Map(this.snapshot);
      next.delete(name);
      this.changes++;
      this.snapshot = next;
      return typeof raw === 'string' ? (JSON.parse(raw) as StoredComposition) : undefined;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.serial.idle();
    this.subscriber.disconnect();
    this.redis.disconnect();
  }

  /**
   * Read the whole hash into the snapshot. One read at a time; a request during a read queues one
   * more read after it (the running one may have started before the change it was asked for). A
   * read that overlapped a change made here is not applied (it may predate it): the next is.
   */
  private refresh(): Promise<void> {
    if (this.refreshing !== undefined) {
      this.queuedRefresh ??= this.refreshing.then(() => {
        this.queuedRefresh = undefined;
        return this.refresh();
      });
      return this.queuedRefresh;
    }
    const run = async () => {
      if (this.closed || !isUp(this.redis)) return;
      const generation = this.changes;
      let hash: Record<string, string>;
      try {
        hash = await this.redis.hgetall(this.options.keys.compositions);
      } catch {
        return; // Redis went away: the snapshot keeps serving; the next (re)connect refreshes
      }
      if (generation !== this.changes) {
        void this.refresh(); // queued behind this one
        return;
      }
      const next = new Map<string, StoredComposition>();
      for (const [name, json] of Object.entries(hash)) {
        try {
          next.set(name, JSON.parse(json) as StoredComposition);
        } catch {
          this.options.log('error', 'a stored composition is not valid JSON; skipped', { name });
        }
      }
      this.snapshot = next;
    };
    // Cleared in a callback, never inside `run`: a run that ends without awaiting would clear it
    // before it is set, and every later refresh would queue behind a promise that never clears.
    const refreshing: Promise<void> = run().finally(() => {
      if (this.refreshing === refreshing) this.refreshing = undefined;
    });
    this.refreshing = refreshing;
    return this.refreshing;
  }

  private async command<T>(run: () => Promise<T>): Promise<T> {
    if (!isUp(this.redis)) throw sharedStateUnavailable('the compositions');
    try {
      return await run();
    } catch {
      throw sharedStateUnavailable('the compositions');
    }
  }
}
