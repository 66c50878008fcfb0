/**
 * Import a PEFT LoRA folder into a LoraAdapter (src/pack/layer-adapter-types.ts).
 *
 * The folder, as PeftModel.save_pretrained writes it:
 *   adapter_config.json         LoraConfig.to_dict() (every field, sets as lists, sorted keys)
 *   adapter_model.safetensors   get_peft_model_state_dict(): the adapter name ('default') is
 *                               stripped from every key, so a LoRA pair is
 *                                 base_model.model.<module>.lora_A.weight   [r,in]
 *                                 base_model.model.<module>.lora_B.weight   [out,r]
 *                               and a modules_to_save module keeps its own tensor names,
 *                                 base_model.model.classifier.weight         [L,d] ...
 *   (adapter_model.bin)         the pickled alternative: refused with the conversion command.
 * <module> is the key of named_modules() in the model PEFT wrapped: `bert.encoder.layer.0.
 * attention.self.query` for a task model (BertForSequenceClassification.bert), `encoder.layer.0...`
 * for a bare BertModel. Keys without `base_model.model.` (layers injected with
 * inject_adapter_in_model) are read too.
 *
 * Semantics (peft/tuners/lora/layer.py, Linear.forward with dropout off):
 *   y = x W^T + b + scaling * (x A^T) B^T,   scaling = alpha / r, or alpha / sqrt(r) (use_rslora)
 * with r and alpha per module from rank_pattern / alpha_pattern (utils/other.py get_pattern_key:
 * the first pattern p, in the config's order, with re.match(rf"(.*\.)?({p})$", key)), else r and
 * lora_alpha. Which modules are adapted follows tuners_utils.check_target_module_exists
 * (exclude_modules, then modules_to_save, then target_modules: a regex is re.fullmatch'ed, a list
 * matches a key equal to an entry or ending with '.' + entry, and only then layers_to_transform /
 * layers_pattern pick the layer index). The importer reads the adapted modules from the weights
 * and checks them against that selection over the backbone's modules, so an adapter trained for
 * a model with more or fewer layers, or for other module names, is refused with both values.
 *
 * Heads: with task_type SEQ_CLS, PEFT adds 'classifier' and 'score' to modules_to_save and saves
 * that module whole; it becomes the adapter's head (see hfSequenceClassificationHead in common.ts:
 * BERT reads the base model's pooler, RoBERTa saves its dense + out_proj, DistilBERT also saves
 * pre_classifier). A LoRA on BERT's pooler.dense (target_modules ['dense'] reaches it) is merged
 * into the head's hidden layer; with no head it changes nothing this server outputs and is dropped.
 *
 * Refused, naming the field and its value: peft_type other than LORA, bias other than "none",
 * use_dora, lora_bias, fan_in_fan_out, use_qalora, aLoRA, layer_replication, trainable tokens,
 * target_parameters, BD-LoRA, Arrow, KaSA, MonteCLoRA, and init_lora_weights methods that change
 * the base weights (pissa, olora, corda, lora_ga, loftq) unless converted on save.
 */

import { join } from 'node:path';
import { type EncoderConfig, LINEAR_MODULES, type LinearModule } from '../encoder-types.js';
import { PackError } from '../errors.js';
import type { LoraAdapter, LoraModuleWeights } from '../layer-adapter-types.js';
import { readSafetensors } from '../safetensors.js';
import type { Head, Weight } from '../types.js';
import {
  ADAPTER_FLOAT_DTYPES,
  asObject,
  type BaseModelParts,
  ConfigFields,
  describe,
  escapeRegExp,
  type FamilyLayout,
  familyLayout,
  hfSequenceClassificationHead,
  layerModuleKey,
  linearShape,
  parseLayerPath,
  readJsonFile,
  resolveLabels,
  shapeText,
  weightsFile,
} from './common.js';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
export const PEFT_PICKLE_FILE = 'adapter_model.bin';
/** PeftModel's own prefix: PeftModel.base_model (LoraModel) .model (the transformers model). */
export const PEFT_KEY_PREFIX = 'base_model.model.';

/** PEFT's default target_modules when the config has none (utils/constants.py). */
const DEFAULT_TARGETS: Partial<Record<string, string[]>> = {
  bert: ['query', 'value'],
  roberta: ['query', 'value'],
  'xlm-roberta': ['query', 'value'],
};

