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

import { join } from 'node:path';
import { type PackBackbone, resolveBackbone } from './backbone.js';
import { expectShape, readTensors } from './checks.js';
import type { EncoderConfig, LinearModule } from './encoder-types.js';
import { PackError } from './errors.js';
import { checkVocabulary } from './hf-model.js';
import { tokenizerVocabSize } from './hf-tokenizer.js';
import { readJsonFile } from './import/common.js';
import { type BaseModelParts, importAdapterFolder, readBaseModelParts } from './import/index.js';
import { loadAdapterFolder } from './import/moe-serve.js';
import type { LayerAdapter } from './layer-adapter-types.js';
import {
  ADAPTER_CONFIG_FILE,
  MANIFEST_FILE,
  type Manifest,
  type ManifestGate,
  type ManifestGroup,
  validateManifest,
} from './manifest.js';
import { existingEntry, existingFile } from './paths.js';
import type {
  BottleneckAdapter,
  Gate,
  GroupStructure,
  Head,
  Pooling,
  TokenBagGate,
} from './types.js';

/** Default slots per group: twice its pack adapters, and at least this many (room to load more). */
const MIN_DEFAULT_SLOTS = 16;

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
  /** Default top-p of the gate (1: always k). */
  readonly defaultTopP: number;
  /** Where its adapters sit and what one slot holds. */
  readonly structure: GroupStructure;
  /** Slots the engine keeps for the group. */
  readonly slots: number;
  /** null: routed by the request only. Gate column j scores the adapter named gate.experts[j]. */
  readonly gate: Gate | null;
  /** The gate's safetensors file (resolved path), for errors that only later checks can find. */
  readonly gateFile?: string;
  /** In manifest order (the bank order). */
  readonly adapters: (BottleneckAdapter | LayerAdapter)[];
  /** Only for an ungated group: the adapter used when a request pins none. */
  readonly defaultAdapter?: string;
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

