/**
 * Execution providers by configuration. On a machine where a GPU provider cannot start (this
 * development machine: no CUDA provider libraries, no Vulkan adapter), asking for it:
 * - with PROVIDER_FALLBACK=true runs on cpu and says so (engine status, /health/ready, /metrics,
 *   one warning line in the log);
 * - with PROVIDER_FALLBACK=false fails at boot with ENGINE_PROVIDER_UNAVAILABLE and a message that
 *   names the provider, the reason and how to allow the fallback (main.js exits 1).
 * Where a provider does start (a GPU machine), the tests check that it is reported as in use and
 * skip the fallback cases for it, saying so.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../src/config.js';
import type { ExecutionProvider } from '../src/engine/protocol.js';
import { MoeError } from '../src/errors.js';
import { Model } from '../src/inference/model.js';
import { buildFixturePack, FIXTURE_TEXTS } from './support/fixture-pack.js';
import {
  freePort,
  metricSum,
  type Proc,
  redisPing,
  startProcess,
  startWorker,
  stop,
  waitForHttp,
} from './support/processes.js';

const MAIN = new URL('../src/main.js', import.meta.url).pathname;
const WORKER = new URL('../src/worker.js', import.meta.url).pathname;
const GPU_PROVIDERS = ['cuda', 'webgpu'] as const satisfies readonly ExecutionProvider[];

let root: string;
let packDir: string;
let reference: Model;
/** provider -> whether it really starts on this machine; see startsHere. */
const probes = new Map<ExecutionProvider, Promise<boolean>>();

/**
 * Whether `provider` really starts on this machine, found out once per run by opening an engine
 * that may fall back to cpu. Every test that depends on it asks here, so each test runs alone
 * (--test-name-pattern) or in any order with the same outcome.
 */
function startsHere(provider: ExecutionProvider): Promise<boolean> {
  let probe = probes.get(provider);
  if (probe === undefined) {
    probe = Model.open({
      packDir,
      engine: {
        workers: 1,
        intraOpThreads: 1,
        executionProvider: provider,
        allowProviderFallback: true,
      },
    }).then(async (model) => {
      const started = model.engine.providerStatus.provider === provider;
      await model.close();
      return started;
    });
    probes.set(provider, probe);
  }
  return probe;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-providers-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 11 });
  reference = await Model.open({ packDir, engine: { workers: 1, intraOpThreads: 1 } });
});

