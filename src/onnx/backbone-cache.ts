/**
 * The backbone file the engine runs, for any kind of pack backbone: an ONNX file or export as it
 * is, or, for a Hugging Face folder, the graph our builder makes from it, cached on disk.
 *
 * Cache key: sha256 over the builder version (BERT_BUILDER_VERSION), the EncoderConfig read from
 * config.json, the build options (manifest backbone.quantize, when not 'none', so float32 keys are
 * those of builds before the option existed), and the bytes of every safetensors file the weights
 * come from. Same key, same
 * graph: the second start reads no weights and builds nothing (hashing the weight files is the
 * cost: about 2 s per GB here). Any change to the weights, the config or the builder gives a new
 * key, and so a new build.
 *
 * Where: `<pack>/.cache/backbone/<key>/model.onnx` (+ `model.onnx.data`, the weights as external
 * data beside it), or `<cacheDir>/<pack name>-<key>/` when a cache folder is given
 * (BACKBONE_CACHE_DIR; for packs on read-only storage). Builds go to a temporary folder that is
 * renamed into place when complete, so a reader never sees half a graph, and two processes that
 * build at once both end with the same files. In the pack's own cache, builds for other keys are
 * removed once a new one is in place.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { PackBackbone } from '../pack/backbone.js';
import { readHfWeights } from '../pack/hf-model.js';
import { BERT_BUILDER_VERSION, writeEncoderModel } from './bert.js';

export const BACKBONE_MODEL_FILE = 'model.onnx';

export interface PrepareBackboneOptions {
  /** Cache folder outside the pack (read-only packs); default `<pack>/.cache/backbone`. */
  readonly cacheDir?: string;
  /** Progress lines (a build of a large model takes a while). */
  readonly log?: (line: string) => void;
}

export interface PreparedBackbone {
  /** The ONNX file to create sessions from (a path: its external data sits beside it). */
  readonly path: string;
  /** For a Hugging Face backbone: whether this call built the graph (false: it was cached). */
  readonly built: boolean;
}

/** The ONNX file the engine runs for `backbone`, built and cached when it is a Hugging Face folder. */
export async function prepareBackbone(
  packDir: string,
  packName: string,
  backbone: PackBackbone,
  options: PrepareBackboneOptions = {},
): Promise<PreparedBackbone> {
  if (backbone.kind !== 'huggingface') return { path: backbone.path, built: false };
  const log = options.log ?? (() => undefined);
  const key = await backboneKey(backbone);
  const shared = options.cacheDir !== undefined;
  const parent = options.cacheDir ?? join(packDir, '.cache', 'backbone');
  const name = shared ? `${packName}-${key}` : key;
  const dir = join(parent, name);
  const path = join(dir, BACKBONE_MODEL_FILE);
  if (await isFile(path)) return { path, built: false };

  const started = performance.now();
  const int8 = backbone.quantize === 'int8' ? ' int8' : '';
  log(
    `[backbone] building the${int8} ${backbone.info.config.family} graph from ${backbone.dir} into ${dir}`,
  );
  try {
    await mkdir(parent, { recursive: true });
  } catch (error) {
    throw cacheError(parent, error);
  }
  const staging = join(parent, `.${name}.building-${process.pid}`);
  await rm(staging, { recursive: true, force: true });
  try {
    await mkdir(staging);
    const weights = await readHfWeights(backbone.info);
    await writeEncoderModel(join(staging, BACKBONE_MODEL_FILE), backbone.info.config, weights, {
      quantize: backbone.quantize,
    });
    await rename(staging, dir).catch(async (error: NodeJS.ErrnoException) => {
      // Another process finished the same build first: its files are the same; keep them.
      if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
      await rm(staging, { recursive: true, force: true });
    });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw (error as NodeJS.ErrnoException).code === 'EACCES' ||
      (error as NodeJS.ErrnoException).code === 'EROFS'
      ? cacheError(parent, error)
      : error;
  }
  if (!shared) await removeStale(parent, name);
  log(`[backbone] built in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return { path, built: true };
}

/** The cache key of a Hugging Face backbone: 32 hex digits of sha256 (see the header). */
export async function backboneKey(
  backbone: Extract<PackBackbone, { kind: 'huggingface' }>,
): Promise<string> {
  const hash = createHash('sha256');
  hash.update(`moe-serve bert builder v${BERT_BUILDER_VERSION}\n`);
  hash.update(`${JSON.stringify(backbone.info.config)}\n`);
  if (backbone.quantize !== 'none') hash.update(`quantize ${backbone.quantize}\n`);
  for (const file of backbone.info.weightFiles) {
    hash.update(`${basename(file)}\n`);
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 22 })) {
      hash.update(chunk as Buffer);
    }
  }
  return hash.digest('hex').slice(0, 32);
}

async function removeStale(parent: string, keep: string): Promise<void> {
  for (const entry of await readdir(parent).catch(() => [] as string[])) {
    if (entry !== keep && !entry.startsWith('.')) {
      await rm(join(parent, entry), { recursive: true, force: true }).catch(() => undefined);
    }
  }
}

function cacheError(folder: string, error: unknown): Error {
  return new Error(
    `cannot write the built backbone graph to ${folder} (${(error as Error).message}); make it writable, or set BACKBONE_CACHE_DIR to a writable folder`,
    { cause: error },
  );
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}
