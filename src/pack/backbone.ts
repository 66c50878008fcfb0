/**
 * The manifest's `backbone` (and `pooling`) section, resolved and checked against the files:
 *
 *   { "file": "backbone.onnx", "hidden_size": 384, "max_length": 128 }       an ONNX file (as before)
 *   { "huggingface": "backbone" [, "quantize": "int8", "hidden_size", "max_length"] }
 *        a Hugging Face folder: our builder makes the graph (src/onnx/backbone-cache.ts builds
 *        and caches it), float32 or, with quantize "int8", with int8 projections
 *   { "onnx_export": "export" [, "variant": "quantized", "hidden_size", "max_length"] }
 *        an ONNX export folder (onnx/model.onnx or model.onnx, or model_quantized.onnx)
 *
 * Exactly one of file / huggingface / onnx_export. With a folder, hidden_size comes from its
 * config.json (checked against the manifest when both say), and max_length defaults to what the
 * folder allows. Pooling: the manifest's, else a folder's sentence-transformers files, else mean
 * with normalisation (what packs did before pooling was configurable).
 *
 * Nothing here opens an ONNX file or builds a graph: `pack/` reads and checks files.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackboneQuantize } from './encoder-types.js';
import { PackError } from './errors.js';
import {
  HF_CONFIG_FILE,
  type HfModelInfo,
  inspectHfFolder,
  maxPositionLength,
  readSentenceTransformers,
  type SentenceTransformersInfo,
} from './hf-model.js';
import { readJsonFile, TOKENIZER_CONFIG_FILE } from './hf-tokenizer.js';
import type { Manifest } from './manifest.js';
import { existingEntry, existingFile } from './paths.js';
import type { Pooling } from './types.js';

/** What the engine runs as the backbone. */
export type PackBackbone =
  /** An ONNX file named by backbone.file. */
  | { readonly kind: 'onnx'; readonly path: string }
  /** The model file chosen in an ONNX export folder. */
  | { readonly kind: 'onnx-export'; readonly path: string; readonly dir: string }
  /** A Hugging Face folder, inspected (config, tensor locations); the graph is built from it. */
  | {
      readonly kind: 'huggingface';
      readonly dir: string;
      readonly info: HfModelInfo;
      /** How the builder makes the projections (manifest backbone.quantize; default 'none'). */
      readonly quantize: BackboneQuantize;
    };

export interface ResolvedBackbone {
  readonly backbone: PackBackbone;
  readonly hiddenSize: number;
  readonly maxLength: number;
  readonly pooling: Pooling;
}

/** Model files of an export folder, by variant, in the order they are looked for. */
export const EXPORT_MODEL_FILES = {
  default: ['onnx/model.onnx', 'model.onnx'],
  quantized: ['onnx/model_quantized.onnx', 'model_quantized.onnx'],
} as const;

const DEFAULT_POOLING: Pooling = { mode: 'mean', normalize: true };

