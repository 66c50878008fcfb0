/**
 * Built graphs cached on disk: a graph whose weights come from a large checkpoint (a Hugging Face
 * backbone) is built once and reused by every later start, until its inputs change.
 *
 * A cached graph lives in `<parent>/<name>/model.onnx` (+ `model.onnx.data`, the weights as
 * external data beside it). The caller names it by a key that digests everything the graph is
 * built from (builder versions, config, weights, the pack's fixed parts). Builds go to a temporary
 * folder that is renamed into place when complete, so a reader never sees half a graph, and two
 * processes that build at once both end with the same files. With `removeOthers`, builds for
 * other keys in the same parent are removed once a new one is in place (the pack's own cache).
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';

export const CACHED_MODEL_FILE = 'model.onnx';

export interface CachedGraphOptions {
  /** The folder holding one subfolder per cached graph. */
  readonly parent: string;
  /** This graph's subfolder: its key (or a name that contains it). */
  readonly name: string;
  /** Writes the graph to `path` (model.onnx, its data beside it). */
  readonly build: (path: string) => Promise<void>;
  /** Remove the other subfolders of `parent` after a build (default false). */
  readonly removeOthers?: boolean;
  readonly log?: (line: string) => void;
  /** What to call the parent in the error when it is not writable (e.g. a config variable). */
  readonly hint?: string;
}

/** The cached graph's model file, built first when missing; `built` says whether it was. */
export async function cachedGraph(
  options: CachedGraphOptions,
): Promise<{ readonly path: string; readonly built: boolean }> {
  const { parent, name } = options;
  const dir = join(parent, name);
  const path = join(dir, CACHED_MODEL_FILE);
  if (await isFile(path)) return { path, built: false };
  const started = performance.now();
  options.log?.(`[graph] building ${dir}`);
  try {
    await mkdir(parent, { recursive: true });
  } catch (error) {
    throw cacheError(parent, error, options.hint);
  }
  // Unique per build: two opens of one pack, in one process or two, must not share it.
  const staging = join(parent, `.${name}.building-${process.pid}-${randomUUID()}`);
  await rm(staging, { recursive: true, force: true });
  try {
    await mkdir(staging);
    await options.build(join(staging, CACHED_MODEL_FILE));
    await rename(staging, dir).catch(async (error: NodeJS.ErrnoException) => {
      // Another process finished the same build first: its files are the same; keep them.
      if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
      await rm(staging, { recursive: true, force: true });
    });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    const code = (error as NodeJS.ErrnoException).code;
    throw code === 'EACCES' || code === 'EROFS' ? cacheError(parent, error, options.hint) : error;
  }
  if (options.removeOthers === true) await removeOthers(parent, name);
  options.log?.(`[graph] built in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return { path, built: true };
}

/**
 * Digest of weight files' names and bytes, streamed (about 2 s per GB here): the part of a cache
 * key that says "these weights".
 */
export async function filesDigest(files: readonly string[]): Promise<string> {
  const hash = createHash('sha256');
  for (const file of files) {
    hash.update(`${basename(file)}\n`);
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 22 })) {
      hash.update(chunk as Buffer);
    }
  }
  return hash.digest('hex');
}

async function removeOthers(parent: string, keep: string): Promise<void> {
  for (const entry of await readdir(parent).catch(() => [] as string[])) {
    if (entry !== keep && !entry.startsWith('.')) {
      await rm(join(parent, entry), { recursive: true, force: true }).catch(() => undefined);
    }
  }
}

function cacheError(folder: string, error: unknown, hint: string | undefined): Error {
  return new Error(
    `cannot write a built graph to ${folder} (${(error as Error).message}); make it writable${hint === undefined ? '' : `, or set ${hint} to a writable folder`}`,
    { cause: error },
  );
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}
