/**
 * A small demo build (SMALL_CONFIG, what `build-demo-pack --small` builds), checked the way the
 * server will use it: the pack is opened as the server opens it (pack graph, engine workers, slots)
 * and the accuracies that this served path gives on the held-out sentences must be those of
 * report.json, well above chance.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { after, before, describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import {
  buildDemoPack,
  DEMO_REPORT_FILE,
  type DemoBuildConfig,
  type DemoReport,
  ensureDemoPack,
  SMALL_CONFIG,
} from '../src/demo/build.js';
import { DEMO_LANGUAGES, loadDemoCorpus } from '../src/demo/corpus.js';
import { FRESH_SENTENCES } from '../src/demo/fresh.js';
import { Model } from '../src/inference/model.js';
import { prepareEngineGraph } from '../src/inference/pack-graph-plan.js';
import { type LoadedPack, loadPack } from '../src/pack/load.js';

interface Served {
  /** Top-1 language adapter id per text. */
  readonly routed: string[];
  /** Per head (pack order): argmax label index per text. */
  readonly answers: number[][];
}

/**
 * Runs texts through the pack as the server does (tokenizer, the pack graph in engine workers),
 * once per head with that head's task (its pin routes the task group).
 */
async function serve(pack: LoadedPack, texts: readonly string[]): Promise<Served> {
  const model = await Model.open({ packDir: pack.dir, engine: { workers: 1, intraOpThreads: 2 } });
  const routed: string[] = [];
  const answers: number[][] = pack.heads.map(() => []);
  try {
    for (const [j, head] of pack.heads.entries()) {
      for (let start = 0; start < texts.length; start += 16) {
        const results = await model.infer({
          inputs: texts.slice(start, start + 16),
          task: head.id,
        });
        for (const result of results) {
          if (j === 0) routed.push(result.routing[pack.groups[0]!.id]![0]!.adapter);
          const output = result.outputs[head.id]!;
          answers[j]!.push(head.labels.indexOf(output.label));
        }
      }
    }
  } finally {
    await model.close();
  }
  return { routed, answers };
}

/**
 * Files of the build under `dir`, relative, sorted. The graph cache (`.cache/`, written when a
 * pack is first served) is derived from them, not part of the build.
 */
async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .filter((path) => !path.startsWith('.cache/'))
    .sort();
}

