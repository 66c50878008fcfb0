/**
 * The engine end to end on a real fixture pack: real worker threads, real ORT sessions, the
 * compiled mixture graph, the adapter registry swapping graphs while batches stream through.
 */

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MoeError } from '../src/errors.js';
import { Model } from '../src/inference/model.js';
import type { BottleneckAdapter } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { buildFixturePack, randomAdapter, writeAdapterFolder } from './support/fixture-pack.js';

const TEXTS = [
  'the quick brown fox jumps over the lazy dog',
  'der schnelle braune fuchs',
  'le renard brun rapide saute',
  'hello',
  'a much longer sentence that has quite a few more words than the others in this batch so padding matters',
];

let root: string;
let packDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-engine-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 7 });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

function norm(v: Float32Array): number {
  return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<MoeError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof MoeError, `expected MoeError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return error;
  }
  assert.fail(`expected ${code}`);
}

describe('engine on a fixture pack', () => {
  let model: Model;
  before(async () => {
    model = await Model.open({
      packDir,
      engine: { workers: 2, intraOpThreads: 1, allowFaultInjection: true },
    });
  });
  after(async () => {
    await model.close();
  });

  it('answers every item with routing whose weights sum to 1, task scores and a unit embedding', async () => {
    const results = await model.infer({ inputs: TEXTS, topK: 2 });
    assert.equal(results.length, TEXTS.length);
    for (const result of results) {
      assert.deepEqual(
        Object.keys(result.routing),
        model.pack.groups.map((g) => g.id),
      );
      const language = result.routing.language!;
      assert.equal(language.length, 2);
      assert.ok(Math.abs(language[0]!.weight + language[1]!.weight - 1) < 1e-5);
      assert.ok(language[0]!.weight >= language[1]!.weight);
      assert.equal(result.routing.task!.length, 1);
      assert.equal(result.routing.task![0]!.weight, 1);
      for (const head of model.pack.heads) {
        const out = result.outputs[head.id]!;
        const scores = Object.values(out.scores);
        assert.equal(scores.length, head.labels.length);
        assert.ok(Math.abs(scores.reduce((s, x) => s + x, 0) - 1) < 1e-5);
        assert.equal(out.score, Math.max(...scores));
        assert.equal(out.scores[out.label], out.score);
      }
      assert.ok(Math.abs(norm(result.embedding) - 1) < 1e-5);
    }
  });

  it('gives each item the same answer alone as inside a padded batch', async () => {
    const batch = await model.infer({ inputs: TEXTS });
    for (let i = 0; i < TEXTS.length; i++) {
      const [alone] = await model.infer({ inputs: [TEXTS[i]!] });
      assert.ok(maxAbsDiff(alone!.embedding, batch[i]!.embedding) < 1e-4);
      assert.deepEqual(
        alone!.routing.language!.map((r) => r.adapter),
        batch[i]!.routing.language!.map((r) => r.adapter),
      );
    }
  });

  it('honours a different pin, exclude and k for each item of one batch', async () => {
    const languages = model.view.groups[0]!.adapters;
    const [first, second] = languages;
    const pinningHead = model.pack.heads.find((head) => head.pin !== undefined)!;
    const items = [
      ...(await model.prepare({ inputs: [TEXTS[0]!], adapters: { language: second! } })),
      ...(await model.prepare({ inputs: [TEXTS[0]!], exclude: [first!, second!], topK: 2 })),
      ...(await model.prepare({ inputs: [TEXTS[0]!], topK: languages.length })),
      ...(await model.prepare({ inputs: [TEXTS[0]!], task: pinningHead.id })),
    ];
    const outcome = await model.engine.run(items);
    const results = outcome.items.map((item) => {
      assert.ok(item.ok);
      return item.result;
    });
    assert.deepEqual(results[0]!.routing.language, [{ adapter: second, weight: 1 }]);
    const excluded = results[1]!.routing.language!.map((r) => r.adapter);
    assert.equal(excluded.length, 2);
    assert.ok(!excluded.includes(first!) && !excluded.includes(second!));
    assert.equal(results[2]!.routing.language!.length, languages.length);
    assert.deepEqual(
      new Set(results[2]!.routing.language!.map((r) => r.adapter)),
      new Set(languages),
    );
    const pin = pinningHead.pin!;
    assert.deepEqual(results[3]!.routing[pin.group], [{ adapter: pin.adapter, weight: 1 }]);
    assert.deepEqual(
      Object.keys(results[3]!.outputs).sort(),
      model.pack.heads.map((h) => h.id).sort(),
    );
  });

  it('fails only the item whose routing is invalid', async () => {
    const good = await model.prepare({ inputs: [TEXTS[1]!] });
    const bad = { ...good[0]!, routing: { pins: { language: 'no-such-adapter' } } };
    const outcome = await model.engine.run([good[0]!, bad, good[0]!]);
    assert.ok(outcome.items[0]!.ok && outcome.items[2]!.ok);
    const failed = outcome.items[1]!;
    assert.ok(!failed.ok);
    assert.equal(failed.error.code, 'ROUTING_UNKNOWN_ADAPTER');
    assert.match(failed.error.message, /choose one of/);
  });

  it('truncates or rejects inputs longer than the pack allows, and says which', async () => {
    const long = Array.from({ length: 200 }, () => 'word').join(' ');
    const [result] = await model.infer({ inputs: [long] });
    assert.equal(result!.truncated, true);
    assert.equal(result!.tokens, model.pack.maxLength);
    await assert.rejects(model.tokenizer.encode(long, 'reject', 3), (error: MoeError) => {
      assert.equal(error.code, 'INPUT_TOO_LONG');
      assert.match(error.message, /inputs\[3\]/);
      return true;
    });
  });

  it('restarts a crashed worker, failing only the batch it was running', async () => {
    const restarts = model.engine.workerRestarts;
    const items = await model.prepare({ inputs: TEXTS });
    // Both workers get a crash order queued ahead of whatever they run next.
    model.engine.crashWorkerForTest(0);
    model.engine.crashWorkerForTest(1);
    const outcomes = await Promise.allSettled([model.engine.run(items), model.engine.run(items)]);
    for (const outcome of outcomes) {
      assert.equal(outcome.status, 'rejected');
      assert.equal((outcome.reason as MoeError).code, 'ENGINE_WORKER_CRASHED');
    }
    const again = await model.engine.run(items);
    assert.ok(again.items.every((item) => item.ok));
    assert.equal(model.engine.workerRestarts, restarts + 2);
  });
});

describe('adapter registry', () => {
  let model: Model;
  let adapterDir: string;
  const rng = new Random(99);
  before(async () => {
    model = await Model.open({ packDir, engine: { workers: 2, intraOpThreads: 1 } });
    adapterDir = join(root, 'extra');
  });
  after(async () => {
    await model.close();
  });

  it('loads an adapter the gate was not trained on: listed, reachable by pinning only', async () => {
    const adapter = randomAdapter(rng, {
      id: 'extra',
      group: 'language',
      hiddenSize: model.pack.hiddenSize,
      rank: 3,
      activation: (model.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
      residual: true,
    });
    await writeAdapterFolder(adapterDir, adapter);
    const info = await model.registry.load(adapterDir);
    assert.equal(info.state, 'ready');
    assert.equal(info.gated, false);
    assert.equal(info.rank, 3);
    const [pinned] = await model.infer({ inputs: [TEXTS[0]!], adapters: { language: 'extra' } });
    assert.deepEqual(pinned!.routing.language, [{ adapter: 'extra', weight: 1 }]);
    const size = model.view.groups[0]!.adapters.length;
    const routed = await model.infer({ inputs: TEXTS, topK: size - 1 });
    for (const result of routed) {
      assert.ok(!result.routing.language!.some((r) => r.adapter === 'extra'));
    }
    // Loading the same folder again changes nothing.
    const loadedAt = model.registry.get('extra')!.loadedAt;
    await model.registry.load(adapterDir);
    assert.equal(model.registry.get('extra')!.loadedAt, loadedAt);
  });

  it('goes through its states: loading, then ready; unloading, then gone; failed until cleared', async () => {
    // A worker that stalls at its next message makes each state last long enough to be seen.
    const slow = await Model.open({
      packDir,
      engine: {
        workers: 1,
        intraOpThreads: 1,
        slotWriteTimeoutMs: 1500,
        allowFaultInjection: true,
      },
    });
    /** Whether `id` is listed in `state` at some point while `work` runs. */
    const seen = async (id: string, state: string, work: Promise<unknown>) => {
      let hit = false;
      let done = false;
      void work.then(
        () => (done = true),
        () => (done = true),
      );
      while (!done && !hit) {
        hit = slow.registry.get(id)?.state === state;
        await new Promise(setImmediate);
      }
      await work;
      return hit;
    };
    try {
      const dir = join(root, 'states');
      await writeAdapterFolder(
        dir,
        randomAdapter(rng, {
          id: 'states',
          group: 'language',
          hiddenSize: slow.pack.hiddenSize,
          rank: 4,
          activation: (slow.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
          residual: true,
        }),
      );
      slow.engine.stallWorkerForTest(0, 300);
      assert.ok(await seen('states', 'loading', slow.registry.load(dir)), 'never seen loading');
      assert.equal(slow.registry.get('states')!.state, 'ready');
      slow.engine.stallWorkerForTest(0, 300);
      assert.ok(
        await seen('states', 'unloading', slow.registry.unload('states')),
        'never seen unloading',
      );
      assert.equal(slow.registry.get('states'), undefined);
      // A load the engine fails (a worker that does not take the write in time): listed as
      // failed, with the reason, until an unload clears it; nothing else changes.
      const before = slow.registry.list().map((a) => [a.id, a.state]);
      slow.engine.stallWorkerForTest(0, 2500);
      await rejectsWith(slow.registry.load(dir), 'ENGINE_TIMEOUT');
      const failed = slow.registry.get('states')!;
      assert.equal(failed.state, 'failed');
      assert.match(failed.error!, /did not take the adapter/);
      await slow.registry.unload('states');
      assert.deepEqual(
        slow.registry.list().map((a) => [a.id, a.state]),
        before,
      );
      // Once the worker is back, the same folder loads.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      assert.equal((await slow.registry.load(dir)).state, 'ready');
    } finally {
      await slow.close();
    }
  });

  it('unloads it: pinning it is then a clear error', async () => {
    await model.registry.unload('extra');
    assert.equal(model.registry.get('extra'), undefined);
    await rejectsWith(
      model.infer({ inputs: [TEXTS[0]!], adapters: { language: 'extra' } }),
      'ROUTING_UNKNOWN_ADAPTER',
    );
    await rejectsWith(model.registry.unload('extra'), 'ADAPTER_NOT_FOUND');
  });

  it('rejects a corrupt adapter file and leaves the registry as it was', async () => {
    const dir = join(root, 'corrupt');
    const adapter = randomAdapter(rng, {
      id: 'corrupt',
      group: 'language',
      hiddenSize: model.pack.hiddenSize,
      rank: 4,
      activation: (model.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
      residual: true,
    });
    await writeAdapterFolder(dir, adapter);
    await writeFile(
      join(dir, 'adapter.safetensors'),
      Buffer.from('\x10\x00\x00\x00\x00\x00\x00\x00{"down.wei'),
    );
    const listed = model.registry.list().map((a) => [a.id, a.state]);
    const error = await rejectsWith(model.registry.load(dir), 'ADAPTER_INVALID');
    assert.match(error.message, /adapter\.safetensors/);
    assert.deepEqual(
      model.registry.list().map((a) => [a.id, a.state]),
      listed,
    );
  });

  it('rejects an adapter whose hidden size does not match the backbone', async () => {
    const dir = join(root, 'wide');
    await writeAdapterFolder(
      dir,
      randomAdapter(rng, {
        id: 'wide',
        group: 'language',
        hiddenSize: model.pack.hiddenSize + 8,
        rank: 2,
        activation: (model.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
        residual: true,
      }),
    );
    const error = await rejectsWith(model.registry.load(dir), 'ADAPTER_INVALID');
    assert.match(error.message, /hidden/);
  });

  it('replaces and unloads adapters while batches use them: every answer is one whole version', async () => {
    const versions = [0, 1, 2].map((v) =>
      randomAdapter(new Random(500 + v), {
        id: 'hot',
        group: 'language',
        hiddenSize: model.pack.hiddenSize,
        rank: 2 + v,
        activation: (model.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
        residual: v !== 1,
      }),
    );
    const dirs: string[] = [];
    for (const [v, adapter] of versions.entries()) {
      const dir = join(root, `hot-v${v}`);
      await writeAdapterFolder(dir, adapter);
      dirs.push(dir);
    }
    // The answer of each version, computed while nothing else happens.
    const request = { inputs: TEXTS, adapters: { language: 'hot' } };
    const expected: Float32Array[][] = [];
    for (const dir of dirs) {
      await model.registry.load(dir);
      expected.push((await model.infer(request)).map((r) => r.embedding));
    }
    await model.registry.unload('hot');
    const seen = new Set<number>();
    let answered = 0;
    let refused = 0;
    let stop = false;
    const stream = async () => {
      while (!stop) {
        const outcome = await model.engine.run(
          (await model.prepare({ inputs: TEXTS })).map((item) => ({
            ...item,
            routing: { pins: { language: 'hot' } },
          })),
        );
        for (const [i, item] of outcome.items.entries()) {
          if (!item.ok) {
            assert.equal(item.error.code, 'ROUTING_UNKNOWN_ADAPTER', item.error.message);
            refused++;
            continue;
          }
          const version = expected.findIndex(
            (answers) => maxAbsDiff(answers[i]!, item.result.embedding) < 1e-5,
          );
          assert.ok(version >= 0, `item ${i}: an answer that is no whole version of 'hot'`);
          seen.add(version);
          answered++;
        }
        // A batch refused whole resolves at once: let the loads and unloads run in between.
        await new Promise(setImmediate);
      }
    };
    const streams = [stream(), stream(), stream()];
    for (let round = 0; round < 3; round++) {
      for (const dir of dirs) await model.registry.load(dir);
      await model.registry.unload('hot');
    }
    await model.registry.load(dirs[0]!);
    stop = true;
    await Promise.all(streams);
    assert.ok(answered > 20, `only ${answered} answers`);
    assert.ok(seen.size >= 2, `answers came from ${seen.size} version(s) only`);
    assert.ok(refused >= 0);
    await model.registry.unload('hot');
    assert.equal(model.registry.get('hot'), undefined);
  });

  it('refuses to unload the default adapter of a group: unpinned requests keep working', async () => {
    const error = await rejectsWith(model.registry.unload('topic'), 'ADAPTER_IN_USE');
    assert.match(error.message, /default adapter of group 'task'/);
    const [answer] = await model.infer({ inputs: [TEXTS[0]!] });
    assert.deepEqual(answer!.routing.task, [{ adapter: 'topic', weight: 1 }]);
  });
});

describe('slots: more adapters than slots', () => {
  let model: Model;
  let roomy: Model;
  const ids = ['pin0', 'pin1', 'pin2', 'pin3'];
  before(async () => {
    // 4 gated language adapters hold 4 of the 5 slots: one slot for every pin-only adapter.
    const tight = await buildFixturePack(join(root, 'tight'), { seed: 7, languageSlots: 5 });
    model = await Model.open({ packDir: tight, engine: { workers: 2, intraOpThreads: 1 } });
    roomy = await Model.open({ packDir, engine: { workers: 1, intraOpThreads: 1 } });
    const rng = new Random(1234);
    for (const id of ids) {
      const dir = join(root, `slots-${id}`);
      await writeAdapterFolder(
        dir,
        randomAdapter(rng, {
          id,
          group: 'language',
          hiddenSize: model.pack.hiddenSize,
          rank: 4,
          activation: (model.pack.groups[0]!.adapters[0] as BottleneckAdapter).activation,
          residual: true,
        }),
      );
      await model.registry.load(dir);
      await roomy.registry.load(dir);
    }
  });
  after(async () => {
    await model.close();
    await roomy.close();
  });

  it('serves every adapter: evicted ones are written back when a request needs them', async () => {
    const misses: string[] = [];
    model.engine.on('slot-miss', (e) => misses.push(e.adapter));
    for (const round of [0, 1]) {
      for (const id of round === 0 ? ids : [...ids].reverse()) {
        const [got] = await model.infer({ inputs: [TEXTS[0]!], adapters: { language: id } });
        const [want] = await roomy.infer({ inputs: [TEXTS[0]!], adapters: { language: id } });
        assert.deepEqual(got!.routing.language, [{ adapter: id, weight: 1 }]);
        assert.ok(
          maxAbsDiff(got!.embedding, want!.embedding) < 1e-5,
          `${id}: another adapter's weights`,
        );
      }
    }
    assert.ok(misses.length >= 4, `misses: ${misses.join(', ')}`);
    const usage = model.engine.slotUsage().find((u) => u.group === 'language')!;
    assert.deepEqual([usage.used, usage.slots, usage.cached], [5, 5, 8]);
    // The gate still routes among its own adapters, never to a pin-only one.
    for (const result of await model.infer({ inputs: TEXTS, topK: 4 })) {
      assert.ok(result.routing.language!.every((r) => !ids.includes(r.adapter)));
    }
  });

  it('one batch needing more pin-only adapters than free slots: the rest get a retriable 503', async () => {
    const [prepared] = await model.prepare({ inputs: [TEXTS[1]!] });
    const items = ids.slice(0, 2).map((id) => ({
      ...prepared!,
      routing: { pins: { language: id } },
    }));
    const outcome = await model.engine.run(items);
    const failed = outcome.items.filter((item) => !item.ok);
    assert.equal(failed.length, 1);
    assert.equal(!failed[0]!.ok && failed[0]!.error.code, 'ADAPTER_SLOTS_BUSY');
    assert.equal(!failed[0]!.ok && failed[0]!.error.status, 503);
  });
});

