/**
 * Fixture generators: PEFT LoRA folders and AdapterHub bottleneck adapter folders, written from
 * seeded random weights with exactly the file names, config fields (as their save functions
 * write them, fields we ignore included) and tensor names of those projects. Written from PEFT's
 * and the `adapters` library's source, not from our importers (nothing here imports them), so the
 * tests compare two readings of the same source.
 *
 * API (every function is deterministic in its options and seed):
 *
 *   writePeftLoraFolder(dir, options: PeftFixtureOptions): Promise<PeftFixture>
 *     A PeftModel.save_pretrained folder: adapter_config.json (LoraConfig.to_dict(), sorted keys,
 *     indent 2) and adapter_model.safetensors (metadata {"format": "pt"}), or only
 *     adapter_model.bin. Which modules get LoRA follows PEFT's check_target_module_exists over the
 *     named modules of the model: a bare BertModel / RobertaModel / DistilBertModel, or with
 *     `head` (or `taskModel`) the *ForSequenceClassification model, whose keys carry the
 *     `bert.` / `roberta.` / `distilbert.` prefix. Returns every adapted module with its
 *     canonical name, r, alpha, scaling and A [r,in] / B [out,r], and the head's tensors.
 *
 *   writeAdapterHubFolder(dir, options: AdapterHubFixtureOptions): Promise<AdapterHubFixture>
 *     A model.save_adapter(dir, name, use_safetensors=True) folder: adapter_config.json
 *     (build_full_config: the full BnConfig dict) and adapter.safetensors, or only
 *     pytorch_adapter.bin; optionally head_config.json + model_head.safetensors (a flex
 *     classification head of an *AdapterModel, or a task model's own head). Returns every block's
 *     raw weights (down, up, scaling as saved, LayerNorm) for the tests' own expectations.
 *
 *   baseModelParts(backbone, options): { config, tensors }
 *     What a head needs from the base model folder: config.json (id2label) and the pooler or
 *     pre_classifier tensors under their checkpoint names.
 *
 *   PEFT_LINEAR_PATHS / ADAPTERHUB_BLOCK_PATHS: module paths per family, as transformers names them.
 *
 * The `.bin` files are stand-ins (a zip header, as torch.save writes a zip): nothing here can
 * pickle, and the importers must refuse them without reading.
 */

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { EncoderFamily, LayerBlock, LinearModule } from '../../src/pack/encoder-types.js';
import { type FloatDtype, writeSafetensors } from '../../src/pack/safetensors.js';
import type { Weight } from '../../src/pack/types.js';
import { Random } from '../../src/util/random.js';
import { roundTo } from './hf-folder.js';

/** The model an adapter was trained on (it may differ from the backbone it is imported into). */
export interface FixtureBackbone {
  readonly family: EncoderFamily;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly layers: number;
}

// ---------------------------------------------------------------------------------------------
// Python-style JSON (json.dumps(indent=2, sort_keys=True)): floats keep their '.0'.

/** A number Python holds as a float (written 1.0, not 1). */
export class PyFloat {
  constructor(readonly value: number) {}
}
export const float = (value: number) => new PyFloat(value);

