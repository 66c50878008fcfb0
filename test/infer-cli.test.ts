/**
 * The infer command line (`npm run infer`, dist/src/tools/infer.js) as a user runs it: a process
 * over a fixture pack, one JSON line per input on stdout (nothing else, so it pipes into jq),
 * errors on stderr with the catalogue code and exit 1, usage errors with exit 2. Its answers are
 * the model's own (Model.infer on the same pack).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Model } from '../src/inference/model.js';
import { buildFixturePack, FIXTURE_TEXTS } from './support/fixture-pack.js';

const CLI = new URL('../src/tools/infer.js', import.meta.url).pathname;
const TEXTS = FIXTURE_TEXTS.slice(0, 3);

let root: string;
let packDir: string;
let model: Model;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-cli-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 21 });
  model = await Model.open({ packDir, engine: { workers: 1, intraOpThreads: 1 } });
});

after(async () => {
  await model.close();
  await rm(root, { recursive: true, force: true });
});

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function infer(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, '--pack', packDir, ...args],
      { timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

interface Line {
  input: string;
  routing: Record<string, { adapter: string; weight: number }[]>;
  outputs: Record<string, { label: string; score: number }>;
  truncated?: boolean;
}

const lines = (run: Run) =>
  run.stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Line);

describe('infer CLI', () => {
  it('prints one JSON line per input: its routing and every head, as the model answers', async () => {
    const run = await infer(...TEXTS);
    assert.equal(run.code, 0, run.stderr);
    const printed = lines(run);
    assert.deepEqual(
      printed.map((l) => l.input),
      TEXTS,
    );
    const expected = await model.infer({ inputs: TEXTS });
    printed.forEach((line, i) => {
      const want = expected[i]!;
      assert.deepEqual(
        Object.keys(line.routing),
        model.view.groups.map((g) => g.id),
      );
      for (const [group, chosen] of Object.entries(want.routing)) {
        assert.deepEqual(
          line.routing[group]!.map((c) => c.adapter),
          chosen.map((c) => c.adapter),
        );
        line.routing[group]!.forEach((c, j) => {
          assert.ok(Math.abs(c.weight - chosen[j]!.weight) < 1e-4);
        });
      }
      assert.deepEqual(Object.keys(line.outputs).sort(), Object.keys(want.outputs).sort());
      for (const [task, out] of Object.entries(want.outputs)) {
        assert.equal(line.outputs[task]!.label, out.label);
        assert.ok(Math.abs(line.outputs[task]!.score - out.score) < 1e-4);
      }
      assert.equal(line.truncated, undefined);
    });
  });

  it('routes by --language, --task, --adapter, --exclude and --top-k', async () => {
    const pinned = lines(await infer('--language', 'de', TEXTS[0]!))[0]!;
    assert.deepEqual(pinned.routing.language, [{ adapter: 'de', weight: 1 }]);

    const task = lines(await infer('--task', 'topic', TEXTS[0]!))[0]!;
    assert.deepEqual(Object.keys(task.outputs), ['topic']);
    assert.deepEqual(task.routing.task, [{ adapter: 'topic', weight: 1 }]);

    const mixed = lines(
      await infer('--top-k', '2', '--exclude', 'en', '--adapter', 'task=sentiment', TEXTS[0]!),
    )[0]!;
    assert.equal(mixed.routing.language!.length, 2);
    assert.ok(mixed.routing.language!.every((c) => c.adapter !== 'en'));
    assert.deepEqual(mixed.routing.task, [{ adapter: 'sentiment', weight: 1 }]);
    assert.deepEqual(Object.keys(mixed.outputs), ['sentiment']);
  });

  it('cuts long inputs and says so, or refuses them under --truncation reject', async () => {
    const long = 'word '.repeat(500);
    const cut = await infer(long);
    assert.equal(cut.code, 0, cut.stderr);
    assert.equal(lines(cut)[0]!.truncated, true);
    const refused = await infer('--truncation', 'reject', long);
    assert.equal(refused.code, 1);
    assert.equal(refused.stdout, '');
    assert.match(refused.stderr, /^error INPUT_TOO_LONG: inputs\[0\] has more than 32 tokens/m);
  });

  it('reports request errors with their code (exit 1) and usage errors with the usage (exit 2)', async () => {
    const unknown = await infer('--language', 'xx', TEXTS[0]!);
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stdout, '');
    assert.match(
      unknown.stderr,
      /^error ROUTING_UNKNOWN_ADAPTER: .*choose one of: en, de, fr, ru/m,
    );

    const conflict = await infer('--task', 'topic', '--adapter', 'task=sentiment', TEXTS[0]!);
    assert.equal(conflict.code, 1);
    assert.match(conflict.stderr, /^error ROUTING_CONFLICT: Conflicting routing in group 'task'/m);

    const usages: [string[], RegExp][] = [
      [[], /usage: npm run --silent infer/],
      [['--bogus', 'x'], /Unknown option '--bogus'[\s\S]*usage: npm run --silent infer/],
      [['--adapter', 'nogroup', 'x'], /--adapter takes GROUP=ID, got 'nogroup'/],
      [['--truncation', 'maybe', 'x'], /--truncation must be 'truncate' or 'reject', got 'maybe'/],
      [['--top-k', 'two', 'x'], /--top-k takes a whole number >= 1, got 'two'/],
    ];
    for (const [args, message] of usages) {
      const usage = await infer(...args);
      assert.equal(usage.code, 2, `${args.join(' ')}: ${usage.stderr}`);
      assert.equal(usage.stdout, '');
      assert.match(usage.stderr, message);
    }
  });
});
