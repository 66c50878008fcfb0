/**
 * Import an AdapterHub (`adapters` library) bottleneck adapter folder into a
 * BottleneckLayerAdapter (src/pack/layer-adapter-types.ts).
 *
 * The folder, as model.save_adapter(dir, name, use_safetensors=True) writes it (loading.py,
 * AdapterLoader.save; utils.py file names):
 *   adapter_config.json   build_full_config(): {"config": <BnConfig as a dict>, "hidden_size",
 *                         "model_class", "model_name", "model_type", "name", "version":
 *                         "adapters.<x.y.z>"} (sorted keys; older adapter-transformers files have
 *                         no "version" and the old activation names, renamed as the library does:
 *                         "gelu" -> "gelu_new", "gelu_orig" -> "gelu")
 *   adapter.safetensors   the model's state dict filtered to ".adapters.<name>.", e.g.
 *                           bert.encoder.layer.0.output.adapters.<name>.adapter_down.0.weight  [m,d]
 *                           ...adapter_down.0.bias [m], ...adapter_up.weight [d,m], ...adapter_up.bias [d]
 *                         under `attention.output` for the attention block (mh_adapter) and
 *                         `output` for the feed-forward block (output_adapter); DistilBERT keeps
 *                         them at transformer.layer.<i>.attention_adapters / output_adapters.
 *                         The `bert.` / `roberta.` / `distilbert.` prefix is there when an
 *                         *AdapterModel or a task model was saved, absent for a bare BertModel.
 *                         With ln_before, adapter_down is [LayerNorm, Linear, act]: the LayerNorm
 *                         is adapter_down.0 (also registered as adapter_norm_before) and the
 *                         Linear adapter_down.1. scaling "learned" / "channel" saves `scaling`
 *                         [1] / [d].
 *   pytorch_adapter.bin   the pickled alternative: refused with the conversion command.
 *   head_config.json + model_head.safetensors (optional; pytorch_model_head.bin refused): a
 *                         prediction head saved with the adapter. A flex head ("config":
 *                         {"head_type": "classification", "layers", "activation_function",
 *                         "use_pooler", "bias", "num_labels", "label2id", ...}) saves
 *                         heads.<name>.<i>.weight, i counting PredictionHead's nn.Sequential
 *                         (Dropout, Linear, Activation, ..., Dropout, Linear); a transformers task
 *                         model's own head ("config": null, model_class *ForSequenceClassification)
 *                         saves its module names (classifier.weight, ...).
 *
 * Semantics (methods/modeling.py Adapter.pre_forward / forward / post_forward, methods/
 * bottleneck.py BottleneckLayer): see BottleneckPlacement. The bottleneck width is
 * int(hidden_size // reduction_factor), at least 1, per layer when reduction_factor is a mapping
 * ({"<layer>": f, "default": f}); `scaling` (a float, or the learned tensor) is folded into `up`.
 * Absent blocks: a layer in leave_out, or a block whose flag (mh_adapter / output_adapter) is off.
 *
 * BnConfig defaults (configuration/adapter_config.py) apply to fields a config leaves out:
 * original_ln_before false, original_ln_after true, residual_before_ln true, ln_before false,
 * ln_after false, scaling 1.0, use_gating false, is_parallel false, leave_out [], phm_layer false,
 * inv_adapter null. A config given by name takes SeqBnConfig ("seq_bn", "pfeiffer": ffn only,
 * original_ln_before true, relu, reduction 16) or DoubleSeqBnConfig ("double_seq_bn", "houlsby":
 * both blocks, original_ln_before false, swish, reduction 16).
 *
 * Refused, naming the field and its value: ln_after, use_gating, phm_layer (Compacter),
 * is_parallel (parallel adapters), inv_adapter (invertible adapters of MAD-X language adapters sit
 * on the embeddings), config unions and non-bottleneck architectures (LoRA, prefix tuning...),
 * residual_before_ln "post_add" without original_ln_before (the library itself fails there),
 * and activations outside BottleneckActivation.
 */

