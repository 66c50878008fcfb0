/**
 * What the PEFT and AdapterHub importers share: reading a config file, typed config fields whose
 * errors name the file, the JSON pointer and the value, the pickled-weights error with its
 * conversion command, where each encoder family keeps its linear modules and its bottleneck
 * adapters (module paths as in transformers and in the `adapters` library), and the Hugging Face
 * sequence-classification heads both formats can carry.
 *
 * Every failure is a PackError (src/pack/errors.ts) naming the file, the field (a JSON pointer or
 * a tensor name) and, where two things disagree, both values.
 */

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { EncoderConfig, EncoderFamily, LayerBlock, LinearModule } from '../encoder-types.js';
import { PackError, type PackErrorCode } from '../errors.js';
import type { FloatDtype } from '../safetensors.js';
import type { Activation, Head, PoolingMode, Weight } from '../types.js';

// ---------------------------------------------------------------------------------------------
// Files

/**
 * Adapter weights may be saved in the model's dtype (PEFT and the adapters library save the
 * state dict as trained): F16 and BF16 are widened to float32 on read, exactly.
 */
export const ADAPTER_FLOAT_DTYPES: readonly FloatDtype[] = ['F32', 'F16', 'BF16'];

/** True when `path` is a regular file. */
export async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

/** Read and parse a JSON file; a missing file is PACK_FILE_MISSING, bad JSON is `invalidCode`. */
export async function readJsonFile(
  file: string,
  invalidCode: PackErrorCode = 'PACK_INVALID_ADAPTER',
): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR') {
      throw new PackError('PACK_FILE_MISSING', file, '', 'file not found', { cause: error });
    }
    throw error;
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new PackError(invalidCode, file, '', `is not valid JSON (${(error as Error).message})`, {
      cause: error,
    });
  }
}

/** A JSON object, or a PACK_INVALID_ADAPTER error naming `file` and `field`. */
export function asObject(value: unknown, file: string, field: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new PackError(
      'PACK_INVALID_ADAPTER',
      file,
      field,
      `must be a JSON object, got ${describe(value)}`,
    );
  }
  return value as Record<string, unknown>;
}

/**
 * The weights file of a folder: `safeName` when it exists. When only the pickled `pickleName`
 * exists, a PACK_PICKLE_WEIGHTS error with the one-line conversion (python with torch and
 * safetensors; `.float()` widens half-precision weights, `.clone()` unties shared tensors, which
 * safetensors refuses to save); when neither exists, PACK_FILE_MISSING.
 */
export async function weightsFile(
  dir: string,
  safeName: string,
  pickleName: string,
  what: string,
): Promise<string> {
  const safe = join(dir, safeName);
  if (await isFile(safe)) return safe;
  const pickle = join(dir, pickleName);
  if (await isFile(pickle)) {
    throw new PackError(
      'PACK_PICKLE_WEIGHTS',
      pickle,
      '',
      `${what}'s weights are a pickled PyTorch file, which this server does not read (unpickling runs code); convert it beside itself with: ${conversionCommand(pickle, safe)}`,
    );
  }
  throw new PackError(
    'PACK_FILE_MISSING',
    safe,
    '',
    `file not found; ${what}'s folder needs ${safeName} (or ${pickleName} to convert)`,
  );
}

/** The one-line conversion of a pickled state dict to safetensors (F32). */
export function conversionCommand(pickle: string, safe: string): string {
  return (
    `python -c "import torch; from safetensors.torch import save_file; ` +
    `sd = torch.load(${pyString(pickle)}, map_location='cpu', weights_only=True); ` +
    `save_file({k: v.detach().float().clone().contiguous() for k, v in sd.items()}, ${pyString(safe)}, metadata={'format': 'pt'})"`
  );
}

