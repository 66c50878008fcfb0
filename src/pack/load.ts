/**
 * Loading a model pack folder (manifest.json and the files it names) and single adapter folders,
 * with every check done up front so that the engine and the mixture compiler can trust what they
 * get. Each failure is a PackError naming the file and field to fix (see errors.ts).
 *
 * Not opened here: an ONNX backbone (the engine creates its ORT session) and the tokenizer (the
 * inference layer runs it); their files must exist. A Hugging Face backbone is inspected
 * (config.json, safetensors headers, tokenizer files: backbone.ts, hf-model.ts); its weights are
 * read only when its graph is built (src/onnx/backbone-cache.ts).
 */

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type PackBackbone, resolveBackbone } from './backbone.js';
import { PackError } from './errors.js';
import { checkVocabulary } from './hf-model.js';
import { tokenizerVocabSize } from './hf-tokenizer.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  type AdapterConfig,
  MANIFEST_FILE,
  type Manifest,
  type ManifestGate,
  validateAdapterConfig,
  validateManifest,
} from './manifest.js';
import { existingEntry, existingFile } from './paths.js';
import { readSafetensors, type SafeTensor } from './safetensors.js';
import type { BottleneckAdapter, Gate, Head, Pooling } from './types.js';

export interface HeadPin {
  readonly group: string;
  readonly adapter: string;
}

/** A task head with its optional routing pin. */
export interface PackHead extends Head {
  readonly pin?: HeadPin;
}

export interface LoadedGroup {
  readonly id: string;
  readonly defaultK: number;
  /** null: routed by the request only. Gate column j scores the adapter named gate.experts[j]. */
  readonly gate: Gate | null;
  /** In manifest order (the bank order). */
  readonly adapters: BottleneckAdapter[];
  /** Only for an ungated group: the adapter used when a request pins none. */
  readonly defaultAdapter?: string;
  /** Where the adapters sit: 'top' of the backbone (the only placement served today). */
  readonly placement: 'top' | 'layers';
}

export interface LoadedPack {
  /** The pack folder as given to loadPack. */
  readonly dir: string;
  readonly manifest: Manifest;
  /**
   * The backbone: an ONNX file, the model file of an ONNX export folder, or a Hugging Face folder
   * whose graph src/onnx/backbone-cache.ts builds (prepareBackbone gives the file to run).
   */
  readonly backbone: PackBackbone;
  readonly tokenizerPath: string;
  readonly hiddenSize: number;
  readonly maxLength: number;
  /** How gates, heads and the embedding output pool the hidden state. */
  readonly pooling: Pooling;
  /** In order of composition. */
  readonly groups: LoadedGroup[];
  readonly heads: PackHead[];
}

export interface AdapterExpectations {
  /** The backbone's hidden size; the adapter's must equal it. */
  hiddenSize?: number;
  /** The group the adapter is being loaded into; its config must name this group. */
  group?: string;
  /** The groups the pack has; the config's group must be one of them. */
  groups?: readonly string[];
  /** The id the manifest lists the folder under; the config's id must equal it. */
  id?: string;
}