import { join } from 'node:path';
import type { EncoderConfig, LayerBlock } from '../encoder-types.js';
import { PackError } from '../errors.js';
import type {
  BottleneckActivation,
  BottleneckBlockWeights,
  BottleneckLayerAdapter,
  BottleneckPlacement,
} from '../layer-adapter-types.js';
import { readSafetensors } from '../safetensors.js';
import type { Activation, Head, Weight } from '../types.js';
import {
  ADAPTER_FLOAT_DTYPES,
  asObject,
  type BaseModelParts,
  ConfigFields,
  checkTorchLinear,
  describe,
  type FamilyLayout,
  familyLayout,
  findTorchLinear,
  headFromTorch,
  hfSequenceClassificationHead,
  isFile,
  parseLayerPath,
  pythonFloorDiv,
  readJsonFile,
  resolveLabels,
  sameShape,
  shapeText,
  type TorchLinear,
  weightsFile,
} from './common.js';

export const ADAPTERHUB_CONFIG_FILE = 'adapter_config.json';
export const ADAPTERHUB_WEIGHTS_FILE = 'adapter.safetensors';
export const ADAPTERHUB_PICKLE_FILE = 'pytorch_adapter.bin';
export const ADAPTERHUB_HEAD_CONFIG_FILE = 'head_config.json';
export const ADAPTERHUB_HEAD_WEIGHTS_FILE = 'model_head.safetensors';
export const ADAPTERHUB_HEAD_PICKLE_FILE = 'pytorch_model_head.bin';

/** utils.py ACTIVATION_RENAME, applied to configs without "version" (adapter-transformers v1). */
const LEGACY_ACTIVATION_RENAME: Record<string, string> = { gelu: 'gelu_new', gelu_orig: 'gelu' };

/**
 * non_linearity (lowercased, as Activation_Function_Class does) -> what we run. The names are
 * transformers' get_activation (ACT2FN) keys, plus the library's own "leakyrelu"; null is identity.
 */
const ACTIVATIONS: Record<string, BottleneckActivation> = {
  relu: 'relu',
  gelu: 'gelu',
  gelu_python: 'gelu',
  gelu_new: 'gelu_new',
  gelu_pytorch_tanh: 'gelu_pytorch_tanh',
  quick_gelu: 'quick_gelu',
  silu: 'silu',
  swish: 'swish',
  tanh: 'tanh',
  leakyrelu: 'leakyrelu',
  leaky_relu: 'leakyrelu',
  linear: 'identity',
};

/** Head activations (the Head type's Activation) by transformers names. */
const HEAD_ACTIVATIONS: Record<string, Activation> = {
  tanh: 'tanh',
  relu: 'relu',
  gelu: 'gelu',
  linear: 'identity',
};

/** The named configs we run, with the fields their classes set (adapter_config.py). */
const NAMED_CONFIGS: Record<string, Record<string, unknown>> = {
  seq_bn: seqBn(),
  pfeiffer: seqBn(),
  double_seq_bn: doubleSeqBn(),
  houlsby: doubleSeqBn(),
};

function seqBn(): Record<string, unknown> {
  return {
    original_ln_before: true,
    original_ln_after: true,
    residual_before_ln: true,
    adapter_residual_before_ln: false,
    ln_before: false,
    ln_after: false,
    mh_adapter: false,
    output_adapter: true,
    non_linearity: 'relu',
    reduction_factor: 16,
  };
}

function doubleSeqBn(): Record<string, unknown> {
  return { ...seqBn(), original_ln_before: false, mh_adapter: true, non_linearity: 'swish' };
}

/** The BnConfig fields that decide the forward pass. */
export interface AdapterHubBnConfig {
  readonly name: string;
  readonly placement: BottleneckPlacement;
  /** A number, or a mapping from layer index (a string) or "default" to a number. */
  readonly reductionFactor: number | Readonly<Record<string, number>>;
  readonly leaveOut: readonly number[];
  /** A float, or 'learned' / 'channel' (then the tensor `scaling` holds it). */
  readonly scaling: number | 'learned' | 'channel';
}

export interface AdapterHubImportOptions {
  readonly id: string;
  readonly group: string;
  readonly backbone: EncoderConfig;
  /** For a head that reads BERT's pooler (use_pooler), and labels of a task model's head. */
  readonly base?: BaseModelParts;
}

