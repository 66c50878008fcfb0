/**
 * A WordPiece vocabulary builder and a writer of Hugging Face `tokenizer.json` files (BERT style),
 * so that packs can ship a tokenizer built from their own text, offline.
 *
 * The vocabulary is learned the way Hugging Face's WordPiece trainer does it: split the text into
 * words exactly as the tokenizer will (BertNormalizer + BertPreTokenizer, reimplemented below),
 * start from single characters (a word's first character as `c`, later ones as `##c`), then merge
 * the most frequent adjacent pair of pieces again and again. Frequent words end up whole,
 * frequent stems and endings as pieces, and everything else still encodes through characters.
 */

/** Special tokens, in id order: [PAD] is 0. */
export const SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;
export const CONTINUATION_PREFIX = '##';
/** Words longer than this (in characters) become [UNK], as in BERT. */
export const MAX_INPUT_CHARS_PER_WORD = 100;

export interface WordPieceVocabOptions {
  /** Total vocabulary size, special tokens included. */
  vocabSize: number;
  /** Pairs seen fewer times than this are not merged (default 2). */
  minFrequency?: number;
  /** Lowercase the text first (default true); must match the tokenizer's `lowercase`. */
  lowercase?: boolean;
}

/**
 * Build a WordPiece vocabulary (token strings in id order) from sample texts. Deterministic:
 * ties in frequency are broken by comparing token strings.
 */
export function buildWordPieceVocab(texts: string[], options: WordPieceVocabOptions): string[] {
  const { vocabSize, minFrequency = 2, lowercase = true } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < SPECIAL_TOKENS.length) {
    throw new Error(`vocabSize must be an integer >= ${SPECIAL_TOKENS.length}, got ${vocabSize}`);
  }
  const vocab: string[] = [...SPECIAL_TOKENS];
  const inVocab = new Set<string>(vocab);

  // Word counts, as the tokenizer will see the words.
  const wordCounts = new Map<string, number>();
  for (const text of texts) {
    for (const word of preTokenize(normalizeText(text, lowercase))) {
      if ([...word].length > MAX_INPUT_CHARS_PER_WORD) continue;
      wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
    }
  }

  // Characters, most frequent first, each as a word start and as a continuation.
  const charCounts = new Map<string, number>();
  for (const [word, count] of wordCounts) {
    for (const char of word) charCounts.set(char, (charCounts.get(char) ?? 0) + count);
  }
  const chars = [...charCounts.entries()].sort(byCountThenToken).map(([char]) => char);
  const charBudget = Math.floor((vocabSize - vocab.length) / 2);
  const keptChars = chars.slice(0, charBudget);
  for (const char of keptChars) addToken(char);
  for (const char of keptChars) addToken(CONTINUATION_PREFIX + char);

  // Pair merges over the word types that can be spelled with the kept characters.
  const words: { pieces: string[]; count: number }[] = [];
  const kept = new Set(keptChars);
  for (const [word, count] of [...wordCounts.entries()].sort(byCountThenToken)) {
    const letters = [...word];
    if (letters.length < 2 || !letters.every((char) => kept.has(char))) continue;
    words.push({ pieces: letters.map((c, i) => (i === 0 ? c : CONTINUATION_PREFIX + c)), count });
  }
  const pairs = new PairCounts();
  words.forEach((word, index) => {
    for (let i = 0; i + 1 < word.pieces.length; i++) {
      pairs.add(word.pieces[i]!, word.pieces[i + 1]!, word.count, index);
    }
  });
  pairs.commit();

  while (vocab.length < vocabSize) {
    const best = pairs.popBest(minFrequency);
    if (!best) break;
    const [left, right] = best;
    const merged = left + right.slice(right.startsWith(CONTINUATION_PREFIX) ? 2 : 0);
    addToken(merged);
    for (const index of pairs.wordsWith(left, right)) {
      const word = words[index]!;
      const pieces = word.pieces;
      const next: string[] = [];
      for (let i = 0; i < pieces.length; i++) {
        if (i + 1 < pieces.length && pieces[i] === left && pieces[i + 1] === right) {
          next.push(merged);
          i++;
        } else {
          next.push(pieces[i]!);
        }
      }
      if (next.length === pieces.length) continue; // no longer holds the pair
      for (let i = 0; i + 1 < pieces.length; i++) {
        pairs.add(pieces[i]!, pieces[i + 1]!, -word.count, index);
      }
      for (let i = 0; i + 1 < next.length; i++) {
        pairs.add(next[i]!, next[i + 1]!, word.count, index);
      }
      word.pieces = next;
    }
    pairs.commit();
  }
  return vocab;

  function addToken(token: string): void {
    if (inVocab.has(token)) return;
    inVocab.add(token);
    vocab.push(token);
  }
}

