/**
 * Is the demo pack's build deterministic? Builds the full demo pack (FULL_CONFIG, what `npm start`
 * builds) twice, each into its own temp folder, and compares every file by SHA-256: the tokenizer,
 * the backbone folder, adapters, gates, heads, manifest and report.json. Issue 12 asks for this
 * check "if CI's time allows; otherwise in a bench script": two full builds take four to five
 * minutes on 2 cores, so it is this script, not a test.
 *
 *   npm run bench:demo-determinism [-- --small]
 *
 * One JSON document on stdout (files compared, the ones that differ, build seconds); progress on
 * stderr. Exit code 1 when any file differs.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { buildDemoPack, FULL_CONFIG, SMALL_CONFIG } from '../src/demo/build.js';
import { log } from './support.js';

const { values } = parseArgs({ options: { small: { type: 'boolean', default: false } } });
const config = values.small ? SMALL_CONFIG : FULL_CONFIG;

/** Relative path -> SHA-256 of every file under `dir`. */
async function digests(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    out.set(
      relative(dir, path),
      createHash('sha256')
        .update(await readFile(path))
        .digest('hex'),
    );
  }
  return out;
}

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'moe-demo-determinism-'));
  try {
    const builds: { files: Map<string, string>; seconds: number }[] = [];
    for (const name of ['first', 'second']) {
      const out = join(root, name);
      const started = performance.now();
      await buildDemoPack(out, { config, log: (line) => log(`[${name}] ${line}`) });
      builds.push({ files: await digests(out), seconds: (performance.now() - started) / 1000 });
    }
    const [a, b] = builds as [(typeof builds)[0], (typeof builds)[0]];
    const paths = [...new Set([...a.files.keys(), ...b.files.keys()])].sort();
    const differing = paths.filter((path) => a.files.get(path) !== b.files.get(path));
    process.stdout.write(
      `${JSON.stringify(
        {
          benchmark: 'demo-determinism',
          config: values.small ? 'small' : 'full',
          files: paths.length,
          identical: differing.length === 0,
          differing,
          build_seconds: builds.map((build) => Math.round(build.seconds)),
        },
        null,
        2,
      )}\n`,
    );
    if (differing.length > 0) process.exitCode = 1;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  log(`[bench] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exit(1);
});