/** Read an AdapterHub bottleneck adapter folder and check it against the backbone. */
export async function importAdapterHubFolder(
  dir: string,
  options: AdapterHubImportOptions,
): Promise<BottleneckLayerAdapter> {
  const { backbone } = options;
  const layout = familyLayout(backbone.family);
  const configPath = join(dir, ADAPTERHUB_CONFIG_FILE);
  const document = asObject(await readJsonFile(configPath), configPath, '');
  const config = parseAdapterHubConfig(document, configPath, backbone);
  const weightsPath = await weightsFile(
    dir,
    ADAPTERHUB_WEIGHTS_FILE,
    ADAPTERHUB_PICKLE_FILE,
    'the AdapterHub adapter',
  );
  const tensors = await readSafetensors(weightsPath, { floatDtypes: ADAPTER_FLOAT_DTYPES });
  const blocks = readBlocks(config, layout, backbone, tensors, configPath, weightsPath);
  const d = backbone.hiddenSize;
  const head = await readAdapterHubHead(dir, options, layout);
  return {
    kind: 'bottleneck-layers',
    id: options.id,
    group: options.group,
    hiddenSize: d,
    bottleneckSize: Math.max(...blocks.map((block) => block.downBias.length)),
    placement: config.placement,
    blocks,
    ...(head ? { head } : {}),
  };
}

/**
 * Parse adapter_config.json: the BnConfig (by name or as a dict, with BnConfig's defaults) and the
 * saved model's hidden_size / model_type, checked against the backbone.
 */