function byCountThenToken(a: [string, number], b: [string, number]): number {
  return b[1] - a[1] || compareStrings(a[0], b[0]);
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Counts of adjacent piece pairs with the words they occur in, and a lazy max-heap over
 * (count desc, left asc, right asc) so that each merge step costs O(log n) plus its updates.
 */
class PairCounts {
  private readonly counts = new Map<string, number>();
  private readonly words = new Map<string, Set<number>>();
  private readonly heap: { count: number; left: string; right: string }[] = [];
  /** Changes of one merge step, applied together by commit() so that net-zero ones cost nothing. */
  private readonly pending = new Map<string, { left: string; right: string; delta: number }>();

  add(left: string, right: string, delta: number, word: number): void {
    const key = `${left}\u0000${right}`;
    let change = this.pending.get(key);
    if (!change) {
      change = { left, right, delta: 0 };
      this.pending.set(key, change);
    }
    change.delta += delta;
    if (delta > 0) {
      let set = this.words.get(key);
      if (!set) {
        set = new Set();
        this.words.set(key, set);
      }
      set.add(word);
    }
  }

  /** Apply pending changes; each changed count is pushed, older heap entries go stale. */
  commit(): void {
    for (const [key, { left, right, delta }] of this.pending) {
      if (delta === 0) continue;
      const count = (this.counts.get(key) ?? 0) + delta;
      this.counts.set(key, count);
      if (count > 0) this.push({ count, left, right });
    }
    this.pending.clear();
  }

  /** Word indices that contained the pair (a superset of those that still do). */
  wordsWith(left: string, right: string): Iterable<number> {
    return [...(this.words.get(`${left}\u0000${right}`) ?? [])];
  }

  /** The most frequent pair with count >= minCount (its count drops to 0 once merged). */
  popBest(minCount: number): [string, string] | undefined {
    while (this.heap.length > 0) {
      const top = this.pop();
      const key = `${top.left}\u0000${top.right}`;
      if (this.counts.get(key) !== top.count) continue; // stale entry
      if (top.count < Math.max(1, minCount)) return undefined;
      return [top.left, top.right];
    }
    return undefined;
  }

  private static before(
    a: { count: number; left: string; right: string },
    b: { count: number; left: string; right: string },
  ): boolean {
    if (a.count !== b.count) return a.count > b.count;
    if (a.left !== b.left) return a.left < b.left;
    return a.right < b.right;
  }

  private push(item: { count: number; left: string; right: string }): void {
    const heap = this.heap;
    heap.push(item);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!PairCounts.before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  private pop(): { count: number; left: string; right: string } {
    const heap = this.heap;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < heap.length && PairCounts.before(heap[l]!, heap[best]!)) best = l;
        if (r < heap.length && PairCounts.before(heap[r]!, heap[best]!)) best = r;
        if (best === i) break;
        [heap[i], heap[best]] = [heap[best]!, heap[i]!];
        i = best;
      }
    }
    return top;
  }
}

// --- The BERT normalizer and pre-tokenizer, as tokenizer.json declares them -------------------

const CONTROL = /[\p{Cc}\p{Cf}]/u;
const WHITESPACE = /\s/u;

