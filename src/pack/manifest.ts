/**
 * The model pack's file formats as TypeBox schemas: `manifest.json` and an adapter folder's
 * `adapter_config.json`. These definitions are the source of truth; `models/*.schema.json` are
 * written from them by `npm run schema` (src/tools/write-schemas.ts), and a test keeps the two in
 * sync. Validation is ajv, with errors that name the file and the JSON pointer of the field.
 *
 * The schemas check the shape of each document on its own. What needs the files or the whole pack
 * (tensor shapes, gate experts = group adapters, unique ids, pins, paths inside the pack) is checked
 * by the loader in load.ts.
 */

import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import Type, { type Static, type TSchema } from 'typebox';
import { BACKBONE_QUANTIZE_MODES } from './encoder-types.js';
import { PackError, type PackErrorCode } from './errors.js';

export const PACK_FORMAT = 'moe-serve/pack';
export const ADAPTER_FORMAT = 'moe-serve/adapter';
/** The format_version this code reads and writes, for both documents. */
export const FORMAT_VERSION = 1;
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';
export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter.safetensors';
export const MANIFEST_FILE = 'manifest.json';

const JSON_SCHEMA_DRAFT = 'http://json-schema.org/draft-07/schema#';

const Id = (description: string) =>
  Type.String({ pattern: ID_PATTERN, description: `${description} Pattern: ${ID_PATTERN}.` });

const RelativePath = (description: string) =>
  Type.String({
    minLength: 1,
    maxLength: 1024,
    description: `${description} Relative to the pack folder, '/'-separated; must stay inside it.`,
  });

export const ActivationSchema = Type.Enum(['gelu', 'relu', 'tanh', 'identity'], {
  description: 'Non-linearity: gelu (erf form), relu, tanh or identity.',
});

const Metadata = Type.Record(Type.String(), Type.Unknown(), {
  description: 'Free-form information (training data, metrics, provenance); ignored by the loader.',
});

const SchemaRef = Type.String({
  description: 'Optional JSON Schema reference for editors; ignored by the loader.',
});