export function parseAdapterHubConfig(
  document: Record<string, unknown>,
  file: string,
  backbone: EncoderConfig,
): AdapterHubBnConfig {
  const top = new ConfigFields(document, file);
  const name = top.string('name');
  const modelType = top.optionalString('model_type');
  if (modelType !== undefined && modelType !== backbone.family) {
    throw new PackError(
      'PACK_BACKBONE_MISMATCH',
      file,
      '/model_type',
      `model type: the adapter was saved from a '${modelType}' model but the backbone is '${backbone.family}'`,
    );
  }
  const hiddenSize = top.get('hidden_size');
  if (hiddenSize !== undefined && hiddenSize !== backbone.hiddenSize) {
    throw new PackError(
      'PACK_BACKBONE_MISMATCH',
      file,
      '/hidden_size',
      `hidden size: the adapter was saved from a model with hidden size ${describe(hiddenSize)} but the backbone's is ${backbone.hiddenSize}`,
    );
  }
  let raw = document.config;
  if (raw === undefined || raw === null) {
    throw top.invalid(
      'config',
      'is missing: an AdapterHub adapter_config.json holds the adapter config under "config"',
    );
  }
  if (typeof raw === 'string') {
    const named = NAMED_CONFIGS[raw];
    if (!named) {
      throw top.unsupported(
        'config',
        `only bottleneck configs ${Object.keys(NAMED_CONFIGS).join(', ')} (or their full dicts) are imported`,
      );
    }
    raw = named;
  }
  const f = new ConfigFields(asObject(raw, file, '/config'), file, '/config');
  if (f.get('architecture') !== undefined) {
    throw f.unsupported(
      'architecture',
      'only bottleneck adapters (no "architecture": BnConfig, SeqBnConfig, DoubleSeqBnConfig) are imported',
    );
  }
  for (const required of ['mh_adapter', 'output_adapter', 'reduction_factor', 'non_linearity']) {
    if (!(required in f.value)) {
      throw f.invalid(required, "is missing; AdapterHub's BnConfig requires it");
    }
  }
  f.requireUnset('ln_after', 'a new LayerNorm after the adapter (ln_after)');
  f.requireUnset('use_gating', 'gated adapters (UniPELT)');
  f.requireUnset('phm_layer', 'PHM layers (Compacter)');
  f.requireUnset('is_parallel', 'parallel adapters (par_bn)');
  f.requireUnset(
    'inv_adapter',
    'invertible adapters sit on the embedding output (MAD-X language adapters); save the adapter without them',
  );
  const attention = f.bool('mh_adapter', false);
  const ffn = f.bool('output_adapter', false);
  if (!attention && !ffn) {
    throw f.invalid(
      'mh_adapter',
      'mh_adapter and output_adapter are both false: the adapter has no block',
    );
  }
  const originalLnBefore = f.bool('original_ln_before', false);
  const originalLnAfter = f.bool('original_ln_after', true);
  const lnBefore = f.bool('ln_before', false);
  const residual = f.get('residual_before_ln') ?? true;
  if (residual !== true && residual !== false && residual !== 'post_add') {
    throw f.invalid(
      'residual_before_ln',
      `must be true, false or "post_add", got ${describe(residual)}`,
    );
  }
  if (residual === 'post_add' && !originalLnBefore) {
    throw f.unsupported(
      'residual_before_ln',
      '"post_add" takes the residual after the original residual add, which happens only with original_ln_before: true',
    );
  }

  let activationName = f.get('non_linearity');
  if (typeof activationName === 'string') {
    activationName = activationName.toLowerCase();
    if (document.version === undefined) {
      activationName = LEGACY_ACTIVATION_RENAME[activationName as string] ?? activationName;
    }
  } else if (activationName !== undefined) {
    throw f.invalid('non_linearity', `must be an activation name, got ${describe(activationName)}`);
  }
  const activation =
    activationName === undefined ? 'identity' : ACTIVATIONS[activationName as string];
  if (!activation) {
    throw f.unsupported(
      'non_linearity',
      `activations run here: ${Object.keys(ACTIVATIONS).join(', ')}, or null`,
    );
  }

  const reduction = f.get('reduction_factor');
  let reductionFactor: number | Record<string, number>;
  if (typeof reduction === 'number') {
    if (!(reduction > 0)) throw f.invalid('reduction_factor', `must be > 0, got ${reduction}`);
    reductionFactor = reduction;
  } else {
    const mapping = asObject(reduction, file, '/config/reduction_factor');
    for (const [key, value] of Object.entries(mapping)) {
      if (typeof value !== 'number' || !(value > 0)) {
        throw new PackError(
          'PACK_INVALID_ADAPTER',
          file,
          `/config/reduction_factor/${key}`,
          `must be a number > 0, got ${describe(value)}`,
        );
      }
    }
    reductionFactor = mapping as Record<string, number>;
  }

  const leaveOut = f.get('leave_out') ?? [];
  if (!Array.isArray(leaveOut) || !leaveOut.every((i) => Number.isInteger(i) && i >= 0)) {
    throw f.invalid('leave_out', `must be a list of layer indices, got ${describe(leaveOut)}`);
  }
  const scaling = f.get('scaling') ?? 1;
  if (typeof scaling !== 'number' && scaling !== 'learned' && scaling !== 'channel') {
    throw f.unsupported('scaling', 'scaling is a number, "learned" or "channel"');
  }
  return {
    name,
    placement: {
      attention,
      ffn,
      originalLnBefore,
      originalLnAfter,
      residualBeforeLn: residual,
      lnBefore,
      activation,
    },
    reductionFactor,
    leaveOut: leaveOut as number[],
    scaling,
  };
}

/** m for one layer: int(hidden_size // reduction_factor), at least 1 (BottleneckLayer.add_adapter). */
export function adapterHubBottleneckSize(
  config: AdapterHubBnConfig,
  hiddenSize: number,
  layer: number,
  file: string,
): number {
  let factor: number | undefined;
  if (typeof config.reductionFactor === 'number') factor = config.reductionFactor;
  else factor = config.reductionFactor[String(layer)] ?? config.reductionFactor.default;
  if (factor === undefined) {
    throw new PackError(
      'PACK_INVALID_ADAPTER',
      file,
      '/config/reduction_factor',
      `has no entry for layer ${layer} and no "default"`,
    );
  }
  return Math.max(1, pythonFloorDiv(hiddenSize, factor));
}

interface BlockTensors {
  readonly layer: number;
  readonly block: LayerBlock;
  /** Tensor name -> tensor, by the part after `.adapters.<name>.`. */
  readonly parts: Map<string, { name: string; tensor: Weight }>;
}