/** Load and check a whole pack folder. */
export async function loadPack(dir: string): Promise<LoadedPack> {
  const manifestPath = join(dir, MANIFEST_FILE);
  const manifest = validateManifest(
    await readJson(manifestPath, 'PACK_INVALID_MANIFEST'),
    manifestPath,
  );
  const m = manifestPath;
  const { backbone, hiddenSize, maxLength, pooling } = await resolveBackbone(dir, manifest, m);
  const tokenizerPath = await existingFile(dir, manifest.tokenizer.file, m, '/tokenizer/file');
  if (backbone.kind === 'huggingface') {
    const { config, configPath } = backbone.info;
    checkVocabulary(tokenizerPath, await tokenizerVocabSize(tokenizerPath), config, configPath);
  }

  // Ids: groups, heads and adapters (across the pack) are each unique.
  checkUnique(
    manifest.groups.map((group, g) => ({ id: group.id, field: `/groups/${g}/id` })),
    'group',
    m,
  );
  checkUnique(
    manifest.heads.map((head, h) => ({ id: head.id, field: `/heads/${h}/id` })),
    'head',
    m,
  );
  checkUnique(
    manifest.groups.flatMap((group, g) =>
      group.adapters.map((ref, a) => ({ id: ref.id, field: `/groups/${g}/adapters/${a}/id` })),
    ),
    'adapter',
    m,
  );
  const groupIds = manifest.groups.map((group) => group.id);

  const groups: LoadedGroup[] = [];
  for (const [g, group] of manifest.groups.entries()) {
    const at = `/groups/${g}`;
    const adapterIds = group.adapters.map((ref) => ref.id);
    if (group.placement === 'layers') {
      throw new PackError(
        'PACK_UNSUPPORTED_MODEL',
        m,
        `${at}/placement`,
        backbone.kind === 'huggingface'
          ? "in-layer adapter groups are not served yet; use placement 'top' (adapters on the last hidden state)"
          : `an ONNX ${backbone.kind === 'onnx' ? 'file' : 'export'} backbone hosts top-of-backbone adapter groups only (placement 'top'); in-layer adapters need the model as a Hugging Face folder (backbone.huggingface), whose graph the server builds with hook points`,
      );
    }
    if (group.default_k > group.adapters.length) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `${at}/default_k`,
        `default_k ${group.default_k} is more than the group's ${group.adapters.length} adapters`,
      );
    }
    if (group.default_adapter !== undefined) {
      if (group.gate !== null) {
        throw new PackError(
          'PACK_INVALID_MANIFEST',
          m,
          `${at}/default_adapter`,
          'default_adapter is only for a group without a gate (gate: null); remove it or the gate',
        );
      }
      if (!adapterIds.includes(group.default_adapter)) {
        throw new PackError(
          'PACK_UNKNOWN_ADAPTER',
          m,
          `${at}/default_adapter`,
          `'${group.default_adapter}' is not an adapter of group '${group.id}' (${adapterIds.join(', ')})`,
        );
      }
    }

    const adapters: BottleneckAdapter[] = [];
    for (const [a, ref] of group.adapters.entries()) {
      const folder = await existingEntry(dir, ref.path, m, `${at}/adapters/${a}/path`, 'folder');
      const adapter = await loadAdapterFolder(folder, {
        hiddenSize,
        group: group.id,
        groups: groupIds,
        id: ref.id,
      });
      const first = adapters[0];
      if (first && adapter.activation !== first.activation) {
        throw new PackError(
          'PACK_ACTIVATION_MISMATCH',
          join(folder, ADAPTER_CONFIG_FILE),
          '/activation',
          `activation '${adapter.activation}' differs from '${first.activation}' of adapter '${first.id}'; every adapter of group '${group.id}' must use the same activation`,
        );
      }
      adapters.push(adapter);
    }

    const gate =
      group.gate === null
        ? null
        : await loadGate(dir, group.gate, adapterIds, hiddenSize, m, `${at}/gate`);
    groups.push({
      id: group.id,
      defaultK: group.default_k,
      gate,
      adapters,
      ...(group.default_adapter === undefined ? {} : { defaultAdapter: group.default_adapter }),
      placement: group.placement ?? 'top',
    });
  }

  const heads: PackHead[] = [];
  for (const [h, head] of manifest.heads.entries()) {
    const at = `/heads/${h}`;
    if (head.pin) {
      const group = groups.find((candidate) => candidate.id === head.pin?.group);
      if (!group) {
        throw new PackError(
          'PACK_UNKNOWN_GROUP',
          m,
          `${at}/pin/group`,
          `group '${head.pin.group}' does not exist (groups: ${groupIds.join(', ') || 'none'})`,
        );
      }
      if (!group.adapters.some((adapter) => adapter.id === head.pin?.adapter)) {
        throw new PackError(
          'PACK_UNKNOWN_ADAPTER',
          m,
          `${at}/pin/adapter`,
          `'${head.pin.adapter}' is not an adapter of group '${group.id}' (${group.adapters.map((x) => x.id).join(', ')})`,
        );
      }
    }
    const file = await existingFile(dir, head.file, m, `${at}/file`);
    const tensors = await readTensors(file, ['weight', 'bias']);
    const labels = head.labels.length;
    const weight = tensors.get('weight')!;
    if (weight.shape.length === 2 && weight.shape[0] === hiddenSize && weight.shape[1] !== labels) {
      throw new PackError(
        'PACK_SHAPE_MISMATCH',
        file,
        'weight',
        `shape [${weight.shape.join(',')}] has ${weight.shape[1]} label columns but head '${head.id}' lists ${labels} labels (${m} ${at}/labels); make them agree`,
      );
    }
    expectShape(file, 'weight', weight, [hiddenSize, labels], '[hidden_size, labels]');
    expectShape(file, 'bias', tensors.get('bias')!, [labels], '[labels]');
    heads.push({
      id: head.id,
      labels: [...head.labels],
      weight,
      bias: tensors.get('bias')!,
      ...(head.pin ? { pin: { group: head.pin.group, adapter: head.pin.adapter } } : {}),
    });
  }

  return {
    dir,
    manifest,
    backbone,
    tokenizerPath,
    hiddenSize,
    maxLength,
    pooling,
    groups,
    heads,
  };
}