export function pythonJson(value: unknown, indent = 0): string {
  const pad = ' '.repeat(indent + 2);
  const end = ' '.repeat(indent);
  if (value instanceof PyFloat) {
    return Number.isInteger(value.value) ? value.value.toFixed(1) : String(value.value);
  }
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((item) => pad + pythonJson(item, indent + 2)).join(',\n')}\n${end}]`;
  }
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort();
    if (keys.length === 0) return '{}';
    return `{\n${keys
      .map(
        (key) =>
          `${pad}${JSON.stringify(key)}: ${pythonJson((value as Record<string, unknown>)[key], indent + 2)}`,
      )
      .join(',\n')}\n${end}}`;
  }
  return JSON.stringify(value);
}

/** Strip PyFloat wrappers: the value a JSON reader sees. */
export function plainJson<T>(value: T): T {
  return JSON.parse(pythonJson(value)) as T;
}

/** torch.save writes a zip archive; a stand-in with its magic, never read. */
const PICKLE_STAND_IN = new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0]);

// ---------------------------------------------------------------------------------------------
// Module names (transformers' modeling_bert.py / modeling_roberta.py / modeling_distilbert.py)

export const PEFT_LINEAR_PATHS: Record<'bert' | 'distilbert', Record<LinearModule, string>> = {
  bert: {
    query: 'attention.self.query',
    key: 'attention.self.key',
    value: 'attention.self.value',
    attention_output: 'attention.output.dense',
    intermediate: 'intermediate.dense',
    output: 'output.dense',
  },
  distilbert: {
    query: 'attention.q_lin',
    key: 'attention.k_lin',
    value: 'attention.v_lin',
    attention_output: 'attention.out_lin',
    intermediate: 'ffn.lin1',
    output: 'ffn.lin2',
  },
};

/** Where the `adapters` library puts a layer's BottleneckLayer for each block. */
export const ADAPTERHUB_BLOCK_PATHS: Record<'bert' | 'distilbert', Record<LayerBlock, string>> = {
  bert: { attention: 'attention.output', ffn: 'output' },
  distilbert: { attention: 'attention_adapters', ffn: 'output_adapters' },
};

const MODULE_ORDER: LinearModule[] = [
  'query',
  'key',
  'value',
  'attention_output',
  'intermediate',
  'output',
];

function kind(family: EncoderFamily): 'bert' | 'distilbert' {
  return family === 'distilbert' ? 'distilbert' : 'bert';
}

/** base_model_prefix of the family's pretrained-model classes. */
export function modelPrefix(family: EncoderFamily): string {
  return family === 'distilbert' ? 'distilbert' : family === 'bert' ? 'bert' : 'roberta';
}

function layerList(family: EncoderFamily): string {
  return family === 'distilbert' ? 'transformer.layer' : 'encoder.layer';
}

function className(family: EncoderFamily): string {
  return {
    bert: 'Bert',
    roberta: 'Roberta',
    'xlm-roberta': 'XLMRoberta',
    distilbert: 'DistilBert',
  }[family];
}

interface LinearInfo {
  readonly key: string;
  readonly inSize: number;
  readonly outSize: number;
  readonly layer?: number;
  readonly module?: LinearModule;
}

/**
 * The nn.Linear modules of a model in named_modules() order: every layer's linears, then the
 * pooler (BertModel and RobertaModel have one unless a task model turns it off: Roberta and
 * XLM-R task models do), then a sequence-classification head's linears.
 */
function linearModules(backbone: FixtureBackbone, taskModel: boolean): LinearInfo[] {
  const { family, hiddenSize: d, intermediateSize: f } = backbone;
  const prefix = taskModel ? `${modelPrefix(family)}.` : '';
  const paths = PEFT_LINEAR_PATHS[kind(family)];
  const out: LinearInfo[] = [];
  for (let layer = 0; layer < backbone.layers; layer++) {
    for (const module of MODULE_ORDER) {
      out.push({
        key: `${prefix}${layerList(family)}.${layer}.${paths[module]}`,
        inSize: module === 'output' ? f : d,
        outSize: module === 'intermediate' ? f : d,
        layer,
        module,
      });
    }
  }
  const hasPooler = family === 'bert' || (!taskModel && family !== 'distilbert');
  if (hasPooler) out.push({ key: `${prefix}pooler.dense`, inSize: d, outSize: d });
  return out;
}

// ---------------------------------------------------------------------------------------------
// PEFT

export interface PeftFixtureOptions {
  /** The model the adapter was trained on. */
  readonly backbone: FixtureBackbone;
  readonly seed?: number;
  readonly r?: number; // default 8
  readonly loraAlpha?: number; // default 8
  readonly useRslora?: boolean;
  /** A list, or a regex string; default PEFT's default for the family (query, value). */
  readonly targetModules?: readonly string[] | string;
  readonly excludeModules?: readonly string[] | string;
  readonly layersToTransform?: readonly number[] | number;
  readonly layersPattern?: readonly string[] | string;
  readonly rankPattern?: Readonly<Record<string, number>>;
  readonly alphaPattern?: Readonly<Record<string, number>>;
  /** Saved from the family's *ForSequenceClassification model (keys carry its prefix). */
  readonly taskModel?: boolean;
  /** task_type SEQ_CLS with this many labels: the classifier is saved (implies taskModel). */
  readonly head?: { readonly numLabels: number };
  /** Std of A and B entries (default 0.2; B is nonzero, as after training). */
  readonly std?: number;
  /** 'bin': only adapter_model.bin. */
  readonly weights?: 'safetensors' | 'bin';
  /** The dtype the state dict was saved in (default F32); values are rounded to it. */
  readonly dtype?: FloatDtype;
  /** Keys without base_model.model. (inject_adapter_in_model + get_peft_model_state_dict). */
  readonly noPeftPrefix?: boolean;
  /** Merged over the written config (bad or unsupported values). */
  readonly configOverrides?: Readonly<Record<string, unknown>>;
}

export interface PeftFixtureModule {
  readonly layer: number;
  readonly module: LinearModule;
  readonly key: string; // named_modules() key
  readonly r: number;
  readonly alpha: number;
  readonly scaling: number;
  readonly a: Float32Array; // [r,in]
  readonly b: Float32Array; // [out,r]
  readonly inSize: number;
  readonly outSize: number;
}

export interface PeftFixture {
  readonly dir: string;
  readonly configPath: string;
  readonly weightsPath: string;
  /** adapter_config.json as written (parsed). */
  readonly config: Record<string, unknown>;
  /** Adapted encoder modules, in named_modules() order. */
  readonly modules: readonly PeftFixtureModule[];
  /** A LoRA on the pooler (when target_modules reaches pooler.dense). */
  readonly pooler?: PeftFixtureModule;
  /** Every tensor written, by its saved name. */
  readonly tensors: ReadonlyMap<string, Weight>;
  /** The classifier tensors written (saved names), when `head`. */
  readonly headTensors: readonly string[];
}

const PEFT_DEFAULT_TARGETS: Record<string, string[]> = {
  bert: ['query', 'value'],
  roberta: ['query', 'value'],
  'xlm-roberta': ['query', 'value'],
};

/** LoraConfig.to_dict() of this PEFT version, as save_pretrained writes it. */
function peftConfigDict(options: PeftFixtureOptions, modulesToSave: string[] | null) {
  const family = options.backbone.family;
  const targets = options.targetModules ?? PEFT_DEFAULT_TARGETS[family];
  if (!targets) throw new Error(`fixture: give targetModules for ${family}`);
  return {
    alora_invocation_tokens: null,
    alpha_pattern: { ...(options.alphaPattern ?? {}) },
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: `fixtures/${family}-tiny`,
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: options.excludeModules ?? null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    kasa_config: null,
    layer_replication: null,
    layers_pattern: options.layersPattern ?? null,
    layers_to_transform: options.layersToTransform ?? null,
    loftq_config: {},
    lora_alpha: options.loraAlpha ?? 8,
    lora_bias: false,
    lora_dropout: float(0.1),
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: modulesToSave,
    monteclora_config: null,
    peft_type: 'LORA',
    peft_version: '0.18.1',
    qalora_group_size: 16,
    r: options.r ?? 8,
    rank_pattern: { ...(options.rankPattern ?? {}) },
    revision: null,
    target_modules: targets,
    target_parameters: null,
    task_type: options.head ? 'SEQ_CLS' : 'FEATURE_EXTRACTION',
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: false,
    use_qalora: false,
    use_rslora: options.useRslora ?? false,
    velora_config: null,
    ...(options.configOverrides ?? {}),
  };
}

/** PEFT's check_target_module_exists for the LoRA tuner (tuners_utils.py), written for fixtures. */
function peftMatches(
  config: ReturnType<typeof peftConfigDict>,
  key: string,
  modulesToSave: readonly string[],
): boolean {
  const exclude = config.exclude_modules as readonly string[] | string | null;
  if (exclude) {
    if (typeof exclude === 'string') {
      if (new RegExp(`^(?:${exclude})$`).test(key)) return false;
    } else if (exclude.includes(key) || exclude.some((e) => key.endsWith(`.${e}`))) return false;
  }
  if (modulesToSave.some((m) => new RegExp(`^(|.*\\.)${m}($|\\..*)`).test(key))) return false;
  const targets = config.target_modules as readonly string[] | string;
  if (typeof targets === 'string') return new RegExp(`^(?:${targets})$`).test(key);
  if (targets.includes(key)) return true;
  if (!targets.some((t) => key.endsWith(`.${t}`))) return false;
  const indexes = config.layers_to_transform as readonly number[] | number | null;
  if (indexes === null || (Array.isArray(indexes) && indexes.length === 0)) return true;
  const patterns = config.layers_pattern as readonly string[] | string | null;
  let match: RegExpExecArray | null = null;
  if (!patterns || patterns.length === 0) match = /^.*?\.[^.]*\.(\d+)\./.exec(key);
  else {
    for (const p of typeof patterns === 'string' ? [patterns] : patterns) {
      match = new RegExp(`^.*?\\.${p}\\.(\\d+)\\.`).exec(key);
      if (match) break;
    }
  }
  if (!match) return false;
  const layer = Number(match[1]);
  return typeof indexes === 'number' ? layer === indexes : (indexes as number[]).includes(layer);
}

/** get_pattern_key (utils/other.py). */
function patternValue(
  patterns: Readonly<Record<string, number>>,
  key: string,
  fallback: number,
): number {
  for (const [pattern, value] of Object.entries(patterns)) {
    if (new RegExp(`^(.*\\.)?(${pattern})$`).test(key)) return value;
  }
  return fallback;
}

export async function writePeftLoraFolder(
  dir: string,
  options: PeftFixtureOptions,
): Promise<PeftFixture> {
  const backbone = options.backbone;
  const { family, hiddenSize: d } = backbone;
  const random = new Random(options.seed ?? 1);
  const std = options.std ?? 0.2;
  const taskModel = options.taskModel ?? options.head !== undefined;
  // PeftModelForSequenceClassification appends 'classifier' and 'score' to modules_to_save.
  const modulesToSave = options.head ? ['classifier', 'score'] : null;
  const config = peftConfigDict(options, modulesToSave);
  const rankPattern = (config.rank_pattern ?? {}) as Record<string, number>;
  const alphaPattern = (config.alpha_pattern ?? {}) as Record<string, number>;
  const peftPrefix = options.noPeftPrefix ? '' : 'base_model.model.';

  const tensors = new Map<string, Weight>();
  const modules: PeftFixtureModule[] = [];
  let pooler: PeftFixtureModule | undefined;
  for (const linear of linearModules(backbone, taskModel)) {
    if (!peftMatches(config, linear.key, modulesToSave ?? [])) continue;
    const r = patternValue(rankPattern, linear.key, config.r as number);
    const alpha = patternValue(alphaPattern, linear.key, config.lora_alpha as number);
    const scaling = config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    const dtype = options.dtype ?? 'F32';
    const a = random.normals(r * linear.inSize, std).map((x) => roundTo(dtype, x));
    const b = random.normals(linear.outSize * r, std).map((x) => roundTo(dtype, x));
    tensors.set(`${peftPrefix}${linear.key}.lora_A.weight`, { shape: [r, linear.inSize], data: a });
    tensors.set(`${peftPrefix}${linear.key}.lora_B.weight`, {
      shape: [linear.outSize, r],
      data: b,
    });
    const entry = {
      layer: linear.layer ?? -1,
      module: linear.module ?? 'query',
      key: linear.key,
      r,
      alpha,
      scaling,
      a,
      b,
      inSize: linear.inSize,
      outSize: linear.outSize,
    };
    if (linear.module) modules.push(entry);
    else pooler = entry;
  }

  // modules_to_save: ModulesToSaveWrapper.adapter_state_dict keeps the module's own names.
  const headTensors: string[] = [];
  if (options.head) {
    const L = options.head.numLabels;
    const add = (name: string, shape: number[]) => {
      const key = `${peftPrefix}${name}`;
      tensors.set(key, {
        shape,
        data: random.normals(
          shape.reduce((x, y) => x * y, 1),
          std,
        ),
      });
      headTensors.push(key);
    };
    if (family === 'roberta' || family === 'xlm-roberta') {
      add('classifier.dense.weight', [d, d]);
      add('classifier.dense.bias', [d]);
      add('classifier.out_proj.weight', [L, d]);
      add('classifier.out_proj.bias', [L]);
    } else {
      if (family === 'distilbert') {
        // 'pre_classifier'.endswith('classifier'): _set_trainable wraps and saves it too.
        add('pre_classifier.weight', [d, d]);
        add('pre_classifier.bias', [d]);
      }
      add('classifier.weight', [L, d]);
      add('classifier.bias', [L]);
    }
  }

  await mkdir(dir, { recursive: true });
  const configPath = join(dir, 'adapter_config.json');
  await writeFile(configPath, pythonJson(config));
  let weightsPath: string;
  if (options.weights === 'bin') {
    weightsPath = join(dir, 'adapter_model.bin');
    await writeFile(weightsPath, PICKLE_STAND_IN);
  } else {
    weightsPath = join(dir, 'adapter_model.safetensors');
    const dtype = options.dtype ?? 'F32';
    await writeSafetensors(
      weightsPath,
      Object.fromEntries([...tensors].map(([name, t]) => [name, { ...t, dtype }])),
      { format: 'pt' },
    );
  }
  return {
    dir,
    configPath,
    weightsPath,
    config: plainJson(config) as Record<string, unknown>,
    modules,
    ...(pooler ? { pooler } : {}),
    tensors,
    headTensors,
  };
}

// ---------------------------------------------------------------------------------------------
// AdapterHub

/** BnConfig's fields and defaults (configuration/adapter_config.py), without the required four. */
function bnDefaults(): Record<string, unknown> {
  return {
    original_ln_before: false,
    original_ln_after: true,
    ln_before: false,
    ln_after: false,
    init_weights: 'bert',
    init_weights_seed: null,
    is_parallel: false,
    scaling: float(1),
    use_gating: false,
    residual_before_ln: true,
    adapter_residual_before_ln: false,
    inv_adapter: null,
    inv_adapter_reduction_factor: null,
    cross_adapter: false,
    leave_out: [],
    dropout: float(0),
    phm_layer: false,
    phm_dim: 4,
    factorized_phm_W: true,
    shared_W_phm: false,
    shared_phm_rule: true,
    factorized_phm_rule: false,
    phm_c_init: 'normal',
    phm_init_range: float(0.0001),
    learn_phm: true,
    hypercomplex_nonlinearity: 'glorot-uniform',
    phm_rank: 1,
    phm_bias: true,
    stochastic_depth: float(0),
  };
}

/** SeqBnConfig() / DoubleSeqBnConfig() as to_dict() writes them. */
export function adapterHubConfigDict(name: 'seq_bn' | 'double_seq_bn'): Record<string, unknown> {
  const seq = {
    ...bnDefaults(),
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
  if (name === 'seq_bn') return seq;
  return { ...seq, original_ln_before: false, mh_adapter: true, non_linearity: 'swish' };
}

export type AdapterHubHeadFixture =
  | {
      /** An *AdapterModel's flex ClassificationHead (heads/base.py). */
      readonly kind: 'flex';
      readonly numLabels: number;
      readonly layers?: 1 | 2; // default 2
      readonly activation?: string | null; // default 'tanh'
      readonly usePooler?: boolean;
      readonly bias?: boolean;
      readonly labels?: readonly string[];
      readonly name?: string; // default: the adapter's name
    }
  | {
      /** A *ForSequenceClassification model's own head (head_config "config": null). */
      readonly kind: 'static';
      readonly numLabels: number;
      readonly labels?: readonly string[];
    };

export interface AdapterHubFixtureOptions {
  readonly backbone: FixtureBackbone;
  readonly seed?: number;
  /** The adapter's name (in tensor names and the config). Default 'lang'. */
  readonly name?: string;
  /** The config class; default 'seq_bn'. */
  readonly config?: 'seq_bn' | 'double_seq_bn';
  /** Merged into the config dict (reduction_factor, leave_out, ln_before, scaling, ...). */
  readonly configOverrides?: Readonly<Record<string, unknown>>;
  /** Write "config": "<name>" instead of the dict (as a config given by name, old files). */
  readonly configByName?: boolean;
  /** Merged into the top-level document (hidden_size, model_type, ...). */
  readonly topOverrides?: Readonly<Record<string, unknown>>;
  /** Saved from an *AdapterModel or task model (tensor names carry the prefix). Default true. */
  readonly prefixed?: boolean;
  /** An adapter-transformers v1 file: no "version" (old activation names). */
  readonly legacy?: boolean;
  /** With ln_before: which names the LayerNorm is saved under (default both, as a state dict). */
  readonly lnBeforeNames?: 'both' | 'down' | 'norm';
  readonly std?: number; // default 0.2
  readonly weights?: 'safetensors' | 'bin';
  readonly head?: AdapterHubHeadFixture;
}

export interface AdapterHubFixtureBlock {
  readonly layer: number;
  readonly block: LayerBlock;
  readonly m: number;
  readonly down: Float32Array; // [m,d]
  readonly downBias: Float32Array; // [m]
  readonly up: Float32Array; // [d,m], unscaled, as saved
  readonly upBias: Float32Array; // [d]
  /** The scaling as the forward applies it, per output channel [d]. */
  readonly scale: Float32Array;
  readonly lnBefore?: { readonly gamma: Float32Array; readonly beta: Float32Array };
  /** Saved name of the down projection's weight. */
  readonly downName: string;
}

export interface AdapterHubFixture {
  readonly dir: string;
  readonly configPath: string;
  readonly weightsPath: string;
  readonly document: Record<string, unknown>;
  readonly blocks: readonly AdapterHubFixtureBlock[];
  readonly tensors: ReadonlyMap<string, Weight>;
  readonly head?: {
    readonly configPath: string;
    readonly weightsPath: string;
    readonly tensors: ReadonlyMap<string, Weight>;
  };
}

export async function writeAdapterHubFolder(
  dir: string,
  options: AdapterHubFixtureOptions,
): Promise<AdapterHubFixture> {
  const backbone = options.backbone;
  const { family, hiddenSize: d } = backbone;
  const random = new Random(options.seed ?? 1);
  const std = options.std ?? 0.2;
  const name = options.name ?? 'lang';
  const prefixed = options.prefixed ?? true;
  const configName = options.config ?? 'seq_bn';
  const config = { ...adapterHubConfigDict(configName), ...(options.configOverrides ?? {}) };
  const plain = plainJson(config);
  const modelClass =
    options.head?.kind === 'static'
      ? `${className(family)}ForSequenceClassification`
      : prefixed
        ? `${className(family)}AdapterModel`
        : `${className(family)}Model`;
  const document: Record<string, unknown> = {
    config: options.configByName ? configName : config,
    hidden_size: d,
    model_class: modelClass,
    model_name: `fixtures/${family}-tiny`,
    model_type: family,
    name,
    ...(options.legacy ? {} : { version: 'adapters.1.2.0' }),
    ...(options.topOverrides ?? {}),
  };

  const prefix = prefixed ? `${modelPrefix(family)}.` : '';
  const blockPaths = ADAPTERHUB_BLOCK_PATHS[kind(family)];
  const leaveOut = (plain.leave_out ?? []) as number[];
  const tensors = new Map<string, Weight>();
  const blocks: AdapterHubFixtureBlock[] = [];
  for (let layer = 0; layer < backbone.layers; layer++) {
    if (leaveOut.includes(layer)) continue;
    for (const block of ['attention', 'ffn'] as const) {
      // BertSelfOutput / BertOutput register attention.output first, then output (named order).
      if (!(block === 'attention' ? plain.mh_adapter : plain.output_adapter)) continue;
      const rf = plain.reduction_factor as number | Record<string, number>;
      const factor = typeof rf === 'number' ? rf : (rf[String(layer)] ?? rf.default!);
      const m = Math.max(1, Math.floor(d / factor));
      const base = `${prefix}${layerList(family)}.${layer}.${blockPaths[block]}.adapters.${name}.`;
      const put = (part: string, shape: number[], data: Float32Array) =>
        tensors.set(base + part, { shape, data });
      let lnBefore: { gamma: Float32Array; beta: Float32Array } | undefined;
      const linear = plain.ln_before ? 1 : 0;
      if (plain.ln_before) {
        const gamma = random.normals(d, std).map((x) => 1 + x);
        const beta = random.normals(d, std);
        lnBefore = { gamma, beta };
        const names = options.lnBeforeNames ?? 'both';
        if (names !== 'norm') {
          put('adapter_down.0.weight', [d], gamma);
          put('adapter_down.0.bias', [d], beta);
        }
        if (names !== 'down') {
          put('adapter_norm_before.weight', [d], gamma);
          put('adapter_norm_before.bias', [d], beta);
        }
      }
      const down = random.normals(m * d, std);
      const downBias = random.normals(m, std);
      const up = random.normals(d * m, std);
      const upBias = random.normals(d, std);
      put(`adapter_down.${linear}.weight`, [m, d], down);
      put(`adapter_down.${linear}.bias`, [m], downBias);
      put('adapter_up.weight', [d, m], up);
      put('adapter_up.bias', [d], upBias);
      let scale: Float32Array;
      if (plain.scaling === 'learned') {
        const s = random.normals(1, 0.5).map((x) => 1 + x);
        put('scaling', [1], s);
        scale = new Float32Array(d).fill(s[0]!);
      } else if (plain.scaling === 'channel') {
        scale = random.normals(d, 0.5).map((x) => 1 + x);
        put('scaling', [d], scale);
      } else {
        scale = new Float32Array(d).fill(plain.scaling as number);
      }
      blocks.push({
        layer,
        block,
        m,
        down,
        downBias,
        up,
        upBias,
        scale,
        downName: `${base}adapter_down.${linear}.weight`,
        ...(lnBefore ? { lnBefore } : {}),
      });
    }
  }

  await mkdir(dir, { recursive: true });
  const configPath = join(dir, 'adapter_config.json');
  await writeFile(configPath, pythonJson(document));
  let weightsPath: string;
  if (options.weights === 'bin') {
    weightsPath = join(dir, 'pytorch_adapter.bin');
    await writeFile(weightsPath, PICKLE_STAND_IN);
  } else {
    weightsPath = join(dir, 'adapter.safetensors');
    // AdapterHub's save_weights calls save_file(state_dict, path): no metadata.
    await writeSafetensors(weightsPath, Object.fromEntries(tensors));
  }
  const head = options.head
    ? await writeAdapterHubHead(dir, options, options.head, random, name, modelClass)
    : undefined;
  return {
    dir,
    configPath,
    weightsPath,
    document: plainJson(document),
    blocks,
    tensors,
    ...(head ? { head } : {}),
  };
}

async function writeAdapterHubHead(
  dir: string,
  options: AdapterHubFixtureOptions,
  head: AdapterHubHeadFixture,
  random: Random,
  adapterName: string,
  modelClass: string,
) {
  const { family, hiddenSize: d } = options.backbone;
  const std = options.std ?? 0.2;
  const L = head.numLabels;
  const labels = head.labels ?? Array.from({ length: L }, (_, i) => `LABEL_${i}`);
  const label2id = Object.fromEntries(labels.map((label, i) => [label, i]));
  const tensors = new Map<string, Weight>();
  const add = (n: string, shape: number[]) =>
    tensors.set(n, {
      shape,
      data: random.normals(
        shape.reduce((x, y) => x * y, 1),
        std,
      ),
    });
  let document: Record<string, unknown>;
  if (head.kind === 'flex') {
    const layers = head.layers ?? 2;
    const activation = head.activation === undefined ? 'tanh' : head.activation;
    const bias = head.bias ?? true;
    const name = head.name ?? adapterName;
    // PredictionHead.build: per layer Dropout, then Linear(d,d) (+ activation) or the last Linear.
    let index = 0;
    for (let layer = 0; layer < layers; layer++) {
      index++;
      const at = index++;
      if (layer < layers - 1) {
        add(`heads.${name}.${at}.weight`, [d, d]);
        add(`heads.${name}.${at}.bias`, [d]);
        if (activation) index++;
      } else {
        add(`heads.${name}.${at}.weight`, [L, d]);
        if (bias) add(`heads.${name}.${at}.bias`, [L]);
      }
    }
    document = {
      config: {
        activation_function: activation,
        bias,
        dropout_prob: null,
        head_type: 'classification',
        label2id,
        layers,
        num_labels: L,
        use_pooler: head.usePooler ?? false,
      },
      hidden_size: d,
      model_class: modelClass,
      model_name: `fixtures/${family}-tiny`,
      model_type: family,
      name,
      version: 'adapters.1.2.0',
    };
  } else {
    if (family === 'roberta' || family === 'xlm-roberta') {
      add('classifier.dense.weight', [d, d]);
      add('classifier.dense.bias', [d]);
      add('classifier.out_proj.weight', [L, d]);
      add('classifier.out_proj.bias', [L]);
    } else {
      if (family === 'distilbert') {
        add('pre_classifier.weight', [d, d]);
        add('pre_classifier.bias', [d]);
      }
      add('classifier.weight', [L, d]);
      add('classifier.bias', [L]);
    }
    document = {
      config: null,
      hidden_size: d,
      label2id,
      model_class: modelClass,
      model_name: `fixtures/${family}-tiny`,
      model_type: family,
      name: null,
      num_labels: L,
      version: 'adapters.1.2.0',
    };
  }
  const configPath = join(dir, 'head_config.json');
  await writeFile(configPath, pythonJson(document));
  let weightsPath: string;
  if (options.weights === 'bin') {
    weightsPath = join(dir, 'pytorch_model_head.bin');
    await writeFile(weightsPath, PICKLE_STAND_IN);
  } else {
    weightsPath = join(dir, 'model_head.safetensors');
    await writeSafetensors(weightsPath, Object.fromEntries(tensors));
  }
  return { configPath, weightsPath, tensors };
}

// ---------------------------------------------------------------------------------------------
// Base model parts

export interface BaseModelFixture {
  /** config.json, parsed. */
  readonly config: Record<string, unknown>;
  /** Pooler (BERT, RoBERTa) or pre_classifier (DistilBERT) tensors by checkpoint name. */
  readonly tensors: Map<string, Weight>;
}

/**
 * The parts of a base model folder a head reads: config.json with `id2label` (default
 * transformers' two LABEL_i) and the pooler / pre_classifier, under `<prefix>.` names when
 * `taskModel` (a *ForSequenceClassification checkpoint) and bare names otherwise.
 */
export function baseModelParts(
  backbone: FixtureBackbone,
  options: { seed?: number; taskModel?: boolean; id2label?: Record<string, string> } = {},
): BaseModelFixture {
  const { family, hiddenSize: d } = backbone;
  const random = new Random(options.seed ?? 7);
  const tensors = new Map<string, Weight>();
  const prefix = options.taskModel ? `${modelPrefix(family)}.` : '';
  const name = family === 'distilbert' ? 'pre_classifier' : `${prefix}pooler.dense`;
  tensors.set(`${name}.weight`, { shape: [d, d], data: random.normals(d * d, 0.2) });
  tensors.set(`${name}.bias`, { shape: [d], data: random.normals(d, 0.2) });
  const config: Record<string, unknown> = {
    architectures: [
      `${className(family)}${options.taskModel ? 'ForSequenceClassification' : 'Model'}`,
    ],
    hidden_size: d,
    id2label: options.id2label ?? { '0': 'LABEL_0', '1': 'LABEL_1' },
    intermediate_size: backbone.intermediateSize,
    model_type: family,
    num_hidden_layers: backbone.layers,
  };
  return { config, tensors };
}