/** init_lora_weights values whose adapters apply to the unchanged base weights. */
const PLAIN_INITS: readonly unknown[] = [true, false, 'gaussian', 'eva', 'orthogonal', 'mica'];

/** The LoraConfig fields that decide the forward pass, as read from adapter_config.json. */
export interface PeftLoraConfig {
  readonly r: number;
  readonly loraAlpha: number;
  readonly useRslora: boolean;
  /** A list of names, or a regex (re.fullmatch), or 'all-linear'. */
  readonly targetModules: readonly string[] | string;
  readonly excludeModules?: readonly string[] | string;
  readonly layersToTransform?: readonly number[] | number;
  readonly layersPattern?: readonly string[] | string;
  /** In the file's key order (get_pattern_key takes the first match). */
  readonly rankPattern: readonly [string, number][];
  readonly alphaPattern: readonly [string, number][];
  readonly modulesToSave?: readonly string[];
  readonly taskType?: string;
}

export interface PeftImportOptions {
  /** The adapter's id and group in the pack (a PEFT folder names neither). */
  readonly id: string;
  readonly group: string;
  /** The backbone it must fit: family (module names), hidden size, FFN width, layers. */
  readonly backbone: EncoderConfig;
  /** The base model's config.json and weights, for a head's labels and BERT's pooler. */
  readonly base?: BaseModelParts;
}