function pyString(text: string): string {
  return `'${text.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;
}

// ---------------------------------------------------------------------------------------------
// Config fields

/** A short rendering of a JSON value for messages. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/**
 * Typed reads of one JSON object's fields. `at` is the object's JSON pointer in `file` ('' for
 * the root). A field that is absent (or null, which Python reads as None) takes the fallback;
 * one of the wrong type is PACK_INVALID_ADAPTER; `unsupported` is PACK_UNSUPPORTED_ADAPTER.
 */
export class ConfigFields {
  constructor(
    readonly value: Record<string, unknown>,
    readonly file: string,
    readonly at = '',
  ) {}

  pointer(key: string): string {
    return `${this.at}/${key}`;
  }

  /** The raw value; undefined when absent or null. */
  get(key: string): unknown {
    const value = this.value[key];
    return value === null ? undefined : value;
  }

  invalid(key: string, detail: string): PackError {
    return new PackError('PACK_INVALID_ADAPTER', this.file, this.pointer(key), detail);
  }

  unsupported(key: string, detail: string): PackError {
    return new PackError(
      'PACK_UNSUPPORTED_ADAPTER',
      this.file,
      this.pointer(key),
      `${describe(this.value[key])} is not supported: ${detail}`,
    );
  }

  bool(key: string, fallback: boolean): boolean {
    const value = this.get(key);
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean')
      throw this.invalid(key, `must be true or false, got ${describe(value)}`);
    return value;
  }

  number(key: string, fallback?: number): number {
    const value = this.get(key);
    if (value === undefined && fallback !== undefined) return fallback;
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw this.invalid(key, `must be a number, got ${describe(value)}`);
    }
    return value;
  }

  /** A positive integer (r, ranks, label counts). */
  positiveInt(key: string, fallback?: number): number {
    const value = this.number(key, fallback);
    if (!Number.isInteger(value) || value < 1) {
      throw this.invalid(key, `must be a positive integer, got ${describe(value)}`);
    }
    return value;
  }

  string(key: string, fallback?: string): string {
    const value = this.get(key);
    if (value === undefined && fallback !== undefined) return fallback;
    if (typeof value !== 'string')
      throw this.invalid(key, `must be a string, got ${describe(value)}`);
    return value;
  }

  optionalString(key: string): string | undefined {
    const value = this.get(key);
    return value === undefined ? undefined : this.string(key);
  }

  /** A list of strings, or one string (PEFT's target_modules: a list of names, or a regex). */
  stringsOrString(key: string): string[] | string | undefined {
    const value = this.get(key);
    if (value === undefined || typeof value === 'string') return value;
    if (Array.isArray(value) && value.every((item) => typeof item === 'string')) return value;
    throw this.invalid(key, `must be a string or a list of strings, got ${describe(value)}`);
  }

  /** An object of numbers (PEFT's rank_pattern / alpha_pattern), in its key order. */
  numberMap(key: string): [string, number][] {
    const value = this.get(key);
    if (value === undefined) return [];
    const object = asObject(value, this.file, this.pointer(key));
    return Object.entries(object).map(([name, item]) => {
      if (typeof item !== 'number' || !Number.isFinite(item)) {
        throw new PackError(
          'PACK_INVALID_ADAPTER',
          this.file,
          `${this.pointer(key)}/${name}`,
          `must be a number, got ${describe(item)}`,
        );
      }
      return [name, item];
    });
  }

  /** Refuse a field unless it is absent, null, or one of `allowed` (compared as JSON). */
  requireOneOf(key: string, allowed: readonly unknown[], why: string): void {
    const value = this.get(key);
    if (value === undefined) return;
    const text = JSON.stringify(value);
    if (allowed.some((item) => JSON.stringify(item) === text)) return;
    throw this.unsupported(key, why);
  }

  /** Refuse a field unless it is absent, null, false, or an empty list or object. */
  requireUnset(key: string, why: string): void {
    const value = this.get(key);
    if (value === undefined || value === false) return;
    if (Array.isArray(value) && value.length === 0) return;
    if (typeof value === 'object' && Object.keys(value as object).length === 0) return;
    throw this.unsupported(key, why);
  }
}

// ---------------------------------------------------------------------------------------------
// Where each family keeps its modules

/**
 * Module paths of one encoder family, as transformers names them (and therefore as PEFT and the
 * `adapters` library save them):
 * - `prefix`: the base model's attribute in the family's task models (`base_model_prefix`:
 *   BertForSequenceClassification.bert, RobertaFor*.roberta, also for XLM-R, DistilBertFor*.distilbert).
 *   Checkpoints of the bare model (BertModel) have no prefix; task models and AdapterHub's
 *   *AdapterModel classes have it.
 * - `layerList`: the ModuleList of layers inside the base model.
 * - `linear`: each canonical linear module's path inside a layer.
 * - `bottleneck`: where the `adapters` library keeps a layer's BottleneckLayer for each block
 *   (BertSelfOutput / BertOutput inherit BottleneckLayer, so their `adapters` dict sits there;
 *   DistilBERT's TransformerBlock gets `attention_adapters` / `output_adapters`).
 */
export interface FamilyLayout {
  readonly family: EncoderFamily;
  readonly prefix: 'bert' | 'roberta' | 'distilbert';
  readonly layerList: string;
  readonly linear: Readonly<Record<LinearModule, string>>;
  readonly bottleneck: Readonly<Record<LayerBlock, string>>;
}

const BERT_LINEAR: Record<LinearModule, string> = {
  query: 'attention.self.query',
  key: 'attention.self.key',
  value: 'attention.self.value',
  attention_output: 'attention.output.dense',
  intermediate: 'intermediate.dense',
  output: 'output.dense',
};

const BERT_BOTTLENECK: Record<LayerBlock, string> = {
  attention: 'attention.output',
  ffn: 'output',
};

export function familyLayout(family: EncoderFamily): FamilyLayout {
  switch (family) {
    case 'bert':
      return {
        family,
        prefix: 'bert',
        layerList: 'encoder.layer',
        linear: BERT_LINEAR,
        bottleneck: BERT_BOTTLENECK,
      };
    case 'roberta':
    case 'xlm-roberta':
      return {
        family,
        prefix: 'roberta',
        layerList: 'encoder.layer',
        linear: BERT_LINEAR,
        bottleneck: BERT_BOTTLENECK,
      };
    case 'distilbert':
      return {
        family,
        prefix: 'distilbert',
        layerList: 'transformer.layer',
        linear: {
          query: 'attention.q_lin',
          key: 'attention.k_lin',
          value: 'attention.v_lin',
          attention_output: 'attention.out_lin',
          intermediate: 'ffn.lin1',
          output: 'ffn.lin2',
        },
        bottleneck: { attention: 'attention_adapters', ffn: 'output_adapters' },
      };
  }
}

/** A module key as the model's named_modules() spells it: `[prefix.]layerList.i.path`. */
export function layerModuleKey(
  layout: FamilyLayout,
  prefixed: boolean,
  layer: number,
  path: string,
): string {
  return `${prefixed ? `${layout.prefix}.` : ''}${layout.layerList}.${layer}.${path}`;
}

export interface LayerPath {
  readonly prefixed: boolean;
  readonly layer: number;
  /** The path inside the layer, e.g. 'attention.self.query'. */
  readonly rest: string;
}

/** Split `[prefix.]layerList.<i>.<rest>`; undefined when `path` is not inside a layer. */
export function parseLayerPath(layout: FamilyLayout, path: string): LayerPath | undefined {
  const pattern = new RegExp(
    `^(${escapeRegExp(layout.prefix)}\\.)?${escapeRegExp(layout.layerList)}\\.(\\d+)\\.(.+)$`,
  );
  const match = pattern.exec(path);
  if (!match) return undefined;
  return { prefixed: match[1] !== undefined, layer: Number(match[2]), rest: match[3]! };
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** [in, out] of a canonical linear module on this backbone (d, or the FFN width f). */
export function linearShape(module: LinearModule, backbone: EncoderConfig): [number, number] {
  const d = backbone.hiddenSize;
  const f = backbone.intermediateSize;
  if (module === 'intermediate') return [d, f];
  if (module === 'output') return [f, d];
  return [d, d];
}

// ---------------------------------------------------------------------------------------------
// Numbers

/**
 * Python's `a // b` for floats (CPython float_floor_div), which AdapterHub applies to
 * `hidden_size // reduction_factor`: not always Math.floor(a / b), e.g. 1 // 0.1 == 9.0 because
 * 0.1 is slightly more than a tenth.
 */
export function pythonFloorDiv(a: number, b: number): number {
  const mod = a % b; // fmod, as C's
  let div = (a - mod) / b;
  if (mod !== 0 && b < 0 !== mod < 0) div -= 1;
  if (div === 0) return 0;
  let floor = Math.floor(div);
  if (div - floor > 0.5) floor += 1;
  return floor;
}

/** Transpose a row-major [rows, cols] matrix. */
export function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j]!;
  }
  return out;
}