describe('demo pack (small build)', () => {
  const dirs: string[] = [];
  let dir: string;
  let report: DemoReport;
  let pack: LoadedPack;
  const lines: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'demo-pack-'));
    dirs.push(dir);
    const result = await buildDemoPack(dir, { config: SMALL_CONFIG, log: (l) => lines.push(l) });
    report = result.report;
    pack = await loadPack(dir);
  });

  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  test('logs every stage with its time', () => {
    for (const stage of [
      'corpus',
      'tokenizer',
      'backbone',
      'gate',
      'adapters',
      'evaluate',
      'write',
    ]) {
      assert.ok(
        lines.some((l) => l.startsWith(`[demo] ${stage}`) && / s {2}/.test(l)),
        stage,
      );
    }
  });

  test('the pack loads, with the backbone shape, a gated language group and pinned task heads', () => {
    assert.equal(pack.hiddenSize, 256);
    assert.equal(pack.maxLength, 128);
    const [language, task] = pack.groups;
    assert.equal(language!.id, 'language');
    assert.equal(language!.adapters.length, SMALL_CONFIG.languages.length);
    assert.equal(language!.gate?.type, report.gate_selection.chosen);
    assert.equal(task!.id, 'task');
    assert.equal(task!.gate, null);
    assert.deepEqual(
      pack.heads.map((h) => [h.id, h.labels.length, h.pin?.adapter]),
      [
        ['article', 30, 'article'],
        ['theme', 6, 'theme'],
      ],
    );
  });

  test('report.json: the gate routes >= 0.90 of held-out sentences right; heads well above chance', async () => {
    const onDisk = JSON.parse(await readFile(join(dir, DEMO_REPORT_FILE), 'utf8')) as DemoReport;
    assert.deepEqual(onDisk, report);
    assert.equal(report.seed, SMALL_CONFIG.seed);
    assert.ok(report.split.train > 0 && report.split.heldout > 0);
    const gate = report.gates.language!;
    assert.ok(gate.heldout_accuracy >= 0.9, `gate ${gate.heldout_accuracy}`);
    const n = report.split.heldout_pack_languages;
    for (const [id, head] of Object.entries(report.heads)) {
      // Clearly above chance: 3 binomial standard deviations above the majority-label baseline,
      // and at least twice the uniform guess.
      const p = head.chance;
      const bar = p + 3 * Math.sqrt((p * (1 - p)) / n);
      assert.ok(
        head.heldout_accuracy > bar,
        `${id}: ${head.heldout_accuracy} <= ${bar.toFixed(3)}`,
      );
      assert.ok(head.heldout_accuracy >= 2 * head.uniform_chance, id);
    }
  });

  test('report.json int8: the cost of an int8 backbone on the held-out sentences, within the targets', () => {
    const int8 = report.int8;
    assert.equal(int8.served_backbone, 'float32');
    assert.equal(int8.heldout_sentences, report.split.heldout);
    assert.equal(int8.heldout_pack_languages, report.split.heldout_pack_languages);
    assert.ok(int8.embedding_cosine.min >= 0.99 && int8.embedding_cosine.min < 1);
    assert.ok(int8.embedding_cosine.mean >= int8.embedding_cosine.min);
    assert.ok(int8.token_cosine.tokens > int8.heldout_sentences);
    assert.deepEqual(Object.keys(int8.heads), Object.keys(report.heads));
    for (const [id, head] of Object.entries(int8.heads)) {
      assert.equal(head.heldout_accuracy_float32, report.heads[id]!.heldout_accuracy, id);
      assert.ok(head.change_points >= -1, `${id}: ${head.change_points} points`);
    }
    // The chosen gate is the token bag: it reads ids only, so int8 cannot move it.
    assert.equal(int8.gate.type, 'token_bag');
    assert.equal(int8.gate.change_points, 0);
    assert.equal(int8.gate.agreement, 1);
    assert.equal(int8.gate.heldout_accuracy_float32, report.gates.language!.heldout_accuracy);
    const linear = int8.linear_gate_candidate!;
    assert.equal(
      linear.heldout_accuracy_float32,
      report.gate_selection.candidates.linear!.heldout_accuracy,
    );
    assert.ok(linear.change_points >= -0.5, `linear gate ${linear.change_points} points`);
    assert.equal(int8.targets.met, true);
  });

  test('the served graph gives the reported held-out accuracies', async () => {
    const languages = [...SMALL_CONFIG.languages, ...SMALL_CONFIG.auxiliaryLanguages];
    const corpus = loadDemoCorpus({
      languages,
      seed: SMALL_CONFIG.seed,
      heldoutFraction: SMALL_CONFIG.heldoutFraction,
    });
    const E = SMALL_CONFIG.languages.length;
    const held = corpus.sentences.filter((s) => s.split === 'heldout' && s.lang < E);
    assert.equal(held.length, report.split.heldout_pack_languages);
    const served = await serve(
      pack,
      held.map((s) => s.text),
    );
    const accuracy = (ok: (i: number) => boolean) =>
      held.filter((_, i) => ok(i)).length / held.length;
    const gate = accuracy((i) => served.routed[i] === languages[held[i]!.lang]!.id);
    const article = accuracy((i) => served.answers[0]![i] === held[i]!.article - 1);
    const theme = accuracy((i) => served.answers[1]![i] === held[i]!.theme);
    // Float32 ORT arithmetic may flip a near-tie: allow one sentence either way.
    const tolerance = 1.01 / held.length;
    assert.ok(
      Math.abs(gate - report.gates.language!.heldout_accuracy) <= tolerance,
      `gate ${gate}`,
    );
    assert.ok(
      Math.abs(article - report.heads.article!.heldout_accuracy) <= tolerance,
      `${article}`,
    );
    assert.ok(Math.abs(theme - report.heads.theme!.heldout_accuracy) <= tolerance, `${theme}`);
  });

  test('new sentences written for the test go to their own language adapter first', async () => {
    const items = SMALL_CONFIG.languages.flatMap((l) =>
      (FRESH_SENTENCES[l.id] ?? []).map((text) => ({ id: l.id, text })),
    );
    assert.ok(items.length >= 3 * SMALL_CONFIG.languages.length);
    const served = await serve(
      pack,
      items.map((i) => i.text),
    );
    const wrong = items.flatMap((item, i) =>
      served.routed[i] === item.id ? [] : [`${item.id} -> ${served.routed[i]}: ${item.text}`],
    );
    assert.deepEqual(wrong, [], `misrouted ${wrong.length} of ${items.length}`);
  });

  test('a folder that is not a demo build is never replaced', async () => {
    const foreign = await mkdtemp(join(tmpdir(), 'demo-foreign-'));
    dirs.push(foreign);
    await writeFile(join(foreign, 'notes.txt'), 'keep me');
    await assert.rejects(buildDemoPack(foreign, { config: SMALL_CONFIG }), /not a demo pack/);
    assert.equal(await readFile(join(foreign, 'notes.txt'), 'utf8'), 'keep me');
  });

  test('two builds from a clean state give identical files; ensureDemoPack builds only once', async () => {
    const second = await mkdtemp(join(tmpdir(), 'demo-pack-'));
    dirs.push(second);
    await rm(second, { recursive: true });
    const log: string[] = [];
    assert.equal(await ensureDemoPack(second, (l) => log.push(l), SMALL_CONFIG), true);
    assert.ok(log.some((l) => l.includes('building')));
    assert.equal(await ensureDemoPack(second, () => {}, SMALL_CONFIG), false);
    const files = await listFiles(dir);
    assert.deepEqual(await listFiles(second), files);
    assert.deepEqual(
      // Only this build's staging folder: the temp folder is shared with other builds (the full
      // demo pack of test/support/full-demo.ts, other test runs) that may be under way.
      await readdir(join(second, '..')).then((n) =>
        n.filter((f) => [dir, second].some((d) => f === `${basename(d)}.building`)),
      ),
      [],
    );
    assert.ok(files.includes('backbone/model.safetensors') && files.includes('tokenizer.json'));
    for (const file of files) {
      const [a, b] = await Promise.all([readFile(join(dir, file)), readFile(join(second, file))]);
      assert.ok(a.equals(b), `${file} differs between two builds`);
    }
  });
});