after(async () => {
  await reference.close();
  await rm(root, { recursive: true, force: true });
});

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function providerError(promise: Promise<unknown>): Promise<MoeError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof MoeError, `expected MoeError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected the engine to refuse to start');
}

describe('configuration', () => {
  it('takes cpu, cuda and webgpu, a device id and the fallback switch', () => {
    const config = loadConfig({
      EXECUTION_PROVIDER: 'cuda',
      EXECUTION_DEVICE_ID: '1',
      PROVIDER_FALLBACK: 'true',
    });
    assert.equal(config.EXECUTION_PROVIDER, 'cuda');
    assert.equal(config.EXECUTION_DEVICE_ID, 1);
    assert.equal(config.PROVIDER_FALLBACK, true);
    const defaults = loadConfig({});
    assert.equal(defaults.EXECUTION_PROVIDER, 'cpu');
    assert.equal(defaults.EXECUTION_DEVICE_ID, 0);
    assert.equal(defaults.PROVIDER_FALLBACK, false, 'a GPU deployment must not fall back silently');
    assert.equal(loadConfig({ EXECUTION_PROVIDER: 'webgpu' }).EXECUTION_PROVIDER, 'webgpu');
  });

  it('rejects unknown providers, bad switches, and a device id for webgpu', () => {
    assert.throws(() => loadConfig({ EXECUTION_PROVIDER: 'tensorrt' }), /cpu, cuda, webgpu/);
    assert.throws(
      () => loadConfig({ PROVIDER_FALLBACK: 'yes' }),
      /PROVIDER_FALLBACK.*true or false/,
    );
    assert.throws(() => loadConfig({ EXECUTION_DEVICE_ID: '-1' }), /EXECUTION_DEVICE_ID/);
    assert.throws(
      () => loadConfig({ EXECUTION_PROVIDER: 'webgpu', EXECUTION_DEVICE_ID: '1' }),
      /EXECUTION_DEVICE_ID="1": webgpu uses the default GPU adapter/,
    );
    assert.equal(
      loadConfig({ EXECUTION_PROVIDER: 'cuda', EXECUTION_DEVICE_ID: '3' }).EXECUTION_DEVICE_ID,
      3,
    );
  });
});

describe('engine', () => {
  it('reports cpu as requested and in use, with no fallback, by default', () => {
    assert.deepEqual(reference.engine.providerStatus, {
      provider: 'cpu',
      requested: 'cpu',
      deviceId: 0,
      fallbackReason: undefined,
    });
  });

  for (const requested of GPU_PROVIDERS) {
    it(`${requested} with fallback allowed: runs on cpu if ${requested} cannot start, and says why`, async () => {
      const model = await Model.open({
        packDir,
        engine: {
          workers: 2,
          intraOpThreads: 1,
          executionProvider: requested,
          allowProviderFallback: true,
          allowFaultInjection: true,
        },
      });
      try {
        const status = model.engine.providerStatus;
        if (!probes.has(requested))
          probes.set(requested, Promise.resolve(status.provider === requested));
        if (status.provider === requested) {
          // A machine where the provider works: nothing fell back, nothing to say.
          assert.equal(status.fallbackReason, undefined);
          return;
        }
        assert.equal(status.provider, 'cpu');
        assert.equal(status.requested, requested);
        assert.ok(status.fallbackReason !== undefined && status.fallbackReason.length > 0);
        assert.doesNotMatch(status.fallbackReason, /\n/, 'one line, for logs and health');
        // The same answers as a cpu engine.
        const [ours, theirs] = await Promise.all([
          model.infer({ inputs: FIXTURE_TEXTS.slice(0, 6), topK: 2 }),
          reference.infer({ inputs: FIXTURE_TEXTS.slice(0, 6), topK: 2 }),
        ]);
        ours.forEach((result, i) => {
          assert.ok(maxAbsDiff(result.embedding, theirs[i]!.embedding) < 1e-5);
          assert.deepEqual(result.routing, theirs[i]!.routing);
        });
        // A replacement worker starts on the provider in use, not on a new attempt at the GPU.
        const ready = new Promise<ExecutionProvider>((resolve) =>
          model.engine.once('worker-ready', (e) => resolve(e.provider)),
        );
        model.engine.crashWorkerForTest(0);
        assert.equal(await ready, 'cpu');
        assert.equal(model.engine.providerStatus.provider, 'cpu');
        assert.equal(model.engine.providerStatus.fallbackReason, status.fallbackReason);
      } finally {
        await model.close();
      }
    });

    it(`${requested} with fallback off: start rejects with ENGINE_PROVIDER_UNAVAILABLE`, async (t) => {
      if (await startsHere(requested)) {
        t.skip(`${requested} starts on this machine: there is no failure to test`);
        return;
      }
      const error = await providerError(
        Model.open({
          packDir,
          engine: { workers: 2, intraOpThreads: 1, executionProvider: requested, deviceId: 0 },
        }),
      );
      assert.equal(error.code, 'ENGINE_PROVIDER_UNAVAILABLE', error.message);
      assert.match(error.message, new RegExp(`^The execution provider '${requested}'`));
      assert.match(error.message, /cannot start: \S/);
      assert.match(error.message, /PROVIDER_FALLBACK=true/);
      assert.equal(error.details?.provider, requested);
    });
  }

  it('tells a broken backbone from a provider that cannot start', async () => {
    const broken = join(root, 'broken');
    await cp(packDir, broken, { recursive: true });
    await writeFile(join(broken, 'backbone.onnx'), 'not an onnx file');
    for (const executionProvider of ['cpu', 'cuda'] as const) {
      const error = await providerError(
        Model.open({
          packDir: broken,
          engine: { workers: 1, intraOpThreads: 1, executionProvider, allowProviderFallback: true },
        }),
      );
      assert.equal(error.code, 'ENGINE_FAILED', error.message);
    }
    await copyFile(join(packDir, 'backbone.onnx'), join(broken, 'backbone.onnx'));
  });
});

describe('main.js', () => {
  async function boot(env: Record<string, string>): Promise<{ proc: Proc; url: string }> {
    const port = await freePort();
    const proc = startProcess(process.execPath, [MAIN], {
      MODEL_DIR: packDir,
      ENGINE_WORKERS: '1',
      ENGINE_THREADS: '1',
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      ...env,
    });
    const url = `http://127.0.0.1:${port}`;
    await waitForHttp(`${url}/health/ready`, { proc });
    return { proc, url };
  }

  it('cuda with PROVIDER_FALLBACK=true: serves on cpu and says so in /health/ready, /metrics and the log', async (t) => {
    const { proc, url } = await boot({ EXECUTION_PROVIDER: 'cuda', PROVIDER_FALLBACK: 'true' });
    try {
      const ready = (await (await fetch(`${url}/health/ready`)).json()) as Record<string, unknown>;
      if (ready.execution_provider === 'cuda') {
        t.skip('cuda starts on this machine: there is no fallback to see');
        return;
      }
      assert.equal(ready.ready, true);
      assert.equal(ready.execution_provider, 'cpu');
      assert.equal(ready.execution_provider_requested, 'cuda');
      assert.equal(ready.provider_fallback, true);
      assert.equal(typeof ready.provider_fallback_reason, 'string');
      const infer = await fetch(`${url}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: ['the quick brown fox'] }),
      });
      assert.equal(infer.status, 200);
      const metrics = await (await fetch(`${url}/metrics`)).text();
      assert.match(metrics, /^moe_execution_provider_info\{provider="cpu",requested="cuda"\} 1$/m);
      assert.equal(metricSum(metrics, 'moe_execution_provider_info', { provider: 'cuda' }), 0);
      const warnings = proc
        .output()
        .split('\n')
        .filter((line) => line.includes('could not start'));
      assert.equal(warnings.length, 1, proc.output());
      const warning = JSON.parse(warnings[0]!) as Record<string, unknown>;
      assert.equal(warning.level, 40);
      assert.equal(warning.requested, 'cuda');
      assert.equal(warning.provider, 'cpu');
      assert.equal(warning.reason, ready.provider_fallback_reason);
    } finally {
      assert.equal(await stop(proc), 0, proc.output());
    }
  });

  for (const provider of GPU_PROVIDERS) {
    it(`${provider} with PROVIDER_FALLBACK=false: exits 1 at boot with a clear message`, async (t) => {
      if (await startsHere(provider)) {
        t.skip(`${provider} starts on this machine: there is no failure to test`);
        return;
      }
      const proc = startProcess(process.execPath, [MAIN], {
        MODEL_DIR: packDir,
        ENGINE_WORKERS: '1',
        ENGINE_THREADS: '1',
        HOST: '127.0.0.1',
        PORT: '0',
        EXECUTION_PROVIDER: provider,
        PROVIDER_FALLBACK: 'false',
      });
      const timer = setTimeout(() => proc.child.kill('SIGKILL'), 30_000);
      const code = await proc.exit;
      clearTimeout(timer);
      assert.equal(code, 1, proc.output());
      const line = proc
        .output()
        .split('\n')
        .find((l) => l.startsWith('moe-serve failed to start:'));
      assert.ok(line, proc.output());
      assert.match(line, new RegExp(`The execution provider '${provider}'.* cannot start: \\S`));
      assert.match(line, /To run on CPU instead, allow the fallback \(PROVIDER_FALLBACK=true\)/);
      assert.doesNotMatch(proc.output(), /Server listening/);
    });
  }
});

describe('worker.js (queue mode)', () => {
  /** The development Redis (FIELD-NOTES); a prefix of our own keeps its keys apart. */
  const prefix = `moe-providers-${process.pid}`;
  after(async () => {
    const script = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end";
    await new Promise((done) =>
      execFile('redis-cli', ['-p', '6379', 'EVAL', script, '0', `${prefix}:*`], () => done(null)),
    );
  });
  const queueEnv = () => ({
    QUEUE: 'redis',
    REDIS_URL: 'redis://127.0.0.1:6379',
    QUEUE_PREFIX: prefix,
    MODEL_DIR: packDir,
    ENGINE_WORKERS: '1',
    ENGINE_THREADS: '1',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
  });

  it('cuda with PROVIDER_FALLBACK=true: the worker says so on its ops port', async (t) => {
    if (!(await redisPing(6379))) return t.skip('no Redis on 127.0.0.1:6379');
    if (await startsHere('cuda')) return t.skip('cuda starts on this machine');
    const worker = await startWorker({
      ...queueEnv(),
      EXECUTION_PROVIDER: 'cuda',
      PROVIDER_FALLBACK: 'true',
    });
    try {
      const ready = (await (await fetch(`${worker.url}/health/ready`)).json()) as Record<
        string,
        unknown
      >;
      assert.equal(ready.execution_provider, 'cpu');
      assert.equal(ready.execution_provider_requested, 'cuda');
      assert.equal(ready.provider_fallback, true);
      const metrics = await (await fetch(`${worker.url}/metrics`)).text();
      assert.match(metrics, /^moe_execution_provider_info\{provider="cpu",requested="cuda"\} 1$/m);
      assert.equal(
        worker
          .output()
          .split('\n')
          .filter((line) => line.includes('could not start')).length,
        1,
        worker.output(),
      );
    } finally {
      assert.equal(await stop(worker), 0, worker.output());
    }
  });

  it('cuda with PROVIDER_FALLBACK=false: the worker exits 1 with the reason', async (t) => {
    if (await startsHere('cuda')) return t.skip('cuda starts on this machine');
    const proc = startProcess(process.execPath, [WORKER], {
      ...queueEnv(),
      EXECUTION_PROVIDER: 'cuda',
    });
    const timer = setTimeout(() => proc.child.kill('SIGKILL'), 30_000);
    const code = await proc.exit;
    clearTimeout(timer);
    assert.equal(code, 1, proc.output());
    assert.match(
      proc.output(),
      /moe-serve worker failed to start: The execution provider 'cuda' \(device 0\) cannot start: .*PROVIDER_FALLBACK=true/,
    );
  });
});