/** Read a PEFT LoRA folder and check it against the backbone. */
export async function importPeftFolder(
  dir: string,
  options: PeftImportOptions,
): Promise<LoraAdapter> {
  const { backbone } = options;
  const layout = familyLayout(backbone.family);
  const configPath = join(dir, PEFT_CONFIG_FILE);
  const config = parsePeftLoraConfig(
    asObject(await readJsonFile(configPath), configPath, ''),
    configPath,
    backbone.family,
  );
  const weightsPath = await weightsFile(
    dir,
    PEFT_WEIGHTS_FILE,
    PEFT_PICKLE_FILE,
    'the PEFT adapter',
  );
  const tensors = await readSafetensors(weightsPath, { floatDtypes: ADAPTER_FLOAT_DTYPES });

  // Sort the tensors: LoRA pairs by module key, everything else (modules_to_save) by its key.
  const pairs = new Map<string, { a?: NamedTensor; b?: NamedTensor }>();
  const others = new Map<string, NamedTensor>();
  for (const [name, tensor] of tensors) {
    const key = name.startsWith(PEFT_KEY_PREFIX) ? name.slice(PEFT_KEY_PREFIX.length) : name;
    const lora = /^(.+)\.lora_([AB])\.weight$/.exec(key);
    if (lora) {
      const pair = pairs.get(lora[1]!) ?? {};
      pair[lora[2] === 'A' ? 'a' : 'b'] = { name, tensor };
      pairs.set(lora[1]!, pair);
      continue;
    }
    const unsupported = unsupportedTensor(key);
    if (unsupported) {
      throw new PackError(
        'PACK_UNSUPPORTED_ADAPTER',
        weightsPath,
        name,
        `${unsupported} is not supported (only plain LoRA weights lora_A / lora_B)`,
      );
    }
    others.set(key, { name, tensor });
  }
  if (pairs.size === 0) {
    throw new PackError(
      'PACK_MISSING_TENSOR',
      weightsPath,
      '',
      `holds no LoRA weights (<module>.lora_A.weight / <module>.lora_B.weight); tensors: ${[...tensors.keys()].join(', ') || 'none'}`,
    );
  }

  const modules: LoraModuleWeights[] = [];
  let prefixed: boolean | undefined;
  let firstKey = '';
  let poolerDelta: Float32Array | undefined;
  for (const [key, pair] of pairs) {
    const tensorName = (pair.a ?? pair.b)!.name;
    if (!pair.a || !pair.b) {
      throw new PackError(
        'PACK_MISSING_TENSOR',
        weightsPath,
        tensorName.replace(/lora_[AB]\.weight$/, pair.a ? 'lora_B.weight' : 'lora_A.weight'),
        `tensor not found; ${tensorName} needs its partner (a LoRA module has lora_A and lora_B)`,
      );
    }
    const poolerMatch = new RegExp(`^(${escapeRegExp(layout.prefix)}\\.)?pooler\\.dense$`).exec(
      key,
    );
    if (poolerMatch && layout.family !== 'distilbert') {
      const d = backbone.hiddenSize;
      const { r, scaling } = moduleRank(config, key, configPath);
      const pooler = checkLoraPair(
        pair.a,
        pair.b,
        r,
        d,
        d,
        'hidden_size',
        'hidden_size',
        weightsPath,
      );
      poolerDelta = loraDelta(pooler.a, pooler.b, r, d, d, scaling);
      continue;
    }
    const path = parseLayerPath(layout, key);
    const module = path && moduleOf(layout, path.rest);
    if (!path || !module) {
      throw new PackError(
        'PACK_BACKBONE_MISMATCH',
        weightsPath,
        tensorName,
        `adapts '${key}', which is not a linear module of a ${backbone.family} encoder layer (${layout.prefix}.${layout.layerList}.<i>.${Object.values(layout.linear).join(' | ')}); adapter_config.json target_modules is ${describe(config.targetModules)}`,
      );
    }
    if (prefixed === undefined) {
      prefixed = path.prefixed;
      firstKey = key;
    } else if (prefixed !== path.prefixed) {
      throw new PackError(
        'PACK_INVALID_ADAPTER',
        weightsPath,
        tensorName,
        `module path '${key}' and '${firstKey}' disagree on the '${layout.prefix}.' prefix; one model has one layout`,
      );
    }
    if (path.layer >= backbone.layers) {
      throw new PackError(
        'PACK_BACKBONE_MISMATCH',
        weightsPath,
        tensorName,
        `number of layers: the adapter has weights for layer ${path.layer}, but the backbone has ${backbone.layers} layers (0..${backbone.layers - 1})`,
      );
    }
    const [inSize, outSize] = linearShape(module, backbone);
    const { r, scaling } = moduleRank(config, key, configPath);
    const checked = checkLoraPair(
      pair.a,
      pair.b,
      r,
      inSize,
      outSize,
      module === 'output' ? 'intermediate_size' : 'hidden_size',
      module === 'intermediate' ? 'intermediate_size' : 'hidden_size',
      weightsPath,
    );
    modules.push({ layer: path.layer, module, rank: r, scaling, a: checked.a, b: checked.b });
  }
  if (prefixed === undefined) {
    throw new PackError(
      'PACK_INVALID_ADAPTER',
      weightsPath,
      '',
      `adapts no module of the encoder's layers (only ${[...pairs.keys()].join(', ')}); target_modules is ${describe(config.targetModules)}`,
    );
  }
  checkSelection(config, layout, backbone, prefixed, modules, configPath, weightsPath);
  modules.sort(
    (x, y) =>
      x.layer - y.layer || LINEAR_MODULES.indexOf(x.module) - LINEAR_MODULES.indexOf(y.module),
  );

  const head =
    others.size > 0
      ? peftHead(config, layout, options, others, weightsPath, configPath, poolerDelta)
      : undefined;
  return {
    kind: 'lora',
    id: options.id,
    group: options.group,
    hiddenSize: backbone.hiddenSize,
    rank: Math.max(...modules.map((m) => m.rank)),
    modules,
    ...(head ? { head } : {}),
  };
}

interface NamedTensor {
  readonly name: string;
  readonly tensor: Weight;
}

/** Why a non-pair PEFT tensor cannot be served, or undefined when it may be a head tensor. */
function unsupportedTensor(key: string): string | undefined {
  if (/\.lora_[AB]\.bias$/.test(key)) return 'a LoRA bias (lora_bias)';
  if (/\.lora_magnitude_vector/.test(key)) return 'DoRA (lora_magnitude_vector)';
  if (/\.lora_embedding_[AB]/.test(key)) return 'LoRA on an embedding layer';
  if (/\.lora_/.test(key)) return `the tensor '${key}'`;
  return undefined;
}

/** The canonical module whose path inside a layer is `rest`. */
function moduleOf(layout: FamilyLayout, rest: string): LinearModule | undefined {
  return LINEAR_MODULES.find((module) => layout.linear[module] === rest);
}

/**
 * Parse and check the LoraConfig fields. `file` names the config in errors; `family` gives
 * PEFT's default target_modules when the config has none.
 */