/**
 * Load and check one adapter folder (adapter_config.json + adapter.safetensors): schema, files,
 * dtypes, tensor shapes against rank and hidden size, and whatever `expect` names.
 */
export async function loadAdapterFolder(
  dir: string,
  expect: AdapterExpectations = {},
): Promise<BottleneckAdapter> {
  const configPath = join(dir, ADAPTER_CONFIG_FILE);
  const weightsPath = join(dir, ADAPTER_WEIGHTS_FILE);
  const folder = await stat(dir).catch(() => undefined);
  if (!folder?.isDirectory()) {
    throw new PackError('PACK_FILE_MISSING', dir, '', 'adapter folder not found');
  }
  const config: AdapterConfig = validateAdapterConfig(
    await readJson(configPath, 'PACK_INVALID_ADAPTER'),
    configPath,
  );
  if (expect.id !== undefined && config.id !== expect.id) {
    throw new PackError(
      'PACK_INVALID_ADAPTER',
      configPath,
      '/id',
      `id '${config.id}' differs from '${expect.id}', the id the manifest lists this folder under; make them equal`,
    );
  }
  if (expect.groups !== undefined && !expect.groups.includes(config.group)) {
    throw new PackError(
      'PACK_UNKNOWN_GROUP',
      configPath,
      '/group',
      `group '${config.group}' does not exist in the pack (groups: ${expect.groups.join(', ') || 'none'})`,
    );
  }
  if (expect.group !== undefined && config.group !== expect.group) {
    throw new PackError(
      'PACK_INVALID_ADAPTER',
      configPath,
      '/group',
      `group '${config.group}' differs from '${expect.group}', the group it is being loaded into`,
    );
  }
  if (expect.hiddenSize !== undefined && config.hidden_size !== expect.hiddenSize) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      configPath,
      '/hidden_size',
      `adapter hidden size ${config.hidden_size} does not match the backbone's ${expect.hiddenSize}`,
    );
  }

  const stats = await stat(weightsPath).catch(() => undefined);
  if (!stats?.isFile()) {
    throw new PackError(
      'PACK_FILE_MISSING',
      weightsPath,
      '',
      `file not found; an adapter folder needs ${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILE}`,
    );
  }
  const tensors = await readTensors(weightsPath, [
    'down.weight',
    'down.bias',
    'up.weight',
    'up.bias',
  ]);
  const d = config.hidden_size;
  const r = config.rank;
  const down = expectShape(
    weightsPath,
    'down.weight',
    tensors.get('down.weight')!,
    [d, r],
    '[hidden_size, rank]',
  );
  const downBias = expectShape(weightsPath, 'down.bias', tensors.get('down.bias')!, [r], '[rank]');
  const up = expectShape(
    weightsPath,
    'up.weight',
    tensors.get('up.weight')!,
    [r, d],
    '[rank, hidden_size]',
  );
  const upBias = expectShape(weightsPath, 'up.bias', tensors.get('up.bias')!, [d], '[hidden_size]');
  return {
    id: config.id,
    group: config.group,
    type: 'bottleneck',
    hiddenSize: d,
    rank: r,
    activation: config.activation,
    residual: config.residual,
    down,
    downBias,
    up,
    upBias,
  };
}

