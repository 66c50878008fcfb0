/**
 * The API role as operators run it: `node dist/src/main.js` in its own process, configured from
 * the environment, stopped with SIGTERM.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixturePack } from '../src/pack/fixture.js';

const MAIN = new URL('../src/main.js', import.meta.url).pathname;

interface Server {
  child: ChildProcess;
  url: string;
  exit: Promise<number | null>;
  stderr: () => string;
}

/** Start the server; resolves once it logs the address it listens on. */
function startServer(env: Record<string, string>): Promise<Server> {
  const child = spawn(process.execPath, [MAIN], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk) => {
    stderr += chunk;
  });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 30_000);
    let buffered = '';
    child.stdout!.on('data', (chunk) => {
      buffered += chunk;
      const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(buffered);
      if (match) {
        clearTimeout(timer);
        resolve({ child, url: match[1]!, exit, stderr: () => stderr });
      }
    });
    void exit.then((code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
  });
}

let root: string;
let packDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-main-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 3 });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('main.js', () => {
  it('refuses to boot on invalid configuration, naming every bad variable', async () => {
    const child = spawn(process.execPath, [MAIN], {
      env: { ...process.env, PORT: 'eighty', MAX_BATCH_ITEMS: '0', MODEL_DIR: packDir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const code = await new Promise((resolve) => child.once('exit', resolve));
    assert.equal(code, 1);
    assert.match(stderr, /PORT="eighty"/);
    assert.match(stderr, /MAX_BATCH_ITEMS="0"/);
  });

  it('answers requests in flight on SIGTERM, then exits 0', async () => {
    const server = await startServer({ MODEL_DIR: packDir, ENGINE_WORKERS: '1' });
    const body = JSON.stringify({ inputs: ['the quick brown fox', 'der schnelle braune fuchs'] });
    const send = () =>
      fetch(`${server.url}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
    const first = await send();
    assert.equal(first.status, 200);
    const inFlight = Array.from({ length: 8 }, send);
    await new Promise((resolve) => setTimeout(resolve, 5));
    server.child.kill('SIGTERM');
    const answers = await Promise.allSettled(inFlight);
    for (const answer of answers) {
      // Each request is answered in full, or refused with DRAINING before any work: never cut off.
      if (answer.status !== 'fulfilled') continue;
      const response = answer.value;
      if (response.status === 200) continue;
      assert.equal(response.status, 503);
      assert.equal(response.headers.get('retry-after'), '1');
      assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'DRAINING');
    }
    assert.ok(answers.some((a) => a.status === 'fulfilled'));
    assert.equal(await server.exit, 0, server.stderr());
  });
});