/** Load and check a whole pack folder. */
export async function loadPack(dir: string): Promise<LoadedPack> {
  const manifestPath = join(dir, MANIFEST_FILE);
  const manifest = validateManifest(
    await readJsonFile(manifestPath, 'PACK_INVALID_MANIFEST'),
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
  /** Heads that came with in-layer adapters (PEFT modules_to_save classifiers). */
  const adapterHeads: PackHead[] = [];
  /** The base model's config and pooler, read once, for those heads. */
  let base: BaseModelParts | undefined;
  for (const [g, group] of manifest.groups.entries()) {
    const at = `/groups/${g}`;
    const adapterIds = group.adapters.map((ref) => ref.id);
    if (group.placement === 'layers' && backbone.kind !== 'huggingface') {
      throw new PackError(
        'PACK_UNSUPPORTED_MODEL',
        m,
        `${at}/placement`,
        `an ONNX ${backbone.kind === 'onnx' ? 'file' : 'export'} backbone hosts top-of-backbone adapter groups only (placement 'top'); in-layer adapters need the model as a Hugging Face folder (backbone.huggingface), whose graph the server builds with hook points`,
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

    if (group.placement === 'layers') {
      const config = (backbone as Extract<PackBackbone, { kind: 'huggingface' }>).info.config;
      base ??= await readBaseModelParts((backbone as { dir: string }).dir);
      const layered = await loadLayerGroup(dir, group, at, m, config, base, groupIds);
      const loaded =
        group.gate === null
          ? null
          : await loadGate(dir, group.gate, adapterIds, hiddenSize, m, `${at}/gate`);
      groups.push({
        id: group.id,
        defaultK: group.default_k,
        defaultTopP: group.default_top_p ?? 1,
        structure: layered.structure,
        slots: slotsOf(group, layered.adapters.length, m, at),
        gate: loaded?.gate ?? null,
        ...(loaded === null ? {} : { gateFile: loaded.file }),
        adapters: layered.adapters,
        ...(group.default_adapter === undefined ? {} : { defaultAdapter: group.default_adapter }),
      });
      // A head saved with an adapter (PEFT modules_to_save) is a task pinned to that adapter.
      for (const adapter of layered.adapters) {
        if (adapter.head !== undefined) {
          adapterHeads.push({
            ...adapter.head,
            id: adapter.id,
            pin: { group: group.id, adapter: adapter.id },
          });
        }
      }
      continue;
    }
    if (group.targets !== undefined || group.layers !== undefined) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `${at}/${group.targets !== undefined ? 'targets' : 'layers'}`,
        "is only for a group with placement 'layers'",
      );
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

    const loaded =
      group.gate === null
        ? null
        : await loadGate(dir, group.gate, adapterIds, hiddenSize, m, `${at}/gate`);
    const packRank = Math.max(...adapters.map((adapter) => adapter.rank));
    const rank = group.rank ?? packRank;
    if (rank < packRank) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `${at}/rank`,
        `rank ${rank} is below the rank ${packRank} of the group's own adapters; raise it or leave it out`,
      );
    }
    const slots = slotsOf(group, adapters.length, m, at);
    groups.push({
      id: group.id,
      defaultK: group.default_k,
      defaultTopP: group.default_top_p ?? 1,
      structure: { kind: 'top', rank, activation: adapters[0]!.activation },
      slots,
      gate: loaded?.gate ?? null,
      ...(loaded === null ? {} : { gateFile: loaded.file }),
      adapters,
      ...(group.default_adapter === undefined ? {} : { defaultAdapter: group.default_adapter }),
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

  for (const head of adapterHeads) {
    if (heads.some((h) => h.id === head.id)) {
      throw new PackError(
        'PACK_DUPLICATE_ID',
        m,
        '/heads',
        `head id '${head.id}' is also the head saved with adapter '${head.id}'; rename the manifest's head`,
      );
    }
    heads.push(head);
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

/** Slots of a group: the manifest's, else twice its pack adapters, at least MIN_DEFAULT_SLOTS. */
function slotsOf(group: ManifestGroup, adapters: number, m: string, at: string): number {
  const slots = group.slots ?? Math.max(MIN_DEFAULT_SLOTS, 2 * adapters);
  const gateExperts = group.gate === null ? 0 : adapters;
  if (slots < gateExperts) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      `${at}/slots`,
      `${slots} slots cannot hold the ${gateExperts} adapters the gate chooses among; give the group at least ${gateExperts}`,
    );
  }
  return slots;
}

/**
 * An in-layer group: its adapters (PEFT or AdapterHub folders, all of one kind) and the slot
 * structure they define. What a slot holds is the manifest's `rank`, `targets` and `layers` when
 * given (room for adapters loaded later), else the largest rank, the union of the modules and of
 * the layers of the pack's own adapters.
 */
async function loadLayerGroup(
  dir: string,
  group: ManifestGroup,
  at: string,
  m: string,
  config: EncoderConfig,
  base: BaseModelParts,
  groupIds: readonly string[],
): Promise<{ adapters: LayerAdapter[]; structure: GroupStructure }> {
  const adapters: LayerAdapter[] = [];
  for (const [a, ref] of group.adapters.entries()) {
    const folder = await existingEntry(dir, ref.path, m, `${at}/adapters/${a}/path`, 'folder');
    const imported = await importAdapterFolder(folder, {
      id: ref.id,
      group: group.id,
      backbone: config,
      groups: groupIds,
      base,
    });
    if (imported.format === 'moe-serve') {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `${at}/adapters/${a}/path`,
        `${folder} holds a top-of-backbone adapter; a group with placement 'layers' takes PEFT LoRA or AdapterHub bottleneck folders`,
      );
    }
    const first = adapters[0];
    if (first !== undefined && first.kind !== imported.adapter.kind) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `${at}/adapters/${a}/path`,
        `adapter '${ref.id}' is ${imported.adapter.kind} but '${first.id}' is ${first.kind}; one group holds one kind (make two groups)`,
      );
    }
    adapters.push(imported.adapter);
  }
  const first = adapters[0]!;
  const rankOf = (adapter: LayerAdapter) =>
    adapter.kind === 'lora' ? adapter.rank : adapter.bottleneckSize;
  const packRank = Math.max(...adapters.map(rankOf));
  const rank = group.rank ?? packRank;
  if (rank < packRank) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      `${at}/rank`,
      `rank ${rank} is below the rank ${packRank} of the group's own adapters; raise it or leave it out`,
    );
  }
  const usedLayers = new Set<number>();
  const usedModules = new Set<LinearModule>();
  for (const adapter of adapters) {
    if (adapter.kind === 'lora') {
      for (const module of adapter.modules) {
        usedLayers.add(module.layer);
        usedModules.add(module.module);
      }
    } else {
      for (const block of adapter.blocks) usedLayers.add(block.layer);
    }
  }
  const layers = group.layers ?? [...usedLayers].sort((a, b) => a - b);
  for (const layer of layers) {
    if (!Number.isInteger(layer) || layer < 0 || layer >= config.layers) {
      throw new PackError(
        'PACK_INVALID_MANIFEST',
        m,
        `${at}/layers`,
        `layer ${layer} does not exist; the backbone has layers 0..${config.layers - 1}`,
      );
    }
  }
  const missingLayer = [...usedLayers].find((layer) => !layers.includes(layer));
  if (missingLayer !== undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      `${at}/layers`,
      `leaves out layer ${missingLayer}, which the group's adapters adapt; add it or leave 'layers' out`,
    );
  }
  if (first.kind === 'bottleneck-layers') {
    if (group.targets !== undefined) {
      throw new PackError('PACK_INVALID_MANIFEST', m, `${at}/targets`, 'is only for LoRA groups');
    }
    for (const adapter of adapters as Extract<LayerAdapter, { kind: 'bottleneck-layers' }>[]) {
      const key = (Object.keys(first.placement) as (keyof typeof first.placement)[]).find(
        (field) => adapter.placement[field] !== first.placement[field],
      );
      if (key !== undefined) {
        throw new PackError(
          'PACK_INVALID_MANIFEST',
          m,
          `${at}/adapters`,
          `adapters '${first.id}' and '${adapter.id}' sit differently in the layers (${key}: ${JSON.stringify(first.placement[key])} vs ${JSON.stringify(adapter.placement[key])}); one group holds adapters of one placement`,
        );
      }
    }
    return {
      adapters,
      structure: { kind: 'bottleneck-layers', size: rank, placement: first.placement, layers },
    };
  }
  const modules = group.targets ?? [...usedModules];
  const missingModule = [...usedModules].find((module) => !modules.includes(module));
  if (missingModule !== undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      m,
      `${at}/targets`,
      `leaves out '${missingModule}', which the group's adapters adapt; add it or leave 'targets' out`,
    );
  }
  return { adapters, structure: { kind: 'lora', rank, modules, layers } };
}

