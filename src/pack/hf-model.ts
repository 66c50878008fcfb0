/**
 * Reading a Hugging Face model folder, as transformers' `save_pretrained` and sentence-transformers'
 * `save` write it, into the encoder contract of encoder-types.ts:
 *
 *   config.json                         model_type bert | roberta | xlm-roberta | distilbert, sizes,
 *                                       hidden_act, layer_norm_eps, max_position_embeddings,
 *                                       type_vocab_size, pad_token_id (DistilBERT: dim, n_layers,
 *                                       n_heads, hidden_dim, activation)
 *   model.safetensors                   the weights (F32, F16 or BF16; F16 and BF16 are widened to
 *   | model.safetensors.index.json      float32 on read, exactly), or shards listed in the index
 *     + model-0000i-of-0000n.safetensors
 *   tokenizer.json, tokenizer_config.json, special_tokens_map.json      (hf-tokenizer.ts)
 *   modules.json, 1_Pooling/config.json, sentence_bert_config.json      (sentence-transformers)
 *
 * Two steps, so that a cached graph needs no weights read: `inspectHfFolder` reads the JSON files
 * and the safetensors headers only, and checks every tensor the encoder needs (present, a float
 * dtype, the shape config.json implies); `readHfWeights` then reads the tensor data. Tensor names
 * are accepted with or without a task model's prefix (`bert.`, `roberta.`, `distilbert.`, any
 * other); LayerNorm parameters as weight/bias or gamma/beta; everything else in the checkpoint
 * (the pooler, task heads, buffers such as position_ids) is ignored.
 *
 * Every failure is a PackError naming the file and the field or tensor (errors.ts).
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ENCODER_ACTIVATIONS,
  ENCODER_FAMILIES,
  type EncoderActivation,
  type EncoderConfig,
  type EncoderFamily,
  type EncoderLayerWeights,
  type EncoderWeights,
  type LayerNormWeights,
  type LinearWeights,
} from './encoder-types.js';
import { PackError } from './errors.js';
import { type HfTokenizerInfo, readHfTokenizer, readJsonFile } from './hf-tokenizer.js';
import { type FloatDtype, SafetensorsFile, type TensorEntry } from './safetensors.js';
import { POOLING_MODES, type Pooling, type PoolingMode } from './types.js';

export const HF_CONFIG_FILE = 'config.json';
export const HF_WEIGHTS_FILE = 'model.safetensors';
export const HF_WEIGHTS_INDEX_FILE = 'model.safetensors.index.json';
export const ST_MODULES_FILE = 'modules.json';
export const ST_CONFIG_FILE = 'sentence_bert_config.json';

/** Checkpoint dtypes read (widened to float32). */
export const HF_FLOAT_DTYPES: readonly FloatDtype[] = ['F32', 'F16', 'BF16'];

/** What a folder's sentence-transformers files say, and which file said it. */
export interface SentenceTransformersInfo {
  readonly pooling: Pooling;
  /** sentence_bert_config.json max_seq_length, if given. */
  readonly maxSeqLength: number | undefined;
  readonly source: string;
}

/** Where one tensor lives. */
interface TensorRef {
  readonly file: SafetensorsFile;
  readonly entry: TensorEntry;
}

export interface HfModelInfo {
  /** The folder holding config.json (a sentence-transformers model may keep it in a subfolder). */
  readonly dir: string;
  readonly configPath: string;
  readonly config: EncoderConfig;
  /** The safetensors files the weights come from, in order: what a cache digest must cover. */
  readonly weightFiles: readonly string[];
  /** The tokenizer files, if the folder has a tokenizer.json. */
  readonly tokenizer: HfTokenizerInfo | undefined;
  /** The sentence-transformers pooling, if the folder has modules.json. */
  readonly sentenceTransformers: SentenceTransformersInfo | undefined;
  /**
   * The longest input the model takes, special tokens included: the least of the position table's
   * limit, the tokenizer's model_max_length and sentence-transformers' max_seq_length.
   */
  readonly maxLength: number;
  /** Resolved tensor locations by canonical role (see readHfWeights). */
  readonly tensors: ReadonlyMap<string, TensorRef>;
}

