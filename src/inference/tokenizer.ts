/**
 * Text -> token ids with the pack's Hugging Face tokenizer.json, and the length policy.
 *
 * The tokenizer is Hugging Face's own Rust implementation (the `tokenizers` npm package), so
 * WordPiece, byte-level BPE and Unigram tokenizer.json files tokenize exactly as in Python. Its
 * `encodeBatch` runs on libuv's thread pool: tokenizing never runs on the JS (HTTP) thread.
 *
 * Bounded work: a text is cut before it is tokenized. Only the first max_length - specials + 1
 * content tokens of a text matter (one more than fit tells "too long"), so each text is cut to a
 * prefix that should hold that many, tokenized, and the prefix grown (doubled) only if it held too
 * few. A 15,000-character input then costs about what a max_length input costs, not 100 times
 * more. The prefix's last word is not trusted (the cut may split it, and a pre-tokenizer may look
 * one character ahead), so only the tokens of the words before it count; those are the text's
 * own first tokens, because every Hugging Face pre-tokenizer splits a text into words that
 * tokenize independently. A text without any word break (one 15,000-letter "word") is tokenized
 * whole, which MAX_INPUT_CHARS bounds.
 *
 * Length policy (engine option `truncation`): an input with more tokens than the pack's max_length
 * is either cut to fit, keeping the special tokens the tokenizer adds around the text ([CLS] ...
 * [SEP]), and flagged `truncated: true`, or rejected with INPUT_TOO_LONG naming the limit.
 */
import { type Encoding, Tokenizer } from 'tokenizers';
import { MoeError } from '../errors.js';

export type TruncationPolicy = 'truncate' | 'reject';

export interface EncodedText {
  /** Token ids including special tokens; length <= maxLength. */
  readonly ids: Int32Array;
  /** The text had more tokens than maxLength (and was cut to fit). */
  readonly truncated: boolean;
}

/**
 * Characters per content token of the first prefix tried: generous for Latin-script text with a
 * small vocabulary (about 3-4 characters per token), so one round is the rule; denser scripts
 * (CJK: one character per token) have more tokens than needed in the first round anyway.
 */
const CHARS_PER_TOKEN = 6;
/** How far past the wanted length a cut looks for whitespace to cut at. */
const CUT_WINDOW = 64;

export class TextTokenizer {
  private constructor(
    private readonly tokenizer: Tokenizer,
    readonly maxLength: number,
    /** Special tokens the post-processor puts before and after a single text. */
    private readonly prefix: readonly number[],
    private readonly suffix: readonly number[],
    /** Token ids are 0..vocabSize-1 (added tokens included). */
    readonly vocabSize: number,
  ) {}

  static async load(path: string, maxLength: number): Promise<TextTokenizer> {
    const tokenizer = Tokenizer.fromFile(path);
    // The length policy is ours: the file's own truncation would cut after tokenizing it all.
    tokenizer.disableTruncation();
    tokenizer.disablePadding();
    // Find the template around a text: encode one probe token with and without specials.
    const bare = (await tokenizer.encode('a', null, { addSpecialTokens: false })).getIds();
    const full = (await tokenizer.encode('a', null, { addSpecialTokens: true })).getIds();
    const at = indexOfRun(full, bare);
    const prefix = at < 0 ? [] : full.slice(0, at);
    const suffix = at < 0 ? [] : full.slice(at + bare.length);
    if (prefix.length + suffix.length >= maxLength) {
      throw new Error(`${path}: the special tokens alone fill max_length ${maxLength}`);
    }
    let vocabSize = 0;
    for (const id of Object.values(tokenizer.getVocab(true)) as number[])
      vocabSize = Math.max(vocabSize, id + 1);
    return new TextTokenizer(tokenizer, maxLength, prefix, suffix, vocabSize);
  }

  /** Content tokens that fit between the special tokens. */
  private get budget(): number {
    return this.maxLength - this.prefix.length - this.suffix.length;
  }

  /** `index` names the input in errors (e.g. inputs[3]). */
  async encode(text: string, policy: TruncationPolicy, index = 0): Promise<EncodedText> {
    return (await this.encodeAll([text], policy, index))[0]!;
  }