/** Group the tensors by (layer, block), check them against config and backbone, fold scaling. */
function readBlocks(
  config: AdapterHubBnConfig,
  layout: FamilyLayout,
  backbone: EncoderConfig,
  tensors: ReadonlyMap<string, Weight>,
  configPath: string,
  weightsPath: string,
): BottleneckBlockWeights[] {
  const d = backbone.hiddenSize;
  const found = new Map<string, BlockTensors>();
  let prefixed: boolean | undefined;
  const marker = `.adapters.${config.name}.`;
  for (const [name, tensor] of tensors) {
    const path = parseLayerPath(layout, name);
    const block = path
      ? (['attention', 'ffn'] as const).find((b) =>
          path.rest.startsWith(`${layout.bottleneck[b]}${marker}`),
        )
      : undefined;
    if (!path || !block) {
      const other = /\.adapters\.(.+?)\.(adapter_down|adapter_up|adapter_norm_before|scaling)/.exec(
        name,
      );
      throw new PackError(
        other ? 'PACK_INVALID_ADAPTER' : 'PACK_UNEXPECTED_TENSOR',
        weightsPath,
        name,
        other
          ? `belongs to adapter '${other[1]}' but adapter_config.json /name is '${config.name}'`
          : `is not a bottleneck adapter weight of '${config.name}' in a ${backbone.family} layer ([${layout.prefix}.]${layout.layerList}.<i>.{${layout.bottleneck.attention}, ${layout.bottleneck.ffn}}${marker}...)`,
      );
    }
    if (prefixed === undefined) prefixed = path.prefixed;
    else if (prefixed !== path.prefixed) {
      throw new PackError(
        'PACK_INVALID_ADAPTER',
        weightsPath,
        name,
        `mixes tensor names with and without the '${layout.prefix}.' prefix; one model has one layout`,
      );
    }
    if (path.layer >= backbone.layers) {
      throw new PackError(
        'PACK_BACKBONE_MISMATCH',
        weightsPath,
        name,
        `number of layers: the adapter has weights for layer ${path.layer}, but the backbone has ${backbone.layers} layers (0..${backbone.layers - 1})`,
      );
    }
    const key = `${path.layer}/${block}`;
    const entry = found.get(key) ?? { layer: path.layer, block, parts: new Map() };
    entry.parts.set(path.rest.slice(`${layout.bottleneck[block]}${marker}`.length), {
      name,
      tensor,
    });
    found.set(key, entry);
  }
  if (found.size === 0) {
    throw new PackError(
      'PACK_MISSING_TENSOR',
      weightsPath,
      '',
      `holds no weights of adapter '${config.name}'`,
    );
  }

  // The config's blocks against the weights'.
  const expected = (layer: number, block: LayerBlock) =>
    !config.leaveOut.includes(layer) &&
    (block === 'attention' ? config.placement.attention : config.placement.ffn);
  for (const entry of found.values()) {
    if (!expected(entry.layer, entry.block)) {
      const field = config.leaveOut.includes(entry.layer)
        ? '/config/leave_out'
        : entry.block === 'attention'
          ? '/config/mh_adapter'
          : '/config/output_adapter';
      throw new PackError(
        'PACK_INVALID_ADAPTER',
        configPath,
        field,
        `says layer ${entry.layer} has no ${entry.block} adapter, but ${weightsPath} has weights for it (${[...entry.parts.values()][0]!.name})`,
      );
    }
  }
  const lastLayer = Math.max(...[...found.values()].map((entry) => entry.layer));
  const tensorName = (layer: number, block: LayerBlock) =>
    `${prefixed ? `${layout.prefix}.` : ''}${layout.layerList}.${layer}.${layout.bottleneck[block]}${marker}adapter_down.${config.placement.lnBefore ? 1 : 0}.weight`;
  const missing: { layer: number; block: LayerBlock }[] = [];
  for (let layer = 0; layer < backbone.layers; layer++) {
    for (const block of ['attention', 'ffn'] as const) {
      if (expected(layer, block) && !found.has(`${layer}/${block}`)) missing.push({ layer, block });
    }
  }
  if (missing.length > 0) {
    const first = missing[0]!;
    if (missing.every((m) => m.layer > lastLayer)) {
      throw new PackError(
        'PACK_BACKBONE_MISMATCH',
        weightsPath,
        tensorName(first.layer, first.block),
        `number of layers: the adapter has weights for layers up to ${lastLayer} (${lastLayer + 1} layers) but the backbone has ${backbone.layers}, and adapter_config.json (leave_out ${describe(config.leaveOut)}) puts an adapter in layer ${first.layer} too; this adapter was made for a smaller model`,
      );
    }
    throw new PackError(
      'PACK_MISSING_TENSOR',
      weightsPath,
      tensorName(first.layer, first.block),
      `tensor not found; adapter_config.json puts a ${first.block} adapter in layer ${first.layer} (leave_out ${describe(config.leaveOut)})`,
    );
  }

  const blocks: BottleneckBlockWeights[] = [];
  for (const entry of [...found.values()].sort(
    (a, b) => a.layer - b.layer || (a.block === 'attention' ? -1 : 1),
  )) {
    const m = adapterHubBottleneckSize(config, d, entry.layer, configPath);
    blocks.push(blockWeights(config, entry, d, m, weightsPath));
  }
  return blocks;
}

