/**
 * One entry point for adapter folders: detect the format, import, check against the backbone.
 *
 * Formats, told apart by adapter_config.json (AdapterHub and our own format even share both file
 * names, adapter_config.json and adapter.safetensors):
 * - 'moe-serve': our own adapter folder ("format": "moe-serve/adapter"), a top-of-backbone
 *   bottleneck adapter, loaded by loadAdapterFolder (src/pack/load.ts);
 * - 'peft': a PEFT folder ("peft_type"), imported by importPeftFolder (peft.ts) as a LoraAdapter;
 * - 'adapterhub': an `adapters` library folder ("config" beside "model_type" / "name" /
 *   "version"), imported by importAdapterHubFolder (adapterhub.ts) as a BottleneckLayerAdapter.
 * Anything else is PACK_UNKNOWN_FORMAT; every other failure is the importer's PackError.
 *
 * The backbone check: hidden size for every kind; for in-layer kinds also the number of layers,
 * the FFN width, the module names (target modules) and, where the folder says it, the model type.
 * Whether the backbone can host in-layer adapters at all (an ONNX export cannot), and a rank above
 * the slot capacity, are the registry's checks: it knows the pack.
 */

import { join } from 'node:path';
import type { EncoderConfig } from '../encoder-types.js';
import { PackError } from '../errors.js';
import { inspectHfFolder } from '../hf-model.js';
import type { BottleneckLayerAdapter, LoraAdapter } from '../layer-adapter-types.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_FORMAT } from '../manifest.js';
import { SafetensorsFile } from '../safetensors.js';
import type { BottleneckAdapter, Weight } from '../types.js';
import { importAdapterHubFolder } from './adapterhub.js';
import { ADAPTER_FLOAT_DTYPES, type BaseModelParts, isFile, readJsonFile } from './common.js';
import { loadAdapterFolder } from './moe-serve.js';
import { importPeftFolder } from './peft.js';

export { importAdapterHubFolder } from './adapterhub.js';
export type { BaseModelParts } from './common.js';
export { importPeftFolder } from './peft.js';

export type AdapterFolderFormat = 'moe-serve' | 'peft' | 'adapterhub';

export type ImportedAdapter =
  | { readonly format: 'moe-serve'; readonly adapter: BottleneckAdapter }
  | { readonly format: 'peft'; readonly adapter: LoraAdapter }
  | { readonly format: 'adapterhub'; readonly adapter: BottleneckLayerAdapter };

export interface ImportAdapterOptions {
  /** The adapter's id in the pack. A moe-serve folder's config must say the same id. */
  readonly id: string;
  /** The group it joins. A moe-serve folder's config must name it. */
  readonly group: string;
  /** The backbone every adapter is checked against. */
  readonly backbone: EncoderConfig;
  /** The pack's groups (a moe-serve folder's group must be one of them). */
  readonly groups?: readonly string[];
  /** The base model's config.json and weights, for heads (labels, BERT's pooler). */
  readonly base?: BaseModelParts;
}

/** Which format a folder holds, from its adapter_config.json. */
export async function detectAdapterFormat(dir: string): Promise<AdapterFolderFormat> {
  const configPath = join(dir, ADAPTER_CONFIG_FILE);
  if (!(await isFile(configPath))) {
    throw new PackError(
      'PACK_FILE_MISSING',
      configPath,
      '',
      'file not found; an adapter folder (moe-serve, PEFT or AdapterHub) has adapter_config.json',
    );
  }
  const config = await readJsonFile(configPath);
  if (config !== null && typeof config === 'object' && !Array.isArray(config)) {
    const fields = config as Record<string, unknown>;
    if (fields.format === ADAPTER_FORMAT) return 'moe-serve';
    if ('peft_type' in fields) return 'peft';
    if ('config' in fields && ('model_type' in fields || 'name' in fields || 'version' in fields)) {
      return 'adapterhub';
    }
  }
  throw new PackError(
    'PACK_UNKNOWN_FORMAT',
    configPath,
    '',
    `is not an adapter config this server imports: expected "format": "${ADAPTER_FORMAT}" (moe-serve), "peft_type" (PEFT) or "config" with "model_type" / "name" (AdapterHub)`,
  );
}

/** Detect a folder's format and import it, checked against the backbone. */
export async function importAdapterFolder(
  dir: string,
  options: ImportAdapterOptions,
): Promise<ImportedAdapter> {
  const format = await detectAdapterFormat(dir);
  switch (format) {
    case 'moe-serve':
      return {
        format,
        adapter: await loadAdapterFolder(dir, {
          id: options.id,
          group: options.group,
          hiddenSize: options.backbone.hiddenSize,
          ...(options.groups ? { groups: options.groups } : {}),
        }),
      };
    case 'peft':
      return { format, adapter: await importPeftFolder(dir, options) };
    case 'adapterhub':
      return { format, adapter: await importAdapterHubFolder(dir, options) };
  }
}

/**
 * What an adapter's head needs from the base model's Hugging Face folder (BaseModelParts): its
 * config.json (id2label) and, from its safetensors (single or sharded, F32/F16/BF16), BERT's pooler
 * and DistilBERT's pre_classifier where the checkpoint has them, under their saved names. The
 * rest of the checkpoint is not read.
 */
export async function readBaseModelParts(folder: string): Promise<BaseModelParts> {
  const info = await inspectHfFolder(folder);
  const tensors = new Map<string, Weight>();
  let weightsFile = info.weightFiles[0];
  for (const path of info.weightFiles) {
    const file = await SafetensorsFile.open(path);
    for (const name of file.entries.keys()) {
      if (/(^|\.)(pooler\.dense|pre_classifier)\.(weight|bias)$/.test(name)) {
        tensors.set(name, await file.read(name, ADAPTER_FLOAT_DTYPES));
        weightsFile = path;
      }
    }
  }
  return {
    config: await readJsonFile(info.configPath, 'PACK_INVALID_CONFIG'),
    configFile: info.configPath,
    tensors,
    ...(weightsFile === undefined ? {} : { weightsFile }),
  };
}
