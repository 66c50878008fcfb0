/**
 * TextTokenizer on the three kinds of Hugging Face tokenizer.json (WordPiece as our packs write
 * it, byte-level BPE, Unigram): the ids are Hugging Face's own (the `tokenizers` package encoding
 * the whole text), also when a long text is cut before tokenizing; the work per input is bounded
 * by max_length; and the length policy truncates or rejects.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Tokenizer } from 'tokenizers';
import { MoeError } from '../src/errors.js';
import { TextTokenizer } from '../src/inference/tokenizer.js';
import { buildFixturePack, FIXTURE_TEXTS } from './support/fixture-pack.js';
import { byteLevelBpeJson, unigramJson } from './support/tokenizer-files.js';

const MAX_LENGTH = 32;
/** Long inputs as a client may send them: many languages, CJK without spaces, odd whitespace. */
const LONG_TEXT = `${FIXTURE_TEXTS.join('  \n\t')} 猫在睡觉猫很小狗很大。`.repeat(40);
const CJK = '猫在睡觉。猫很小，狗很大。'.repeat(600);
const NO_BREAK = 'a'.repeat(15_000);

let root: string;
const files: Record<string, string> = {};

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-tokenizer-'));
  const pack = await buildFixturePack(join(root, 'pack'), { seed: 5, maxLength: MAX_LENGTH });
  files.wordpiece = join(pack, 'tokenizer.json');
  files.bpe = join(root, 'bpe.json');
  files.unigram = join(root, 'unigram.json');
  await writeFile(files.bpe, JSON.stringify(byteLevelBpeJson(FIXTURE_TEXTS)));
  await writeFile(files.unigram, JSON.stringify(unigramJson(FIXTURE_TEXTS)));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Hugging Face's encoding of the whole text, with the specials, cut to `maxLength`. */
async function reference(file: string, text: string, maxLength: number): Promise<number[]> {
  const tokenizer = Tokenizer.fromFile(file);
  tokenizer.disableTruncation();
  const [withSpecials, content] = await Promise.all([
    tokenizer.encode('a', null, { addSpecialTokens: true }),
    tokenizer.encode(text, null, { addSpecialTokens: false }),
  ]);
  const specials = withSpecials.getLength() - 1; // one probe token
  const ids = withSpecials.getIds();
  const probe = (await tokenizer.encode('a', null, { addSpecialTokens: false })).getIds()[0];
  const at = ids.indexOf(probe!);
  const kept = content.getIds().slice(0, maxLength - specials);
  return [...ids.slice(0, at), ...kept, ...ids.slice(at + 1)];
}

for (const kind of ['wordpiece', 'bpe', 'unigram'] as const) {
  describe(`TextTokenizer on ${kind}`, () => {
    it('gives the ids Hugging Face gives, for short texts and for long ones cut before tokenizing', async () => {
      const tokenizer = await TextTokenizer.load(files[kind]!, MAX_LENGTH);
      const texts = [
        ...FIXTURE_TEXTS,
        // Long texts cut at many offsets, so that cuts land inside words, spaces and CJK runs.
        ...Array.from({ length: 40 }, (_, i) => LONG_TEXT.slice(i * 53, i * 53 + 15_000)),
        CJK,
        NO_BREAK,
        `${'word '.repeat(3000)}end`,
      ];
      const encoded = await tokenizer.encodeAll(texts, 'truncate');
      for (const [i, text] of texts.entries()) {
        const expected = await reference(files[kind]!, text, MAX_LENGTH);
        assert.deepEqual(Array.from(encoded[i]!.ids), expected, `text ${i}: ${text.slice(0, 40)}`);
        const full = await reference(files[kind]!, text, Number.MAX_SAFE_INTEGER);
        assert.equal(encoded[i]!.truncated, full.length > MAX_LENGTH, `text ${i}`);
      }
      assert.ok(encoded.some((e) => e.truncated) && encoded.some((e) => !e.truncated));
    });
  });
}

describe('TextTokenizer', () => {
  it('bounds the work per input: 15,000 characters cost about what max_length tokens cost', async () => {
    const tokenizer = await TextTokenizer.load(files.wordpiece!, MAX_LENGTH);
    const raw = Tokenizer.fromFile(files.wordpiece!);
    raw.disableTruncation();
    const long = Array.from({ length: 64 }, (_, i) => LONG_TEXT.slice(i, i + 15_000));
    const short = long.map((text) => text.slice(0, MAX_LENGTH * 5)); // a bit over max_length
    const median = async (run: () => Promise<unknown>) => {
      const times: number[] = [];
      for (let r = 0; r < 5; r++) {
        const t0 = performance.now();
        await run();
        times.push(performance.now() - t0);
      }
      return times.sort((a, b) => a - b)[2]!;
    };
    const shortMs = await median(() => tokenizer.encodeAll(short, 'truncate'));
    const longMs = await median(() => tokenizer.encodeAll(long, 'truncate'));
    const wholeMs = await median(() => raw.encodeBatch(long, { addSpecialTokens: false }));
    assert.ok(longMs < 3 * shortMs + 5, `long ${longMs} ms vs short ${shortMs} ms`);
    assert.ok(longMs < wholeMs / 5, `long ${longMs} ms vs tokenizing it all ${wholeMs} ms`);
  });

  it("rejects inputs over max_length under 'reject', naming the first one and the limit", async () => {
    const tokenizer = await TextTokenizer.load(files.wordpiece!, MAX_LENGTH);
    const long = LONG_TEXT.slice(0, 15_000);
    await assert.rejects(
      tokenizer.encodeAll(['fine', long, 'fine', long], 'reject', 0),
      (error: unknown) => {
        assert.ok(error instanceof MoeError);
        assert.equal(error.code, 'INPUT_TOO_LONG');
        assert.equal(error.status, 413);
        assert.match(error.message, /^inputs\[1\] has more than 32 tokens/);
        assert.deepEqual(error.details, { field: 'inputs[1]', limit: MAX_LENGTH });
        return true;
      },
    );
    const fits = await tokenizer.encodeAll(['fine', FIXTURE_TEXTS[0]!], 'reject');
    assert.deepEqual(
      fits.map((e) => e.truncated),
      [false, false],
    );
  });

  it('runs token ids exactly as given (no specials added) under the same length policy', async () => {
    const tokenizer = await TextTokenizer.load(files.wordpiece!, MAX_LENGTH);
    const [text] = await tokenizer.encodeAll([FIXTURE_TEXTS[1]!], 'truncate');
    // The ids a text gets, specials included, give that text's encoding back.
    assert.deepEqual(tokenizer.encodeIds(Array.from(text!.ids), 'truncate'), text);
    const content = Array.from(text!.ids).slice(1, -1);
    assert.deepEqual(Array.from(tokenizer.encodeIds(content, 'truncate').ids), content);
    const long = tokenizer.encodeIds(new Array(100).fill(content[0]), 'truncate');
    assert.equal(long.ids.length, MAX_LENGTH);
    assert.equal(long.truncated, true);
    assert.throws(
      () => tokenizer.encodeIds([tokenizer.vocabSize], 'truncate', 2),
      /inputs\[2\]\[0\]/,
    );
  });
});
