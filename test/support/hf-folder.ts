/**
 * Writes Hugging Face model folders with random weights, laid out exactly as transformers'
 * `save_pretrained` (and sentence-transformers' `save`) write them, for tests that cannot
 * download real models: `config.json` with the model's own field names, safetensors with the
 * model's own tensor names in PyTorch layout (nn.Linear.weight [out,in]), `tokenizer.json` of the
 * family's kind, `tokenizer_config.json`, `special_tokens_map.json`, and optionally the
 * sentence-transformers files.
 *
 * API
 *   writeHfFolder(dir, spec) -> Promise<HfFolder>
 *     spec.family        'bert' | 'roberta' | 'xlm-roberta' | 'distilbert'
 *     spec.hiddenSize, layers, heads, intermediateSize   default 32, 2, 2, 64
 *     spec.maxPositions  rows of the position table (default 40; RoBERTa/XLM-R count the
 *                        padding_idx + 1 offset in it, as their configs do with 514)
 *     spec.hiddenAct     default 'gelu'; spec.layerNormEps default 1e-12 (BERT, DistilBERT) or
 *                        1e-5 (RoBERTa, XLM-R); spec.typeVocabSize default 2 (BERT) or 1
 *     spec.dtype         'F32' (default) | 'F16' | 'BF16': weights are drawn, rounded to the
 *                        dtype, and stored; `tensors` holds the rounded values
 *     spec.shards        1 (default): model.safetensors; n > 1: model-0000i-of-0000n.safetensors
 *                        and model.safetensors.index.json
 *     spec.prefix        true: names carry the task model's prefix (bert., roberta., distilbert.),
 *                        as BertForMaskedLM & co. save them; default false (BertModel)
 *     spec.extras        true (default): also a pooler (BERT family) and, with a prefix, an MLM
 *                        head, plus an I64 `position_ids` buffer, as older checkpoints hold them
 *     spec.vocabPadding  embedding rows beyond the tokenizer's vocabulary (default 3)
 *     spec.sentenceTransformers  { pooling: 'mean' | 'cls' | 'max', normalize, maxSeqLength? }:
 *                        modules.json, 1_Pooling/config.json, sentence_bert_config.json
 *     spec.seed          default 1
 *   HfFolder: { dir, config (as written), tensors (name -> {shape, data}, as stored),
 *               tokenizer ('wordpiece' | 'bpe' | 'unigram'), vocabSize (tokenizer), padTokenId }
 *
 * Tokenizers (built from FIXTURE_TEXTS, every character of which they can encode):
 *   BERT, DistilBERT: WordPiece ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4), lowercase;
 *   RoBERTa: byte-level BPE (<s> 0, <pad> 1, </s> 2, <unk> 3, then 256 byte symbols and merges),
 *            RobertaProcessing;
 *   XLM-R: Unigram with Metaspace (<s> 0, <pad> 1, </s> 2, <unk> 3, pieces, <mask> last),
 *          TemplateProcessing <s> $A </s>.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type FloatDtype, writeSafetensors } from '../../src/pack/safetensors.js';
import { buildWordPieceVocab, wordPieceTokenizerJson } from '../../src/pack/wordpiece.js';
import { Random } from '../../src/util/random.js';
import { FIXTURE_TEXTS } from './fixture-pack.js';

export type HfFamily = 'bert' | 'roberta' | 'xlm-roberta' | 'distilbert';

export interface HfFolderSpec {
  readonly family: HfFamily;
  readonly hiddenSize?: number;
  readonly layers?: number;
  readonly heads?: number;
  readonly intermediateSize?: number;
  readonly maxPositions?: number;
  readonly hiddenAct?: string;
  readonly layerNormEps?: number;
  readonly typeVocabSize?: number;
  readonly dtype?: FloatDtype;
  readonly shards?: number;
  readonly prefix?: boolean;
  readonly extras?: boolean;
  readonly vocabPadding?: number;
  readonly sentenceTransformers?: {
    readonly pooling: 'mean' | 'cls' | 'max';
    readonly normalize: boolean;
    readonly maxSeqLength?: number;
  };
  readonly seed?: number;
}

export interface HfTensor {
  readonly shape: number[];
  readonly data: Float32Array;
}

export interface HfFolder {
  readonly dir: string;
  readonly config: Record<string, unknown>;
  readonly tensors: Map<string, HfTensor>;
  readonly tokenizer: 'wordpiece' | 'bpe' | 'unigram';
  readonly vocabSize: number;
  readonly padTokenId: number;
}

const PREFIX: Record<HfFamily, string> = {
  bert: 'bert.',
  roberta: 'roberta.',
  'xlm-roberta': 'roberta.',
  distilbert: 'distilbert.',
};

export async function writeHfFolder(dir: string, spec: HfFolderSpec): Promise<HfFolder> {
  const family = spec.family;
  const d = spec.hiddenSize ?? 32;
  const layers = spec.layers ?? 2;
  const heads = spec.heads ?? 2;
  const f = spec.intermediateSize ?? 64;
  const maxPositions = spec.maxPositions ?? 40;
  const robertaLike = family === 'roberta' || family === 'xlm-roberta';
  const hiddenAct = spec.hiddenAct ?? 'gelu';
  const eps = spec.layerNormEps ?? (robertaLike ? 1e-5 : 1e-12);
  const typeVocab = spec.typeVocabSize ?? (family === 'bert' ? 2 : 1);
  const dtype = spec.dtype ?? 'F32';
  const rng = new Random(spec.seed ?? 1);
  await mkdir(dir, { recursive: true });

  // ---- tokenizer
  const tok =
    family === 'roberta'
      ? bpeTokenizer()
      : family === 'xlm-roberta'
        ? unigramTokenizer()
        : wordPiece();
  await json(join(dir, 'tokenizer.json'), tok.json);
  await json(join(dir, 'tokenizer_config.json'), tok.config(maxPositions - (robertaLike ? 2 : 0)));
  await json(join(dir, 'special_tokens_map.json'), tok.specialMap);
  const vocabSize = tok.size + (spec.vocabPadding ?? 3);
  const pad = tok.padId;

  // ---- config.json, as save_pretrained writes it
  const config: Record<string, unknown> =
    family === 'distilbert'
      ? {
          activation: hiddenAct,
          architectures: [spec.prefix ? 'DistilBertForMaskedLM' : 'DistilBertModel'],
          attention_dropout: 0.1,
          dim: d,
          dropout: 0.1,
          hidden_dim: f,
          initializer_range: 0.02,
          max_position_embeddings: maxPositions,
          model_type: 'distilbert',
          n_heads: heads,
          n_layers: layers,
          pad_token_id: pad,
          qa_dropout: 0.1,
          seq_classif_dropout: 0.2,
          sinusoidal_pos_embds: false,
          tie_weights_: true,
          torch_dtype: torchDtype(dtype),
          transformers_version: '4.44.2',
          vocab_size: vocabSize,
        }
      : {
          architectures: [modelClass(family, spec.prefix === true)],
          attention_probs_dropout_prob: 0.1,
          ...(robertaLike ? { bos_token_id: 0, eos_token_id: 2 } : {}),
          classifier_dropout: null,
          hidden_act: hiddenAct,
          hidden_dropout_prob: 0.1,
          hidden_size: d,
          initializer_range: 0.02,
          intermediate_size: f,
          layer_norm_eps: eps,
          max_position_embeddings: maxPositions,
          model_type: family,
          num_attention_heads: heads,
          num_hidden_layers: layers,
          pad_token_id: pad,
          position_embedding_type: 'absolute',
          torch_dtype: torchDtype(dtype),
          transformers_version: '4.44.2',
          type_vocab_size: typeVocab,
          use_cache: true,
          vocab_size: vocabSize,
        };
  await json(join(dir, 'config.json'), config);

  // ---- weights, HF names, PyTorch layout, rounded to the stored dtype
  const tensors = new Map<string, HfTensor>();
  const prefix = spec.prefix ? PREFIX[family] : '';
  const put = (name: string, shape: number[], std: number, mean = 0) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = roundTo(dtype, mean + rng.normal() * std);
    tensors.set(prefix + name, { shape, data });
  };
  // Larger-than-BERT-init weights (0.2 instead of 0.02) so that attention is far from uniform
  // and every mistake (a transposed matrix, a wrong position row) shows in the outputs.
  const linear = (name: string, out: number, inp: number) => {
    put(`${name}.weight`, [out, inp], 0.2);
    put(`${name}.bias`, [out], 0.1);
  };
  const norm = (name: string) => {
    put(`${name}.weight`, [d], 0.1, 1);
    put(`${name}.bias`, [d], 0.1);
  };
  put('embeddings.word_embeddings.weight', [vocabSize, d], 0.5);
  put('embeddings.position_embeddings.weight', [maxPositions, d], 0.5);
  if (family !== 'distilbert') put('embeddings.token_type_embeddings.weight', [typeVocab, d], 0.5);
  norm('embeddings.LayerNorm');
  for (let l = 0; l < layers; l++) {
    if (family === 'distilbert') {
      const p = `transformer.layer.${l}.`;
      for (const m of ['q_lin', 'k_lin', 'v_lin', 'out_lin']) linear(`${p}attention.${m}`, d, d);
      norm(`${p}sa_layer_norm`);
      linear(`${p}ffn.lin1`, f, d);
      linear(`${p}ffn.lin2`, d, f);
      norm(`${p}output_layer_norm`);
    } else {
      const p = `encoder.layer.${l}.`;
      for (const m of ['query', 'key', 'value']) linear(`${p}attention.self.${m}`, d, d);
      linear(`${p}attention.output.dense`, d, d);
      norm(`${p}attention.output.LayerNorm`);
      linear(`${p}intermediate.dense`, f, d);
      linear(`${p}output.dense`, d, f);
      norm(`${p}output.LayerNorm`);
    }
  }
  const extras = spec.extras ?? true;
  const unread: Record<string, { shape: number[]; data: Float32Array }> = {};
  if (extras) {
    if (family !== 'distilbert') {
      put('pooler.dense.weight', [d, d], 0.2);
      put('pooler.dense.bias', [d], 0.1);
    }
    if (spec.prefix) {
      const head =
        family === 'bert' ? 'cls.predictions' : family === 'distilbert' ? 'vocab' : 'lm_head';
      tensors.set(`${head}.bias`, { shape: [vocabSize], data: new Float32Array(vocabSize) });
    }
    // An I64 buffer some checkpoints carry; readers must skip it (its dtype is not a float).
    unread[`${prefix}embeddings.position_ids`] = {
      shape: [1, maxPositions],
      data: new Float32Array(0),
    };
  }

  await writeWeights(dir, tensors, dtype, spec.shards ?? 1, unread);

  if (spec.sentenceTransformers) {
    const st = spec.sentenceTransformers;
    const modules = [
      { idx: 0, name: '0', path: '', type: 'sentence_transformers.models.Transformer' },
      { idx: 1, name: '1', path: '1_Pooling', type: 'sentence_transformers.models.Pooling' },
    ];
    if (st.normalize) {
      modules.push({
        idx: 2,
        name: '2',
        path: '2_Normalize',
        type: 'sentence_transformers.models.Normalize',
      });
      await mkdir(join(dir, '2_Normalize'), { recursive: true });
    }
    await json(join(dir, 'modules.json'), modules);
    await mkdir(join(dir, '1_Pooling'), { recursive: true });
    await json(join(dir, '1_Pooling', 'config.json'), {
      word_embedding_dimension: d,
      pooling_mode_cls_token: st.pooling === 'cls',
      pooling_mode_mean_tokens: st.pooling === 'mean',
      pooling_mode_max_tokens: st.pooling === 'max',
      pooling_mode_mean_sqrt_len_tokens: false,
      pooling_mode_weightedmean_tokens: false,
      pooling_mode_lasttoken: false,
      include_prompt: true,
    });
    await json(join(dir, 'sentence_bert_config.json'), {
      max_seq_length: st.maxSeqLength ?? maxPositions - (robertaLike ? 2 : 0),
      do_lower_case: false,
    });
  }
  return {
    dir,
    config,
    tensors,
    tokenizer: family === 'roberta' ? 'bpe' : family === 'xlm-roberta' ? 'unigram' : 'wordpiece',
    vocabSize: tok.size,
    padTokenId: pad,
  };
}

function modelClass(family: HfFamily, task: boolean): string {
  const base = {
    bert: 'Bert',
    roberta: 'Roberta',
    'xlm-roberta': 'XLMRoberta',
    distilbert: 'DistilBert',
  }[family];
  return task ? `${base}ForMaskedLM` : `${base}Model`;
}

function torchDtype(dtype: FloatDtype): string {
  return dtype === 'F16' ? 'float16' : dtype === 'BF16' ? 'bfloat16' : 'float32';
}

/** x rounded to the nearest value `dtype` holds (ties away from zero; then stored exactly). */
export function roundTo(dtype: FloatDtype, x: number): number {
  if (dtype === 'F32' || x === 0) return Math.fround(x);
  const bits = dtype === 'F16' ? 11 : 8; // significand bits
  const minExponent = dtype === 'F16' ? -14 : -126;
  const e = Math.max(Math.floor(Math.log2(Math.abs(x))), minExponent);
  const step = 2 ** (e - bits + 1);
  return Math.fround(Math.round(x / step) * step);
}