/** One block's weights: shapes checked, LayerNorm found, scaling folded into up. */
function blockWeights(
  config: AdapterHubBnConfig,
  entry: BlockTensors,
  d: number,
  m: number,
  file: string,
): BottleneckBlockWeights {
  const parts = entry.parts;
  const lnBefore = config.placement.lnBefore;
  const linearIndex = lnBefore ? 1 : 0;
  const allowed = new Set([
    `adapter_down.${linearIndex}.weight`,
    `adapter_down.${linearIndex}.bias`,
    'adapter_up.weight',
    'adapter_up.bias',
    ...(config.scaling === 'learned' || config.scaling === 'channel' ? ['scaling'] : []),
    ...(lnBefore
      ? [
          'adapter_down.0.weight',
          'adapter_down.0.bias',
          'adapter_norm_before.weight',
          'adapter_norm_before.bias',
        ]
      : []),
  ]);
  const sample = [...parts.values()][0]!.name;
  const full = (part: string) =>
    sample.slice(0, sample.length - [...parts.keys()][0]!.length) + part;
  for (const [part, { name }] of parts) {
    if (!allowed.has(part)) {
      throw new PackError(
        'PACK_UNEXPECTED_TENSOR',
        file,
        name,
        `is not a weight of this bottleneck config (expected ${[...allowed].join(', ')})`,
      );
    }
  }
  const need = (part: string, shape: number[], meaning: string): Float32Array => {
    const found = parts.get(part);
    if (!found) {
      throw new PackError('PACK_MISSING_TENSOR', file, full(part), `tensor not found (${meaning})`);
    }
    if (!sameShape(found.tensor.shape, shape)) {
      throw new PackError(
        'PACK_SHAPE_MISMATCH',
        file,
        found.name,
        `shape ${shapeText(found.tensor.shape)} must be ${meaning} = ${shapeText(shape)}`,
      );
    }
    return found.tensor.data;
  };
  // A down projection from another width is an adapter for another base.
  const downTensor = parts.get(`adapter_down.${linearIndex}.weight`);
  if (downTensor && downTensor.tensor.shape.length === 2 && downTensor.tensor.shape[1] !== d) {
    throw new PackError(
      'PACK_BACKBONE_MISMATCH',
      file,
      downTensor.name,
      `hidden size: the adapter reads width ${downTensor.tensor.shape[1]} (shape ${shapeText(downTensor.tensor.shape)}) but the backbone's hidden size is ${d}`,
    );
  }
  const down = need(
    `adapter_down.${linearIndex}.weight`,
    [m, d],
    `[hidden_size // reduction_factor, hidden_size] (m = ${m})`,
  );
  const downBias = need(`adapter_down.${linearIndex}.bias`, [m], '[bottleneck]');
  const up = new Float32Array(need('adapter_up.weight', [d, m], '[hidden_size, bottleneck]'));
  const upBias = new Float32Array(need('adapter_up.bias', [d], '[hidden_size]'));

  // up * scaling (Adapter.forward): a float, a learned [1], or per output channel [d].
  let scale: Float32Array;
  if (typeof config.scaling === 'number') scale = new Float32Array(d).fill(config.scaling);
  else if (config.scaling === 'learned')
    scale = new Float32Array(d).fill(need('scaling', [1], '[1] (scaling "learned")')[0]!);
  else scale = need('scaling', [d], '[hidden_size] (scaling "channel")');
  for (let j = 0; j < d; j++) {
    upBias[j]! *= scale[j]!;
    for (let k = 0; k < m; k++) up[j * m + k]! *= scale[j]!;
  }

  let norm: { gamma: Float32Array; beta: Float32Array } | undefined;
  if (lnBefore) {
    const fromDown = parts.has('adapter_down.0.weight');
    const source = fromDown ? 'adapter_down.0' : 'adapter_norm_before';
    norm = {
      gamma: need(`${source}.weight`, [d], '[hidden_size] (ln_before LayerNorm)'),
      beta: need(`${source}.bias`, [d], '[hidden_size] (ln_before LayerNorm)'),
    };
    if (fromDown && parts.has('adapter_norm_before.weight')) {
      const twin = need('adapter_norm_before.weight', [d], '[hidden_size]');
      if (twin.some((value, i) => value !== norm!.gamma[i])) {
        throw new PackError(
          'PACK_INVALID_ADAPTER',
          file,
          full('adapter_norm_before.weight'),
          'differs from adapter_down.0.weight, the same LayerNorm under its other name',
        );
      }
    }
  }
  return {
    layer: entry.layer,
    block: entry.block,
    down,
    downBias,
    up,
    upBias,
    ...(norm ? { lnBefore: norm } : {}),
  };
}

