import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { WordPieceDropout } from '../src/demo/augment.js';
import {
  ARTICLE_COUNT,
  AUXILIARY_LANGUAGES,
  DEMO_LANGUAGES,
  loadDemoCorpus,
  parseDeclaration,
  parsePreamble,
  readDeclarationSentences,
  splitSentences,
  THEMES,
  themeOfArticle,
} from '../src/demo/corpus.js';
import { FRESH_SENTENCES } from '../src/demo/fresh.js';
import { TextTokenizer } from '../src/inference/tokenizer.js';
import { buildWordPieceVocab, wordPieceTokenizerJson } from '../src/pack/wordpiece.js';
import { Random } from '../src/util/random.js';

describe('UDHR parsing', () => {
  test('parseDeclaration reads each article’s paragraphs, list items included, entities decoded', () => {
    const html = `<html><body><header><h2>Preamble</h2><p>Whereas   one,</p><p>Whereas two &#x26; three,</p></header>
      <article data-number="1"><h2>Article 1</h2><p>First &amp; only.</p></article>
      <article data-number="2"><h2>Article 2</h2><ol><li><p>Item <em>one</em>.</p></li><li><p>Item two.</p></li></ol></article></body></html>`;
    const articles = parseDeclaration(html);
    assert.deepEqual([...articles.keys()], [1, 2]);
    assert.deepEqual(articles.get(1), ['First & only.']);
    assert.deepEqual(articles.get(2), ['Item one .', 'Item two.']);
    assert.deepEqual(parsePreamble(html), ['Whereas one,', 'Whereas two & three,']);
  });

  test('splitSentences splits at . ! ? 。 । and merges fragments', () => {
    assert.deepEqual(splitSentences('One is here. Two is there! Three?'), [
      'One is here.',
      'Two is there!',
      'Three?',
    ]);
    assert.deepEqual(splitSentences('人人有权。人人平等。'), ['人人有权。', '人人平等。']);
    assert.deepEqual(splitSentences('सभी को अधिकार है । उन्हें बुद्धि दी गई है ।'), [
      'सभी को अधिकार है ।',
      'उन्हें बुद्धि दी गई है ।',
    ]);
    // "1." is no sentence: it joins the next piece.
    assert.deepEqual(splitSentences('1. Everyone has rights. Done now.'), [
      '1. Everyone has rights.',
      'Done now.',
    ]);
    // A decimal point or an abbreviation without a following space does not split.
    assert.deepEqual(splitSentences('It costs 2.5 units.'), ['It costs 2.5 units.']);
  });

  test('every demo language has all 30 articles and a preamble in the udhr package', () => {
    for (const language of [...DEMO_LANGUAGES, ...AUXILIARY_LANGUAGES]) {
      const sentences = readDeclarationSentences(language.code);
      const articles = new Set(sentences.map((s) => s.article));
      assert.equal(articles.size, ARTICLE_COUNT, language.code);
      assert.ok(sentences.length >= 50, `${language.code}: ${sentences.length} sentences`);
      for (const s of sentences) assert.ok(s.text.length >= 4 && !s.text.includes('<'), s.text);
    }
  });

  test('themes cover articles 1-30 once each, in order', () => {
    const covered = THEMES.flatMap((t) =>
      Array.from({ length: t.last - t.first + 1 }, (_, i) => t.first + i),
    );
    assert.deepEqual(
      covered,
      Array.from({ length: 30 }, (_, i) => i + 1),
    );
    assert.equal(THEMES[themeOfArticle(26)]!.id, 'social');
    assert.throws(() => themeOfArticle(31));
  });

  test('the pack languages span several scripts and have fresh test sentences', () => {
    assert.ok(DEMO_LANGUAGES.length >= 8);
    assert.ok(new Set(DEMO_LANGUAGES.map((l) => l.script)).size >= 5);
    const ids = new Set([...DEMO_LANGUAGES, ...AUXILIARY_LANGUAGES].map((l) => l.id));
    assert.equal(ids.size, DEMO_LANGUAGES.length + AUXILIARY_LANGUAGES.length);
    for (const l of DEMO_LANGUAGES) assert.ok((FRESH_SENTENCES[l.id] ?? []).length >= 2, l.id);
  });
});

describe('demo corpus split', () => {
  const languages = DEMO_LANGUAGES.slice(0, 4);

  test('is deterministic, disjoint, per language about 20% held out, and depends on the seed', () => {
    const a = loadDemoCorpus({ languages, seed: 7 });
    const b = loadDemoCorpus({ languages, seed: 7 });
    const c = loadDemoCorpus({ languages, seed: 8 });
    assert.deepEqual(a, b);
    assert.notDeepEqual(
      a.sentences.map((s) => s.split),
      c.sentences.map((s) => s.split),
    );
    languages.forEach((_, lang) => {
      const mine = a.sentences.filter((s) => s.lang === lang);
      const held = mine.filter((s) => s.split === 'heldout').length;
      assert.equal(held, Math.round(mine.length * 0.2));
      assert.equal(new Set(mine.map((s) => s.text)).size, mine.length, 'no duplicates');
      for (const s of mine) assert.equal(s.theme, themeOfArticle(s.article));
    });
    assert.ok(a.preamble.length > 0);
    assert.ok(a.preamble.every((p) => p.lang >= 0 && p.lang < languages.length));
  });

  test('maxPerLanguage keeps a seeded sample', () => {
    const small = loadDemoCorpus({ languages, seed: 7, maxPerLanguage: 20 });
    languages.forEach((_, lang) => {
      assert.equal(small.sentences.filter((s) => s.lang === lang).length, 20);
    });
  });
});

describe('WordPiece dropout', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('without dropout it encodes exactly as the Hugging Face tokenizer', async () => {
    const corpus = loadDemoCorpus({ languages: DEMO_LANGUAGES, seed: 3 });
    const texts = corpus.sentences.map((s) => s.text);
    const vocab = buildWordPieceVocab(
      texts.filter((_, i) => i % 2 === 0),
      { vocabSize: 1500, lowercase: true },
    );
    const dir = await mkdtemp(join(tmpdir(), 'demo-wp-'));
    dirs.push(dir);
    await writeFile(
      join(dir, 'tokenizer.json'),
      JSON.stringify(wordPieceTokenizerJson(vocab, { lowercase: true, maxLength: 64 })),
    );
    const hf = await TextTokenizer.load(join(dir, 'tokenizer.json'), 64);
    const mine = new WordPieceDropout(vocab);
    const options = {
      splitProbability: 0.5,
      unknownProbability: 0.2,
      lowercase: true,
      maxLength: 64,
    };
    const samples = [...texts, ...Object.values(FRESH_SENTENCES).flat()];
    for (const text of samples) {
      assert.deepEqual(
        Array.from(mine.encode(text, options)),
        Array.from((await hf.encode(text, 'truncate')).ids),
        text,
      );
    }
    // With dropout: seeded, different, and still [CLS] ... [SEP] within maxLength.
    const a = samples.map((t) => mine.encode(t, options, new Random(1)));
    const b = samples.map((t) => mine.encode(t, options, new Random(1)));
    assert.deepEqual(a, b);
    const changed = samples.filter(
      (t, i) => a[i]!.join() !== mine.encode(t, options).join(),
    ).length;
    assert.ok(changed > samples.length / 5, `${changed} of ${samples.length} changed`);
    for (const ids of a) {
      assert.equal(ids[0], vocab.indexOf('[CLS]'));
      assert.equal(ids.at(-1), vocab.indexOf('[SEP]'));
      assert.ok(ids.length <= 64);
    }
  });
});