export function sameShape(shape: readonly number[], expected: readonly number[]): boolean {
  return shape.length === expected.length && shape.every((n, i) => n === expected[i]);
}

export function shapeText(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

// ---------------------------------------------------------------------------------------------
// Heads

/**
 * Parts of the base model an adapter's head may need, from the base model's Hugging Face folder:
 * its parsed `config.json` (for `id2label`) and its checkpoint tensors by their saved names
 * (F32, PyTorch layout [out,in]; for example readSafetensors('model.safetensors')). Only BERT's
 * pooler (`[bert.]pooler.dense.*`) and DistilBERT's `pre_classifier.*` are read from them: PEFT
 * saves only the classifier, and these sit between it and the encoder.
 */
export interface BaseModelParts {
  readonly config?: unknown;
  /** Names the config in errors (default 'config.json'). */
  readonly configFile?: string;
  readonly tensors?: ReadonlyMap<string, Weight>;
  /** Names the checkpoint in errors (default 'model.safetensors'). */
  readonly weightsFile?: string;
}

/** A linear layer in PyTorch layout, and where it came from (for messages). */
export interface TorchLinear {
  readonly weight: Weight; // [out,in]
  readonly bias: Weight; // [out]
  readonly file: string;
  readonly name: string; // the weight tensor's name in `file`
}

/** Check a PyTorch linear's shapes: weight [out,in], bias [out]. */
export function checkTorchLinear(
  linear: TorchLinear,
  out: number | undefined,
  inSize: number,
  meaning: string,
): void {
  const [rows, cols] = linear.weight.shape;
  if (linear.weight.shape.length !== 2 || cols !== inSize || (out !== undefined && rows !== out)) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      linear.file,
      linear.name,
      `shape ${shapeText(linear.weight.shape)} must be ${meaning} [${out ?? 'out'},${inSize}] (PyTorch [out,in])`,
    );
  }
  if (!sameShape(linear.bias.shape, [rows!])) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      linear.file,
      linear.name.replace(/weight$/, 'bias'),
      `shape ${shapeText(linear.bias.shape)} must be [${rows}], the rows of ${linear.name}`,
    );
  }
}

