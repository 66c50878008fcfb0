/**
 * The registry of queue mode on its own, in this process: two registries (real AdapterRegistry
 * instances of ModelFrontend, no engine) following one state in the Redis at REDIS_URL (default
 * 127.0.0.1:6379), under a key prefix of this run, deleted at the end. And Redis's clock as a
 * process sees it.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { MoeError } from '../src/errors.js';
import { ModelFrontend } from '../src/inference/model.js';
import { queueKeys } from '../src/transport/contract.js';
import { RedisClock } from '../src/transport/redis.js';
import { type RegistryEntry, RegistrySync } from '../src/transport/registry-sync.js';
import { Random } from '../src/util/random.js';
import { buildFixturePack, randomAdapter, writeAdapterFolder } from './support/fixture-pack.js';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const keys = queueKeys({ prefix: `moe-registry-test-${process.pid}-${Date.now()}`, name: 'q' });
const silent = () => undefined;

let root: string;
let packDir: string;
let redis: Redis;
const syncs: RegistrySync[] = [];

/** A frontend (pack, tokenizer, registry) following the Redis state as `role`. */
async function follower(
  role: 'api' | 'worker',
  name: string,
  adapterRoot: string,
): Promise<{ front: ModelFrontend; sync: RegistrySync }> {
  const front = await ModelFrontend.open({ packDir });
  const sync = new RegistrySync(
    {
      load: (folder, id) => front.registry.load(folder, { id }),
      unload: (id) => front.registry.unload(id),
    },
    {
      redis,
      redisUrl: REDIS_URL,
      keys,
      pack: front.pack,
      adapterRoot,
      role,
      name,
      syncTimeoutMs: 5000,
      log: silent,
    },
  );
  syncs.push(sync);
  await sync.start();
  return { front, sync };
}

function groupOf(front: ModelFrontend, id: string): string | undefined {
  return front.view.groups.find((g) => g.adapters.includes(id))?.id;
}

async function folder(name: string, id: string, group: string, seed: number): Promise<string> {
  const adapter = randomAdapter(new Random(seed), { id, group, hiddenSize: 32, rank: 4 });
  const dir = join(root, 'adapters', name);
  await writeAdapterFolder(dir, adapter);
  return dir;
}

/** Commit `adapters` as `version` behind the syncs' backs, as if announcements were missed. */
async function jumpTo(version: number, adapters: RegistryEntry[]): Promise<void> {
  await redis.hset(keys.registry, 'version', version, 'adapters', JSON.stringify(adapters));
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-registry-sync-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 3 });
  redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
});

after(async () => {
  await Promise.all(syncs.map((sync) => sync.close()));
  const found = await redis.keys(`${keys.registry}*`);
  if (found.length > 0) await redis.del(...found);
  redis.disconnect();
  await rm(root, { recursive: true, force: true });
});

describe('registry sync', () => {
  it('an admin change reaches the other processes; a bad folder changes nothing', async () => {
    const adapters = join(root, 'adapters');
    const api = await follower('api', 'api-1', adapters);
    const worker = await follower('worker', 'worker-1', adapters);
    assert.equal(api.sync.version, 0);
    const dir = await folder('x', 'x', 'language', 1);
    const info = await api.sync.change(async (current, version) => {
      const loaded = await api.front.registry.load(dir, { id: 'x' });
      return {
        result: loaded,
        next: [...current, api.sync.entry('x', loaded.group, dir, version)],
      };
    });
    assert.equal(info.id, 'x');
    assert.equal(api.sync.version, 1);
    // The change waited for the worker: it serves x already.
    assert.equal(worker.sync.version, 1);
    assert.equal(groupOf(worker.front, 'x'), 'language');
    assert.equal(groupOf(api.front, 'x'), 'language', "the API node's layout follows");
    const state = await redis.hgetall(keys.registry);
    const stored = JSON.parse(state.adapters!) as RegistryEntry[];
    assert.deepEqual(
      stored.find((e) => e.id === 'x'),
      { id: 'x', group: 'language', folder: 'x', rev: 1 },
      'folders are stored relative to ADAPTER_ROOT',
    );

    await assert.rejects(
      api.sync.change(async () => {
        await api.front.registry.load(join(adapters, 'missing'), { id: 'y' });
        return { result: undefined, next: [] };
      }),
      (error: unknown) => error instanceof MoeError && error.code === 'ADAPTER_INVALID',
    );
    assert.equal(api.sync.version, 1);
    assert.equal(await redis.hget(keys.registry, 'version'), '1');
  });

  it('catches up across versions, even when an id moved to another group', async () => {
    const adapters = join(root, 'adapters');
    const worker = await follower('worker', 'worker-2', adapters);
    assert.equal(worker.sync.version, 1, 'caught up on start');
    assert.equal(groupOf(worker.front, 'x'), 'language');
    // Versions 2 (unload x) and 3 (load x into task) announced to nobody: one refresh applies
    // both, which needs the unload before the load.
    await folder('x-task', 'x', 'task', 2);
    const current = JSON.parse((await redis.hget(keys.registry, 'adapters'))!) as RegistryEntry[];
    const moved = [
      ...current.filter((e) => e.id !== 'x'),
      { id: 'x', group: 'task', folder: 'x-task', rev: 3 },
    ];
    await jumpTo(3, moved);
    await worker.sync.refresh();
    assert.equal(worker.sync.error, undefined);
    assert.equal(worker.sync.version, 3);
    assert.ok(worker.sync.synced);
    assert.equal(groupOf(worker.front, 'x'), 'task');
  });

  it('a process that cannot read a folder is not in sync, and catches up once it can', async () => {
    const elsewhere = join(root, 'elsewhere');
    const blind = await follower('worker', 'worker-3', elsewhere);
    assert.equal(blind.sync.synced, false);
    assert.equal(blind.sync.error?.code, 'ADAPTER_INVALID');
    assert.ok(blind.sync.version < 3, 'it does not claim the version it could not apply');
    const status = JSON.parse((await redis.get(keys.registryWorker('worker-3')))!) as {
      version: number;
      failed?: { version: number; error: { code: string } };
    };
    assert.equal(status.failed?.version, 3, 'admin changes see the failure');
    assert.equal(status.failed?.error.code, 'ADAPTER_INVALID');
    // A job stamped with version 3 would wait for it, in vain.
    assert.equal(await blind.sync.reach(3, 50), false);

    const adapter = randomAdapter(new Random(2), {
      id: 'x',
      group: 'task',
      hiddenSize: 32,
      rank: 4,
    });
    await writeAdapterFolder(join(elsewhere, 'x-task'), adapter);
    await blind.sync.refresh();
    assert.ok(blind.sync.synced);
    assert.equal(blind.sync.version, 3);
    assert.equal(await blind.sync.reach(3, 50), true);
  });
});

describe("Redis's clock", () => {
  it("reads Redis's TIME within the error of one round trip", async () => {
    const clock = new RedisClock(redis);
    await new Promise((resolve) => setTimeout(resolve, 100)); // the first sample
    const before = clock.now();
    const [seconds, micros] = await redis.time();
    const after = clock.now();
    clock.close();
    const time = Number(seconds) * 1000 + Number(micros) / 1000;
    // Generous: the offset was measured once, on a shared and busy machine. A wrong unit or sign
    // would be off by seconds or decades.
    assert.ok(time >= before - 100 && time <= after + 100, `${before} <= ${time} <= ${after}`);
  });
});
