/**
 * The full demo pack (as `npm start` builds it; test/support/full-demo.ts shares one build per
 * version of the code) routing the project's fresh sentences, served for real (Model: tokenizer,
 * engine worker, backbone and mixture graph, the token_bag gate fed with input_ids), checked
 * against the targets and against an independent language identifier: fastText's lid.176
 * (npm fasttext.wasm.js, which ships the model; it runs offline).
 *
 * The figures go to the test output as diagnostics (`npm test` prints them).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { getLIDModel } from 'fasttext.wasm.js';
import { DEMO_REPORT_FILE, type DemoReport, FULL_CONFIG } from '../src/demo/build.js';
import { FRESH_SENTENCES } from '../src/demo/fresh.js';
import { Model } from '../src/inference/model.js';
import { fullDemoPack } from './support/full-demo.js';

const PACK_LANGUAGES = FULL_CONFIG.languages.map((l) => l.id);

/** Unseen languages and the pack language they should reach (the relatives). */
const RELATIVES: Record<string, string> = { pt: 'es', ca: 'es', bg: 'ru' };

interface Labelled {
  readonly language: string;
  readonly text: string;
  /** The pack's first language adapter for it. */
  readonly routed: string;
  /** fastText lid.176's label (ISO 639-1 where it has one). */
  readonly fasttext: string;
}

describe('the full demo pack routes fresh sentences like a language identifier', () => {
  let model: Model;
  let report: DemoReport;
  let labelled: Labelled[];

  before(async () => {
    const dir = await fullDemoPack((line) => process.stderr.write(`${line}\n`));
    report = JSON.parse(await readFile(join(dir, DEMO_REPORT_FILE), 'utf8')) as DemoReport;
    model = await Model.open({ packDir: dir, engine: { workers: 1, intraOpThreads: 2 } });
    const items = Object.entries(FRESH_SENTENCES).flatMap(([language, texts]) =>
      texts.map((text) => ({ language, text })),
    );
    const results = await model.infer({ inputs: items.map((i) => i.text) });
    const lid = await getLIDModel();
    await lid.load();
    labelled = [];
    for (const [n, item] of items.entries()) {
      const id = await lid.identify(item.text);
      labelled.push({
        ...item,
        routed: results[n]!.routing.language![0]!.adapter,
        fasttext: id.alpha2 ?? id.alpha3,
      });
    }
  });
  after(async () => {
    await model?.close();
  });

  test('the pack serves the token_bag gate, chosen over the linear one on held-out data', () => {
    const selection = report.gate_selection;
    assert.equal(model.pack.groups[0]!.gate?.type, 'token_bag');
    assert.equal(selection.chosen, 'token_bag');
    const bag = selection.candidates.token_bag!;
    const linear = selection.candidates.linear!;
    assert.ok(bag.heldout_accuracy >= 0.99, `held-out ${bag.heldout_accuracy}`);
    assert.ok(
      bag.heldout_accuracy > linear.heldout_accuracy ||
        (bag.heldout_accuracy === linear.heldout_accuracy &&
          bag.heldout_loss < linear.heldout_loss),
    );
  });

  test('fresh sentences in the 15 pack languages: top-1 >= 0.97, as report.json says', (t) => {
    const own = labelled.filter((l) => PACK_LANGUAGES.includes(l.language));
    assert.ok(own.length >= 8 * PACK_LANGUAGES.length, `${own.length} sentences`);
    const wrong = own.filter((l) => l.routed !== l.language);
    const accuracy = 1 - wrong.length / own.length;
    t.diagnostic(
      `served routing: ${own.length - wrong.length}/${own.length} = ${accuracy.toFixed(4)}; linear gate in report.json: ${report.gate_selection.candidates.linear!.fresh_accuracy}`,
    );
    for (const w of wrong) t.diagnostic(`  ${w.language} -> ${w.routed}: ${w.text}`);
    assert.ok(accuracy >= 0.97, `fresh top-1 ${accuracy}`);
    // The report's figure (plain-JS forward over the written float32 weights) is the served one.
    const reported = report.gate_selection.candidates.token_bag!;
    assert.equal(reported.fresh_total, own.length);
    assert.ok(Math.abs(reported.fresh_right - (own.length - wrong.length)) <= 1);
  });

  test('agreement with fastText lid.176 on every fresh sentence fastText puts in a pack language', (t) => {
    // fastText is the reference here, not the truth: first check it agrees with our labels, so
    // that a disagreement below says something about the gate.
    const own = labelled.filter((l) => PACK_LANGUAGES.includes(l.language));
    const fastTextRight = own.filter((l) => l.fasttext === l.language).length;
    const comparable = labelled.filter((l) => PACK_LANGUAGES.includes(l.fasttext));
    const agree = comparable.filter((l) => l.routed === l.fasttext);
    const agreement = agree.length / comparable.length;
    t.diagnostic(
      `fastText lid.176 labels ${fastTextRight}/${own.length} pack-language sentences with their language`,
    );
    t.diagnostic(
      `gate agrees with fastText on ${agree.length}/${comparable.length} = ${agreement.toFixed(4)}`,
    );
    for (const l of comparable.filter((x) => x.routed !== x.fasttext)) {
      t.diagnostic(
        `  fastText ${l.fasttext}, gate ${l.routed} (written as ${l.language}): ${l.text}`,
      );
    }
    assert.ok(fastTextRight / own.length >= 0.95, `fastText ${fastTextRight}/${own.length}`);
    assert.ok(agreement >= 0.95, `agreement ${agreement}`);
  });

  test('unseen languages reach their relatives: Portuguese and Catalan es, Bulgarian ru', (t) => {
    for (const [language, relative] of Object.entries(RELATIVES)) {
      const items = labelled.filter((l) => l.language === language);
      assert.ok(items.length >= 5, `${language}: ${items.length} sentences`);
      const counts: Record<string, number> = {};
      for (const l of items) counts[l.routed] = (counts[l.routed] ?? 0) + 1;
      t.diagnostic(`${language}: ${JSON.stringify(counts)}`);
      assert.ok(
        (counts[relative] ?? 0) > items.length / 2,
        `${language}: ${JSON.stringify(counts)}, expected mostly ${relative}`,
      );
    }
    const italian = labelled.filter((l) => l.language === 'it').map((l) => l.routed);
    t.diagnostic(`it: ${italian.join(',')}`);
  });
});
