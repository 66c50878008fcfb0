/**
 * The adapter registry of queue mode, shared through Redis. Every process (API nodes and workers)
 * keeps its own registry, and this class makes it follow one state in Redis: which adapter ids
 * are served, in which group, from which folder, under one version number.
 *
 * Contracts
 * - The state (`P:Q:registry`: version + entries) changes only through `change()`, i.e. an admin
 *   route on an API node, one change at a time cluster-wide (`P:Q:registry:lock`). The change is
 *   validated by applying it to that node's own registry first (the registry's own load and
 *   unload, so a bad folder gets exactly embedded mode's 4xx), then committed as version + 1
 *   (compare-and-set) and announced on `P:Q:registry:changed`.
 * - Every process converges on the state: on each announcement, on each (re)connect (catch-up on
 *   start and after an outage), and every REFRESH_MS (a missed message). Converging diffs the
 *   state against what this process applied and calls only the registry's public API,
 *   `load(folder, {id})` and `unload(id)`. `version` is the last version applied in full; while
 *   a state cannot be applied (a folder this host cannot read) `synced` is false and the process
 *   retries on each refresh.
 * - The admin change waits for every live worker (those renewing `P:Q:registry:worker:<name>`)
 *   to apply the new version, up to ADAPTER_SYNC_TIMEOUT_MS. If one fails, the change is rolled
 *   back (the previous entries are committed as the next version, which every process converges
 *   on) and the admin gets that worker's error: the same code and status as embedded mode.
 *   Workers still silent at the timeout are logged; they converge later, and until then they
 *   hold back jobs stamped with the newer version (queue-worker.ts).
 * - Folders are stored relative to ADAPTER_ROOT, which every process resolves against its own
 *   ADAPTER_ROOT: it must be the same shared volume on every host. The pack's own adapters are
 *   stored as `folder: null` and read from each process's own copy of the pack.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { Redis } from 'ioredis';
import type { AdapterInfo } from '../adapters/registry.js';
import { type ErrorCode, MoeError } from '../errors.js';
import type { LoadedPack } from '../pack/load.js';
import type { Logger } from '../util/log.js';
import { SerialQueue } from '../util/serial.js';
import type { QueueKeys } from './contract.js';
import { connectRedis, isUp, sharedStateUnavailable, whenReady } from './redis.js';

/** One served adapter id, as the cluster state records it. */
export interface RegistryEntry {
  readonly id: string;
  readonly group: string;
  /** Folder relative to ADAPTER_ROOT (or absolute, when it was outside); null: the pack's own. */
  readonly folder: string | null;
  /** The version that last loaded it: loading the same id again (new weights) changes it. */
  readonly rev: number;
}

export interface RegistryState {
  readonly version: number;
  readonly adapters: readonly RegistryEntry[];
}

/** What the sync drives: one process's adapter registry, through its public API. */
export interface AdapterTarget {
  load(folder: string, id: string, group: string): Promise<AdapterInfo>;
  unload(id: string): Promise<void>;
}

/** What an admin change computes from the current entries: its answer, and the next entries. */
export interface ChangeOutcome<T> {
  readonly result: T;
  /** undefined: nothing changed (e.g. the same folder contents loaded again). */
  readonly next: readonly RegistryEntry[] | undefined;
}

export interface RegistrySyncOptions {
  /** Commands: state reads, commits, the lock, worker status. The sync subscribes on its own link. */
  readonly redis: Redis;
  readonly redisUrl: string;
  readonly keys: QueueKeys;
  readonly pack: LoadedPack;
  readonly adapterRoot: string;
  /** Workers publish their status, which admin changes wait for; API nodes do not. */
  readonly role: 'api' | 'worker';
  /** Unique name of this process (a worker: its BullMQ worker name). */
  readonly name: string;
  /** ADAPTER_SYNC_TIMEOUT_MS: longest wait for the lock, and for the workers to apply a change. */
  readonly syncTimeoutMs: number;
  readonly log: Logger;
}