/**
 * model.safetensors, or n shards + model.safetensors.index.json (weight_map: tensor -> shard
 * file, metadata.total_size), with tensors dealt to shards in order as transformers does.
 */
async function writeWeights(
  dir: string,
  tensors: Map<string, HfTensor>,
  dtype: FloatDtype,
  shards: number,
  i64: Record<string, { shape: number[] }>,
): Promise<void> {
  const names = [...tensors.keys()];
  const per = Math.ceil(names.length / shards);
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let s = 0; s < shards; s++) {
    const file =
      shards === 1
        ? 'model.safetensors'
        : `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const record: Record<string, { shape: number[]; data: Float32Array; dtype: FloatDtype }> = {};
    for (const name of names.slice(s * per, (s + 1) * per)) {
      const t = tensors.get(name)!;
      record[name] = { ...t, dtype };
      weightMap[name] = file;
      totalSize += t.data.length * (dtype === 'F32' ? 4 : 2);
    }
    const path = join(dir, file);
    await writeSafetensors(path, record, { format: 'pt' });
    if (s === 0 && Object.keys(i64).length > 0) {
      await appendI64(path, i64);
      for (const name of Object.keys(i64)) weightMap[name] = file;
    }
  }
  if (shards > 1) {
    await json(join(dir, 'model.safetensors.index.json'), {
      metadata: { total_size: totalSize },
      weight_map: weightMap,
    });
  }
}

/** Rewrites a safetensors file with extra I64 tensors (zeros) at the end of its data section. */
async function appendI64(path: string, extra: Record<string, { shape: number[] }>): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  const bytes = await readFile(path);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<
    string,
    { data_offsets?: [number, number] }
  >;
  const data = bytes.subarray(8 + headerLength);
  let end = data.byteLength;
  const tails: Buffer[] = [];
  for (const [name, { shape }] of Object.entries(extra)) {
    const size = shape.reduce((a, b) => a * b, 1) * 8;
    header[name] = { dtype: 'I64', shape, data_offsets: [end, end + size] } as never;
    tails.push(Buffer.alloc(size));
    end += size;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  await writeFile(path, Buffer.concat([head, Buffer.from(text), data, ...tails]));
}

async function json(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}

interface BuiltTokenizer {
  json: Record<string, unknown>;
  size: number;
  padId: number;
  specialMap: Record<string, unknown>;
  config: (modelMaxLength: number) => Record<string, unknown>;
}

function addedToken(id: number, content: string, lstrip = false) {
  return {
    id,
    content,
    single_word: false,
    lstrip,
    rstrip: false,
    normalized: false,
    special: true,
  };
}

function wordPiece(): BuiltTokenizer {
  const vocab = buildWordPieceVocab([...FIXTURE_TEXTS], { vocabSize: 400, minFrequency: 1 });
  return {
    json: wordPieceTokenizerJson(vocab, { lowercase: true }),
    size: vocab.length,
    padId: 0,
    specialMap: {
      cls_token: '[CLS]',
      mask_token: '[MASK]',
      pad_token: '[PAD]',
      sep_token: '[SEP]',
      unk_token: '[UNK]',
    },
    config: (modelMaxLength) => ({
      clean_up_tokenization_spaces: true,
      cls_token: '[CLS]',
      do_lower_case: true,
      mask_token: '[MASK]',
      model_max_length: modelMaxLength,
      pad_token: '[PAD]',
      sep_token: '[SEP]',
      strip_accents: null,
      tokenize_chinese_chars: true,
      tokenizer_class: 'BertTokenizer',
      unk_token: '[UNK]',
    }),
  };
}

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to 256 + n. */
function byteSymbols(): string[] {
  const symbols: string[] = new Array(256);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    symbols[b] = String.fromCodePoint(printable ? b : 256 + next++);
  }
  return symbols;
}

/** Byte-level BPE as RoBERTa's: 256 byte symbols, then merges learned greedily from the texts. */
function bpeTokenizer(): BuiltTokenizer {
  const specials = ['<s>', '<pad>', '</s>', '<unk>'];
  const symbols = byteSymbols();
  const split = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  const counts = new Map<string, number>();
  for (const text of FIXTURE_TEXTS) {
    for (const chunk of text.match(split) ?? []) {
      const word = [...new TextEncoder().encode(chunk)].map((b) => symbols[b]!).join('\u0000');
      counts.set(word, (counts.get(word) ?? 0) + 1);
    }
  }
  const words = [...counts.entries()].map(([w, c]) => ({ parts: w.split('\u0000'), count: c }));
  const vocab: string[] = [...specials, ...symbols];
  const merges: string[] = [];
  for (let m = 0; m < 150; m++) {
    const pairs = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.parts.length; i++) {
        const key = `${w.parts[i]} ${w.parts[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + w.count);
      }
    }
    const best = [...pairs.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
    if (!best || best[1] < 2) break;
    const [left, right] = best[0].split(' ') as [string, string];
    merges.push(best[0]);
    if (!vocab.includes(left + right)) vocab.push(left + right);
    for (const w of words) {
      const parts: string[] = [];
      for (let i = 0; i < w.parts.length; i++) {
        if (i + 1 < w.parts.length && w.parts[i] === left && w.parts[i + 1] === right) {
          parts.push(left + right);
          i++;
        } else parts.push(w.parts[i]!);
      }
      w.parts = parts;
    }
  }
  const maskId = vocab.length;
  vocab.push('<mask>'); // last, as in RoBERTa's vocabulary
  const ids = Object.fromEntries(vocab.map((t, i) => [t, i]));
  return {
    json: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [
        ...specials.map((t, i) => addedToken(i, t)),
        addedToken(maskId, '<mask>', true),
      ],
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
        continuing_subword_prefix: '',
        end_of_word_suffix: '',
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: false,
        vocab: ids,
        merges,
      },
    },
    size: vocab.length,
    padId: 1,
    specialMap: {
      bos_token: '<s>',
      cls_token: '<s>',
      eos_token: '</s>',
      mask_token: '<mask>',
      pad_token: '<pad>',
      sep_token: '</s>',
      unk_token: '<unk>',
    },
    config: (modelMaxLength) => ({
      add_prefix_space: false,
      bos_token: '<s>',
      cls_token: '<s>',
      eos_token: '</s>',
      errors: 'replace',
      model_max_length: modelMaxLength,
      pad_token: '<pad>',
      sep_token: '</s>',
      tokenizer_class: 'RobertaTokenizer',
      trim_offsets: true,
      unk_token: '<unk>',
    }),
  };
}