describe('engine watchdog', () => {
  it('fails a batch that runs past its limit with ENGINE_TIMEOUT and replaces the worker', async () => {
    const model = await Model.open({
      packDir,
      engine: { workers: 1, intraOpThreads: 1, batchTimeoutMs: 300, allowFaultInjection: true },
    });
    try {
      const items = await model.prepare({ inputs: TEXTS });
      await model.engine.run(items);
      model.engine.stallWorkerForTest(0, 2000);
      const error = await rejectsWith(model.engine.run(items), 'ENGINE_TIMEOUT');
      assert.equal(error.status, 503);
      assert.equal(model.engine.workerRestarts, 1);
      // The replacement serves (the wedged worker stops once its stall ends).
      const outcome = await model.engine.run(items);
      assert.ok(outcome.items.every((item) => item.ok));
      assert.equal(model.engine.readyWorkers, 1);
    } finally {
      await model.close();
    }
  });
});

describe('engine shutdown', () => {
  it('finishes accepted batches, then refuses new ones; close is idempotent', async () => {
    const model = await Model.open({ packDir, engine: { workers: 1, intraOpThreads: 1 } });
    const items = await model.prepare({ inputs: TEXTS });
    const running = [model.engine.run(items), model.engine.run(items), model.engine.run(items)];
    const closing = model.close();
    assert.equal(model.close(), closing);
    const outcomes = await Promise.all(running);
    assert.ok(outcomes.every((o) => o.items.every((item) => item.ok)));
    await closing;
    await rejectsWith(model.engine.run(items), 'ENGINE_CLOSED');
  });
});
