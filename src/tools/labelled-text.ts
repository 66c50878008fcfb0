/**
 * Labelled text as the pack tools read it (`fit-gate`, `pack add-head`): one folder per label (an
 * adapter id, a head label) holding .txt files of one example per line.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** The lines of every .txt file in `dir` (files sorted by name), trimmed, blank ones dropped. */
export async function readTextLines(dir: string): Promise<{ files: number; lines: string[] }> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.txt')).sort();
  const lines: string[] = [];
  for (const file of files) {
    for (const line of (await readFile(join(dir, file), 'utf8')).split(/\r?\n/)) {
      const text = line.trim();
      if (text.length > 0) lines.push(text);
    }
  }
  return { files: files.length, lines };
}
