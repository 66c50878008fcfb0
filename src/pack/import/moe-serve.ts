/**
 * Our own adapter folder format (adapter_config.json with "format": "moe-serve/adapter", and
 * adapter.safetensors): a bottleneck adapter on the backbone's last hidden state.
 */
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expectShape, readTensors } from '../checks.js';
import { PackError } from '../errors.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_FORMAT,
  ADAPTER_WEIGHTS_FILE,
  type AdapterConfig,
  FORMAT_VERSION,
  validateAdapterConfig,
} from '../manifest.js';
import { writeSafetensors } from '../safetensors.js';
import type { BottleneckAdapter } from '../types.js';
import { readJsonFile } from './common.js';

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
    await readJsonFile(configPath, 'PACK_INVALID_ADAPTER'),
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

/** Write `adapter` as an adapter folder of this format (the reader above reads it back). */
export async function writeAdapterFolder(dir: string, adapter: BottleneckAdapter): Promise<void> {
  await mkdir(dir, { recursive: true });
  const config: AdapterConfig = {
    format: ADAPTER_FORMAT,
    format_version: FORMAT_VERSION,
    id: adapter.id,
    group: adapter.group,
    type: 'bottleneck',
    hidden_size: adapter.hiddenSize,
    rank: adapter.rank,
    activation: adapter.activation,
    residual: adapter.residual,
  };
  await writeFile(join(dir, ADAPTER_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
  await writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), {
    'down.weight': adapter.down,
    'down.bias': adapter.downBias,
    'up.weight': adapter.up,
    'up.bias': adapter.upBias,
  });
}