export function parsePeftLoraConfig(
  value: Record<string, unknown>,
  file: string,
  family: string,
): PeftLoraConfig {
  const f = new ConfigFields(value, file);
  const peftType = f.get('peft_type');
  if (peftType !== 'LORA') {
    throw new PackError(
      peftType === undefined ? 'PACK_INVALID_ADAPTER' : 'PACK_UNSUPPORTED_ADAPTER',
      file,
      '/peft_type',
      `${describe(peftType)}: only PEFT LoRA adapters (peft_type "LORA") are imported`,
    );
  }
  f.requireOneOf('bias', ['none'], 'only bias "none" (the base biases stay as trained)');
  f.requireUnset('use_dora', 'DoRA rescales the whole weight; merge it or train plain LoRA');
  f.requireUnset('lora_bias', 'a bias on lora_B');
  f.requireUnset('fan_in_fan_out', 'it is for Conv1D (GPT-2) layers, which encoders do not have');
  f.requireUnset('use_qalora', 'QA-LoRA pools the input');
  f.requireUnset('alora_invocation_tokens', 'activated LoRA applies only after invocation tokens');
  f.requireUnset('layer_replication', 'it changes the layer stack');
  f.requireUnset('trainable_token_indices', 'it trains embedding rows');
  f.requireUnset('target_parameters', 'LoRA on raw parameters');
  f.requireUnset('use_bdlora', 'block-diagonal LoRA');
  f.requireUnset('arrow_config', 'Arrow routing');
  f.requireUnset('kasa_config', 'KaSA changes the base weights');
  f.requireUnset('monteclora_config', 'MonteCLoRA samples its weights');
  f.requireOneOf(
    'init_lora_weights',
    PLAIN_INITS,
    'this initialisation changes the base weights (PiSSA, OLoRA, CorDA, LoRA-GA) or trains against quantized ones (LoftQ); save with save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain LoRA',
  );

  const r = f.positiveInt('r', 8);
  const loraAlpha = f.number('lora_alpha', 8);
  const useRslora = f.bool('use_rslora', false);
  let targetModules = f.stringsOrString('target_modules');
  if (targetModules === undefined) {
    targetModules = DEFAULT_TARGETS[family];
    if (!targetModules) {
      throw f.invalid(
        'target_modules',
        `is missing and PEFT has no default target modules for ${family}; name them`,
      );
    }
  }
  if (typeof targetModules === 'string' && targetModules.toLowerCase() !== ALL_LINEAR) {
    checkRegex(f, 'target_modules', targetModules);
  }
  const excludeModules = f.stringsOrString('exclude_modules');
  if (typeof excludeModules === 'string') checkRegex(f, 'exclude_modules', excludeModules);
  const layersToTransform = f.get('layers_to_transform');
  if (
    layersToTransform !== undefined &&
    !isIndex(layersToTransform) &&
    !(Array.isArray(layersToTransform) && layersToTransform.every(isIndex))
  ) {
    throw f.invalid(
      'layers_to_transform',
      `must be a layer index or a list of them, got ${describe(layersToTransform)}`,
    );
  }
  const layersPattern = f.stringsOrString('layers_pattern');
  const rankPattern = f.numberMap('rank_pattern');
  for (const [key, rank] of rankPattern) {
    if (!Number.isInteger(rank) || rank < 1) {
      throw new PackError(
        'PACK_INVALID_ADAPTER',
        file,
        `/rank_pattern/${key}`,
        `must be a positive integer, got ${describe(rank)}`,
      );
    }
  }
  const alphaPattern = f.numberMap('alpha_pattern');
  for (const [field, patterns] of [
    ['rank_pattern', rankPattern],
    ['alpha_pattern', alphaPattern],
  ] as const) {
    for (const [key] of patterns) {
      try {
        new RegExp(`^(.*\\.)?(${key})$`);
      } catch {
        throw new PackError(
          'PACK_UNSUPPORTED_ADAPTER',
          file,
          `/${field}/${key}`,
          `the pattern ${describe(key)} is not a regular expression this server can run`,
        );
      }
    }
  }
  const modulesToSave = f.get('modules_to_save');
  if (
    modulesToSave !== undefined &&
    !(Array.isArray(modulesToSave) && modulesToSave.every((item) => typeof item === 'string'))
  ) {
    throw f.invalid(
      'modules_to_save',
      `must be a list of module names, got ${describe(modulesToSave)}`,
    );
  }
  return {
    r,
    loraAlpha,
    useRslora,
    targetModules,
    ...(excludeModules === undefined ? {} : { excludeModules }),
    ...(layersToTransform === undefined
      ? {}
      : { layersToTransform: layersToTransform as number | number[] }),
    ...(layersPattern === undefined ? {} : { layersPattern }),
    rankPattern,
    alphaPattern,
    ...(modulesToSave === undefined ? {} : { modulesToSave: modulesToSave as string[] }),
    ...(f.optionalString('task_type') === undefined
      ? {}
      : { taskType: f.optionalString('task_type')! }),
  };
}

