/**
 * A new pack from a model folder: the folder is brought into the pack (hard links where the file
 * system allows, copies otherwise), and a manifest names it as the backbone, its tokenizer.json as
 * the tokenizer, with no adapter groups and no heads: an embeddings-only pack that serves at once
 * (OpenAI embeddings, /v1/infer with `return: ["embedding"]`). Groups and heads are added later.
 *
 *   Hugging Face folder   backbone.huggingface: the server builds its graph (cached) from it,
 *                         float32 or (quantize 'int8') with int8 projections
 *   ONNX export folder    backbone.onnx_export (+ variant)
 *
 * The folder is checked before anything is written (inspectHfFolder / loadPack's checks), and the
 * new pack is loaded once at the end, so a pack this returns loads.
 */
import { copyFile, link, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { BackboneQuantize } from './encoder-types.js';
import { PackError } from './errors.js';
import { inspectHfFolder } from './hf-model.js';
import { TOKENIZER_FILE } from './hf-tokenizer.js';
import { detectAdapterFormat } from './import/index.js';
import { type LoadedPack, loadPack } from './load.js';
import {
  FORMAT_VERSION,
  ID_PATTERN,
  MANIFEST_FILE,
  type Manifest,
  PACK_FORMAT,
} from './manifest.js';
import type { Pooling } from './types.js';

/** The folder inside the pack that holds the backbone's files. */
export const PACK_BACKBONE_FOLDER = 'backbone';

export interface CreatePackOptions {
  /** A Hugging Face model folder or an ONNX export folder. */
  readonly backbone: string;
  /** 'huggingface' (default) or 'onnx-export'. */
  readonly kind?: 'huggingface' | 'onnx-export';
  /** Only for an ONNX export: which model file. */
  readonly variant?: 'default' | 'quantized';
  /** The new pack folder; must not exist. */
  readonly out: string;
  /** Pack name; default: the out folder's name. */
  readonly name?: string;
  readonly description?: string;
  /** Default: what the folder allows. */
  readonly maxLength?: number;
  /** Default: the folder's sentence-transformers pooling, else mean + normalize. */
  readonly pooling?: Pooling;
  /** Only for a Hugging Face folder: manifest backbone.quantize (default 'none', not written). */
  readonly quantize?: BackboneQuantize;
}

/** Files of a model folder a pack never needs (other frameworks' weights, pickles, git). */
const SKIP =
  /^(\.git|\.cache|pytorch_model.*\.bin|pytorch_model\.bin\.index\.json|tf_model\.h5|flax_model\.msgpack|rust_model\.ot|.*\.ckpt|.*\.pt|.*\.pth)$/;

export async function createPack(options: CreatePackOptions): Promise<LoadedPack> {
  const kind = options.kind ?? 'huggingface';
  const source = resolve(options.backbone);
  const out = options.out;
  const name = options.name ?? basename(resolve(out));
  if (!new RegExp(ID_PATTERN).test(name)) {
    throw new Error(`pack name '${name}' must match ${ID_PATTERN}; pass --name`);
  }
  if (await stat(out).catch(() => undefined)) {
    throw new Error(`${out} already exists; choose a new folder (a pack is created, never merged)`);
  }
  if (options.quantize !== undefined && options.quantize !== 'none' && kind !== 'huggingface') {
    throw new Error(
      `quantize '${options.quantize}' is for a Hugging Face folder (our builder quantizes the graph it makes); an ONNX export runs as it is (variant 'quantized' runs its model_quantized.onnx)`,
    );
  }
  // Check the folder first: nothing is written for a folder that cannot serve.
  if (kind === 'huggingface') {
    await inspectHfFolder(source);
  } else if (!(await stat(source).catch(() => undefined))?.isDirectory()) {
    throw new PackError('PACK_FILE_MISSING', source, '', 'ONNX export folder not found');
  }
  if (!(await stat(join(source, TOKENIZER_FILE)).catch(() => undefined))?.isFile()) {
    throw new PackError(
      'PACK_FILE_MISSING',
      join(source, TOKENIZER_FILE),
      '',
      `a pack needs the model's tokenizer.json (Hugging Face tokenizers format); write it with transformers: python -c "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('${source}').save_pretrained('${source}')"`,
    );
  }

  const manifest: Manifest = {
    format: PACK_FORMAT,
    format_version: FORMAT_VERSION,
    name,
    version: '1.0.0',
    description:
      options.description ??
      `Embeddings from ${basename(source)} (created by npm run pack -- create).`,
    backbone: {
      ...(kind === 'huggingface'
        ? {
            huggingface: PACK_BACKBONE_FOLDER,
            ...(options.quantize === undefined || options.quantize === 'none'
              ? {}
              : { quantize: options.quantize }),
          }
        : {
            onnx_export: PACK_BACKBONE_FOLDER,
            ...(options.variant ? { variant: options.variant } : {}),
          }),
      ...(options.maxLength === undefined ? {} : { max_length: options.maxLength }),
    },
    tokenizer: { type: 'huggingface', file: `${PACK_BACKBONE_FOLDER}/${TOKENIZER_FILE}` },
    ...(options.pooling === undefined ? {} : { pooling: { ...options.pooling } }),
    groups: [],
    heads: [],
    metadata: { source },
  };
  try {
    await mkdir(out, { recursive: true });
    await bringFolder(source, join(out, PACK_BACKBONE_FOLDER), kind);
    await writeFile(join(out, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    return await loadPack(out);
  } catch (error) {
    await rm(out, { recursive: true, force: true });
    throw error;
  }
}

/** Hard-link (else copy) every file the backbone may need, keeping the folder structure. */
async function bringFolder(
  from: string,
  to: string,
  kind: CreatePackOptions['kind'],
): Promise<void> {
  await mkdir(to, { recursive: true });
  for (const entry of await readdir(from, { withFileTypes: true })) {
    if (SKIP.test(entry.name)) continue;
    // An export pack needs only the ONNX files it can run; a Hugging Face pack none of them.
    if (entry.name === 'onnx' && kind === 'huggingface') continue;
    const source = join(from, entry.name);
    const target = join(to, entry.name);
    if (entry.isDirectory()) {
      await bringFolder(source, target, kind);
    } else if (entry.isFile()) {
      await link(source, target).catch(() => copyFile(source, target));
    }
  }
}

export interface AddAdapterOptions {
  /** The pack folder. */
  readonly pack: string;
  /** The adapter folder: PEFT LoRA, AdapterHub, or our own format. */
  readonly adapter: string;
  /** The group to add it to; created when the pack has none of that id. */
  readonly group: string;
  /** The adapter's id in the pack (default: the folder's name). */
  readonly id?: string;
  /** For a new group: slots (adapters held ready at once). */
  readonly slots?: number;
  /** For a new group: the largest rank (bottleneck width) a slot holds, for adapters loaded later. */
  readonly rank?: number;
}

/**
 * Adds an adapter folder to a pack: copied into `adapters/<group>/<id>/`, listed in its group (an
 * in-layer group for PEFT and AdapterHub folders, a top-of-backbone one for our own format),
 * created ungated with this adapter as its default when the pack has no such group. A head saved
 * with a PEFT adapter (modules_to_save) becomes a task pinned to it. The pack is loaded again at
 * the end (every check), and left as it was when that fails.
 */
export async function addAdapter(options: AddAdapterOptions): Promise<LoadedPack> {
  const manifestPath = join(options.pack, MANIFEST_FILE);
  const original = await readFile(manifestPath, 'utf8');
  const manifest = JSON.parse(original) as Manifest;
  const id = options.id ?? basename(resolve(options.adapter));
  if (!new RegExp(ID_PATTERN).test(id)) {
    throw new Error(`adapter id '${id}' must match ${ID_PATTERN}; pass --id`);
  }
  const format = await detectAdapterFormat(options.adapter);
  const placement = format === 'moe-serve' ? 'top' : 'layers';
  const relativePath = `adapters/${options.group}/${id}`;
  const target = join(options.pack, relativePath);
  if (await stat(target).catch(() => undefined)) {
    throw new Error(`${target} already exists; choose another --id`);
  }
  let group = manifest.groups.find((g) => g.id === options.group);
  if (group === undefined) {
    group = {
      id: options.group,
      default_k: 1,
      adapters: [],
      gate: null,
      default_adapter: id,
      ...(placement === 'layers' ? { placement } : {}),
      ...(options.slots === undefined ? {} : { slots: options.slots }),
      ...(options.rank === undefined ? {} : { rank: options.rank }),
    };
    // In-layer groups route before the first layer: they come before top-of-backbone ones.
    const firstTop = manifest.groups.findIndex((g) => (g.placement ?? 'top') === 'top');
    if (placement === 'layers' && firstTop >= 0) manifest.groups.splice(firstTop, 0, group);
    else manifest.groups.push(group);
  } else if ((group.placement ?? 'top') !== placement) {
    throw new Error(
      `group '${group.id}' holds ${group.placement ?? 'top'} adapters; a ${format} folder goes into a group with placement '${placement}'`,
    );
  }
  group.adapters.push({ id, path: relativePath });
  try {
    await bringFolder(options.adapter, target, 'huggingface');
    await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    return await loadPack(options.pack);
  } catch (error) {
    await writeFile(manifestPath, original);
    await rm(target, { recursive: true, force: true });
    throw error;
  }
}