/**
 * A Head from PyTorch linears: `hidden` (optional) [h,d] with its activation, `output` [L,h or d];
 * transposed to the Head's math layout.
 */
export function headFromTorch(
  id: string,
  labels: readonly string[],
  pooling: PoolingMode,
  hidden: { linear: TorchLinear; activation: Activation } | undefined,
  output: TorchLinear,
): Head {
  const [L, inSize] = output.weight.shape as [number, number];
  const head: Head = {
    id,
    labels: [...labels],
    pooling,
    weight: { shape: [inSize, L], data: transpose(output.weight.data, L, inSize) },
    bias: { shape: [L], data: output.bias.data },
  };
  if (!hidden) return head;
  const [h, d] = hidden.linear.weight.shape as [number, number];
  return {
    ...head,
    hidden: {
      weight: { shape: [d, h], data: transpose(hidden.linear.weight.data, h, d) },
      bias: { shape: [h], data: hidden.linear.bias.data },
      activation: hidden.activation,
    },
  };
}

/** A label map's source, for labels and their errors. */
export interface LabelSource {
  readonly file: string;
  readonly field: string;
  /** id -> label (config.json id2label: keys are decimal strings). */
  readonly id2label?: unknown;
  /** label -> id (AdapterHub head configs save label2id). */
  readonly label2id?: unknown;
}

