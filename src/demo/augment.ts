/**
 * WordPiece dropout: re-tokenises a sentence the way the pack's tokenizer would if some of its words
 * were missing from the vocabulary (the idea of BPE-dropout, Provilkov et al. 2020).
 *
 * The vocabulary is learned from the training sentences, so nearly every training word is a single
 * token, while new text (held-out sentences, a user's input) breaks into shorter pieces, and unseen
 * Han characters become [UNK]. A gate trained only on whole-word inputs routes such input poorly;
 * trained on these re-tokenised copies as well, it learns what a language looks like in pieces.
 */
import { normalizeText, preTokenize } from '../pack/wordpiece.js';
import type { Random } from '../util/random.js';

export interface DropoutOptions {
  /** Probability that a word is split as if unknown (its pieces capped at 1-4 characters). */
  readonly splitProbability: number;
  /** Probability that a single Han character becomes [UNK]. */
  readonly unknownProbability: number;
  readonly lowercase: boolean;
  /** Most tokens, [CLS] and [SEP] included. */
  readonly maxLength: number;
  /**
   * Keep only a random run of this many words (uniform in [min, max]; pre-tokenizer words, so
   * punctuation counts) when the text has more: new input is often shorter than the corpus's
   * sentences. Absent: the whole text.
   */
  readonly crop?: { readonly min: number; readonly max: number };
}

const HAN = /^\p{Script=Han}$/u;
const PREFIX = '##';
/** BERT's limit: longer words become [UNK]. */
const MAX_WORD_CHARS = 100;

export class WordPieceDropout {
  private readonly ids: Map<string, number>;
  private readonly unk: number;
  private readonly cls: number;
  private readonly sep: number;

  constructor(vocab: readonly string[]) {
    this.ids = new Map(vocab.map((token, id) => [token, id]));
    const id = (token: string) => {
      const v = this.ids.get(token);
      if (v === undefined) throw new Error(`vocab has no ${token}`);
      return v;
    };
    this.unk = id('[UNK]');
    this.cls = id('[CLS]');
    this.sep = id('[SEP]');
  }

  /**
   * Greedy longest-match-first WordPiece of one word, pieces at most `maxChars` characters;
   * [UNK] for the whole word when some part cannot be matched (as BERT does).
   */
  encodeWord(word: string, maxChars = Number.POSITIVE_INFINITY): number[] {
    const chars = [...word];
    if (chars.length > MAX_WORD_CHARS) return [this.unk];
    const out: number[] = [];
    let start = 0;
    while (start < chars.length) {
      let end = Math.min(chars.length, start + maxChars);
      let found: number | undefined;
      for (; end > start; end--) {
        const piece = (start > 0 ? PREFIX : '') + chars.slice(start, end).join('');
        found = this.ids.get(piece);
        if (found !== undefined) break;
      }
      if (found === undefined) return [this.unk];
      out.push(found);
      start = end;
    }
    return out;
  }

  /** Token ids of `text` with [CLS] and [SEP]; with `rng`, words are dropped out as configured. */
  encode(text: string, options: DropoutOptions, rng?: Random): Int32Array {
    const ids = [this.cls];
    let words = preTokenize(normalizeText(text, options.lowercase));
    const crop = options.crop;
    if (rng !== undefined && crop !== undefined && words.length > crop.max) {
      const length = crop.min + rng.int(crop.max - crop.min + 1);
      const start = rng.int(words.length - length + 1);
      words = words.slice(start, start + length);
    }
    for (const word of words) {
      if (rng !== undefined && HAN.test(word) && rng.next() < options.unknownProbability) {
        ids.push(this.unk);
      } else if (rng !== undefined && rng.next() < options.splitProbability) {
        ids.push(...this.encodeWord(word, 1 + rng.int(4)));
      } else {
        ids.push(...this.encodeWord(word));
      }
    }
    const body = ids.slice(0, options.maxLength - 1);
    body.push(this.sep);
    return Int32Array.from(body);
  }
}
