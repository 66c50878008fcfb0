/**
 * `npm run pack -- add-head`: a task head trained on a Hugging Face pack's own served features
 * from folders of labelled text, written into the pack, and served by the engine. The served
 * scores are checked against an independent float64 reference (the encoder reference, the
 * pooling, a top adapter when the task pins one, and the head's written weights).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { Model } from '../src/inference/model.js';
import { addAdapter, createPack } from '../src/pack/create.js';
import { writeAdapterFolder } from '../src/pack/import/moe-serve.js';
import { loadPack } from '../src/pack/load.js';
import { readSafetensors } from '../src/pack/safetensors.js';
import type { BottleneckAdapter } from '../src/pack/types.js';
import { type AddHeadResult, addHead } from '../src/tools/add-head.js';
import { Random } from '../src/util/random.js';
import { gelu, hfEncoderReference, pooledReference } from './support/encoder-reference.js';
import { FIXTURE_TEXTS, randomAdapter } from './support/fixture-pack.js';
import { type HfFolder, writeHfFolder } from './support/hf-folder.js';

const PACK_CLI = new URL('../src/tools/pack.js', import.meta.url).pathname;
const run = promisify(execFile);
const ENGINE = { workers: 1, intraOpThreads: 1 };
const quiet = () => undefined;

/** Lowercase words of some fixture sentences (the fixture tokenizer knows them all). */
function wordsOf(texts: readonly string[]): string[] {
  return [...new Set(texts.flatMap((t) => t.toLowerCase().match(/\p{L}+/gu) ?? []))];
}

/**
 * Two labels with disjoint vocabularies: English and Russian words of the fixture sentences, 3-6
 * random words a line. (The fixture tokenizer is small: Latin-script words of two languages share
 * most of their word pieces, which a random encoder cannot tell apart from 24 lines.)
 */
function separableData(seed: number, perLabel: number): Record<string, string[]> {
  const en = wordsOf(FIXTURE_TEXTS.slice(0, 4));
  const ru = wordsOf(FIXTURE_TEXTS.slice(10, 13));
  const vocab = { english: en, russian: ru };
  const rng = new Random(seed);
  return Object.fromEntries(
    Object.entries(vocab).map(([label, words]) => [
      label,
      Array.from({ length: perLabel }, () =>
        Array.from({ length: 3 + rng.int(4) }, () => words[rng.int(words.length)]!).join(' '),
      ),
    ]),
  );
}

async function writeData(dir: string, data: Record<string, string[]>): Promise<string> {
  for (const [label, lines] of Object.entries(data)) {
    await mkdir(join(dir, label), { recursive: true });
    // Two files per label, a blank line and CRLF, as users write them.
    const half = Math.ceil(lines.length / 2);
    await writeFile(join(dir, label, 'a.txt'), `${lines.slice(0, half).join('\n')}\n\n`);
    await writeFile(join(dir, label, 'b.txt'), `${lines.slice(half).join('\r\n')}\n`);
  }
  return dir;
}

/**
 * softmax(x W + b) in float64 for `text`, where x is the head's input computed by the reference:
 * the encoder, then (when given) a top adapter pinned with weight 1 and its residual, then the
 * pack's pooling without normalisation.
 */