export interface RegistrySyncEvents {
  /** `version` or `synced` changed. */
  change: [];
}

/** A worker's registry status in `P:Q:registry:worker:<name>`. */
interface WorkerStatus {
  readonly version: number;
  readonly failed?: { readonly version: number; readonly error: ReturnType<MoeError['toJSON']> };
}

/** Each process reads the state this often besides announcements (a missed one costs this much). */
const REFRESH_MS = 5000;
/** Workers renew their status this often; it expires after three missed renewals. */
const HEARTBEAT_MS = 1000;
/** An admin change polls the workers' status this often while it waits for them. */
const POLL_MS = 25;
/** start() waits this long at most for Redis before it goes on (and catches up on connect). */
const START_WAIT_MS = 5000;

/** Commit a new version if the state is still at the expected one; announce it. */
const COMMIT_SCRIPT = `
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'adapters', ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1`;

/** Delete the lock only if it is still ours. */
const UNLOCK_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export class RegistrySync extends EventEmitter<RegistrySyncEvents> {
  private readonly subscriber: Redis;
  /** Pack adapter id -> its folder in this process's pack. */
  private readonly packFolders: Map<string, string>;
  /** What this process's registry serves, as entries (starts as the pack: version 0). */
  private applied: Map<string, RegistryEntry>;
  private appliedVersion = 0;
  /** Why the last state read could not be applied in full; undefined: in sync. */
  private failure: { version: number; error: MoeError } | undefined;
  private readonly serial = new SerialQueue();
  private queuedRefresh: Promise<void> | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private closed = false;

  constructor(
    private readonly target: AdapterTarget,
    private readonly options: RegistrySyncOptions,
  ) {
    super();
    const { pack } = options;
    this.packFolders = new Map(
      pack.manifest.groups.flatMap((group) =>
        group.adapters.map((ref) => [ref.id, join(pack.dir, ref.path)] as const),
      ),
    );
    this.applied = new Map(packEntries(pack).map((entry) => [entry.id, entry]));
    this.subscriber = connectRedis(options.redisUrl, {
      name: `moe-registry-${options.role}-${process.pid}`,
    });
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== options.keys.registryChanged) return;
      if (Number(message) !== this.appliedVersion || this.failure !== undefined) {
        void this.refresh();
      }
    });
    // (Re)connected: catch up on whatever was committed while a link was down.
    this.subscriber.on('ready', () => void this.refresh());
    options.redis.on('ready', () => void this.refresh());
  }

  /** The registry version applied in full: requests validated here carry it. */
  get version(): number {
    return this.appliedVersion;
  }

  /** False while the last state read could not be applied in full (see `error`). */
  get synced(): boolean {
    return this.failure === undefined;
  }

  /** Why this process is not in sync. */
  get error(): MoeError | undefined {
    return this.failure?.error;
  }

  /**
   * Subscribe, apply the current state once (when Redis answers within START_WAIT_MS; else on
   * the first connect), then keep following it.
   */
  async start(): Promise<void> {
    await this.subscriber.subscribe(this.options.keys.registryChanged).catch(() => undefined);
    await whenReady(this.options.redis, START_WAIT_MS);
    await this.refresh();
    await this.publishStatus(); // from now on, admin changes wait for this worker
    this.timers.push(setInterval(() => void this.refresh(), REFRESH_MS));
    if (this.options.role === 'worker') {
      this.timers.push(setInterval(() => void this.publishStatus(), HEARTBEAT_MS));
    }
    for (const timer of this.timers) timer.unref();
  }

  /**
   * Resolves true once this process has applied `version` (or a later one), false after
   * `timeoutMs` without it. Asks Redis at once if no announcement is awaited.
   */
  async reach(version: number, timeoutMs: number): Promise<boolean> {
    if (this.appliedVersion >= version) return true;
    void this.refresh();
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.off('change', check);
        resolve(ok);
      };
      const check = () => {
        if (this.appliedVersion >= version) done(true);
      };
      const timer = setTimeout(() => done(false), Math.max(0, timeoutMs));
      this.on('change', check);
    });
  }

  /** Read the state and converge on it (coalesced: one queued refresh at a time). */
  refresh(): Promise<void> {
    this.queuedRefresh ??= this.serial.run(async () => {
      this.queuedRefresh = undefined;
      if (this.closed || !isUp(this.options.redis)) return;
      let state: RegistryState;
      try {
        state = await this.read();
      } catch {
        return; // Redis went away: the next (re)connect refreshes
      }
      if (state.version !== this.appliedVersion || this.failure !== undefined) {
        await this.converge(state);
      }
    });
    return this.queuedRefresh;
  }

  /**
   * An admin change, cluster-wide: take the lock, catch up, `apply` it here (validation: it
   * throws the registry's own errors, and nothing is committed), commit, wait for the workers,
   * roll back if one of them fails. Rejects with ADAPTER_BUSY when another change holds the lock
   * past ADAPTER_SYNC_TIMEOUT_MS, QUEUE_UNAVAILABLE when Redis fails, or a worker's error.
   */
  change<T>(
    apply: (current: readonly RegistryEntry[], version: number) => Promise<ChangeOutcome<T>>,
  ): Promise<T> {
    return this.serial.run(async () => {
      const token = randomBytes(12).toString('hex');
      await this.lock(token);
      try {
        const state = await this.read();
        await this.converge(state);
        if (this.failure !== undefined) throw this.failure.error;
        const version = state.version + 1;
        const { result, next } = await apply(state.adapters, version);
        if (next === undefined) return result;
        // This registry now serves `next`; the version follows once Redis has it.
        this.applied = new Map(next.map((entry) => [entry.id, entry]));
        const committed = await this.commit(state.version, version, next).catch(() => undefined);
        if (committed !== true) {
          await this.converge(state); // put this registry back: the state did not change
          throw committed === undefined
            ? sharedStateUnavailable('the adapter registry')
            : new MoeError(
                'ADAPTER_BUSY',
                'The adapter registry changed while this change was applied; retry it.',
              );
        }
        this.setApplied(version, undefined);
        const failed = await this.awaitWorkers(version);
        if (failed !== undefined) {
          const back = version + 1;
          const committed = await this.commit(version, back, state.adapters).catch(() => false);
          await this.converge({ version: back, adapters: state.adapters });
          // Answer once every live worker serves the previous set again (or time ran out).
          if (committed) await this.awaitWorkers(back).catch(() => undefined);
          throw workerFailure(failed.worker, failed.error, committed);
        }
        return result;
      } catch (error) {
        throw isRedisFailure(error) ? sharedStateUnavailable('the adapter registry') : error;
      } finally {
        await this.options.redis
          .eval(UNLOCK_SCRIPT, 1, this.options.keys.registryLock, token)
          .catch(() => undefined);
      }
    });
  }

  /** The entry a load of `folder` as `id` into `group` makes at `version`. */
  entry(id: string, group: string, folder: string, version: number): RegistryEntry {
    const root = resolve(this.options.adapterRoot);
    const rel = relative(root, resolve(folder));
    const inside = !rel.startsWith('..') && !isAbsolute(rel);
    return { id, group, folder: inside ? rel.split(sep).join('/') : resolve(folder), rev: version };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    if (this.options.role === 'worker' && isUp(this.options.redis)) {
      const { keys, name } = this.options;
      await this.options.redis
        .multi()
        .del(keys.registryWorker(name))
        .srem(keys.registryWorkers, name)
        .exec()
        .catch(() => undefined);
    }
    this.subscriber.disconnect();
  }

  // --- converging -----------------------------------------------------------------------------

  /**
   * Make this registry serve `state`: load what is new or changed (an id that moved to another
   * group is unloaded first), unload what is gone. Ops run in rounds until none is left or a
   * round makes no progress: an unload that would empty a group waits for a load into it.
   */
  private async converge(state: RegistryState): Promise<void> {
    const wanted = new Map(state.adapters.map((entry) => [entry.id, entry]));
    let ops: (() => Promise<void>)[] = [];
    for (const entry of state.adapters) {
      const have = this.applied.get(entry.id);
      if (
        have === undefined ||
        have.folder !== entry.folder ||
        have.rev !== entry.rev ||
        have.group !== entry.group
      ) {
        ops.push(async () => {
          if (have !== undefined && have.group !== entry.group && this.applied.has(entry.id)) {
            // Moved to another group: a registry serves an id in one group only.
            await this.unload(entry.id);
          }
          await this.target.load(this.folderOf(entry), entry.id, entry.group);
          this.applied.set(entry.id, entry);
        });
      }
    }
    for (const id of this.applied.keys()) {
      if (wanted.has(id)) continue;
      ops.push(() => this.unload(id));
    }
    let error: unknown;
    while (ops.length > 0) {
      const failed: typeof ops = [];
      for (const op of ops) {
        try {
          await op();
        } catch (caught) {
          error = caught;
          failed.push(op);
        }
      }
      if (failed.length === ops.length) break;
      ops = failed;
    }
    if (ops.length === 0) {
      this.setApplied(state.version, undefined);
      return;
    }
    const moe =
      error instanceof MoeError
        ? error
        : new MoeError('INTERNAL', error instanceof Error ? error.message : String(error));
    this.options.log('error', 'cannot apply the adapter registry; retrying on each refresh', {
      version: state.version,
      applied: this.appliedVersion,
      code: moe.code,
      error: moe.message,
    });
    this.setApplied(this.appliedVersion, { version: state.version, error: moe });
  }

  /** Unload `id` here (already gone counts as done). */
  private async unload(id: string): Promise<void> {
    await this.target.unload(id).catch((error: unknown) => {
      if (!(error instanceof MoeError && error.code === 'ADAPTER_NOT_FOUND')) throw error;
    });
    this.applied.delete(id);
  }

  private setApplied(version: number, failure: RegistrySync['failure']): void {
    const changed =
      version !== this.appliedVersion || (failure === undefined) !== (this.failure === undefined);
    this.appliedVersion = version;
    this.failure = failure;
    if (changed) {
      this.options.log('info', 'adapter registry applied', { version, synced: !failure });
      this.emit('change');
    }
    void this.publishStatus();
  }

  private folderOf(entry: RegistryEntry): string {
    if (entry.folder !== null) {
      return isAbsolute(entry.folder)
        ? entry.folder
        : join(resolve(this.options.adapterRoot), entry.folder);
    }
    const folder = this.packFolders.get(entry.id);
    if (folder === undefined) {
      throw new MoeError(
        'ADAPTER_INVALID',
        `The registry serves '${entry.id}' from the model pack, but this process's pack has no adapter '${entry.id}'. Run every process of one QUEUE_NAME on the same pack.`,
        { id: entry.id },
      );
    }
    return folder;
  }

  // --- Redis ----------------------------------------------------------------------------------

  private async read(): Promise<RegistryState> {
    const hash = await this.options.redis.hgetall(this.options.keys.registry);
    if (hash.version === undefined) return { version: 0, adapters: packEntries(this.options.pack) };
    return {
      version: Number(hash.version),
      adapters: JSON.parse(hash.adapters ?? '[]') as RegistryEntry[],
    };
  }

  private async commit(
    expected: number,
    version: number,
    adapters: readonly RegistryEntry[],
  ): Promise<boolean> {
    const { keys } = this.options;
    const done = await this.options.redis.eval(
      COMMIT_SCRIPT,
      2,
      keys.registry,
      keys.registryChanged,
      String(expected),
      String(version),
      JSON.stringify(adapters),
    );
    return done === 1;
  }

  private async lock(token: string): Promise<void> {
    const { redis, keys, syncTimeoutMs } = this.options;
    // Held at most for a whole change: the wait for the workers, a rollback, and slack.
    const holdMs = 3 * syncTimeoutMs + 10_000;
    const limit = performance.now() + syncTimeoutMs;
    for (;;) {
      const taken = await redis.set(keys.registryLock, token, 'PX', holdMs, 'NX').catch(() => {
        throw sharedStateUnavailable('the adapter registry');
      });
      if (taken === 'OK') return;
      if (performance.now() > limit) {
        throw new MoeError(
          'ADAPTER_BUSY',
          'Another adapter change is in progress (on this or another API node); retry when it finishes.',
        );
      }
      await sleep(50);
    }
  }

  /** The first live worker that failed `version`, once every live worker answered or time ran out. */
  private async awaitWorkers(
    version: number,
  ): Promise<{ worker: string; error: MoeError } | undefined> {
    const { redis, keys, syncTimeoutMs, log } = this.options;
    const limit = performance.now() + syncTimeoutMs;
    for (;;) {
      let names: string[];
      let raw: (string | null)[];
      try {
        names = await redis.smembers(keys.registryWorkers);
        raw = names.length === 0 ? [] : await redis.mget(names.map(keys.registryWorker));
      } catch (error) {
        // Committed already: the workers follow when Redis is back; this answer cannot wait.
        log('warn', 'could not read the workers while waiting for an adapter change', {
          version,
          error: error instanceof Error ? error.message : String(error),
        });
        return undefined;
      }
      const pending: string[] = [];
      const gone: string[] = [];
      for (const [i, name] of names.entries()) {
        const text = raw[i];
        if (text === null || text === undefined) {
          gone.push(name); // stopped renewing its status: not running
          continue;
        }
        const status = JSON.parse(text) as WorkerStatus;
        if (status.version >= version) continue;
        if (status.failed !== undefined && status.failed.version >= version) {
          const { code, message, details } = status.failed.error;
          return { worker: name, error: new MoeError(code as ErrorCode, message, details) };
        }
        pending.push(name);
      }
      if (gone.length > 0) await redis.srem(keys.registryWorkers, ...gone).catch(() => 0);
      if (pending.length === 0) return undefined;
      if (performance.now() > limit) {
        log('warn', 'workers did not apply an adapter change in time; they catch up later', {
          version,
          workers: pending,
        });
        return undefined;
      }
      await sleep(POLL_MS);
    }
  }

  private async publishStatus(): Promise<void> {
    const { redis, keys, name, role } = this.options;
    if (role !== 'worker' || this.closed || !isUp(redis)) return;
    const status: WorkerStatus =
      this.failure === undefined
        ? { version: this.appliedVersion }
        : {
            version: this.appliedVersion,
            failed: { version: this.failure.version, error: this.failure.error.toJSON() },
          };
    await redis
      .multi()
      .set(keys.registryWorker(name), JSON.stringify(status), 'PX', 3 * HEARTBEAT_MS)
      .sadd(keys.registryWorkers, name)
      .exec()
      .catch(() => undefined);
  }
}

/** The pack's own adapters, as entries of version 0. */
export function packEntries(pack: LoadedPack): RegistryEntry[] {
  return pack.manifest.groups.flatMap((group) =>
    group.adapters.map((ref) => ({ id: ref.id, group: group.id, folder: null, rev: 0 })),
  );
}

function workerFailure(worker: string, error: MoeError, rolledBack: boolean): MoeError {
  const after = rolledBack
    ? 'The change was rolled back on every process.'
    : 'Rolling the change back failed too (Redis?); GET /v1/adapters shows what is served.';
  const hint =
    error.code === 'ADAPTER_INVALID'
      ? ' Every API node and worker must reach the folder: put ADAPTER_ROOT on a volume they all share.'
      : '';
  return new MoeError(
    error.code,
    `Worker ${worker} could not apply the change: ${error.message}${hint} ${after}`,
    { ...error.details, worker },
  );
}

/** An error of the Redis link or server (not of this code, not a MoeError). */
function isRedisFailure(error: unknown): boolean {
  return (
    error instanceof Error &&
    !(error instanceof MoeError) &&
    (error.name === 'ReplyError' ||
      /Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE/i.test(
        error.message,
      ))
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