const ALL_LINEAR = 'all-linear';

function isIndex(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

function checkRegex(f: ConfigFields, key: string, pattern: string): void {
  try {
    new RegExp(`^(?:${pattern})$`);
  } catch {
    throw f.unsupported(key, 'not a regular expression this server can run (Python-only syntax?)');
  }
}

/**
 * PEFT's check_target_module_exists (tuners/tuners_utils.py) for one module key of the model PEFT
 * wrapped, e.g. 'bert.encoder.layer.0.attention.self.query'. 'all-linear' selects every linear
 * module except the classifier (tuners_utils._maybe_include_all_linear_layers), and encoder layers
 * hold only linear modules this server names.
 */
export function peftSelects(config: PeftLoraConfig, key: string): boolean {
  const exclude = config.excludeModules;
  if (exclude !== undefined) {
    if (typeof exclude === 'string') {
      if (fullMatch(exclude, key)) return false;
    } else if (exclude.includes(key) || exclude.some((name) => key.endsWith(`.${name}`))) {
      return false;
    }
  }
  // Never adapt inside a modules_to_save module: re.match(rf"(^|.*\.){m}($|\..*)", key).
  for (const name of config.modulesToSave ?? []) {
    if (new RegExp(`^(^|.*\\.)${name}($|\\..*)`).test(key)) return false;
  }
  const targets = config.targetModules;
  if (typeof targets === 'string') {
    if (targets.toLowerCase() === ALL_LINEAR) return true;
    return fullMatch(targets, key);
  }
  if (targets.includes(key)) return true;
  if (!targets.some((name) => key.endsWith(`.${name}`))) return false;
  const indexes = config.layersToTransform;
  const usesIndexes = indexes !== undefined && (typeof indexes === 'number' || indexes.length > 0);
  if (!usesIndexes) return true;
  let match: RegExpExecArray | null = null;
  const patterns = config.layersPattern;
  if (patterns === undefined || patterns.length === 0) {
    // The lazy .*? takes the first numbered segment (the layer index).
    match = /^.*?\.[^.]*\.(\d+)\./.exec(key);
  } else {
    for (const pattern of typeof patterns === 'string' ? [patterns] : patterns) {
      match = new RegExp(`^.*?\\.${pattern}\\.(\\d+)\\.`).exec(key);
      if (match) break;
    }
  }
  if (!match) return false;
  const layer = Number(match[1]);
  return typeof indexes === 'number' ? layer === indexes : indexes!.includes(layer);
}

function fullMatch(pattern: string, key: string): boolean {
  return new RegExp(`^(?:${pattern})$`).test(key);
}

/** get_pattern_key: the first pattern p with re.match(rf"(.*\.)?({p})$", key), if any. */
export function peftPatternKey(
  patterns: readonly [string, number][],
  key: string,
): [string, number] | undefined {
  return patterns.find(([pattern]) => new RegExp(`^(.*\\.)?(${pattern})$`).test(key));
}

/** r, alpha and scaling of one module key (LoraModel._create_and_replace, LoraLayer.update_layer). */
export function peftModuleScaling(
  config: PeftLoraConfig,
  key: string,
): { r: number; alpha: number; scaling: number; rankFrom: string; alphaFrom: string } {
  const rank = peftPatternKey(config.rankPattern, key);
  const alpha = peftPatternKey(config.alphaPattern, key);
  const r = rank ? rank[1] : config.r;
  const a = alpha ? alpha[1] : config.loraAlpha;
  return {
    r,
    alpha: a,
    scaling: config.useRslora ? a / Math.sqrt(r) : a / r,
    rankFrom: rank ? `/rank_pattern/${rank[0]}` : '/r',
    alphaFrom: alpha ? `/alpha_pattern/${alpha[0]}` : '/lora_alpha',
  };
}

function moduleRank(
  config: PeftLoraConfig,
  key: string,
  configPath: string,
): { r: number; scaling: number } {
  const { r, scaling, alphaFrom } = peftModuleScaling(config, key);
  if (!Number.isFinite(scaling)) {
    throw new PackError(
      'PACK_INVALID_ADAPTER',
      configPath,
      alphaFrom,
      `gives '${key}' no finite scaling`,
    );
  }
  return { r, scaling };
}

/**
 * Check a pair's shapes: A [r,in], B [out,r], with r from the config and in/out from the
 * backbone; a width that is not the backbone's is an adapter for another base.
 */
function checkLoraPair(
  a: NamedTensor,
  b: NamedTensor,
  r: number,
  inSize: number,
  outSize: number,
  inName: string,
  outName: string,
  file: string,
): { a: Float32Array; b: Float32Array } {
  const [aRows, aCols] = a.tensor.shape;
  const [bRows, bCols] = b.tensor.shape;
  if (a.tensor.shape.length !== 2) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      a.name,
      `shape ${shapeText(a.tensor.shape)} must be [r,in]`,
    );
  }
  if (b.tensor.shape.length !== 2) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      b.name,
      `shape ${shapeText(b.tensor.shape)} must be [out,r]`,
    );
  }
  if (aCols !== inSize) {
    throw new PackError(
      'PACK_BACKBONE_MISMATCH',
      file,
      a.name,
      `${inName}: this module's input width is ${aCols} in the adapter (shape ${shapeText(a.tensor.shape)}) but ${inSize} in the backbone`,
    );
  }
  if (bRows !== outSize) {
    throw new PackError(
      'PACK_BACKBONE_MISMATCH',
      file,
      b.name,
      `${outName}: this module's output width is ${bRows} in the adapter (shape ${shapeText(b.tensor.shape)}) but ${outSize} in the backbone`,
    );
  }
  if (aRows !== r || bCols !== r) {
    const wrong = aRows !== r ? a : b;
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      wrong.name,
      `shape ${shapeText(wrong.tensor.shape)} has rank ${aRows !== r ? aRows : bCols}, but adapter_config.json gives this module r = ${r}`,
    );
  }
  return { a: a.tensor.data, b: b.tensor.data };
}