export async function resolveBackbone(
  dir: string,
  manifest: Manifest,
  manifestPath: string,
): Promise<ResolvedBackbone> {
  const m = manifestPath;
  const b = manifest.backbone;
  const kinds = (['file', 'huggingface', 'onnx_export'] as const).filter((k) => b[k] !== undefined);
  if (kinds.length !== 1) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      kinds.length === 0 ? '/backbone' : `/backbone/${kinds[1]}`,
      kinds.length === 0
        ? 'needs one of file (an ONNX file), huggingface (a Hugging Face model folder) or onnx_export (an ONNX export folder)'
        : `set exactly one of file, huggingface and onnx_export (this backbone sets ${kinds.join(' and ')})`,
    );
  }
  if (b.variant !== undefined && b.onnx_export === undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      '/backbone/variant',
      'is only for an onnx_export backbone; remove it',
    );
  }
  if (b.quantize !== undefined && b.huggingface === undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      '/backbone/quantize',
      b.onnx_export !== undefined
        ? 'is only for a huggingface backbone (our builder quantizes the graph it makes); an export is run as it is: set variant "quantized" to run its model_quantized.onnx, or remove quantize'
        : 'is only for a huggingface backbone (our builder quantizes the graph it makes); an ONNX file is run as it is: quantize it when you make it, or remove quantize',
    );
  }
  const pooling = (st: SentenceTransformersInfo | undefined): Pooling =>
    manifest.pooling ?? st?.pooling ?? DEFAULT_POOLING;

  if (b.file !== undefined) {
    const path = await existingFile(dir, b.file, m, '/backbone/file');
    for (const key of ['hidden_size', 'max_length'] as const) {
      if (b[key] === undefined) {
        throw new PackError(
          'PACK_INVALID_MANIFEST',
          m,
          `/backbone/${key}`,
          'is required with backbone.file (the loader does not open the ONNX file to find it)',
        );
      }
    }
    return {
      backbone: { kind: 'onnx', path },
      hiddenSize: b.hidden_size!,
      maxLength: b.max_length!,
      pooling: pooling(undefined),
    };
  }

  if (b.huggingface !== undefined) {
    const folder = await existingEntry(dir, b.huggingface, m, '/backbone/huggingface', 'folder');
    const info = await inspectHfFolder(folder);
    const d = info.config.hiddenSize;
    if (b.hidden_size !== undefined && b.hidden_size !== d) {
      throw new PackError(
        'PACK_SHAPE_MISMATCH',
        m,
        '/backbone/hidden_size',
        `hidden_size ${b.hidden_size} differs from ${d} in ${info.configPath}; remove it or make them equal`,
      );
    }
    const limit = maxPositionLength(info.config);
    if (b.max_length !== undefined && b.max_length > limit) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        '/backbone/max_length',
        `max_length ${b.max_length} is more than the ${limit} positions the model has (${info.configPath} max_position_embeddings ${info.config.maxPositions}${info.config.positions === 'after-padding' ? `, of which positions up to padding_idx ${info.config.padTokenId} are never used` : ''})`,
      );
    }
    return {
      backbone: { kind: 'huggingface', dir: folder, info, quantize: b.quantize ?? 'none' },
      hiddenSize: d,
      maxLength: b.max_length ?? info.maxLength,
      pooling: pooling(info.sentenceTransformers),
    };
  }

  // An ONNX export: find the model file; sizes from the manifest or the folder's config.json.
  const folder = await existingEntry(dir, b.onnx_export!, m, '/backbone/onnx_export', 'folder');
  const variant = b.variant ?? 'default';
  let path: string | undefined;
  for (const candidate of EXPORT_MODEL_FILES[variant]) {
    if (await isFile(join(folder, candidate))) {
      path = join(folder, candidate);
      break;
    }
  }
  if (path === undefined) {
    throw new PackError(
      'PACK_FILE_MISSING',
      m,
      '/backbone/onnx_export',
      `no ${variant === 'quantized' ? 'quantized ' : ''}ONNX model in ${folder} (looked for ${EXPORT_MODEL_FILES[variant].join(', ')})${variant === 'default' && (await isFile(join(folder, 'onnx', 'model_quantized.onnx'))) ? '; it has a quantized one: set backbone.variant "quantized"' : ''}`,
    );
  }
  const sizes = await exportSizes(folder);
  const hiddenSize = b.hidden_size ?? sizes.hiddenSize;
  const maxLength = b.max_length ?? sizes.maxLength;
  for (const [key, value] of [
    ['hidden_size', hiddenSize],
    ['max_length', maxLength],
  ] as const) {
    if (value === undefined) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `/backbone/${key}`,
        `is required: ${folder} has no ${HF_CONFIG_FILE} to read it from`,
      );
    }
  }
  if (
    b.hidden_size !== undefined &&
    sizes.hiddenSize !== undefined &&
    b.hidden_size !== sizes.hiddenSize
  ) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      m,
      '/backbone/hidden_size',
      `hidden_size ${b.hidden_size} differs from ${sizes.hiddenSize} in ${join(folder, HF_CONFIG_FILE)}`,
    );
  }
  const st = (await readSentenceTransformers(folder))?.info;
  return {
    backbone: { kind: 'onnx-export', path, dir: folder },
    hiddenSize: hiddenSize!,
    maxLength: maxLength!,
    pooling: pooling(st),
  };
}

/**
 * hidden_size and the usable length from an export folder's config.json, read leniently: an
 * export may be of any architecture, so only the size fields are read, not the model type.
 */
async function exportSizes(
  folder: string,
): Promise<{ hiddenSize: number | undefined; maxLength: number | undefined }> {
  const configPath = join(folder, HF_CONFIG_FILE);
  if (!(await isFile(configPath))) return { hiddenSize: undefined, maxLength: undefined };
  const config = (await readJsonFile(configPath)) as Record<string, unknown> | null;
  const int = (v: unknown) =>
    typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : undefined;
  const hiddenSize = int(config?.hidden_size) ?? int(config?.dim) ?? int(config?.d_model);
  const positions = int(config?.max_position_embeddings);
  const type = config?.model_type;
  const pad = int(config?.pad_token_id) ?? 1;
  let maxLength =
    positions === undefined
      ? undefined
      : type === 'roberta' || type === 'xlm-roberta' || type === 'camembert'
        ? positions - pad - 1
        : positions;
  const tokenizerConfig = join(folder, TOKENIZER_CONFIG_FILE);
  if (await isFile(tokenizerConfig)) {
    const limit = ((await readJsonFile(tokenizerConfig)) as { model_max_length?: unknown } | null)
      ?.model_max_length;
    if (typeof limit === 'number' && limit >= 1 && limit < 1_000_000) {
      maxLength = Math.min(maxLength ?? limit, Math.floor(limit));
    }
  }
  return { hiddenSize, maxLength };
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}
