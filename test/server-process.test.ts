/**
 * The API role as operators run it: `node dist/src/main.js` in its own process, configured from
 * the environment, stopped with SIGTERM.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildFixturePack, FIXTURE_TEXTS } from './support/fixture-pack.js';

const MAIN = new URL('../src/main.js', import.meta.url).pathname;

interface Server {
  child: ChildProcess;
  url: string;
  exit: Promise<number | null>;
  stderr: () => string;
  /** Everything written to stdout so far (the JSON log). */
  stdout: () => string;
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
        resolve({ child, url: match[1]!, exit, stderr: () => stderr, stdout: () => buffered });
      }
    });
    void exit.then((code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
  });
}

let root: string;
let packDir: string;
/** Wide enough that a batch of 32 takes tens of ms: requests are still running at SIGTERM. */
let slowPackDir: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-main-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 3 });
  slowPackDir = await buildFixturePack(join(root, 'slow-pack'), {
    seed: 4,
    hiddenSize: 256,
    layers: 4,
    heads: 4,
    maxLength: 128,
  });
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

  it('answers every request that arrived before SIGTERM with 200, refuses later ones, exits 0', async () => {
    const server = await startServer({
      MODEL_DIR: slowPackDir,
      ENGINE_WORKERS: '1',
      ENGINE_THREADS: '1',
    });
    const inputs = Array.from({ length: 32 }, (_, i) => FIXTURE_TEXTS[i % FIXTURE_TEXTS.length]!);
    const send = () =>
      fetch(`${server.url}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs }),
      }).then(
        async (response) => ({
          status: response.status,
          body: await response.text(),
          at: performance.now(),
        }),
        (error: Error) => ({ status: 0, body: error.message, at: performance.now() }),
      );
    const arrived = () =>
      server
        .stdout()
        .split('\n')
        .filter((line) => line.includes('"url":"/v1/infer"') && line.includes('incoming request'))
        .length;
    const first = await send();
    assert.equal(first.status, 200, first.body);
    const count = 16;
    const inFlight = Array.from({ length: count }, send);
    // Every one of them has reached the server (it logs each request as it starts on it).
    const limit = performance.now() + 20_000;
    while (arrived() < count + 1) {
      assert.ok(performance.now() < limit, `only ${arrived()} requests arrived`);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const signalledAt = performance.now();
    server.child.kill('SIGTERM');
    const answers = await Promise.all(inFlight);
    for (const answer of answers) assert.equal(answer.status, 200, answer.body);
    assert.ok(
      answers.some((answer) => answer.at > signalledAt),
      'every answer came before the signal: the test did not exercise draining',
    );
    // Sent after the signal: refused (503 DRAINING while it drains, or no connection at all).
    const late = await send();
    if (late.status !== 0) {
      assert.equal(late.status, 503, late.body);
      assert.equal((JSON.parse(late.body) as { error: { code: string } }).error.code, 'DRAINING');
    }
    assert.equal(await server.exit, 0, server.stderr());
  });

  it('loads onnxruntime-node only in engine worker threads, and never the demo trainer', async () => {
    // A checkout whose demo pack is built: the default MODEL_DIR (models/demo) is there.
    const checkout = join(root, 'checkout');
    await cp(packDir, join(checkout, 'models', 'demo'), { recursive: true });
    await writeFile(join(checkout, 'models', 'demo', 'report.json'), '{}');
    // Module hooks that report every module resolved, and who imported it.
    await writeFile(
      join(checkout, 'hooks.mjs'),
      `export async function resolve(specifier, context, next) {
        const result = await next(specifier, context);
        if (/onnxruntime-node|\\/demo\\/|\\/engine\\/pack-session\\.js/.test(result.url)) {
          process.stderr.write('LOADED ' + result.url + ' FROM ' + context.parentURL + '\\n');
        }
        return result;
      }`,
    );
    await writeFile(
      join(checkout, 'register.mjs'),
      "import { register } from 'node:module'; register('./hooks.mjs', import.meta.url);",
    );
    const child = spawn(process.execPath, ['--import', './register.mjs', MAIN], {
      cwd: checkout,
      env: { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ENGINE_WORKERS: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
    });
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const exit = new Promise((resolve) => child.once('exit', resolve));
    const limit = performance.now() + 30_000;
    while (!/Server listening at/.test(stdout)) {
      assert.ok(performance.now() < limit && child.exitCode === null, `no start:\n${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    child.kill('SIGTERM');
    assert.equal(await exit, 0, stderr);
    const loads = stderr.split('\n').filter((line) => line.startsWith('LOADED '));
    const ort = loads.filter((line) => /LOADED \S*onnxruntime-node/.test(line));
    assert.ok(ort.length > 0, `the engine workers load onnxruntime-node:\n${stderr}`);
    for (const line of ort) {
      // From the engine worker (a worker thread), the pack session it alone imports, or inside
      // the package itself.
      assert.match(
        line,
        /FROM \S*(\/src\/engine\/(engine-worker|pack-session)\.js|\/node_modules\/onnxruntime-node\/)/,
        line,
      );
    }
    const packSession = loads.filter((line) => /LOADED \S*\/engine\/pack-session\.js/.test(line));
    assert.ok(packSession.length > 0, stderr);
    for (const line of packSession) assert.match(line, /FROM \S*\/src\/engine\/engine-worker\.js$/);
    assert.deepEqual(
      // demo/ensure.js is the light presence check (no trainer, no ORT); nothing else of demo/.
      loads.filter((line) => /LOADED \S*\/src\/demo\/(?!ensure\.js)/.test(line)),
      [],
      'the demo trainer was loaded',
    );
  });
});