export const BackboneSchema = Type.Object(
  {
    file: Type.Optional(
      RelativePath(
        'An ONNX encoder file with the Hugging Face feature-extraction contract: inputs input_ids and attention_mask (int64 [B,T]), optional token_type_ids, output last_hidden_state (float32 [B,T,hidden_size]). Needs hidden_size and max_length.',
      ),
    ),
    huggingface: Type.Optional(
      RelativePath(
        'A Hugging Face model folder (config.json, model.safetensors or a sharded index; model_type bert, roberta, xlm-roberta or distilbert). The server builds its own ONNX graph from it on first start and caches it (see models/README.md).',
      ),
    ),
    onnx_export: Type.Optional(
      RelativePath(
        'An ONNX export folder (Optimum / transformers.js layout): onnx/model.onnx or model.onnx, with its .onnx_data when present. Hosts top-of-backbone adapter groups only.',
      ),
    ),
    variant: Type.Optional(
      Type.Enum(['default', 'quantized'], {
        description:
          "Only with onnx_export: 'default' runs model.onnx, 'quantized' model_quantized.onnx.",
      }),
    ),
    quantize: Type.Optional(
      Type.Enum([...BACKBONE_QUANTIZE_MODES], {
        description:
          "Only with huggingface: 'int8' builds the graph with dynamic int8 projections (int8 weights with per-channel scales, uint8 activations quantized per batch at run time; embeddings, LayerNorm, softmax, adapters, gates and heads stay float32); 'none' (default) float32. About 2x the items/s on CPU for a small quality cost (models/README.md).",
      }),
    ),
    hidden_size: Type.Optional(
      Type.Integer({
        minimum: 1,
        description:
          'Width d of last_hidden_state; every adapter, gate and head must use it. Required with file; with a folder, read from its config.json and checked when given.',
      }),
    ),
    max_length: Type.Optional(
      Type.Integer({
        minimum: 1,
        description:
          "Most tokens per input the backbone accepts, special tokens included; longer inputs are truncated. Required with file; with a folder, default: the least of the model's position limit, tokenizer_config.json model_max_length and sentence-transformers max_seq_length.",
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      'The shared encoder, run once per batch: exactly one of file, huggingface or onnx_export.',
  },
);

export const PoolingSchema = Type.Object(
  {
    mode: Type.Enum(['mean', 'cls', 'max'], {
      description:
        "How token states become one vector: 'mean' (masked mean), 'cls' (the first token), 'max' (masked max), as sentence-transformers' Pooling.",
    }),
    normalize: Type.Boolean({
      description: 'L2-normalise the embedding output (sentence-transformers Normalize module).',
    }),
  },
  {
    additionalProperties: false,
    description:
      "How gates, heads and the embedding output pool the hidden state. Default: a Hugging Face backbone's sentence-transformers files (modules.json, 1_Pooling/config.json), else mean and normalize.",
  },
);

export const TokenizerSchema = Type.Object(
  {
    type: Type.Literal('huggingface', {
      description: "Tokenizer kind; 'huggingface' is a Hugging Face tokenizer.json.",
    }),
    file: RelativePath('The tokenizer.json file.'),
  },
  { additionalProperties: false, description: 'How text becomes input_ids for the backbone.' },
);

export const AdapterRefSchema = Type.Object(
  {
    id: Id('Adapter id, unique in the pack; must equal the id in its adapter_config.json.'),
    path: RelativePath('Adapter folder holding adapter_config.json and adapter.safetensors.'),
  },
  { additionalProperties: false, description: 'One expert of the group.' },
);

export const GateSchema = Type.Object(
  {
    type: Type.Enum(['linear', 'mlp', 'token_bag'], {
      description:
        "Router kind. 'linear': logits = pooled @ weight + bias (tensors weight [d,E], bias [E]). 'mlp': logits = act(pooled @ hidden.weight + hidden.bias) @ out.weight + out.bias (tensors hidden.weight [d,h], hidden.bias [h], out.weight [h,E], out.bias [E]). 'token_bag': reads the token ids, not the hidden state (it runs before the backbone): pooled = mean of embedding.weight rows over the input's tokens and hashed token bigrams, then out.weight / out.bias, optionally after a hidden layer (tensors embedding.weight [V + bigram_buckets, w], out.weight [w,E], out.bias [E]; with activation also hidden.weight [w,h], hidden.bias [h] and out.weight [h,E]).",
    }),
    file: RelativePath('safetensors file with the gate tensors (F32, math layout x @ W).'),
    experts: Type.Array(Id('Adapter id.'), {
      minItems: 1,
      description:
        "Column order of the gate's logits: experts[j] is the adapter column j scores. Exactly the group's adapter ids, each once.",
    }),
    activation: Type.Optional({
      ...ActivationSchema,
      description:
        "Hidden-layer non-linearity; required for 'mlp', not allowed for 'linear'; for 'token_bag' it adds the hidden layer (hidden.weight, hidden.bias).",
    }),
    bigram_buckets: Type.Optional(
      Type.Integer({
        minimum: 0,
        description:
          "Only for 'token_bag', and required there: the hashed token-bigram rows N at the end of embedding.weight (0: token ids only). Adjacent real tokens a, b use row V + (a * 1000003 + b) mod N, V = rows - N.",
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      "A learned router: over the masked mean of the hidden state entering the group ('linear', 'mlp'), or over the input's token ids ('token_bag').",
  },
);

export const GroupSchema = Type.Object(
  {
    id: Id('Group id, unique in the pack (e.g. language, task).'),
    default_k: Type.Integer({
      minimum: 1,
      description:
        'Experts mixed per input when a request does not say; at most the number of adapters.',
    }),
    adapters: Type.Array(AdapterRefSchema, {
      minItems: 1,
      description: 'The experts of this group; this order is the bank order.',
    }),
    gate: Type.Union([GateSchema, Type.Null()], {
      description: 'The learned router, or null when the group is routed by the request only.',
    }),
    default_adapter: Type.Optional(
      Id(
        'Only for a group without a gate: the adapter used when a request pins none of its adapters; without it, such requests must pin one.',
      ),
    ),
    default_top_p: Type.Optional(
      Type.Number({
        exclusiveMinimum: 0,
        maximum: 1,
        description:
          'Top-p of the gate when a request does not say: per input, the fewest adapters (at most k) whose gate probabilities reach p. Default 1: always k.',
      }),
    ),
    slots: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 4096,
        description:
          "Adapters the group holds ready in the engine at once (its slot banks). Every adapter the gate can choose needs a slot; others are written into one when a request names them, evicting the least recently used. Default: twice the pack's adapters of the group, at least 16.",
      }),
    ),
    rank: Type.Optional(
      Type.Integer({
        minimum: 1,
        description:
          "Largest adapter rank (bottleneck width) a slot holds; adapters loaded later must fit it. Default: the largest rank among the pack's adapters of the group.",
      }),
    ),
    placement: Type.Optional(
      Type.Enum(['top', 'layers'], {
        description:
          "Where the group's adapters sit: 'top' (default) on the backbone's last hidden state (our own adapter folders); 'layers' inside the backbone's layers (PEFT LoRA or AdapterHub bottleneck folders, all of one kind; needs a Hugging Face backbone).",
      }),
    ),
    targets: Type.Optional(
      Type.Array(
        Type.Enum(['query', 'key', 'value', 'attention_output', 'intermediate', 'output']),
        {
          minItems: 1,
          uniqueItems: true,
          description:
            "LoRA groups: the linear modules a slot can adapt (attention_output = the attention's output dense, intermediate / output = the feed-forward's two). Default: those the pack's adapters adapt.",
        },
      ),
    ),
    layers: Type.Optional(
      Type.Array(Type.Integer({ minimum: 0 }), {
        minItems: 1,
        uniqueItems: true,
        description:
          "Groups with placement 'layers': the layers (0-based) a slot can adapt. Default: those the pack's adapters adapt.",
      }),
    ),
    metadata: Type.Optional(Metadata),
  },
  {
    additionalProperties: false,
    description: 'Adapters applied at one stage of composition, their gate and defaults.',
  },
);

export const PinSchema = Type.Object(
  {
    group: Id('Group whose routing the task fixes.'),
    adapter: Id('Adapter of that group to pin (k = 1) when a request asks for this head.'),
  },
  { additionalProperties: false, description: 'Route to this adapter when this task is asked.' },
);

export const HeadSchema = Type.Object(
  {
    id: Id('Head (task) id, unique in the pack.'),
    file: RelativePath('safetensors file with weight [d,L] and bias [L] (F32, math layout).'),
    labels: Type.Array(Type.String({ minLength: 1 }), {
      minItems: 1,
      uniqueItems: true,
      description: 'Label names; labels[i] is logit column i, so L = labels.length.',
    }),
    pin: Type.Optional(PinSchema),
    metadata: Type.Optional(Metadata),
  },
  {
    additionalProperties: false,
    description: 'A classifier over the mean-pooled final hidden state (not L2-normalised).',
  },
);

export const ManifestSchema = Type.Object(
  {
    $schema: Type.Optional(SchemaRef),
    format: Type.Literal(PACK_FORMAT, { description: `Always '${PACK_FORMAT}'.` }),
    format_version: Type.Literal(FORMAT_VERSION, {
      description: `Version of this file format; this server reads ${FORMAT_VERSION}.`,
    }),
    name: Id('Pack name, usually the folder name.'),
    version: Type.String({
      minLength: 1,
      maxLength: 64,
      description: 'Version of the pack contents (e.g. 1.0.0), reported by the server.',
    }),
    description: Type.Optional(Type.String({ description: 'What the pack is for.' })),
    backbone: BackboneSchema,
    tokenizer: TokenizerSchema,
    pooling: Type.Optional(PoolingSchema),
    groups: Type.Array(GroupSchema, {
      description: 'Adapter groups in order of composition (e.g. language, then task).',
    }),
    heads: Type.Array(HeadSchema, { description: 'Task heads.' }),
    metadata: Type.Optional(Metadata),
  },
  {
    $id: 'manifest.schema.json',
    title: 'moe-serve model pack manifest',
    description: 'manifest.json at the root of a model pack folder.',
    additionalProperties: false,
  },
);

export const AdapterConfigSchema = Type.Object(
  {
    $schema: Type.Optional(SchemaRef),
    format: Type.Literal(ADAPTER_FORMAT, { description: `Always '${ADAPTER_FORMAT}'.` }),
    format_version: Type.Literal(FORMAT_VERSION, {
      description: `Version of this file format; this server reads ${FORMAT_VERSION}.`,
    }),
    id: Id('Adapter id.'),
    group: Id('The group this adapter belongs to; it must exist in the pack.'),
    type: Type.Literal('bottleneck', {
      description:
        "'bottleneck': adapter(h) = act(h @ down.weight + down.bias) @ up.weight + up.bias, applied to every token.",
    }),
    hidden_size: Type.Integer({
      minimum: 1,
      description: "Width d; must equal the backbone's hidden_size.",
    }),
    rank: Type.Integer({ minimum: 1, description: 'Bottleneck width r.' }),
    activation: {
      ...ActivationSchema,
      description: 'Non-linearity between down and up; the same for every adapter of a group.',
    },
    residual: Type.Boolean({
      description:
        'true: the adapter adds its input back, h + adapter(h); false: adapter(h) alone.',
    }),
    metadata: Type.Optional(Metadata),
  },
  {
    $id: 'adapter-config.schema.json',
    title: 'moe-serve adapter config',
    description:
      'adapter_config.json in an adapter folder, beside adapter.safetensors: down.weight [d,r], down.bias [r], up.weight [r,d], up.bias [d], all F32, math layout (x @ W).',
    additionalProperties: false,
  },
);

export type Activation = Static<typeof ActivationSchema>;
export type Manifest = Static<typeof ManifestSchema>;
export type ManifestGroup = Static<typeof GroupSchema>;
export type ManifestGate = Static<typeof GateSchema>;
export type ManifestHead = Static<typeof HeadSchema>;
export type ManifestBackbone = Static<typeof BackboneSchema>;
export type AdapterRef = Static<typeof AdapterRefSchema>;
export type AdapterConfig = Static<typeof AdapterConfigSchema>;

/** The JSON Schema documents as written to models/*.schema.json. */
export function manifestJsonSchema(): Record<string, unknown> {
  return toJsonSchema(ManifestSchema);
}

export function adapterConfigJsonSchema(): Record<string, unknown> {
  return toJsonSchema(AdapterConfigSchema);
}

function toJsonSchema(schema: TSchema): Record<string, unknown> {
  // TypeBox schemas are plain JSON Schema objects; a JSON round trip drops any non-JSON extras.
  const plain = JSON.parse(JSON.stringify(schema)) as Record<string, unknown>;
  return { $schema: JSON_SCHEMA_DRAFT, ...plain };
}

const ajv = new Ajv({ allErrors: true, strict: true });
const validateManifestFn = ajv.compile(manifestJsonSchema()) as ValidateFunction<Manifest>;
const validateAdapterConfigFn = ajv.compile(
  adapterConfigJsonSchema(),
) as ValidateFunction<AdapterConfig>;

/**
 * Validate a parsed manifest.json. Throws PackError PACK_INVALID_MANIFEST (or
 * PACK_UNSUPPORTED_VERSION) naming `file` and the JSON pointer of the first problem.
 */
export function validateManifest(value: unknown, file: string): Manifest {
  checkVersion(value, file, PACK_FORMAT);
  if (validateManifestFn(value)) return value;
  throw schemaError('PACK_INVALID_MANIFEST', file, validateManifestFn.errors ?? []);
}

/** Validate a parsed adapter_config.json; throws PackError PACK_INVALID_ADAPTER. */
export function validateAdapterConfig(value: unknown, file: string): AdapterConfig {
  checkVersion(value, file, ADAPTER_FORMAT);
  if (validateAdapterConfigFn(value)) return value;
  throw schemaError('PACK_INVALID_ADAPTER', file, validateAdapterConfigFn.errors ?? []);
}

/** A newer format_version is its own error: the fix is a newer server, not an edit. */
function checkVersion(value: unknown, file: string, format: string): void {
  if (value === null || typeof value !== 'object') return;
  const document = value as Record<string, unknown>;
  const version = document.format_version;
  if (document.format === format && typeof version === 'number' && version !== FORMAT_VERSION) {
    throw new PackError(
      'PACK_UNSUPPORTED_VERSION',
      file,
      '/format_version',
      `format_version ${version} is not supported; this server reads ${format} version ${FORMAT_VERSION}`,
    );
  }
}

/**
 * Turn ajv's errors into one PackError about the most specific problem: the deepest instance path
 * wins (so a bad field inside a `gate` object is reported instead of "must be null"), and type
 * errors at the same path are merged ("must be object or null").
 */
function schemaError(code: PackErrorCode, file: string, errors: ErrorObject[]): PackError {
  const located = errors
    .filter((error) => error.keyword !== 'anyOf')
    .map((error) => ({ error, ...describe(error) }));
  if (located.length === 0) return new PackError(code, file, '', 'does not match its schema');
  const depth = (pointer: string) => (pointer === '' ? 0 : pointer.split('/').length);
  const deepest = Math.max(...located.map((item) => depth(item.field)));
  const candidates = located.filter((item) => depth(item.field) === deepest);
  const first = candidates[0]!;
  const sameField = candidates.filter((item) => item.field === first.field);
  const typeErrors = sameField.filter((item) => item.error.keyword === 'type');
  if (typeErrors.length === sameField.length && typeErrors.length > 1) {
    const types = typeErrors.map((item) => String(item.error.params.type));
    return new PackError(code, file, first.field, `must be ${types.join(' or ')}`);
  }
  const constants = sameField.filter((item) => item.error.keyword === 'const');
  if (constants.length === sameField.length && constants.length > 1) {
    const allowed = constants.map((item) => JSON.stringify(item.error.params.allowedValue));
    return new PackError(code, file, first.field, `must be one of ${allowed.join(', ')}`);
  }
  const chosen = sameField.find((item) => item.error.keyword !== 'type') ?? first;
  return new PackError(code, file, chosen.field, chosen.detail);
}

function describe(error: ErrorObject): { field: string; detail: string } {
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'required':
      return {
        field: `${error.instancePath}/${String(params.missingProperty)}`,
        detail: 'is required',
      };
    case 'additionalProperties':
      return {
        field: `${error.instancePath}/${String(params.additionalProperty)}`,
        detail: 'is not a known property (check the spelling; see models/*.schema.json)',
      };
    case 'const':
      return {
        field: error.instancePath,
        detail: `must be ${JSON.stringify(params.allowedValue)}`,
      };
    case 'enum':
      return {
        field: error.instancePath,
        detail: `must be one of ${(params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`,
      };
    case 'uniqueItems':
      return {
        field: error.instancePath,
        detail: `items ${String(params.j)} and ${String(params.i)} are the same; each must be unique`,
      };
    case 'pattern':
      return {
        field: error.instancePath,
        detail: `must match ${String(params.pattern)} (letters, digits, '.', '_', '-'; at most 64)`,
      };
    default:
      return { field: error.instancePath, detail: error.message ?? 'is not valid' };
  }
}