/**
 * Checks what only the tokenizer can tell: every token_bag gate has a row for each token id (its
 * table's rows before the bigram buckets are at least the tokenizer's vocabulary size), so that no
 * id can index past the table. Call it once the tokenizer is loaded (`vocabSize`: ids are
 * 0..vocabSize-1). Throws PackError PACK_SHAPE_MISMATCH naming the gate file and tensor.
 */
export function checkTokenizerFitsGates(pack: LoadedPack, vocabSize: number): void {
  for (const group of pack.groups) {
    const gate = group.gate;
    if (gate?.type !== 'token_bag') continue;
    const rows = gate.embedding.shape[0]!;
    const vocabRows = rows - gate.buckets;
    if (vocabRows < vocabSize) {
      throw new PackError(
        'PACK_SHAPE_MISMATCH',
        group.gateFile ?? pack.dir,
        'embedding.weight',
        `has ${vocabRows} token rows (${rows} rows - ${gate.buckets} bigram_buckets) but the tokenizer ${pack.tokenizerPath} has ${vocabSize} token ids; the gate of group '${group.id}' needs a row for each (train it with this tokenizer)`,
      );
    }
  }
}

async function loadGate(
  dir: string,
  gate: ManifestGate,
  adapterIds: string[],
  hiddenSize: number,
  manifestPath: string,
  at: string,
): Promise<{ gate: Gate; file: string }> {
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
      "is only for an 'mlp' or 'token_bag' gate; remove it",
    );
  }
  if (gate.type === 'token_bag' && gate.bigram_buckets === undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      manifestPath,
      `${at}/bigram_buckets`,
      "is required for a 'token_bag' gate (0 for token ids only)",
    );
  }
  if (gate.type !== 'token_bag' && gate.bigram_buckets !== undefined) {
    throw new PackError(
      'PACK_INVALID_MANIFEST',
      manifestPath,
      `${at}/bigram_buckets`,
      "is only for a 'token_bag' gate; remove it",
    );
  }

  const file = await existingFile(dir, gate.file, manifestPath, `${at}/file`);
  const e = experts.length;
  if (gate.type === 'token_bag') {
    return { gate: await loadTokenBagGate(file, gate, gate.bigram_buckets!, e), file };
  }
  if (gate.type === 'linear') {
    const tensors = await readTensors(file, ['weight', 'bias']);
    const linear: Gate = {
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
    return { gate: linear, file };
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
  const mlp: Gate = {
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
  return { gate: mlp, file };
}

/**
 * A token_bag gate's file: embedding.weight [V + buckets, w] with V >= 1, then out.weight /
 * out.bias, and hidden.weight [w,h] / hidden.bias [h] exactly when the manifest gives an activation.
 * Whether V covers the tokenizer is checked later (checkTokenizerFitsGates).
 */
async function loadTokenBagGate(
  file: string,
  gate: ManifestGate,
  buckets: number,
  e: number,
): Promise<TokenBagGate> {
  const hidden = gate.activation !== undefined;
  const names = ['embedding.weight', ...(hidden ? ['hidden.weight', 'hidden.bias'] : [])];
  const tensors = await readTensors(file, [...names, 'out.weight', 'out.bias']);
  const table = tensors.get('embedding.weight')!;
  const rows = table.shape[0] ?? 0;
  const w = table.shape[1] ?? 0;
  if (table.shape.length !== 2 || rows <= buckets || w < 1) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      'embedding.weight',
      `shape [${table.shape.join(',')}] must be [token rows + bigram_buckets ${buckets}, width], with at least one token row and width >= 1`,
    );
  }
  let width = w;
  let layer: TokenBagGate['hidden'];
  if (hidden) {
    const weight = tensors.get('hidden.weight')!;
    const h = weight.shape.length === 2 ? weight.shape[1]! : -1;
    if (h < 1) {
      throw new PackError(
        'PACK_SHAPE_MISMATCH',
        file,
        'hidden.weight',
        `shape [${weight.shape.join(',')}] must be [embedding width ${w}, hidden width >= 1]`,
      );
    }
    layer = {
      activation: gate.activation!,
      weight: expectShape(file, 'hidden.weight', weight, [w, h], '[embedding width, hidden width]'),
      bias: expectShape(file, 'hidden.bias', tensors.get('hidden.bias')!, [h], '[hidden width]'),
    };
    width = h;
  }
  const meaning = hidden ? '[hidden width, experts]' : '[embedding width, experts]';
  return {
    type: 'token_bag',
    experts: [...gate.experts],
    buckets,
    embedding: table,
    ...(layer === undefined ? {} : { hidden: layer }),
    outWeight: expectShape(file, 'out.weight', tensors.get('out.weight')!, [width, e], meaning),
    outBias: expectShape(file, 'out.bias', tensors.get('out.bias')!, [e], '[experts]'),
  };
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