/** The one-line conversion users need when a folder has pickled weights only. */
export function conversionCommand(dir: string): string {
  const quoted = dir.replace(/'/g, "\\'");
  return `python -c "from transformers import AutoModel; AutoModel.from_pretrained('${quoted}').save_pretrained('${quoted}', safe_serialization=True)"`;
}

/** Reads the folder's JSON files and safetensors headers; checks every tensor the encoder needs. */
export async function inspectHfFolder(folder: string): Promise<HfModelInfo> {
  await expectFolder(folder);
  const sentenceTransformers = await readSentenceTransformers(folder);
  let dir = folder;
  if (!(await isFile(join(folder, HF_CONFIG_FILE))) && sentenceTransformers?.transformerPath) {
    // Older sentence-transformers models keep the transformer in a subfolder (0_Transformer/).
    dir = join(folder, sentenceTransformers.transformerPath);
  }
  const configPath = join(dir, HF_CONFIG_FILE);
  const raw = await readJsonFile(configPath, 'a Hugging Face model folder needs config.json');
  const config = parseHfConfig(raw, configPath);
  const files = await weightFiles(dir);
  const tensors = await locateTensors(config, files.byName, configPath);
  const tokenizer = (await isFile(join(dir, 'tokenizer.json')))
    ? await readHfTokenizer(dir)
    : (await isFile(join(folder, 'tokenizer.json')))
      ? await readHfTokenizer(folder)
      : undefined;
  if (tokenizer !== undefined)
    checkVocabulary(tokenizer.path, tokenizer.vocabSize, config, configPath);
  const limits = [maxPositionLength(config)];
  if (tokenizer?.modelMaxLength !== undefined) limits.push(tokenizer.modelMaxLength);
  if (sentenceTransformers?.info.maxSeqLength !== undefined) {
    limits.push(sentenceTransformers.info.maxSeqLength);
  }
  return {
    dir,
    configPath,
    config,
    weightFiles: files.paths,
    tokenizer,
    sentenceTransformers: sentenceTransformers?.info,
    maxLength: Math.min(...limits),
    tensors,
  };
}

/** Reads the weights `inspectHfFolder` located, into math layout (encoder-types.ts). */
export async function readHfWeights(info: HfModelInfo): Promise<EncoderWeights> {
  const read = async (role: string): Promise<Float32Array> => {
    const ref = info.tensors.get(role)!;
    return (await ref.file.read(ref.entry.name, HF_FLOAT_DTYPES)).data;
  };
  const { hiddenSize: d, intermediateSize: f } = info.config;
  const linear = async (role: string, inSize: number, outSize: number): Promise<LinearWeights> => ({
    weight: transpose(await read(`${role}.weight`), outSize, inSize), // [out,in] -> [in,out]
    bias: await read(`${role}.bias`),
  });
  const norm = async (role: string): Promise<LayerNormWeights> => ({
    gamma: await read(`${role}.weight`),
    beta: await read(`${role}.bias`),
  });
  const layers: EncoderLayerWeights[] = [];
  for (let l = 0; l < info.config.layers; l++) {
    const p = `layer${l}`;
    layers.push({
      query: await linear(`${p}.query`, d, d),
      key: await linear(`${p}.key`, d, d),
      value: await linear(`${p}.value`, d, d),
      attentionOutput: await linear(`${p}.attention_output`, d, d),
      attentionLn: await norm(`${p}.attention_ln`),
      intermediate: await linear(`${p}.intermediate`, d, f),
      output: await linear(`${p}.output`, f, d),
      outputLn: await norm(`${p}.output_ln`),
    });
  }
  const tokenType0 = info.tensors.has('token_type')
    ? (await read('token_type')).slice(0, d) // row 0: every token has type 0
    : undefined;
  return {
    wordEmbeddings: await read('word'),
    positionEmbeddings: await read('position'),
    ...(tokenType0 ? { tokenType0 } : {}),
    embeddingLn: await norm('embeddings_ln'),
    layers,
  };
}

/** inspect + read: the whole model in memory. */
export async function readHfModel(
  folder: string,
): Promise<{ info: HfModelInfo; config: EncoderConfig; weights: EncoderWeights }> {
  const info = await inspectHfFolder(folder);
  return { info, config: info.config, weights: await readHfWeights(info) };
}

/**
 * A tokenizer that can produce ids past the embedding table would index out of it at run time:
 * PACK_VOCAB_MISMATCH naming the tokenizer file. (Fewer ids than rows is normal: models pad their
 * tables to a multiple of 8 or 64.)
 */
export function checkVocabulary(
  tokenizerPath: string,
  tokenizerVocab: number,
  config: EncoderConfig,
  configPath: string,
): void {
  if (tokenizerVocab > config.vocabSize) {
    throw new PackError(
      'PACK_VOCAB_MISMATCH',
      tokenizerPath,
      '/model/vocab',
      `the tokenizer has ${tokenizerVocab} token ids but the model's embedding table has ${config.vocabSize} rows (${configPath} vocab_size): ids from ${config.vocabSize} on have no embedding; use the tokenizer the model was trained with`,
    );
  }
}

/** The longest input the position table allows (RoBERTa / XLM-R lose padding_idx + 1 rows). */
export function maxPositionLength(config: EncoderConfig): number {
  return config.positions === 'after-padding'
    ? config.maxPositions - config.padTokenId - 1
    : config.maxPositions;
}

// ---- config.json ------------------------------------------------------------------------------

/** transformers' config class defaults, for fields a config.json leaves out. */
const DEFAULTS: Record<EncoderFamily, Record<string, unknown>> = {
  bert: {
    hidden_size: 768,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    intermediate_size: 3072,
    hidden_act: 'gelu',
    max_position_embeddings: 512,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
    pad_token_id: 0,
  },
  roberta: {
    hidden_size: 768,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    intermediate_size: 3072,
    hidden_act: 'gelu',
    max_position_embeddings: 512,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
    pad_token_id: 1,
  },
  'xlm-roberta': {
    hidden_size: 768,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    intermediate_size: 3072,
    hidden_act: 'gelu',
    max_position_embeddings: 512,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
    pad_token_id: 1,
  },
  distilbert: {
    dim: 768,
    n_layers: 6,
    n_heads: 12,
    hidden_dim: 3072,
    activation: 'gelu',
    max_position_embeddings: 512,
    pad_token_id: 0,
  },
};

/** config.json -> EncoderConfig; `file` names it in errors. */
export function parseHfConfig(raw: unknown, file: string): EncoderConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new PackError('PACK_INVALID_CONFIG', file, '', 'must be a JSON object');
  }
  const json = raw as Record<string, unknown>;
  const type = json.model_type;
  if (typeof type !== 'string' || !(ENCODER_FAMILIES as readonly string[]).includes(type)) {
    throw new PackError(
      'PACK_UNSUPPORTED_MODEL',
      file,
      '/model_type',
      `model_type ${JSON.stringify(type)} is not supported; supported model types: ${ENCODER_FAMILIES.join(', ')} (an ONNX export of the model can serve as backbone instead: backbone.onnx_export)`,
    );
  }
  const family = type as EncoderFamily;
  const distil = family === 'distilbert';
  const defaults = DEFAULTS[family];
  // DistilBERT's own names first; transformers 5 may also write the BERT-style aliases.
  const field = (name: string, alias?: string): [string, unknown] => {
    if (json[name] !== undefined) return [name, json[name]];
    if (alias !== undefined && json[alias] !== undefined) return [alias, json[alias]];
    return [name, defaults[name]];
  };
  const int = (name: string, alias?: string, min = 1): number => {
    const [key, value] = field(name, alias);
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
      throw new PackError(
        'PACK_INVALID_CONFIG',
        file,
        `/${key}`,
        `must be an integer >= ${min}, got ${JSON.stringify(value)}`,
      );
    }
    return value;
  };
  const hiddenSize = distil ? int('dim', 'hidden_size') : int('hidden_size');
  const layers = distil ? int('n_layers', 'num_hidden_layers') : int('num_hidden_layers');
  const heads = distil ? int('n_heads', 'num_attention_heads') : int('num_attention_heads');
  const intermediateSize = distil
    ? int('hidden_dim', 'intermediate_size')
    : int('intermediate_size');
  const maxPositions = int('max_position_embeddings');
  const padTokenId = json.pad_token_id === null ? 0 : int('pad_token_id', undefined, 0);
  const vocabSize = int('vocab_size');
  if (hiddenSize % heads !== 0) {
    throw new PackError(
      'PACK_INVALID_CONFIG',
      file,
      distil ? '/n_heads' : '/num_attention_heads',
      `${heads} attention heads do not divide the hidden size ${hiddenSize}`,
    );
  }
  const [actKey, act] = distil ? field('activation', 'hidden_act') : field('hidden_act');
  if (typeof act !== 'string' || !(ENCODER_ACTIVATIONS as readonly string[]).includes(act)) {
    throw new PackError(
      'PACK_UNSUPPORTED_MODEL',
      file,
      `/${actKey}`,
      `activation ${JSON.stringify(act)} is not supported; supported: ${ENCODER_ACTIVATIONS.join(', ')}`,
    );
  }
  let layerNormEps = 1e-12; // DistilBERT's is fixed
  if (!distil) {
    const [, eps] = field('layer_norm_eps');
    if (typeof eps !== 'number' || !(eps > 0)) {
      throw new PackError(
        'PACK_INVALID_CONFIG',
        file,
        '/layer_norm_eps',
        `must be a positive number, got ${JSON.stringify(eps)}`,
      );
    }
    layerNormEps = eps;
    const positionType = json.position_embedding_type ?? 'absolute';
    if (positionType !== 'absolute') {
      throw new PackError(
        'PACK_UNSUPPORTED_MODEL',
        file,
        '/position_embedding_type',
        `position_embedding_type ${JSON.stringify(positionType)} is not supported; only "absolute"`,
      );
    }
  }
  const positions = family === 'roberta' || family === 'xlm-roberta' ? 'after-padding' : 'absolute';
  if (positions === 'after-padding' && padTokenId + 1 >= maxPositions) {
    throw new PackError(
      'PACK_INVALID_CONFIG',
      file,
      '/max_position_embeddings',
      `${maxPositions} position rows leave none after padding_idx ${padTokenId} + 1 (RoBERTa-style positions start there)`,
    );
  }
  return {
    family,
    vocabSize,
    hiddenSize,
    layers,
    heads,
    intermediateSize,
    hiddenAct: act as EncoderActivation,
    layerNormEps,
    maxPositions,
    padTokenId,
    positions,
  };
}