async function referenceScores(
  model: Model,
  hf: HfFolder,
  text: string,
  head: { weight: Float32Array; bias: Float32Array },
  adapter?: BottleneckAdapter,
): Promise<Float64Array> {
  const ids = Array.from((await model.tokenizer.encode(text, 'truncate')).ids);
  const mask = [ids.map(() => 1)];
  const [hidden] = hfEncoderReference(hf.config, hf.tensors, { ids: [ids], mask });
  const d = hidden!.length / ids.length;
  let h = hidden!;
  if (adapter !== undefined) {
    const r = adapter.rank;
    h = new Float64Array(h.length);
    for (let t = 0; t < ids.length; t++) {
      const row = hidden!.subarray(t * d, (t + 1) * d);
      const a = new Float64Array(r);
      for (let j = 0; j < r; j++) {
        let acc = adapter.downBias.data[j]!;
        for (let i = 0; i < d; i++) acc += row[i]! * adapter.down.data[i * r + j]!;
        a[j] = gelu(acc);
      }
      for (let i = 0; i < d; i++) {
        let acc = adapter.upBias.data[i]! + row[i]!;
        for (let j = 0; j < r; j++) acc += a[j]! * adapter.up.data[j * d + i]!;
        h[t * d + i] = acc;
      }
    }
  }
  const mode = model.pack.pooling.mode;
  const [x] = pooledReference([h], mask, d, mode, false);
  const L = head.bias.length;
  const logits = Float64Array.from(head.bias);
  for (let i = 0; i < d; i++) {
    for (let c = 0; c < L; c++) logits[c] = logits[c]! + x![i]! * head.weight[i * L + c]!;
  }
  const max = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - max));
  const sum = e.reduce((s, v) => s + v, 0);
  return e.map((v) => v / sum);
}

async function readHead(packDir: string, file: string) {
  const tensors = await readSafetensors(join(packDir, file));
  const weight = tensors.get('weight')!;
  const bias = tensors.get('bias')!;
  return { shape: weight.shape, weight: weight.data, bias: bias.data };
}