describe('demo pack with an int8 backbone (--quantize int8; a tiny build)', () => {
  // Two languages, no token_bag candidate (so the gate reads the backbone), few epochs: fast.
  const TINY: DemoBuildConfig = {
    ...SMALL_CONFIG,
    languages: DEMO_LANGUAGES.filter((l) => l.id === 'en' || l.id === 'ru'),
    auxiliaryLanguages: [],
    vocabSize: 800,
    gate: { ...SMALL_CONFIG.gate, dropoutCopies: 0 },
    tokenBag: null,
    mixture: { ...SMALL_CONFIG.mixture, epochs: 3 },
    backboneQuantize: 'int8',
  };
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'demo-int8-'));
    await buildDemoPack(dir, { config: TINY });
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('serves the int8 graph, with the int8 accuracies the report gives', async () => {
    const report = JSON.parse(await readFile(join(dir, DEMO_REPORT_FILE), 'utf8')) as DemoReport;
    assert.equal(report.int8.served_backbone, 'int8');
    assert.equal(report.int8.gate.type, 'linear');
    assert.equal(report.int8.linear_gate_candidate, null);
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
    assert.equal(manifest.backbone.quantize, 'int8');
    const pack = await loadPack(dir);
    // The one pack graph the server builds from it: 4 int8 projections in each of 4 layers.
    const graph = await prepareEngineGraph(pack);
    const model = onnxProto.onnx.ModelProto.decode(await readFile(graph.worker.model as string));
    const ops = model.graph!.node!.map((n) => n.opType);
    assert.equal(ops.filter((op) => op === 'DynamicQuantizeMatMul').length, 4 * 4);

    const corpus = loadDemoCorpus({
      languages: TINY.languages,
      seed: TINY.seed,
      heldoutFraction: TINY.heldoutFraction,
    });
    const held = corpus.sentences.filter((s) => s.split === 'heldout');
    assert.equal(held.length, report.int8.heldout_pack_languages);
    const served = await serve(
      pack,
      held.map((s) => s.text),
    );
    const accuracy = (ok: (i: number) => boolean) =>
      held.filter((_, i) => ok(i)).length / held.length;
    // The engine batches differently from the build (int8 activations are quantized per batch):
    // allow two sentences either way.
    const tolerance = 2.01 / held.length;
    const gate = accuracy((i) => served.routed[i] === TINY.languages[held[i]!.lang]!.id);
    assert.ok(Math.abs(gate - report.int8.gate.heldout_accuracy_int8) <= tolerance, `gate ${gate}`);
    const article = accuracy((i) => served.answers[0]![i] === held[i]!.article - 1);
    const theme = accuracy((i) => served.answers[1]![i] === held[i]!.theme);
    for (const [id, got] of [
      ['article', article],
      ['theme', theme],
    ] as const) {
      const want = report.int8.heads[id]!.heldout_accuracy_int8;
      assert.ok(Math.abs(got - want) <= tolerance, `${id}: served ${got}, report ${want}`);
    }
  });
});
