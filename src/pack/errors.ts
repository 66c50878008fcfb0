/**
 * Errors raised while reading a model pack, an adapter folder or a safetensors file.
 *
 * Every PackError carries a stable `code` (for programs and tests), the `file` and the `field`
 * that locate what to fix (a JSON pointer into that file, or a tensor name; '' for the whole file),
 * and a message that names both and says what is wrong:
 *   models/x/manifest.json: /groups/1/gate/experts: must be array
 */

export const PACK_ERROR_CODES = [
  /** A file or folder the pack names does not exist (or is not the kind of entry expected). */
  'PACK_FILE_MISSING',
  /** manifest.json is not valid JSON or does not match models/manifest.schema.json. */
  'PACK_INVALID_MANIFEST',
  /** format_version is newer (or other) than this server reads. */
  'PACK_UNSUPPORTED_VERSION',
  /** A path in the manifest is absolute or escapes the pack folder with `..`. */
  'PACK_PATH_OUTSIDE',
  /** Two groups, two heads or two adapters share an id. */
  'PACK_DUPLICATE_ID',
  /** A tensor shape (or a declared size) does not match what the pack says it must be. */
  'PACK_SHAPE_MISMATCH',
  /** A tensor the format requires is not in the safetensors file. */
  'PACK_MISSING_TENSOR',
  /** A safetensors file holds a tensor the format does not define. */
  'PACK_UNEXPECTED_TENSOR',
  /** A tensor has a dtype other than F32. */
  'PACK_UNSUPPORTED_DTYPE',
  /** An adapter config or a head pin names a group the pack does not have. */
  'PACK_UNKNOWN_GROUP',
  /** A head pin or a default_adapter names an adapter the group does not have. */
  'PACK_UNKNOWN_ADAPTER',
  /** A gate's `experts` list is not exactly the group's adapters. */
  'PACK_GATE_EXPERTS_MISMATCH',
  /** Adapters of one group use different activations. */
  'PACK_ACTIVATION_MISMATCH',
  /** A safetensors file is truncated or its header is malformed. */
  'PACK_CORRUPT_FILE',
  /** adapter_config.json is not valid JSON, does not match its schema, or disagrees with the pack. */
  'PACK_INVALID_ADAPTER',
  /**
   * A Hugging Face JSON file (config.json, tokenizer_config.json, special_tokens_map.json,
   * modules.json, 1_Pooling/config.json, sentence_bert_config.json, the safetensors index) is not
   * valid JSON, or one of its fields has a value that cannot be.
   */
  'PACK_INVALID_CONFIG',
  /**
   * A valid model this server does not run: its model_type, hidden_act, position embedding type,
   * pooling mode or sentence-transformers module, or in-layer adapters on an ONNX backbone.
   */
  'PACK_UNSUPPORTED_MODEL',
  /**
   * A model or adapter folder has only pickled PyTorch weights (pytorch_model.bin,
   * adapter_model.bin, pytorch_adapter.bin); safetensors are required, and the message gives the
   * conversion command.
   */
  'PACK_PICKLE_WEIGHTS',
  /** The tokenizer produces ids beyond the backbone's embedding table. */
  'PACK_VOCAB_MISMATCH',
  /**
   * An imported adapter (PEFT, AdapterHub) uses an option or value this server does not run
   * (DoRA, gating, PHM layers, parallel adapters, a LoRA bias...): the field and its value are named.
   */
  'PACK_UNSUPPORTED_ADAPTER',
  /**
   * An adapter made for another base model: hidden size, number of layers, model type or target
   * modules differ from the backbone's; the message names the field and both values.
   */
  'PACK_BACKBONE_MISMATCH',
  /** An adapter folder that is none of the formats we import (moe-serve, PEFT, AdapterHub). */
  'PACK_UNKNOWN_FORMAT',
] as const;

export type PackErrorCode = (typeof PACK_ERROR_CODES)[number];

export class PackError extends Error {
  override readonly name = 'PackError';
  readonly code: PackErrorCode;
  /** The file to fix, as the caller named it (relative paths stay relative). */
  readonly file: string;
  /** A JSON pointer into `file`, or a tensor name; '' when the whole file is at fault. */
  readonly field: string;
  /** What is wrong, without the location prefix. */
  readonly detail: string;

  constructor(
    code: PackErrorCode,
    file: string,
    field: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(field ? `${file}: ${field}: ${detail}` : `${file}: ${detail}`, options);
    this.code = code;
    this.file = file;
    this.field = field;
    this.detail = detail;
  }
}

export function isPackError(value: unknown): value is PackError {
  return value instanceof PackError;
}