/** scaling * B A in PyTorch layout [out,in]: A [r,in], B [out,r]. */
function loraDelta(
  a: Float32Array,
  b: Float32Array,
  r: number,
  inSize: number,
  outSize: number,
  scaling: number,
): Float32Array {
  const out = new Float32Array(outSize * inSize);
  for (let o = 0; o < outSize; o++) {
    for (let i = 0; i < inSize; i++) {
      let sum = 0;
      for (let k = 0; k < r; k++) sum += b[o * r + k]! * a[k * inSize + i]!;
      out[o * inSize + i] = scaling * sum;
    }
  }
  return out;
}

/**
 * The weights and the config must select the same modules of the backbone: a selected module
 * without weights, or weights for a module the config does not select, means the folder does not
 * fit this backbone (fewer layers) or is inconsistent.
 */
function checkSelection(
  config: PeftLoraConfig,
  layout: FamilyLayout,
  backbone: EncoderConfig,
  prefixed: boolean,
  modules: readonly LoraModuleWeights[],
  configPath: string,
  weightsPath: string,
): void {
  const have = new Set(modules.map((m) => `${m.layer}/${m.module}`));
  const tensorName = (layer: number, module: LinearModule, half: 'A' | 'B') =>
    `${PEFT_KEY_PREFIX}${layerModuleKey(layout, prefixed, layer, layout.linear[module])}.lora_${half}.weight`;
  for (const m of modules) {
    const key = layerModuleKey(layout, prefixed, m.layer, layout.linear[m.module]);
    if (!peftSelects(config, key)) {
      throw new PackError(
        'PACK_INVALID_ADAPTER',
        configPath,
        '/target_modules',
        `does not select '${key}' (target_modules ${describe(config.targetModules)}, layers_to_transform ${describe(config.layersToTransform)}, exclude_modules ${describe(config.excludeModules)}), but ${weightsPath} has LoRA weights for it`,
      );
    }
  }
  const adaptedLayers = modules.map((m) => m.layer);
  const lastLayer = Math.max(...adaptedLayers);
  const missing: { layer: number; module: LinearModule }[] = [];
  for (let layer = 0; layer < backbone.layers; layer++) {
    for (const module of LINEAR_MODULES) {
      const key = layerModuleKey(layout, prefixed, layer, layout.linear[module]);
      if (peftSelects(config, key) && !have.has(`${layer}/${module}`))
        missing.push({ layer, module });
    }
  }
  if (missing.length === 0) return;
  const first = missing[0]!;
  if (missing.every((m) => m.layer > lastLayer)) {
    throw new PackError(
      'PACK_BACKBONE_MISMATCH',
      weightsPath,
      tensorName(first.layer, first.module, 'A'),
      `number of layers: the adapter has weights for layers up to ${lastLayer} (${lastLayer + 1} layers) but the backbone has ${backbone.layers}, and adapter_config.json selects '${first.module}' in layer ${first.layer} too; this adapter was made for a smaller model`,
    );
  }
  throw new PackError(
    'PACK_MISSING_TENSOR',
    weightsPath,
    tensorName(first.layer, first.module, 'A'),
    `tensor not found; adapter_config.json selects this module (target_modules ${describe(config.targetModules)})`,
  );
}