/**
 * The head saved beside the adapter (head_config.json + model_head.safetensors), if any. Flex
 * classification heads with one or two layers, and transformers' sequence-classification heads.
 */
async function readAdapterHubHead(
  dir: string,
  options: AdapterHubImportOptions,
  layout: FamilyLayout,
): Promise<Head | undefined> {
  const configPath = join(dir, ADAPTERHUB_HEAD_CONFIG_FILE);
  const hasConfig = await isFile(configPath);
  const hasWeights =
    (await isFile(join(dir, ADAPTERHUB_HEAD_WEIGHTS_FILE))) ||
    (await isFile(join(dir, ADAPTERHUB_HEAD_PICKLE_FILE)));
  if (!hasConfig && !hasWeights) return undefined;
  if (!hasConfig) {
    throw new PackError(
      'PACK_FILE_MISSING',
      configPath,
      '',
      `file not found; the folder has head weights (${ADAPTERHUB_HEAD_WEIGHTS_FILE}) but not their config`,
    );
  }
  const document = asObject(await readJsonFile(configPath), configPath, '');
  const weightsPath = await weightsFile(
    dir,
    ADAPTERHUB_HEAD_WEIGHTS_FILE,
    ADAPTERHUB_HEAD_PICKLE_FILE,
    'the AdapterHub head',
  );
  const tensors = await readSafetensors(weightsPath, { floatDtypes: ADAPTER_FLOAT_DTYPES });
  const d = options.backbone.hiddenSize;
  const top = new ConfigFields(document, configPath);
  const headConfig = document.config;
  if (headConfig === null || headConfig === undefined) {
    // A transformers task model's own head (HeadLoader.save with no flex head).
    const modelClass = top.string('model_class', '');
    if (!modelClass.endsWith('ForSequenceClassification')) {
      throw top.unsupported('model_class', 'only *ForSequenceClassification heads are served');
    }
    return hfSequenceClassificationHead({
      layout,
      id: options.id,
      hiddenSize: d,
      saved: tensors,
      savedFile: weightsPath,
      savedName: (relative) => relative,
      ...(options.base ? { base: options.base } : {}),
      labels: (count) =>
        resolveLabels(count, { file: configPath, field: '/label2id', label2id: document.label2id }),
    });
  }
  const f = new ConfigFields(asObject(headConfig, configPath, '/config'), configPath, '/config');
  f.requireOneOf('head_type', ['classification'], 'only "classification" heads are served');
  const layers = f.positiveInt('layers', 2);
  if (layers > 2) throw f.unsupported('layers', 'a head has at most one hidden layer here');
  const usePooler = f.bool('use_pooler', false);
  const bias = f.bool('bias', true);
  const activationName = f.get('activation_function');
  let activation: Activation = 'identity';
  if (activationName !== undefined) {
    const found =
      typeof activationName === 'string'
        ? HEAD_ACTIVATIONS[activationName.toLowerCase()]
        : undefined;
    if (!found)
      throw f.unsupported(
        'activation_function',
        `head activations run here: ${Object.keys(HEAD_ACTIVATIONS).join(', ')}, or null`,
      );
    activation = found;
  }
  const name = top.string('name');
  // PredictionHead.build: per layer a Dropout, then Linear(d,d) [+ activation], or the last Linear.
  const linearIndexes: number[] = [];
  let index = 0;
  for (let layer = 0; layer < layers; layer++) {
    index++; // Dropout
    linearIndexes.push(index++);
    if (layer < layers - 1 && activationName !== undefined) index++;
  }
  const prefix = `heads.${name}.`;
  const expectedNames = linearIndexes.flatMap((i, j) =>
    j === layers - 1 && !bias
      ? [`${prefix}${i}.weight`]
      : [`${prefix}${i}.weight`, `${prefix}${i}.bias`],
  );
  for (const tensorName of tensors.keys()) {
    if (!expectedNames.includes(tensorName)) {
      throw new PackError(
        'PACK_UNEXPECTED_TENSOR',
        weightsPath,
        tensorName,
        `is not a tensor of head '${name}' as head_config.json describes it (${expectedNames.join(', ')})`,
      );
    }
  }
  const linearAt = (i: number, withBias: boolean): TorchLinear => {
    const weightName = `${prefix}${i}.weight`;
    const weight = tensors.get(weightName);
    if (!weight) {
      throw new PackError('PACK_MISSING_TENSOR', weightsPath, weightName, 'tensor not found');
    }
    const rows = weight.shape[0] ?? 0;
    const biasTensor = withBias
      ? findTorchLinear(tensors, weightsPath, [`${prefix}${i}`])!.bias
      : { shape: [rows], data: new Float32Array(rows) };
    return { weight, bias: biasTensor, file: weightsPath, name: weightName };
  };
  const output = linearAt(linearIndexes[layers - 1]!, bias);
  checkTorchLinear(
    output,
    f.get('num_labels') as number | undefined,
    d,
    'the output layer [num_labels, hidden_size] =',
  );
  let hidden: { linear: TorchLinear; activation: Activation } | undefined;
  if (layers === 2) {
    if (usePooler) {
      throw f.unsupported(
        'use_pooler',
        'the pooler and a hidden layer would make two hidden layers',
      );
    }
    const linear = linearAt(linearIndexes[0]!, true);
    checkTorchLinear(linear, d, d, 'the hidden layer [hidden_size, hidden_size] =');
    hidden = { linear, activation };
  } else if (usePooler) {
    if (layout.family === 'distilbert') {
      throw f.unsupported('use_pooler', 'DistilBERT has no pooler');
    }
    const baseFile = options.base?.weightsFile ?? 'model.safetensors';
    const pooler = findTorchLinear(options.base?.tensors, baseFile, [
      `${layout.prefix}.pooler.dense`,
      'pooler.dense',
    ]);
    if (!pooler) {
      throw new PackError(
        'PACK_MISSING_TENSOR',
        options.base?.tensors ? baseFile : configPath,
        options.base?.tensors ? `${layout.prefix}.pooler.dense.weight` : '/config/use_pooler',
        "the head reads the pooler (use_pooler), which is the base model's: pass its weights (base.tensors)",
      );
    }
    checkTorchLinear(pooler, d, d, 'the pooler [hidden_size, hidden_size] =');
    hidden = { linear: pooler, activation: 'tanh' };
  }
  const labels = resolveLabels(output.weight.shape[0]!, {
    file: configPath,
    field: '/config/label2id',
    label2id: f.get('label2id'),
  });
  return headFromTorch(options.id, labels, 'cls', hidden, output);
}