  /**
   * Encode texts off the JS thread, each with bounded work (see the header). Throws
   * INPUT_TOO_LONG for the first text over the limit under policy 'reject'; `firstIndex` is the
   * input index of texts[0] in errors.
   */
  async encodeAll(
    texts: readonly string[],
    policy: TruncationPolicy,
    firstIndex = 0,
  ): Promise<EncodedText[]> {
    const want = this.budget + 1; // content tokens that prove a text too long
    const content: (readonly number[])[] = new Array(texts.length);
    let pending = texts.map((_, i) => ({ i, chars: want * CHARS_PER_TOKEN }));
    while (pending.length > 0) {
      const cuts = pending.map(({ i, chars }) => cutPoint(texts[i]!, chars));
      const encodings = await this.tokenizer.encodeBatch(
        pending.map(({ i }, j) => texts[i]!.slice(0, cuts[j]!)),
        { addSpecialTokens: false },
      );
      const again: typeof pending = [];
      pending.forEach(({ i, chars }, j) => {
        const encoding = encodings[j]!;
        const ids = encoding.getIds();
        if (cuts[j] === texts[i]!.length) {
          content[i] = ids; // the whole text
          return;
        }
        const trusted = tokensBeforeLastWord(encoding);
        if (trusted >= want) content[i] = ids.slice(0, want);
        else again.push({ i, chars: chars * 2 });
      });
      pending = again;
    }
    return content.map((ids, i) => this.wrap(ids, policy, firstIndex + i));
  }

  /**
   * Pre-tokenized input (the OpenAI "array of token ids" form): the model runs on exactly these
   * ids, special tokens included if the client sent them and none added, so a client can
   * reproduce a model's output for exact ids. Ids must be in the vocabulary; the length policy
   * applies (truncation keeps the first max_length ids).
   */
  encodeIds(content: readonly number[], policy: TruncationPolicy, index = 0): EncodedText {
    content.forEach((id, j) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new MoeError(
          'INPUT_INVALID',
          `inputs[${index}][${j}] is ${id}, not a token id of this model (integers 0..${this.vocabSize - 1}).`,
          { field: `inputs[${index}][${j}]`, limit: this.vocabSize - 1 },
        );
      }
    });
    if (content.length <= this.maxLength)
      return { ids: Int32Array.from(content), truncated: false };
    if (policy === 'reject') {
      throw new MoeError(
        'INPUT_TOO_LONG',
        `inputs[${index}] has ${content.length} token ids; the model accepts at most ${this.maxLength}. Send fewer ids or let the server truncate them.`,
        { field: `inputs[${index}]`, tokens: content.length, limit: this.maxLength },
      );
    }
    return { ids: Int32Array.from(content.slice(0, this.maxLength)), truncated: true };
  }

  private wrap(content: readonly number[], policy: TruncationPolicy, index: number): EncodedText {
    const keep = this.budget;
    if (content.length <= keep) {
      return {
        ids: Int32Array.from([...this.prefix, ...content, ...this.suffix]),
        truncated: false,
      };
    }
    if (policy === 'reject') {
      throw new MoeError(
        'INPUT_TOO_LONG',
        `inputs[${index}] has more than ${this.maxLength} tokens, the most the model accepts. Shorten the text or let the server truncate it.`,
        { field: `inputs[${index}]`, limit: this.maxLength },
      );
    }
    return {
      ids: Int32Array.from([...this.prefix, ...content.slice(0, keep), ...this.suffix]),
      truncated: true,
    };
  }
}

/**
 * Where to cut `text` so that the prefix has at least `chars` characters: at the first
 * whitespace within CUT_WINDOW after that, else right there (never inside a surrogate pair);
 * the whole length when the text is not longer than that.
 */
function cutPoint(text: string, chars: number): number {
  if (chars + CUT_WINDOW >= text.length) return text.length;
  for (let at = chars; at < chars + CUT_WINDOW; at++) {
    if (/\s/.test(text[at]!)) return at;
  }
  const code = text.charCodeAt(chars - 1);
  return code >= 0xd800 && code <= 0xdbff ? chars - 1 : chars;
}

/**
 * How many tokens come before the last word's. Two small native calls, not the word id of every
 * token: building that array cost as much as the ids themselves on the HTTP thread. An added
 * token at the end (no word) is dropped alone: the added-token split comes before the
 * pre-tokenizer, so what precedes it is complete.
 */
function tokensBeforeLastWord(encoding: Encoding): number {
  const length = encoding.getLength();
  if (length === 0) return 0;
  const word = encoding.tokenToWord(length - 1);
  if (word === null) return length - 1;
  return encoding.wordToTokens(word)?.[0] ?? 0;
}

function indexOfRun(haystack: readonly number[], needle: readonly number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