// ---- weights ----------------------------------------------------------------------------------

async function weightFiles(
  dir: string,
): Promise<{ paths: string[]; byName: Map<string, TensorRef> }> {
  const byName = new Map<string, TensorRef>();
  const single = join(dir, HF_WEIGHTS_FILE);
  const indexPath = join(dir, HF_WEIGHTS_INDEX_FILE);
  if (await isFile(single)) {
    const file = await SafetensorsFile.open(single);
    for (const entry of file.entries.values()) byName.set(entry.name, { file, entry });
    return { paths: [single], byName };
  }
  if (await isFile(indexPath)) {
    const index = await readJsonFile(indexPath);
    const map = (index as { weight_map?: unknown } | null)?.weight_map;
    if (map === null || typeof map !== 'object' || Array.isArray(map)) {
      throw new PackError(
        'PACK_INVALID_CONFIG',
        indexPath,
        '/weight_map',
        'must be an object mapping tensor names to shard files',
      );
    }
    const shards = new Map<string, SafetensorsFile>();
    for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
      const field = `/weight_map/${name.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
        throw new PackError(
          'PACK_INVALID_CONFIG',
          indexPath,
          field,
          `must name a shard file in the same folder, got ${JSON.stringify(shard)}`,
        );
      }
      let file = shards.get(shard);
      if (file === undefined) {
        const path = join(dir, shard);
        if (!(await isFile(path))) {
          throw new PackError(
            'PACK_FILE_MISSING',
            indexPath,
            field,
            `shard ${path} not found; the index lists it for this tensor`,
          );
        }
        file = await SafetensorsFile.open(path);
        shards.set(shard, file);
      }
      const entry = file.entries.get(name);
      if (entry === undefined) {
        throw new PackError(
          'PACK_MISSING_TENSOR',
          file.path,
          name,
          `tensor not found, though ${indexPath} lists it in this shard`,
        );
      }
      byName.set(name, { file, entry });
    }
    return { paths: [...shards.values()].map((f) => f.path).sort(), byName };
  }
  const files = await readdir(dir).catch(() => [] as string[]);
  const pickled = files.find(
    (f) => /^pytorch_model.*\.bin$/.test(f) || f === 'pytorch_model.bin.index.json',
  );
  if (pickled !== undefined) {
    throw new PackError(
      'PACK_PICKLE_WEIGHTS',
      join(dir, pickled),
      '',
      `only pickled PyTorch weights found; safetensors (${HF_WEIGHTS_FILE}) are required, since loading a pickle can run code. Convert once with transformers: ${conversionCommand(dir)}`,
    );
  }
  const other = files.find((f) => f === 'tf_model.h5' || f === 'flax_model.msgpack');
  throw new PackError(
    'PACK_FILE_MISSING',
    single,
    '',
    `no ${HF_WEIGHTS_FILE} or ${HF_WEIGHTS_INDEX_FILE} in ${dir}${other ? ` (it has ${other}; convert it to safetensors with transformers: ${conversionCommand(dir)})` : ''}`,
  );
}

/** Hugging Face module names per family, relative to the model's root. */
const BERT_LAYOUT = {
  layer: (l: number) => `encoder.layer.${l}.`,
  linear: {
    query: 'attention.self.query',
    key: 'attention.self.key',
    value: 'attention.self.value',
    attention_output: 'attention.output.dense',
    intermediate: 'intermediate.dense',
    output: 'output.dense',
  },
  attentionLn: 'attention.output.LayerNorm',
  outputLn: 'output.LayerNorm',
};
const DISTILBERT_LAYOUT = {
  layer: (l: number) => `transformer.layer.${l}.`,
  linear: {
    query: 'attention.q_lin',
    key: 'attention.k_lin',
    value: 'attention.v_lin',
    attention_output: 'attention.out_lin',
    intermediate: 'ffn.lin1',
    output: 'ffn.lin2',
  },
  attentionLn: 'sa_layer_norm',
  outputLn: 'output_layer_norm',
};
const WORD_TABLE = 'embeddings.word_embeddings.weight';

/**
 * Finds every tensor the encoder needs, by canonical role (word, position, token_type,
 * embeddings_ln.weight, layer{l}.query.weight, layer{l}.attention_ln.bias, ...), and checks its
 * dtype and its shape against config.json.
 */
async function locateTensors(
  config: EncoderConfig,
  byName: Map<string, TensorRef>,
  configPath: string,
): Promise<Map<string, TensorRef>> {
  const anyFile = [...byName.values()][0]?.file.path ?? configPath;
  // The prefix: '' for BertModel & co., 'bert.' / 'roberta.' / 'distilbert.' for task models.
  const candidates = [...byName.keys()].filter((n) => n.endsWith(WORD_TABLE));
  const preferred = ['', 'bert.', 'roberta.', 'distilbert.', 'model.'];
  const prefixes = candidates.map((n) => n.slice(0, n.length - WORD_TABLE.length));
  const prefix =
    preferred.find((p) => prefixes.includes(p)) ?? prefixes.sort((a, b) => a.length - b.length)[0];
  if (prefix === undefined) {
    throw new PackError(
      'PACK_MISSING_TENSOR',
      anyFile,
      WORD_TABLE,
      `no word embedding table (${WORD_TABLE}, with or without a prefix such as bert. or roberta.): not a ${config.family} checkpoint`,
    );
  }
  const { hiddenSize: d, intermediateSize: f, vocabSize: V, maxPositions: P } = config;
  const found = new Map<string, TensorRef>();
  const need = (role: string, names: string[], shape: number[], meaning: string) => {
    const name = names.map((n) => prefix + n).find((n) => byName.has(n));
    if (name === undefined) {
      throw new PackError(
        'PACK_MISSING_TENSOR',
        anyFile,
        prefix + names[0]!,
        `tensor not found in the checkpoint; a ${config.family} model needs it`,
      );
    }
    const ref = byName.get(name)!;
    if (!(HF_FLOAT_DTYPES as readonly string[]).includes(ref.entry.dtype)) {
      throw new PackError(
        'PACK_UNSUPPORTED_DTYPE',
        ref.file.path,
        name,
        `dtype ${ref.entry.dtype} is not supported; weights must be ${HF_FLOAT_DTYPES.join(', ')} (quantized checkpoints are not read; export the model in float32, float16 or bfloat16)`,
      );
    }
    const actual = ref.entry.shape;
    if (actual.length !== shape.length || actual.some((n, i) => n !== shape[i])) {
      throw new PackError(
        'PACK_SHAPE_MISMATCH',
        ref.file.path,
        name,
        `shape [${actual.join(',')}] disagrees with ${configPath}, which implies [${shape.join(',')}] (${meaning})`,
      );
    }
    found.set(role, ref);
  };
  const ln = (role: string, base: string) => {
    need(`${role}.weight`, [`${base}.weight`, `${base}.gamma`], [d], 'hidden size');
    need(`${role}.bias`, [`${base}.bias`, `${base}.beta`], [d], 'hidden size');
  };
  const hiddenName = config.family === 'distilbert' ? 'dim' : 'hidden_size';
  const interName = config.family === 'distilbert' ? 'hidden_dim' : 'intermediate_size';
  need('word', ['embeddings.word_embeddings.weight'], [V, d], `vocab_size x ${hiddenName}`);
  need(
    'position',
    ['embeddings.position_embeddings.weight'],
    [P, d],
    `max_position_embeddings x ${hiddenName}`,
  );
  if (config.family !== 'distilbert') {
    const typeName = `${prefix}embeddings.token_type_embeddings.weight`;
    const rows = byName.get(typeName)?.entry.shape[0];
    need(
      'token_type',
      ['embeddings.token_type_embeddings.weight'],
      [rows ?? 1, d],
      `type_vocab_size x ${hiddenName}`,
    );
  }
  ln('embeddings_ln', 'embeddings.LayerNorm');
  const layout = config.family === 'distilbert' ? DISTILBERT_LAYOUT : BERT_LAYOUT;
  for (let l = 0; l < config.layers; l++) {
    const base = layout.layer(l);
    const p = `layer${l}`;
    for (const module of ['query', 'key', 'value', 'attention_output'] as const) {
      need(
        `${p}.${module}.weight`,
        [`${base}${layout.linear[module]}.weight`],
        [d, d],
        `${hiddenName} x ${hiddenName}`,
      );
      need(`${p}.${module}.bias`, [`${base}${layout.linear[module]}.bias`], [d], hiddenName);
    }
    need(
      `${p}.intermediate.weight`,
      [`${base}${layout.linear.intermediate}.weight`],
      [f, d],
      `${interName} x ${hiddenName}`,
    );
    need(`${p}.intermediate.bias`, [`${base}${layout.linear.intermediate}.bias`], [f], interName);
    need(
      `${p}.output.weight`,
      [`${base}${layout.linear.output}.weight`],
      [d, f],
      `${hiddenName} x ${interName}`,
    );
    need(`${p}.output.bias`, [`${base}${layout.linear.output}.bias`], [d], hiddenName);
    ln(`${p}.attention_ln`, `${base}${layout.attentionLn}`);
    ln(`${p}.output_ln`, `${base}${layout.outputLn}`);
  }
  // A checkpoint with more layers than config.json says is a config that does not match it.
  const extraLayer = `${prefix}${layout.layer(config.layers)}`;
  const extra = [...byName.keys()].find((n) => n.startsWith(extraLayer));
  if (extra !== undefined) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      byName.get(extra)!.file.path,
      extra,
      `the checkpoint has layer ${config.layers}, but ${configPath} says ${config.layers} layers (${config.family === 'distilbert' ? 'n_layers' : 'num_hidden_layers'})`,
    );
  }
  return found;
}

/** [rows, cols] row-major -> [cols, rows]. */
function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c]!;
  }
  return out;
}

// ---- sentence-transformers ----------------------------------------------------------------------

const ST_MODULE = 'sentence_transformers.models.';

/** modules.json + 1_Pooling/config.json + sentence_bert_config.json, if the folder has them. */
export async function readSentenceTransformers(
  dir: string,
): Promise<{ info: SentenceTransformersInfo; transformerPath: string | undefined } | undefined> {
  const modulesPath = join(dir, ST_MODULES_FILE);
  if (!(await isFile(modulesPath))) return undefined;
  const modules = await readJsonFile(modulesPath);
  if (!Array.isArray(modules)) {
    throw new PackError('PACK_INVALID_CONFIG', modulesPath, '', 'must be a JSON array of modules');
  }
  let pooling: { mode: PoolingMode; source: string } | undefined;
  let normalize = false;
  let transformerPath: string | undefined;
  for (const [i, module] of modules.entries()) {
    const type = (module as { type?: unknown } | null)?.type;
    const path = (module as { path?: unknown } | null)?.path;
    if (typeof type !== 'string' || typeof path !== 'string') {
      throw new PackError(
        'PACK_INVALID_CONFIG',
        modulesPath,
        `/${i}`,
        'each module needs a string "type" and "path"',
      );
    }
    const kind = type.startsWith(ST_MODULE) ? type.slice(ST_MODULE.length) : type;
    if (kind === 'Transformer') {
      transformerPath = path === '' ? undefined : path;
    } else if (kind === 'Pooling') {
      pooling = await readPooling(join(dir, path, 'config.json'), modulesPath, i);
    } else if (kind === 'Normalize') {
      normalize = true;
    } else {
      throw new PackError(
        'PACK_UNSUPPORTED_MODEL',
        modulesPath,
        `/${i}/type`,
        `sentence-transformers module ${type} is not supported; a pack backbone runs Transformer, Pooling (mean, cls, max) and Normalize modules only, so this model's embeddings could not be reproduced`,
      );
    }
  }
  const stConfigPath = join(dir, ST_CONFIG_FILE);
  let maxSeqLength: number | undefined;
  if (await isFile(stConfigPath)) {
    const value = ((await readJsonFile(stConfigPath)) as { max_seq_length?: unknown } | null)
      ?.max_seq_length;
    if (value !== undefined && value !== null) {
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
        throw new PackError(
          'PACK_INVALID_CONFIG',
          stConfigPath,
          '/max_seq_length',
          `must be a positive integer, got ${JSON.stringify(value)}`,
        );
      }
      maxSeqLength = value;
    }
  }
  return {
    info: {
      pooling: { mode: pooling?.mode ?? 'mean', normalize },
      maxSeqLength,
      source: pooling?.source ?? modulesPath,
    },
    transformerPath,
  };
}