/**
 * The head's L label names: from the source's map when it has one, else LABEL_0..LABEL_{L-1}
 * (transformers' default names). A map of another size is an error, unless it is transformers'
 * default map (every label LABEL_i), which a base config.json carries whatever the task's labels.
 */
export function resolveLabels(count: number, source: LabelSource | undefined): string[] {
  const defaults = Array.from({ length: count }, (_, i) => `LABEL_${i}`);
  if (!source) return defaults;
  let map: Map<number, string> | undefined;
  if (source.id2label !== undefined && source.id2label !== null) {
    const object = asObject(source.id2label, source.file, source.field);
    map = new Map();
    for (const [key, label] of Object.entries(object)) {
      const id = Number(key);
      if (!Number.isInteger(id) || typeof label !== 'string') {
        throw new PackError(
          'PACK_INVALID_ADAPTER',
          source.file,
          `${source.field}/${key}`,
          `id2label maps label ids to names; got ${describe(key)}: ${describe(label)}`,
        );
      }
      map.set(id, label);
    }
  } else if (source.label2id !== undefined && source.label2id !== null) {
    const object = asObject(source.label2id, source.file, source.field);
    map = new Map();
    for (const [label, id] of Object.entries(object)) {
      if (typeof id !== 'number' || !Number.isInteger(id)) {
        throw new PackError(
          'PACK_INVALID_ADAPTER',
          source.file,
          `${source.field}/${label}`,
          `label2id maps names to label ids; got ${describe(label)}: ${describe(id)}`,
        );
      }
      map.set(id, label);
    }
  }
  if (!map) return defaults;
  const isDefault = [...map].every(([id, label]) => label === `LABEL_${id}`);
  if (map.size !== count || [...map.keys()].some((id) => id < 0 || id >= count)) {
    if (isDefault) return defaults;
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      source.file,
      source.field,
      `names ${map.size} labels (ids ${[...map.keys()].sort((a, b) => a - b).join(', ')}) but the classifier has ${count} outputs; the labels must be ids 0..${count - 1}`,
    );
  }
  const labels = defaults.map((fallback, i) => map.get(i) ?? fallback);
  const seen = new Set<string>();
  for (const label of labels) {
    if (seen.has(label)) {
      throw new PackError(
        'PACK_INVALID_ADAPTER',
        source.file,
        source.field,
        `label '${label}' names two classes; labels must be distinct`,
      );
    }
    seen.add(label);
  }
  return labels;
}

/**
 * Find a PyTorch linear `<name>.weight` / `<name>.bias` among `tensors`, trying each candidate
 * name in order; undefined when none has a weight. A weight without its bias is an error.
 */
export function findTorchLinear(
  tensors: ReadonlyMap<string, Weight> | undefined,
  file: string,
  candidates: readonly string[],
): TorchLinear | undefined {
  if (!tensors) return undefined;
  for (const name of candidates) {
    const weight = tensors.get(`${name}.weight`);
    if (!weight) continue;
    const bias = tensors.get(`${name}.bias`);
    if (!bias) {
      throw new PackError(
        'PACK_MISSING_TENSOR',
        file,
        `${name}.bias`,
        `tensor not found; ${name}.weight needs its bias`,
      );
    }
    return { weight, bias, file, name: `${name}.weight` };
  }
  return undefined;
}