describe('pack add-head', () => {
  let root: string;
  let hf: HfFolder;
  let data: Record<string, string[]>;
  let dataDir: string;
  let count = 0;
  const fresh = (what: string) => join(root, `${what}${count++}`);
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'pack-head-'));
    hf = await writeHfFolder(join(root, 'hf'), { family: 'bert' });
    data = separableData(5, 50);
    dataDir = await writeData(join(root, 'data'), data);
  });
  after(() => rm(root, { recursive: true, force: true }));

  test('trains on the served features of a normalising pack; the engine serves the task as the float64 reference', async () => {
    const pack = await createPack({ backbone: hf.dir, out: fresh('pack') });
    assert.deepEqual(pack.pooling, { mode: 'mean', normalize: true });
    const result = await addHead({
      pack: pack.dir,
      task: 'language',
      data: dataDir,
      heldout: 0.2,
      seed: 2,
      engine: ENGINE,
      log: quiet,
    });
    assert.equal(result.file, 'heads/language.safetensors');
    assert.deepEqual(result.labels, ['english', 'russian']);
    assert.equal(result.pin, null);
    assert.deepEqual(result.examples, {
      english: { train: 40, heldout: 10 },
      russian: { train: 40, heldout: 10 },
    });
    assert.equal(result.chance, 0.5);
    assert.ok(result.heldoutAccuracy! >= 0.9, `held-out accuracy ${result.heldoutAccuracy}`);
    assert.ok(result.trainAccuracy >= 0.95, `training accuracy ${result.trainAccuracy}`);
    assert.equal(result.served?.heldoutAccuracy, result.heldoutAccuracy);
    assert.ok(result.served!.maxScoreDifference <= 1e-4, JSON.stringify(result.served));

    const manifest = JSON.parse(await readFile(join(pack.dir, 'manifest.json'), 'utf8'));
    assert.equal(manifest.heads.length, 1);
    const entry = manifest.heads[0];
    assert.deepEqual(
      { id: entry.id, file: entry.file, labels: entry.labels, pin: entry.pin },
      {
        id: 'language',
        file: 'heads/language.safetensors',
        labels: ['english', 'russian'],
        pin: undefined,
      },
    );
    assert.equal(entry.metadata.heldout_accuracy, result.heldoutAccuracy);
    assert.equal(entry.metadata.chance, 0.5);
    const head = await readHead(pack.dir, entry.file);
    assert.deepEqual(head.shape, [32, 2]);
    // The graph that read the un-normalised features is gone; the served one is cached.
    assert.deepEqual(await readdir(join(pack.dir, '.cache')), ['graph']);
    assert.equal((await loadPack(pack.dir)).heads[0]!.id, 'language');

    // Served: the task is listed with its labels, its predictions on every line match their
    // folder, and its scores are the reference's within 1e-4 (the embedding stays normalised).
    const model = await Model.open({ packDir: pack.dir, engine: ENGINE, log: quiet });
    try {
      assert.deepEqual(model.describe().tasks, [
        { id: 'language', labels: ['english', 'russian'], pin: undefined },
      ]);
      const lines = Object.entries(data).flatMap(([label, texts]) =>
        texts.map((text) => ({ label, text })),
      );
      const results = await model.infer({ inputs: lines.map((l) => l.text), task: 'language' });
      const right = results.filter((r, i) => r.outputs.language!.label === lines[i]!.label);
      assert.ok(right.length >= 0.9 * lines.length, `${right.length} of ${lines.length}`);
      for (const [i, r] of results.slice(0, 12).entries()) {
        assert.ok(Math.abs(Math.hypot(...r.embedding) - 1) < 1e-4);
        const want = await referenceScores(model, hf, lines[i]!.text, head);
        const got = r.outputs.language!.scores;
        assert.ok(Math.abs(got.english! - want[0]!) <= 1e-4, `${got.english} vs ${want[0]}`);
        assert.ok(Math.abs(got.russian! - want[1]!) <= 1e-4, `${got.russian} vs ${want[1]}`);
      }
    } finally {
      await model.close();
    }
  });

  test('the command line: a task pinned to a top adapter, JSON on stdout; --replace trains it again', async () => {
    const pack = await createPack({
      backbone: hf.dir,
      out: fresh('pack'),
      pooling: { mode: 'cls', normalize: false },
    });
    const adapter = randomAdapter(new Random(4), {
      id: 'tuned',
      group: 'task',
      hiddenSize: 32,
      rank: 4,
    });
    await writeAdapterFolder(join(root, 'tuned'), adapter);
    await addAdapter({ pack: pack.dir, group: 'task', adapter: join(root, 'tuned') });
    const args = ['add-head', '--pack', pack.dir, '--task', 'lang', '--data', dataDir];
    const { stdout, stderr } = await run(process.execPath, [
      PACK_CLI,
      ...args,
      '--pin',
      'task:tuned',
      '--heldout',
      '0.1',
      '--epochs',
      '200',
    ]);
    const result = JSON.parse(stdout) as AddHeadResult;
    assert.match(stderr, /add-head: 2 labels, 90 training and 10 held-out lines/);
    assert.deepEqual(result.pin, { group: 'task', adapter: 'tuned' });
    assert.equal(result.settings.epochs, 200);
    assert.ok(result.heldoutAccuracy! >= 0.8, `held-out accuracy ${result.heldoutAccuracy}`);
    assert.ok(result.served!.maxScoreDifference <= 1e-4, JSON.stringify(result.served));
    const manifest = JSON.parse(await readFile(join(pack.dir, 'manifest.json'), 'utf8'));
    assert.deepEqual(manifest.heads[0].pin, { group: 'task', adapter: 'tuned' });

    // An existing task is an error (exit 1, the pack unchanged) unless --replace.
    const before = await readFile(join(pack.dir, 'manifest.json'), 'utf8');
    const refused = await run(process.execPath, [PACK_CLI, ...args]).then(
      () => assert.fail('add-head replaced a task without --replace'),
      (error: { code: number; stderr: string }) => error,
    );
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /task 'lang' exists; pass --replace/);
    assert.equal(await readFile(join(pack.dir, 'manifest.json'), 'utf8'), before);
    const replaced = await run(process.execPath, [
      PACK_CLI,
      ...args,
      '--replace',
      '--pin',
      'task:tuned',
      '--seed',
      '3',
      '--no-build',
    ]);
    const second = JSON.parse(replaced.stdout) as AddHeadResult;
    assert.equal(second.served, null);
    const after = JSON.parse(await readFile(join(pack.dir, 'manifest.json'), 'utf8'));
    assert.equal(after.heads.length, 1);
    assert.equal(after.heads[0].metadata.settings.seed, 3);

    // Served with the task: its pin routes through the adapter, and the scores are the
    // reference's (encoder, adapter with its residual, cls pooling, head) within 1e-4.
    const head = await readHead(pack.dir, 'heads/lang.safetensors');
    const model = await Model.open({ packDir: pack.dir, engine: ENGINE, log: quiet });
    try {
      assert.deepEqual(model.describe().tasks, [
        { id: 'lang', labels: ['english', 'russian'], pin: { group: 'task', adapter: 'tuned' } },
      ]);
      const texts = [data.english![0]!, data.russian![0]!, data.english![1]!, data.russian![1]!];
      const results = await model.infer({ inputs: texts, task: 'lang' });
      for (const [i, r] of results.entries()) {
        assert.equal(r.routing.task![0]!.adapter, 'tuned');
        const want = await referenceScores(model, hf, texts[i]!, head, adapter);
        const got = r.outputs.lang!.scores;
        assert.ok(Math.abs(got.english! - want[0]!) <= 1e-4, `${got.english} vs ${want[0]}`);
        assert.ok(Math.abs(got.russian! - want[1]!) <= 1e-4, `${got.russian} vs ${want[1]}`);
      }
    } finally {
      await model.close();
    }

    // An adapter the group does not have, and usage errors (exit 2).
    await assert.rejects(
      addHead({
        pack: pack.dir,
        task: 'other',
        data: dataDir,
        pin: { group: 'task', adapter: 'x' },
      }),
      /--pin task:x: 'x' is not an adapter of group 'task' \(tuned\)/,
    );
    const badPin = await run(process.execPath, [PACK_CLI, ...args, '--pin', 'tuned']).then(
      () => assert.fail('add-head took --pin without a group'),
      (error: { code: number; stderr: string }) => error,
    );
    assert.equal(badPin.code, 2);
    assert.match(badPin.stderr, /--pin takes GROUP:ADAPTER, got 'tuned'/);
    const usage = await run(process.execPath, [PACK_CLI, 'add-head', '--pack', pack.dir]).then(
      () => assert.fail('add-head ran without --task and --data'),
      (error: { code: number; stderr: string }) => error,
    );
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--pack, --task and --data are required/);
  });

  test('bad data and bad pins are refused with the folder or field to fix; the pack is left as it was', async () => {
    const pack = await createPack({ backbone: hf.dir, out: fresh('pack') });
    const manifestPath = join(pack.dir, 'manifest.json');
    const before = await readFile(manifestPath, 'utf8');
    const base = { pack: pack.dir, task: 'topic', engine: ENGINE, log: quiet };
    const one = await writeData(fresh('data'), { english: data.english! });
    await assert.rejects(
      addHead({ ...base, data: one }),
      /a head needs at least 2 labels, one folder each, found 1 \(english\)/,
    );
    const empty = await writeData(fresh('data'), data);
    await writeFile(join(empty, 'russian', 'a.txt'), '\n  \n');
    await writeFile(join(empty, 'russian', 'b.txt'), '');
    await assert.rejects(addHead({ ...base, data: empty }), (error: Error) =>
      error.message.startsWith(`${join(empty, 'russian')}: no examples for label 'russian'`),
    );
    const noFiles = await writeData(fresh('data'), data);
    await mkdir(join(noFiles, 'french'));
    await assert.rejects(addHead({ ...base, data: noFiles }), /'french' \(no \.txt files\)/);
    const loose = fresh('data');
    await mkdir(loose);
    await writeFile(join(loose, 'english.txt'), 'the weather is good\n');
    await assert.rejects(
      addHead({ ...base, data: loose }),
      /english\.txt must sit in a folder named by its label/,
    );
    await assert.rejects(
      addHead({ ...base, data: join(root, 'missing') }),
      /--data .*missing is not a folder/,
    );
    await assert.rejects(
      addHead({ ...base, data: dataDir, pin: { group: 'task', adapter: 'x' } }),
      /--pin task:x: pack .* has no group 'task' \(groups: none\)/,
    );
    await assert.rejects(
      addHead({ ...base, data: dataDir, task: 'a b' }),
      /--task 'a b' must match/,
    );
    await assert.rejects(addHead({ ...base, data: dataDir, heldout: 1 }), /--heldout must be in/);
    assert.equal(await readFile(manifestPath, 'utf8'), before);
  });
});