const POOLING_FLAGS: Record<string, PoolingMode | undefined> = {
  pooling_mode_cls_token: 'cls',
  pooling_mode_mean_tokens: 'mean',
  pooling_mode_max_tokens: 'max',
  pooling_mode_mean_sqrt_len_tokens: undefined,
  pooling_mode_weightedmean_tokens: undefined,
  pooling_mode_lasttoken: undefined,
};

async function readPooling(
  file: string,
  modulesPath: string,
  index: number,
): Promise<{ mode: PoolingMode; source: string }> {
  if (!(await isFile(file))) {
    throw new PackError(
      'PACK_FILE_MISSING',
      modulesPath,
      `/${index}/path`,
      `the Pooling module's config ${file} not found`,
    );
  }
  const json = (await readJsonFile(file)) as Record<string, unknown> | null;
  if (json === null || typeof json !== 'object') {
    throw new PackError('PACK_INVALID_CONFIG', file, '', 'must be a JSON object');
  }
  if (typeof json.pooling_mode === 'string') {
    // Newer saves may carry the mode as a string.
    const mode = json.pooling_mode;
    if (!(POOLING_MODES as readonly string[]).includes(mode)) {
      throw new PackError(
        'PACK_UNSUPPORTED_MODEL',
        file,
        '/pooling_mode',
        `pooling mode "${mode}" is not supported; supported: ${POOLING_MODES.join(', ')}`,
      );
    }
    return { mode: mode as PoolingMode, source: file };
  }
  const on = Object.keys(POOLING_FLAGS).filter((key) => json[key] === true);
  const unsupported = on.find((key) => POOLING_FLAGS[key] === undefined);
  if (unsupported !== undefined) {
    throw new PackError(
      'PACK_UNSUPPORTED_MODEL',
      file,
      `/${unsupported}`,
      `this pooling mode is not supported; supported: ${POOLING_MODES.join(', ')}`,
    );
  }
  if (on.length !== 1) {
    throw new PackError(
      'PACK_UNSUPPORTED_MODEL',
      file,
      on.length === 0 ? '' : `/${on[1]}`,
      on.length === 0
        ? 'no pooling mode is set (pooling_mode_mean_tokens, pooling_mode_cls_token or pooling_mode_max_tokens)'
        : `several pooling modes are set (${on.join(', ')}); concatenated poolings are not supported, set exactly one`,
    );
  }
  return { mode: POOLING_FLAGS[on[0]!]!, source: file };
}

// ---- files ------------------------------------------------------------------------------------

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

async function expectFolder(dir: string): Promise<void> {
  const stats = await stat(dir).catch(() => undefined);
  if (!stats?.isDirectory()) {
    throw new PackError(
      'PACK_FILE_MISSING',
      dir,
      '',
      stats ? 'is not a folder; a Hugging Face model is a folder' : 'model folder not found',
    );
  }
}