async function loadGate(
  dir: string,
  gate: ManifestGate,
  adapterIds: string[],
  hiddenSize: number,
  manifestPath: string,
  at: string,
): Promise<Gate> {
  const experts = gate.experts;
  const seen = new Set<string>();
  for (const expert of experts) {
    if (seen.has(expert)) {
      throw new PackError(
        'PACK_GATE_EXPERTS_MISMATCH',
        manifestPath,
        `${at}/experts`,
        `names '${expert}' twice; list each of the group's adapters once`,
      );
    }
    seen.add(expert);
  }
  const missing = adapterIds.filter((id) => !seen.has(id));
  const unknown = experts.filter((id) => !adapterIds.includes(id));
  if (missing.length > 0 || unknown.length > 0) {
    const parts = [
      missing.length > 0 ? `missing ${missing.join(', ')}` : '',
      unknown.length > 0 ? `not adapters of the group: ${unknown.join(', ')}` : '',
    ].filter(Boolean);
    throw new PackError(
      'PACK_GATE_EXPERTS_MISMATCH',
      manifestPath,
      `${at}/experts`,
      `must list exactly the group's adapters (${adapterIds.join(', ')}); ${parts.join('; ')}`,
    );
  }
  if (gate.type === 'mlp' && gate.activation === undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      manifestPath,
      `${at}/activation`,
      "is required for an 'mlp' gate",
    );
  }
  if (gate.type === 'linear' && gate.activation !== undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      manifestPath,
      `${at}/activation`,
      "is only for an 'mlp' gate; remove it",
    );
  }

  const file = await existingFile(dir, gate.file, manifestPath, `${at}/file`);
  const e = experts.length;
  if (gate.type === 'linear') {
    const tensors = await readTensors(file, ['weight', 'bias']);
    return {
      type: 'linear',
      experts: [...experts],
      weight: expectShape(
        file,
        'weight',
        tensors.get('weight')!,
        [hiddenSize, e],
        '[hidden_size, experts]',
      ),
      bias: expectShape(file, 'bias', tensors.get('bias')!, [e], '[experts]'),
    };
  }
  const tensors = await readTensors(file, [
    'hidden.weight',
    'hidden.bias',
    'out.weight',
    'out.bias',
  ]);
  const hiddenWeight = tensors.get('hidden.weight')!;
  const h = hiddenWeight.shape.length === 2 ? hiddenWeight.shape[1]! : -1;
  if (h < 1) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      'hidden.weight',
      `shape [${hiddenWeight.shape.join(',')}] must be [hidden_size ${hiddenSize}, gate width >= 1]`,
    );
  }
  return {
    type: 'mlp',
    experts: [...experts],
    activation: gate.activation!,
    hiddenWeight: expectShape(
      file,
      'hidden.weight',
      hiddenWeight,
      [hiddenSize, h],
      '[hidden_size, width]',
    ),
    hiddenBias: expectShape(file, 'hidden.bias', tensors.get('hidden.bias')!, [h], '[width]'),
    outWeight: expectShape(
      file,
      'out.weight',
      tensors.get('out.weight')!,
      [h, e],
      '[width, experts]',
    ),
    outBias: expectShape(file, 'out.bias', tensors.get('out.bias')!, [e], '[experts]'),
  };
}

/** Read a safetensors file that must hold exactly the named tensors. */
async function readTensors(file: string, names: string[]): Promise<Map<string, SafeTensor>> {
  const tensors = await readSafetensors(file);
  for (const name of names) {
    if (!tensors.has(name)) {
      throw new PackError(
        'PACK_MISSING_TENSOR',
        file,
        name,
        `tensor not found; the file must hold ${names.join(', ')} (has ${[...tensors.keys()].join(', ') || 'none'})`,
      );
    }
  }
  for (const name of tensors.keys()) {
    if (!names.includes(name)) {
      throw new PackError(
        'PACK_UNEXPECTED_TENSOR',
        file,
        name,
        `unexpected tensor; the file must hold exactly ${names.join(', ')}`,
      );
    }
  }
  return tensors;
}

function expectShape(
  file: string,
  name: string,
  tensor: SafeTensor,
  shape: number[],
  meaning: string,
): SafeTensor {
  const ok = tensor.shape.length === shape.length && tensor.shape.every((n, i) => n === shape[i]);
  if (!ok) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      name,
      `shape [${tensor.shape.join(',')}] must be ${meaning} = [${shape.join(',')}] (math layout, x @ W)`,
    );
  }
  return tensor;
}

function checkUnique(items: { id: string; field: string }[], kind: string, file: string): void {
  const first = new Map<string, string>();
  for (const { id, field } of items) {
    const previous = first.get(id);
    if (previous !== undefined) {
      throw new PackError(
        'PACK_DUPLICATE_ID',
        file,
        field,
        `${kind} id '${id}' is already used at ${previous}; ${kind} ids must be unique`,
      );
    }
    first.set(id, field);
  }
}

async function readJson(
  file: string,
  invalidCode: 'PACK_INVALID_MANIFEST' | 'PACK_INVALID_ADAPTER',
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