/** Unigram over Metaspace pieces, as XLM-R's SentencePiece model: words, then characters. */
function unigramTokenizer(): BuiltTokenizer {
  const specials = ['<s>', '<pad>', '</s>', '<unk>'];
  const counts = new Map<string, number>();
  const add = (piece: string, n: number) => counts.set(piece, (counts.get(piece) ?? 0) + n);
  for (const text of FIXTURE_TEXTS) {
    for (const word of text.normalize('NFKC').split(/\s+/).filter(Boolean)) {
      add(`\u2581${word}`, 1);
      add('\u2581', 1);
      for (const ch of word) add(ch, 1);
    }
  }
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const pieces = [...counts.entries()]
    .filter(([piece, n]) => n >= 2 || [...piece].length === 1)
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([piece, n]) => [piece, Math.log(n / total)] as [string, number]);
  const vocab: [string, number][] = [...specials.map((s) => [s, 0] as [string, number]), ...pieces];
  const maskId = vocab.length;
  const metaspace = {
    type: 'Metaspace',
    replacement: '\u2581',
    prepend_scheme: 'always',
    split: true,
  };
  return {
    json: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [
        ...specials.map((t, i) => addedToken(i, t)),
        addedToken(maskId, '<mask>', true),
      ],
      normalizer: { type: 'NFKC' },
      pre_tokenizer: metaspace,
      post_processor: {
        type: 'TemplateProcessing',
        single: [
          { SpecialToken: { id: '<s>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: '</s>', type_id: 0 } },
        ],
        pair: [
          { SpecialToken: { id: '<s>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: '</s>', type_id: 0 } },
          { SpecialToken: { id: '</s>', type_id: 0 } },
          { Sequence: { id: 'B', type_id: 0 } },
          { SpecialToken: { id: '</s>', type_id: 0 } },
        ],
        special_tokens: {
          '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] },
          '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] },
        },
      },
      decoder: metaspace,
      model: { type: 'Unigram', unk_id: 3, vocab: [...vocab, ['<mask>', 0]], byte_fallback: false },
    },
    size: maskId + 1,
    padId: 1,
    specialMap: {
      bos_token: '<s>',
      cls_token: '<s>',
      eos_token: '</s>',
      mask_token: {
        content: '<mask>',
        lstrip: true,
        normalized: false,
        rstrip: false,
        single_word: false,
      },
      pad_token: '<pad>',
      sep_token: '</s>',
      unk_token: '<unk>',
    },
    config: (modelMaxLength) => ({
      bos_token: '<s>',
      cls_token: '<s>',
      eos_token: '</s>',
      mask_token: '<mask>',
      model_max_length: modelMaxLength,
      pad_token: '<pad>',
      sep_token: '</s>',
      tokenizer_class: 'XLMRobertaTokenizer',
      unk_token: '<unk>',
    }),
  };
}
