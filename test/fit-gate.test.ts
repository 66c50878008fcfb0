/**
 * fit-gate: a token_bag gate fitted for a group of an existing pack from folders of labelled text,
 * written into the pack, loaded and served by the engine.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { Model } from '../src/inference/model.js';
import { loadPack } from '../src/pack/load.js';
import { fitTokenBagGate } from '../src/tools/fit-gate.js';
import { buildFixturePack } from './support/fixture-pack.js';

const FIT_GATE = new URL('../src/tools/fit-gate.js', import.meta.url).pathname;

/** Short texts per fixture language (written for this test). */
const DATA: Record<string, string[]> = {
  en: [
    'The weather is good today and the market is open.',
    'We went to the park with the children after lunch.',
    'The shop on the corner sells bread and milk.',
    'Please close the window, it is cold in here.',
    'My brother works at the station in the city.',
    'The film was long but the story was good.',
  ],
  de: [
    'Das Wetter ist heute gut und der Markt ist offen.',
    'Wir sind nach dem Essen mit den Kindern in den Park gegangen.',
    'Der Laden an der Ecke verkauft Brot und Milch.',
    'Bitte mach das Fenster zu, es ist kalt hier drin.',
    'Mein Bruder arbeitet am Bahnhof in der Stadt.',
    'Der Film war lang, aber die Geschichte war gut.',
  ],
  fr: [
    "Le temps est beau aujourd'hui et le marché est ouvert.",
    'Nous sommes allés au parc avec les enfants après le déjeuner.',
    'Le magasin du coin vend du pain et du lait.',
    'Ferme la fenêtre, s’il te plaît, il fait froid ici.',
    'Mon frère travaille à la gare dans la ville.',
    'Le film était long mais l’histoire était bonne.',
  ],
  ru: [
    'Сегодня хорошая погода, и рынок открыт.',
    'После обеда мы пошли с детьми в парк.',
    'Магазин на углу продаёт хлеб и молоко.',
    'Закрой, пожалуйста, окно, здесь холодно.',
    'Мой брат работает на вокзале в городе.',
    'Фильм был длинный, но история была хорошая.',
  ],
};

async function writeData(dir: string, data: Record<string, string[]>): Promise<void> {
  for (const [id, lines] of Object.entries(data)) {
    await mkdir(join(dir, id), { recursive: true });
    // Two files per adapter, and blank lines, as users write them.
    await writeFile(join(dir, id, 'a.txt'), `${lines.slice(0, 3).join('\n')}\n\n`);
    await writeFile(join(dir, id, 'b.txt'), `${lines.slice(3).join('\r\n')}\n`);
  }
}

describe('fit-gate', () => {
  let root: string;
  let base: string;
  let data: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'fit-gate-'));
    base = await buildFixturePack(join(root, 'base'), { seed: 6 });
    data = join(root, 'data');
    await writeData(data, DATA);
  });
  after(() => rm(root, { recursive: true, force: true }));

  test('fits, writes the gate and the manifest entry; the engine routes with it', async () => {
    const pack = join(root, 'fitted');
    await cp(base, pack, { recursive: true });
    const result = await fitTokenBagGate({ pack, group: 'language', data, heldout: 0, seed: 3 });
    assert.equal(result.file, 'gates/language.token_bag.safetensors');
    assert.deepEqual(result.experts, ['en', 'de', 'fr', 'ru']);
    assert.deepEqual(result.examples.en, { train: 6, heldout: 0 });
    assert.equal(result.heldoutAccuracy, null);
    assert.equal(result.trainAccuracy, 1);
    const manifest = JSON.parse(await readFile(join(pack, 'manifest.json'), 'utf8'));
    assert.deepEqual(manifest.groups[0].gate, {
      type: 'token_bag',
      file: 'gates/language.token_bag.safetensors',
      experts: ['en', 'de', 'fr', 'ru'],
      bigram_buckets: 0,
    });
    const loaded = await loadPack(pack);
    assert.equal(loaded.groups[0]!.gate?.type, 'token_bag');
    const model = await Model.open({ packDir: pack, engine: { workers: 1, intraOpThreads: 1 } });
    try {
      const texts = Object.entries(DATA).flatMap(([id, lines]) =>
        lines.map((text) => ({ id, text })),
      );
      const results = await model.infer({ inputs: texts.map((t) => t.text) });
      const routed = results.map((r) => r.routing.language![0]!.adapter);
      assert.deepEqual(
        routed,
        texts.map((t) => t.id),
      );
    } finally {
      await model.close();
    }
  });

  test('the command line: held-out share, bigrams, JSON on stdout; an ungated group becomes gated', async () => {
    const pack = join(root, 'cli');
    await cp(base, pack, { recursive: true });
    const taskData = join(root, 'task-data');
    await writeData(taskData, {
      topic: DATA.en!.slice(0, 3).concat(DATA.de!.slice(0, 3)),
      sentiment: DATA.fr!.slice(0, 3).concat(DATA.ru!.slice(0, 3)),
    });
    const { stdout } = await promisify(execFile)(process.execPath, [
      FIT_GATE,
      '--pack',
      pack,
      '--group',
      'task',
      '--data',
      taskData,
      '--buckets',
      '64',
      '--heldout',
      '0.34',
      '--epochs',
      '8',
    ]);
    const result = JSON.parse(stdout);
    assert.equal(result.group, 'task');
    assert.deepEqual(result.examples.topic, { train: 4, heldout: 2 });
    assert.equal(typeof result.heldoutAccuracy, 'number');
    assert.equal(result.settings.buckets, 64);
    const manifest = JSON.parse(await readFile(join(pack, 'manifest.json'), 'utf8'));
    assert.equal(manifest.groups[1].gate.bigram_buckets, 64);
    assert.equal(manifest.groups[1].default_adapter, undefined);
    const loaded = await loadPack(pack);
    const gate = loaded.groups[1]!.gate;
    assert.ok(gate?.type === 'token_bag' && gate.buckets === 64);
  });

  test('refuses data that does not match the group, and leaves the pack as it was', async () => {
    const pack = join(root, 'refused');
    await cp(base, pack, { recursive: true });
    const before = await readFile(join(pack, 'manifest.json'), 'utf8');
    const partial = join(root, 'partial');
    await writeData(partial, { en: DATA.en!, de: DATA.de! });
    await assert.rejects(
      fitTokenBagGate({ pack, group: 'language', data: partial }),
      /no examples for adapter 'fr'/,
    );
    const stray = join(root, 'stray');
    await writeData(stray, { ...DATA, xx: ['hello'] });
    await assert.rejects(
      fitTokenBagGate({ pack, group: 'language', data: stray }),
      /folders xx are not adapters of group 'language'/,
    );
    await assert.rejects(fitTokenBagGate({ pack, group: 'nope', data }), /has no group 'nope'/);
    assert.equal(await readFile(join(pack, 'manifest.json'), 'utf8'), before);
  });
});
