/**
 * Text -> token ids with the pack's Hugging Face tokenizer.json, and the length policy.
 *
 * Length policy (engine option `truncation`): an input with more tokens than the pack's max_length
 * is either cut to fit, keeping the special tokens the tokenizer adds around the text ([CLS] ...
 * [SEP]), and flagged `truncated: true`, or rejected with INPUT_TOO_LONG naming the limit.
 */
import { readFile } from 'node:fs/promises';
import { Tokenizer } from '@huggingface/tokenizers';
import { MoeError } from '../errors.js';

export type TruncationPolicy = 'truncate' | 'reject';

export interface EncodedText {
  /** Token ids including special tokens; length <= maxLength. */
  readonly ids: Int32Array;
  /** Tokens the text had before truncation (specials included). */
  readonly fullLength: number;
  readonly truncated: boolean;
}

export class TextTokenizer {
  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly maxLength: number,
    /** Special tokens the post-processor puts before and after a single text. */
    private readonly prefix: number[],
    private readonly suffix: number[],
    /** Token ids are 0..vocabSize-1 (added tokens included). */
    readonly vocabSize: number,
  ) {}

  static async load(path: string, maxLength: number): Promise<TextTokenizer> {
    const json = JSON.parse(await readFile(path, 'utf8')) as object;
    const tokenizer = new Tokenizer(json, {});
    // Find the template around a text: encode one probe token with and without specials.
    const bare = tokenizer.encode('a', { add_special_tokens: false }).ids;
    const full = tokenizer.encode('a', { add_special_tokens: true }).ids;
    const at = indexOfRun(full, bare);
    const prefix = at < 0 ? [] : full.slice(0, at);
    const suffix = at < 0 ? [] : full.slice(at + bare.length);
    if (prefix.length + suffix.length >= maxLength) {
      throw new Error(`${path}: the special tokens alone fill max_length ${maxLength}`);
    }
    let vocabSize = 0;
    for (const id of tokenizer.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);
    return new TextTokenizer(tokenizer, maxLength, prefix, suffix, vocabSize);
  }

  /** `index` names the input in errors (e.g. inputs[3]). */
  encode(text: string, policy: TruncationPolicy, index = 0): EncodedText {
    return this.wrap(this.tokenizer.encode(text, { add_special_tokens: false }).ids, policy, index);
  }

  /**
   * Pre-tokenized input (the OpenAI "array of token ids" form): the model runs on exactly these
   * ids, special tokens included if the client sent them and none added, so a client can
   * reproduce a model's output for exact ids. Ids must be in the vocabulary; the length policy
   * applies (truncation keeps the first max_length ids).
   */
  encodeIds(ids: readonly number[], policy: TruncationPolicy, index = 0): EncodedText {
    const content = ids;
    content.forEach((id, j) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new MoeError(
          'INPUT_INVALID',
          `inputs[${index}][${j}] is ${id}, not a token id of this model (integers 0..${this.vocabSize - 1}).`,
          { field: `inputs[${index}][${j}]`, limit: this.vocabSize - 1 },
        );
      }
    });
    if (content.length <= this.maxLength) {
      return { ids: Int32Array.from(content), fullLength: content.length, truncated: false };
    }
    if (policy === 'reject') throw this.tooLong(index, content.length);
    return {
      ids: Int32Array.from(content.slice(0, this.maxLength)),
      fullLength: content.length,
      truncated: true,
    };
  }

  private tooLong(index: number, tokens: number): MoeError {
    return new MoeError(
      'INPUT_TOO_LONG',
      `inputs[${index}] has ${tokens} tokens; the model accepts at most ${this.maxLength}. Shorten the text or let the server truncate it.`,
      { field: `inputs[${index}]`, tokens, limit: this.maxLength },
    );
  }

  private wrap(content: readonly number[], policy: TruncationPolicy, index: number): EncodedText {
    const fullLength = content.length + this.prefix.length + this.suffix.length;
    if (fullLength <= this.maxLength) {
      return {
        ids: Int32Array.from([...this.prefix, ...content, ...this.suffix]),
        fullLength,
        truncated: false,
      };
    }
    if (policy === 'reject') throw this.tooLong(index, fullLength);
    const keep = this.maxLength - this.prefix.length - this.suffix.length;
    return {
      ids: Int32Array.from([...this.prefix, ...content.slice(0, keep), ...this.suffix]),
      fullLength,
      truncated: true,
    };
  }
}

function indexOfRun(haystack: readonly number[], needle: readonly number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
