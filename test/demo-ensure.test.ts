/**
 * The demo pack is built once when several processes need it at the same time (`npm start` and
 * `npm run worker` on one checkout): one builds, in a staging folder of its own, the others wait
 * and use its pack; a lock whose owner died is taken over.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildOnce, DEMO_REPORT_FILE, demoPackPresent } from '../src/demo/ensure.js';
import { loadPack } from '../src/pack/load.js';
import { MANIFEST_FILE } from '../src/pack/manifest.js';

const BUILD = new URL('../src/demo/build.js', import.meta.url).href;

/** A demo build of a second or so: few languages, a tiny backbone, one epoch. */
const TINY = `{
  ...SMALL_CONFIG,
  languages: SMALL_CONFIG.languages.slice(0, 3),
  auxiliaryLanguages: [],
  vocabSize: 600,
  backbone: { hiddenSize: 32, layers: 1, heads: 2, ffnSize: 64, maxLength: 32 },
  languageRank: 4,
  taskRank: 4,
  gate: { ...SMALL_CONFIG.gate, steps: 20, dropoutCopies: 0 },
  mixture: { ...SMALL_CONFIG.mixture, epochs: 1 },
}`;

let root: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-demo-ensure-'));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A process that runs ensureDemoPack(dir) and prints whether it built. */
function ensureInChild(dir: string): Promise<{ code: number | null; output: string }> {
  const script = `
    const { ensureDemoPack, SMALL_CONFIG } = await import(${JSON.stringify(BUILD)});
    const built = await ensureDemoPack(${JSON.stringify(dir)}, (l) => console.error(l), ${TINY});
    console.log(JSON.stringify({ built }));
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => {
    output += chunk;
  });
  child.stderr.on('data', (chunk) => {
    output += chunk;
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    }),
  );
}

describe('ensureDemoPack', () => {
  it('two processes at once: one builds, the other waits and uses its pack; nothing is left over', async () => {
    const parent = join(root, 'race');
    await mkdir(parent);
    const dir = join(parent, 'demo');
    const runs = await Promise.all([ensureInChild(dir), ensureInChild(dir)]);
    for (const run of runs) assert.equal(run.code, 0, run.output);
    const built = runs.map((run) => /\{"built":(true|false)\}/.exec(run.output)?.[1]);
    assert.deepEqual(built.sort(), ['false', 'true'], runs.map((r) => r.output).join('\n---\n'));
    assert.ok(await demoPackPresent(dir));
    const pack = await loadPack(dir);
    assert.equal(pack.manifest.name, 'demo');
    assert.deepEqual(await readdir(parent), ['demo'], 'no lock, staging or .building folder left');
  });
});

describe('buildOnce', () => {
  const fakePack = async (staging: string) => {
    await mkdir(staging, { recursive: true });
    await writeFile(join(staging, MANIFEST_FILE), '{}');
    await writeFile(join(staging, DEMO_REPORT_FILE), '{}');
  };
  const options = {
    present: demoPackPresent,
    assertReplaceable: async () => {},
    log: () => {},
  };

  it('takes over a lock whose owner is dead', async () => {
    const dir = join(root, 'dead-owner');
    const dead = spawn(process.execPath, ['-e', '0']);
    const pid = dead.pid!;
    await new Promise((resolve) => dead.once('exit', resolve));
    await writeFile(`${dir}.lock`, JSON.stringify({ pid, host: hostname() }));
    assert.equal(await buildOnce(dir, { ...options, build: fakePack }), true);
    assert.ok(await demoPackPresent(dir));
    assert.deepEqual(
      (await readdir(root)).filter((f) => f.startsWith('dead-owner.')),
      [],
    );
  });

  it('waits while a live owner holds the lock, then uses what it built', async () => {
    const dir = join(root, 'live-owner');
    await writeFile(`${dir}.lock`, JSON.stringify({ pid: process.pid, host: hostname() }));
    let built = false;
    const waiting = buildOnce(dir, {
      ...options,
      build: async (staging) => {
        built = true;
        await fakePack(staging);
      },
    });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(built, false, 'built while the lock was held');
    await fakePack(dir); // the owner finishes
    await rm(`${dir}.lock`);
    assert.equal(await waiting, false);
    assert.equal(built, false);
  });
});
