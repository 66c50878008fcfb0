import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Tokenizer } from 'tokenizers';
import {
  buildWordPieceVocab,
  normalizeText,
  preTokenize,
  SPECIAL_TOKENS,
  wordPieceTokenizerJson,
} from '../src/pack/wordpiece.js';

const TEXTS = [
  'The cat sat on the mat. The dog sat on the log.',
  'The cat and the dog are friends; the cat is small.',
  'Кошка сидит на окне. Кошка спит, собака сидит.',
  'Η γάτα κοιμάται. Η γάτα είναι μικρή, ο σκύλος είναι μεγάλος.',
  'القطة نائمة. القطة صغيرة والكلب كبير.',
  '猫在睡觉。猫很小，狗很大。',
  'Café crème, naïve façade!',
];

/** Hugging Face's own tokenizer (the Rust one) over the document we write. */
function tokenizerFor(vocab: string[], lowercase = true) {
  const native = Tokenizer.fromString(JSON.stringify(wordPieceTokenizerJson(vocab, { lowercase })));
  return {
    async encode(text: string) {
      const encoding = await native.encode(text);
      return {
        ids: encoding.getIds(),
        tokens: encoding.getTokens(),
        attention_mask: encoding.getAttentionMask(),
      };
    },
  };
}

describe('buildWordPieceVocab', () => {
  const vocab = buildWordPieceVocab(TEXTS, { vocabSize: 2000, minFrequency: 2 });

  test('special tokens first, [PAD] = 0, no duplicates', () => {
    assert.deepEqual(vocab.slice(0, 5), ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']);
    assert.equal(new Set(vocab).size, vocab.length);
  });

  test('every character seen is in the vocab, also as a ##continuation', () => {
    for (const text of TEXTS) {
      for (const word of preTokenize(normalizeText(text, true))) {
        for (const char of word) {
          assert.ok(vocab.includes(char), `missing '${char}'`);
          assert.ok(vocab.includes(`##${char}`), `missing '##${char}'`);
        }
      }
    }
  });

  test('frequent whole words in several scripts become single tokens', () => {
    for (const word of ['the', 'cat', 'sat', 'кошка', 'сидит', 'γάτα', 'είναι', 'القطة']) {
      assert.ok(vocab.includes(word), `'${word}' should be in the vocab`);
    }
    // Seen once only: not merged at minFrequency 2.
    assert.ok(!vocab.includes('friends'));
  });

  test('deterministic, independent of text order, ties broken lexicographically', () => {
    const again = buildWordPieceVocab([...TEXTS].reverse(), { vocabSize: 2000, minFrequency: 2 });
    assert.deepEqual(again, vocab);
    const ties = buildWordPieceVocab(['b a c'], { vocabSize: 50 });
    assert.deepEqual(ties.slice(5), ['a', 'b', 'c', '##a', '##b', '##c']);
    const counted = buildWordPieceVocab(['b a b'], { vocabSize: 50 });
    assert.deepEqual(counted.slice(5, 7), ['b', 'a']);
  });

  test('respects vocabSize, keeping the most frequent characters when short', () => {
    const small = buildWordPieceVocab(TEXTS, { vocabSize: 60 });
    assert.equal(small.length, 60);
    assert.deepEqual(small.slice(0, 5), [...SPECIAL_TOKENS]);
    assert.ok(small.includes('t') && small.includes('##t'));
    const tiny = buildWordPieceVocab(TEXTS, { vocabSize: 9 });
    assert.equal(tiny.length, 9);
    assert.throws(() => buildWordPieceVocab(TEXTS, { vocabSize: 3 }), /vocabSize must be/);
  });

  test('lowercase: false keeps case', () => {
    const cased = buildWordPieceVocab(['The The the'], { vocabSize: 100, lowercase: false });
    assert.ok(cased.includes('The') && cased.includes('T'));
    const lower = buildWordPieceVocab(['The The the'], { vocabSize: 100 });
    assert.ok(!lower.includes('T') && lower.includes('the'));
  });
});

describe('wordPieceTokenizerJson', () => {
  const vocab = buildWordPieceVocab(TEXTS, { vocabSize: 2000, minFrequency: 2 });
  const tokenizer = tokenizerFor(vocab);
  const id = (token: string) => {
    const index = vocab.indexOf(token);
    assert.ok(index >= 0, `'${token}' not in vocab`);
    return index;
  };
  const CLS = 2;
  const SEP = 3;
  const UNK = 1;

  test('document shape: BERT WordPiece pipeline', () => {
    const json = wordPieceTokenizerJson(vocab, { lowercase: true, maxLength: 64 }) as Record<
      string,
      Record<string, unknown>
    >;
    assert.equal(json.version as unknown, '1.0');
    assert.equal(json.model!.type, 'WordPiece');
    assert.equal(json.model!.unk_token, '[UNK]');
    assert.equal(json.model!.continuing_subword_prefix, '##');
    assert.equal(json.model!.max_input_chars_per_word, 100);
    assert.equal(json.normalizer!.type, 'BertNormalizer');
    assert.equal(json.normalizer!.strip_accents, false);
    assert.equal(json.pre_tokenizer!.type, 'BertPreTokenizer');
    assert.equal(json.post_processor!.type, 'TemplateProcessing');
    assert.equal(json.decoder!.type, 'WordPiece');
    assert.equal(json.truncation!.max_length, 64);
    const added = json.added_tokens as unknown as {
      id: number;
      content: string;
      special: boolean;
    }[];
    assert.deepEqual(
      added.map((t) => [t.id, t.content, t.special]),
      SPECIAL_TOKENS.map((t, i) => [i, t, true]),
    );
    assert.throws(() => wordPieceTokenizerJson(['a', 'b'], { lowercase: true }), /must start with/);
  });

  test('Latin: [CLS] words [SEP], lowercased, punctuation split, unknown -> [UNK]', async () => {
    const encoded = await tokenizer.encode('The CAT sat, zzz!');
    assert.deepEqual(encoded.tokens, ['[CLS]', 'the', 'cat', 'sat', ',', '[UNK]', '!', '[SEP]']);
    assert.deepEqual(encoded.ids, [
      CLS,
      id('the'),
      id('cat'),
      id('sat'),
      id(','),
      UNK,
      id('!'),
      SEP,
    ]);
    assert.deepEqual(encoded.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1]);
  });

  test('accents are kept (strip_accents false)', async () => {
    const encoded = await tokenizer.encode('café');
    assert.ok(!encoded.tokens.includes('[UNK]'));
    assert.deepEqual((await tokenizer.encode('cafe')).tokens.includes('[UNK]'), false);
    assert.ok(encoded.tokens.slice(1, -1).join('').includes('é'));
  });

  test('Cyrillic, Greek, Arabic: known words to their ids, unseen letters to [UNK]', async () => {
    assert.deepEqual((await tokenizer.encode('Кошка сидит')).ids, [
      CLS,
      id('кошка'),
      id('сидит'),
      SEP,
    ]);
    assert.deepEqual((await tokenizer.encode('η γάτα είναι')).ids, [
      CLS,
      id('η'),
      id('γάτα'),
      id('είναι'),
      SEP,
    ]);
    assert.deepEqual((await tokenizer.encode('القطة')).ids, [CLS, id('القطة'), SEP]);
    // 'ж', 'ψ' and 'ض' never occur in the sample: the whole word is [UNK].
    assert.deepEqual((await tokenizer.encode('жук ψ ضوء')).ids, [CLS, UNK, UNK, UNK, SEP]);
  });

  test('CJK: one token per ideograph', async () => {
    const encoded = await tokenizer.encode('猫很大');
    assert.deepEqual(encoded.tokens, ['[CLS]', '猫', '很', '大', '[SEP]']);
    assert.deepEqual(encoded.ids, [CLS, id('猫'), id('很'), id('大'), SEP]);
    assert.deepEqual((await tokenizer.encode('龍')).ids, [CLS, UNK, SEP]);
  });

  test('rare words split into word pieces, never [UNK] when all characters are known', async () => {
    const encoded = await tokenizer.encode('catdog');
    assert.ok(encoded.tokens.length > 3);
    assert.ok(!encoded.tokens.includes('[UNK]'));
    assert.ok(encoded.tokens.slice(2, -1).every((token: string) => token.startsWith('##')));
  });

  test('our normalizer and pre-tokenizer split text as the tokenizer does', async () => {
    const wordsVocab = buildWordPieceVocab(TEXTS, { vocabSize: 5000, minFrequency: 1 });
    const wordsTokenizer = tokenizerFor(wordsVocab);
    for (const text of TEXTS) {
      const words = preTokenize(normalizeText(text, true));
      assert.deepEqual((await wordsTokenizer.encode(text)).tokens.slice(1, -1), words, text);
    }
  });

  test('special tokens in text are recognised', async () => {
    assert.deepEqual((await tokenizer.encode('the [MASK] sat')).ids, [
      CLS,
      id('the'),
      4,
      id('sat'),
      SEP,
    ]);
  });
});