/** The head PEFT saved with modules_to_save (task_type SEQ_CLS). */
function peftHead(
  config: PeftLoraConfig,
  layout: FamilyLayout,
  options: PeftImportOptions,
  saved: ReadonlyMap<string, NamedTensor>,
  weightsPath: string,
  configPath: string,
  poolerDelta: Float32Array | undefined,
): Head {
  const allowed = headTensorNames(layout);
  for (const [key, { name }] of saved) {
    if (!allowed.includes(key)) {
      throw new PackError(
        'PACK_UNEXPECTED_TENSOR',
        weightsPath,
        name,
        `is neither a LoRA weight (<module>.lora_A.weight / .lora_B.weight) nor part of the ${layout.family} sequence-classification head (${allowed.join(', ')}); embeddings or biases saved with an adapter are not supported`,
      );
    }
  }
  if (config.taskType !== 'SEQ_CLS') {
    throw new PackError(
      'PACK_UNSUPPORTED_ADAPTER',
      configPath,
      '/task_type',
      `${describe(config.taskType ?? null)} is not supported with a saved classifier: only sequence classification heads (task_type "SEQ_CLS") are served`,
    );
  }
  const base = options.base;
  const labelSource =
    base?.config === undefined
      ? undefined
      : {
          file: base.configFile ?? 'config.json',
          field: '/id2label',
          id2label: asObject(base.config, base.configFile ?? 'config.json', '').id2label,
        };
  return hfSequenceClassificationHead({
    layout,
    id: options.id,
    hiddenSize: options.backbone.hiddenSize,
    saved: new Map([...saved].map(([key, { tensor }]) => [key, tensor])),
    savedFile: weightsPath,
    savedName: (relative) => saved.get(relative)?.name ?? `${PEFT_KEY_PREFIX}${relative}`,
    ...(base ? { base } : {}),
    labels: (count) => resolveLabels(count, labelSource),
    // Only BERT's head reads the pooler (RoBERTa's task models have none, DistilBERT none at all).
    ...(poolerDelta && layout.family === 'bert' ? { hiddenDelta: poolerDelta } : {}),
  });
}

/** Module-relative names a family's sequence-classification head may save. */
function headTensorNames(layout: FamilyLayout): string[] {
  const linear = (name: string) => [`${name}.weight`, `${name}.bias`];
  switch (layout.family) {
    case 'roberta':
    case 'xlm-roberta':
      return [...linear('classifier.dense'), ...linear('classifier.out_proj')];
    case 'distilbert':
      return [...linear('classifier'), ...linear('pre_classifier')];
    case 'bert':
      return [...linear('classifier'), ...linear('bert.pooler.dense'), ...linear('pooler.dense')];
  }
}
