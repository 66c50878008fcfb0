/**
 * Hugging Face tokenizer.json documents of the two kinds our packs do not build themselves,
 * written from a sample text so that tests can check the tokenizer on every kind of file:
 * - byte-level BPE (GPT-2 / RoBERTa: ByteLevel pre-tokenizer, merges learned here by counting
 *   pairs, <s> ... </s> around a text);
 * - Unigram (SentencePiece / XLM-R style: Metaspace pre-tokenizer, pieces with log-probability
 *   scores, <s> ... </s>).
 * Both follow the field names and shapes `tokenizers` itself writes (`Tokenizer.save`).
 */

const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

const SPECIALS = ['<s>', '<pad>', '</s>', '<unk>'];

/** GPT-2's byte -> printable character table (every byte gets a visible character). */
function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
}

/** Words as the ByteLevel pre-tokenizer makes them (a leading space joins the word after it). */
function byteLevelWords(text: string, table: readonly string[]): string[][] {
  const pieces = text.match(/ ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+/gu) ?? [];
  return pieces.map((piece) => [...Buffer.from(piece, 'utf8')].map((b) => table[b]!));
}

/** A byte-level BPE tokenizer.json with `merges` merges learned from `sample`. */
export function byteLevelBpeJson(sample: readonly string[], merges = 300): object {
  const table = bytesToUnicode();
  const vocab: Record<string, number> = {};
  SPECIALS.forEach((token, id) => {
    vocab[token] = id;
  });
  for (const char of table) vocab[char] = Object.keys(vocab).length;
  const words = sample.flatMap((text) => byteLevelWords(text, table));
  const learned: string[] = [];
  for (let m = 0; m < merges; m++) {
    const counts = new Map<string, number>();
    for (const word of words) {
      for (let i = 0; i + 1 < word.length; i++) {
        const pair = `${word[i]} ${word[i + 1]}`;
        counts.set(pair, (counts.get(pair) ?? 0) + 1);
      }
    }
    let best: string | undefined;
    let bestCount = 1;
    for (const [pair, count] of [...counts].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (count > bestCount) [best, bestCount] = [pair, count];
    }
    if (best === undefined) break;
    const [left, right] = best.split(' ') as [string, string];
    learned.push(best);
    vocab[left + right] ??= Object.keys(vocab).length;
    for (const word of words) {
      for (let i = 0; i + 1 < word.length; i++) {
        if (word[i] === left && word[i + 1] === right) word.splice(i, 2, left + right);
      }
    }
  }
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, id) => special(id, content)),
    normalizer: null,
    pre_tokenizer: {
      type: 'ByteLevel',
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: ['</s>', 2],
      cls: ['<s>', 0],
      trim_offsets: true,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: learned,
    },
  };
}

/**
 * A Unigram tokenizer.json from `sample`: every character seen, every word (with the Metaspace
 * '▁' prefix) seen twice or more, and their prefixes of 2-4 characters, scored by frequency.
 */
export function unigramJson(sample: readonly string[]): object {
  const counts = new Map<string, number>();
  const add = (piece: string, n = 1) => counts.set(piece, (counts.get(piece) ?? 0) + n);
  const words = sample.flatMap((text) => text.split(/\s+/).filter(Boolean));
  const wordCounts = new Map<string, number>();
  for (const word of words) wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
  for (const [word, n] of wordCounts) {
    const piece = `▁${word}`;
    for (const char of piece) add(char, n);
    for (let len = 2; len <= 4 && len < piece.length; len++)
      add([...piece].slice(0, len).join(''), n);
    if (n >= 2) add(piece, n);
  }
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const pieces = [...counts]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([piece, n]) => [piece, Math.log(n / total)] as [string, number]);
  const vocab: [string, number][] = [...SPECIALS.map((t) => [t, 0] as [string, number]), ...pieces];
  const template = (id: string) => ({ SpecialToken: { id, type_id: 0 } });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, id) => special(id, content)),
    normalizer: { type: 'NFKC' },
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [template('<s>'), { Sequence: { id: 'A', type_id: 0 } }, template('</s>')],
      pair: [
        template('<s>'),
        { Sequence: { id: 'A', type_id: 0 } },
        template('</s>'),
        { Sequence: { id: 'B', type_id: 0 } },
        template('</s>'),
      ],
      special_tokens: {
        '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] },
        '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] },
      },
    },
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    model: { type: 'Unigram', unk_id: 3, vocab, byte_fallback: false },
  };
}