/** CJK Unified Ideographs blocks, as BERT's `_is_chinese_char` lists them. */
function isCjkIdeograph(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/**
 * BertNormalizer with clean_text, handle_chinese_chars, strip_accents false: drop NUL, U+FFFD and
 * control characters (tab, newline and carriage return are whitespace), map whitespace to ' ',
 * put spaces around CJK ideographs, and lowercase when asked. Exported for tests and tools that
 * need to see words the way the tokenizer does.
 */
export function normalizeText(text: string, lowercase: boolean): string {
  let out = '';
  for (const char of text) {
    const cp = char.codePointAt(0)!;
    if (WHITESPACE.test(char)) out += ' ';
    else if (cp === 0 || cp === 0xfffd || CONTROL.test(char)) continue;
    else if (isCjkIdeograph(cp)) out += ` ${char} `;
    else out += char;
  }
  return lowercase ? out.toLowerCase() : out;
}

/** BERT punctuation: Unicode P* plus every ASCII non-alphanumeric printable character. */
const WORD_OR_PUNCTUATION = /[^\s\p{P}!-/:-@[-`{-~]+|[\p{P}!-/:-@[-`{-~]/gu;

/** BertPreTokenizer: split on whitespace, and every punctuation character is its own word. */
export function preTokenize(normalized: string): string[] {
  return normalized.match(WORD_OR_PUNCTUATION) ?? [];
}

// --- tokenizer.json ---------------------------------------------------------------------------

export interface WordPieceTokenizerOptions {
  /** Must match the `lowercase` the vocabulary was built with. */
  lowercase: boolean;
  /** When set, written as the tokenizer's truncation (longest first, right side). */
  maxLength?: number;
}

/**
 * A Hugging Face `tokenizer.json` document (BERT-style WordPiece) for `vocab`, which must start
 * with the special tokens in SPECIAL_TOKENS order (as buildWordPieceVocab returns it).
 */
export function wordPieceTokenizerJson(
  vocab: string[],
  options: WordPieceTokenizerOptions,
): Record<string, unknown> {
  const ids: Record<string, number> = {};
  vocab.forEach((token, id) => {
    if (token in ids) throw new Error(`vocab has '${token}' twice (ids ${ids[token]} and ${id})`);
    ids[token] = id;
  });
  SPECIAL_TOKENS.forEach((token, id) => {
    if (ids[token] !== id) throw new Error(`vocab must start with ${SPECIAL_TOKENS.join(' ')}`);
  });
  const cls = ids['[CLS]']!;
  const sep = ids['[SEP]']!;
  const special = (id: string, type_id: number) => ({ SpecialToken: { id, type_id } });
  const sequence = (id: string, type_id: number) => ({ Sequence: { id, type_id } });
  return {
    version: '1.0',
    truncation:
      options.maxLength === undefined
        ? null
        : {
            direction: 'Right',
            max_length: options.maxLength,
            strategy: 'LongestFirst',
            stride: 0,
          },
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: 'BertNormalizer',
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: false,
      lowercase: options.lowercase,
    },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [special('[CLS]', 0), sequence('A', 0), special('[SEP]', 0)],
      pair: [
        special('[CLS]', 0),
        sequence('A', 0),
        special('[SEP]', 0),
        sequence('B', 1),
        special('[SEP]', 1),
      ],
      special_tokens: {
        '[CLS]': { id: '[CLS]', ids: [cls], tokens: ['[CLS]'] },
        '[SEP]': { id: '[SEP]', ids: [sep], tokens: ['[SEP]'] },
      },
    },
    decoder: { type: 'WordPiece', prefix: CONTINUATION_PREFIX, cleanup: true },
    model: {
      type: 'WordPiece',
      unk_token: '[UNK]',
      continuing_subword_prefix: CONTINUATION_PREFIX,
      max_input_chars_per_word: MAX_INPUT_CHARS_PER_WORD,
      vocab: ids,
    },
  };
}
