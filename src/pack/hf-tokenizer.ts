/**
 * What the pack needs to know about a Hugging Face tokenizer without running it: the ids it can
 * produce (the size of its vocabulary, added tokens included, to check against the embedding
 * table), the maximum length (`tokenizer_config.json` model_max_length) and the special tokens
 * (`tokenizer_config.json`, `special_tokens_map.json`), each checked to be in the vocabulary.
 * Running the tokenizer is the inference layer's job (src/inference/tokenizer.ts).
 *
 * tokenizer.json vocabularies by model type: WordPiece, BPE and WordLevel hold `model.vocab` as
 * { token: id }; Unigram as [[piece, score], ...] with the id the index. `added_tokens` add ids.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PackError } from './errors.js';

export const TOKENIZER_FILE = 'tokenizer.json';
export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';
export const SPECIAL_TOKENS_MAP_FILE = 'special_tokens_map.json';

/** model_max_length values at or above this are transformers' "no limit" sentinel (int(1e30)). */
const NO_LIMIT = 1_000_000;
const SPECIAL_KEYS = [
  'bos_token',
  'eos_token',
  'unk_token',
  'sep_token',
  'pad_token',
  'cls_token',
  'mask_token',
] as const;

export interface HfTokenizerInfo {
  /** The tokenizer.json file. */
  readonly path: string;
  /** Ids the tokenizer can produce are 0..vocabSize-1 (added tokens included). */
  readonly vocabSize: number;
  /** tokenizer_config.json model_max_length, unless absent or transformers' "no limit". */
  readonly modelMaxLength: number | undefined;
  /** Special tokens by role (pad_token, cls_token, ...) with their ids. */
  readonly specialTokens: Readonly<Record<string, { token: string; id: number }>>;
}

/** A JSON file's contents; PACK_FILE_MISSING (with `missing` as the hint) or PACK_INVALID_CONFIG. */
export async function readJsonFile(file: string, missing = 'file not found'): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR') {
      throw new PackError('PACK_FILE_MISSING', file, '', missing, { cause: error });
    }
    throw error;
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new PackError(
      'PACK_INVALID_CONFIG',
      file,
      '',
      `is not valid JSON (${(error as Error).message})`,
      { cause: error },
    );
  }
}

/** The ids of every token of a parsed tokenizer.json, by token string. */
function tokenIds(json: unknown, file: string): Map<string, number> {
  const doc = json as { model?: { vocab?: unknown }; added_tokens?: unknown } | null;
  const vocab = doc?.model?.vocab;
  const ids = new Map<string, number>();
  if (Array.isArray(vocab)) {
    vocab.forEach((entry, id) => {
      if (Array.isArray(entry) && typeof entry[0] === 'string') ids.set(entry[0], id);
    });
  } else if (vocab !== null && typeof vocab === 'object') {
    for (const [token, id] of Object.entries(vocab as Record<string, unknown>)) {
      if (typeof id === 'number') ids.set(token, id);
    }
  } else {
    throw new PackError(
      'PACK_INVALID_CONFIG',
      file,
      '/model/vocab',
      'has no vocabulary (a { token: id } object, or a list of [piece, score] for Unigram)',
    );
  }
  if (Array.isArray(doc?.added_tokens)) {
    for (const added of doc.added_tokens as { content?: unknown; id?: unknown }[]) {
      if (typeof added?.content === 'string' && typeof added.id === 'number') {
        ids.set(added.content, added.id);
      }
    }
  }
  return ids;
}

/** Ids a tokenizer.json can produce: 0..(max id). */
export async function tokenizerVocabSize(path: string): Promise<number> {
  const ids = tokenIds(await readJsonFile(path), path);
  let size = 0;
  for (const id of ids.values()) size = Math.max(size, id + 1);
  return size;
}

/** tokenizer.json (+ tokenizer_config.json, special_tokens_map.json when present) in `dir`. */
export async function readHfTokenizer(dir: string): Promise<HfTokenizerInfo> {
  const path = join(dir, TOKENIZER_FILE);
  const ids = tokenIds(await readJsonFile(path), path);
  let vocabSize = 0;
  for (const id of ids.values()) vocabSize = Math.max(vocabSize, id + 1);

  const specialTokens: Record<string, { token: string; id: number }> = {};
  let modelMaxLength: number | undefined;
  // special_tokens_map.json first, tokenizer_config.json over it (what transformers ends up with).
  for (const name of [SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE]) {
    const file = join(dir, name);
    const json = await readJsonFile(file).catch((error: unknown) => {
      if (error instanceof PackError && error.code === 'PACK_FILE_MISSING') return undefined;
      throw error;
    });
    if (json === undefined) continue;
    if (json === null || typeof json !== 'object' || Array.isArray(json)) {
      throw new PackError('PACK_INVALID_CONFIG', file, '', 'must be a JSON object');
    }
    const doc = json as Record<string, unknown>;
    for (const key of SPECIAL_KEYS) {
      const value = doc[key];
      if (value === undefined || value === null) continue;
      const token = typeof value === 'string' ? value : (value as { content?: unknown }).content;
      if (typeof token !== 'string') {
        throw new PackError(
          'PACK_INVALID_CONFIG',
          file,
          `/${key}`,
          'must be a token string or { "content": token }',
        );
      }
      const id = ids.get(token);
      if (id === undefined) {
        throw new PackError(
          'PACK_INVALID_CONFIG',
          file,
          `/${key}`,
          `special token ${JSON.stringify(token)} is not in ${path}'s vocabulary`,
        );
      }
      specialTokens[key] = { token, id };
    }
    if (name === TOKENIZER_CONFIG_FILE && doc.model_max_length !== undefined) {
      const value = doc.model_max_length;
      if (typeof value !== 'number' || !(value >= 1)) {
        throw new PackError(
          'PACK_INVALID_CONFIG',
          file,
          '/model_max_length',
          `must be a positive number, got ${JSON.stringify(value)}`,
        );
      }
      if (value < NO_LIMIT) modelMaxLength = Math.floor(value);
    }
  }
  return { path, vocabSize, modelMaxLength, specialTokens };
}