/**
 * The transformers sequence-classification head of a family, from the tensors saved with the
 * adapter (`saved`, by module-relative names such as 'classifier.weight') and, for the layer the
 * adapter does not save, the base model:
 * - BERT (BertForSequenceClassification): logits = classifier(tanh(pooler.dense(h[:,0])));
 *   the pooler is the base model's (`bert.pooler.dense` or `pooler.dense`) unless saved.
 * - RoBERTa, XLM-R (RobertaClassificationHead): out_proj(tanh(dense(h[:,0]))), both saved as
 *   `classifier.dense` / `classifier.out_proj`.
 * - DistilBERT: classifier(relu(pre_classifier(h[:,0]))); pre_classifier is saved by PEFT (its
 *   name ends with 'classifier', which modules_to_save matches by suffix) or taken from the base.
 * `hiddenDelta`, when given, is added to the hidden layer's PyTorch weight [h,d] (a LoRA trained
 * on BERT's pooler, merged exactly: it is one linear map).
 */
export function hfSequenceClassificationHead(args: {
  readonly layout: FamilyLayout;
  readonly id: string;
  readonly hiddenSize: number;
  readonly saved: ReadonlyMap<string, Weight>;
  readonly savedFile: string;
  /** The saved tensor's full name in `savedFile`, for messages. */
  readonly savedName: (relative: string) => string;
  readonly base?: BaseModelParts;
  readonly labels: (count: number) => string[];
  readonly hiddenDelta?: Float32Array;
}): Head {
  const { layout, hiddenSize: d, saved, savedFile, base } = args;
  const named = (linear: TorchLinear | undefined): TorchLinear | undefined =>
    linear && { ...linear, name: args.savedName(linear.name) };
  const baseFile = base?.weightsFile ?? 'model.safetensors';
  let hiddenName: string;
  let outputName: string;
  let hiddenCandidates: string[];
  let baseCandidates: string[];
  let activation: Activation;
  if (layout.family === 'roberta' || layout.family === 'xlm-roberta') {
    hiddenName = 'classifier.dense';
    outputName = 'classifier.out_proj';
    hiddenCandidates = [hiddenName];
    baseCandidates = [];
    activation = 'tanh';
  } else if (layout.family === 'distilbert') {
    hiddenName = 'pre_classifier';
    outputName = 'classifier';
    hiddenCandidates = ['pre_classifier'];
    baseCandidates = ['pre_classifier'];
    activation = 'relu';
  } else {
    hiddenName = 'pooler.dense';
    outputName = 'classifier';
    hiddenCandidates = [`${layout.prefix}.pooler.dense`, 'pooler.dense'];
    baseCandidates = hiddenCandidates;
    activation = 'tanh';
  }
  const output = named(findTorchLinear(saved, savedFile, [outputName]));
  if (!output) {
    throw new PackError(
      'PACK_MISSING_TENSOR',
      savedFile,
      args.savedName(`${outputName}.weight`),
      `tensor not found; a ${layout.family} sequence-classification head needs ${outputName}.weight and .bias`,
    );
  }
  const hidden =
    named(findTorchLinear(saved, savedFile, hiddenCandidates)) ??
    findTorchLinear(base?.tensors, baseFile, baseCandidates);
  if (!hidden) {
    throw new PackError(
      'PACK_MISSING_TENSOR',
      base?.tensors ? baseFile : savedFile,
      `${baseCandidates[0] ?? hiddenName}.weight`,
      base?.tensors
        ? `tensor not found in the base model; the ${layout.family} classifier reads ${hiddenName} (tried ${baseCandidates.map((c) => `${c}.weight`).join(', ')})`
        : `the ${layout.family} classifier reads ${hiddenName}, which the adapter does not save: pass the base model's weights (base.tensors)`,
    );
  }
  checkTorchLinear(hidden, d, d, `${hiddenName} [hidden_size, hidden_size] =`);
  checkTorchLinear(output, undefined, d, `${outputName} [labels, hidden_size] =`);
  let hiddenLinear = hidden;
  if (args.hiddenDelta) {
    const merged = new Float32Array(hidden.weight.data);
    for (let i = 0; i < merged.length; i++) merged[i]! += args.hiddenDelta[i]!;
    hiddenLinear = { ...hidden, weight: { shape: hidden.weight.shape, data: merged } };
  }
  const count = output.weight.shape[0]!;
  return headFromTorch(
    args.id,
    args.labels(count),
    'cls',
    { linear: hiddenLinear, activation },
    output,
  );
}
