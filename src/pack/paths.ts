/**
 * Paths the manifest names: resolved inside the pack folder (absolute paths and `..` escapes are
 * PACK_PATH_OUTSIDE), and checked to exist as the kind of entry expected (PACK_FILE_MISSING),
 * with errors that name the manifest and the field.
 */
import { stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { PackError } from './errors.js';

/** Resolve a manifest path inside the pack; absolute paths and `..` escapes are errors. */
export function packPath(dir: string, path: string, manifestPath: string, field: string): string {
  const root = resolve(dir);
  const target = resolve(root, path);
  const rel = relative(root, target);
  if (isAbsolute(path) || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw new PackError(
      'PACK_PATH_OUTSIDE',
      manifestPath,
      field,
      `'${path}' is outside the pack folder; paths must be relative to it and stay inside it`,
    );
  }
  return join(dir, path);
}

export async function existingEntry(
  dir: string,
  path: string,
  manifestPath: string,
  field: string,
  kind: 'file' | 'folder',
): Promise<string> {
  const full = packPath(dir, path, manifestPath, field);
  const stats = await stat(full).catch(() => undefined);
  if (!stats || (kind === 'file' ? !stats.isFile() : !stats.isDirectory())) {
    throw new PackError(
      'PACK_FILE_MISSING',
      manifestPath,
      field,
      stats ? `${full} is not a ${kind}` : `${kind} ${full} not found; add it or fix the path`,
    );
  }
  return full;
}

export function existingFile(
  dir: string,
  path: string,
  manifestPath: string,
  field: string,
): Promise<string> {
  return existingEntry(dir, path, manifestPath, field, 'file');
}
