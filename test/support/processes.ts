/**
 * Real processes for queue-mode tests and the queue bench: a private redis-server, API nodes
 * (`dist/src/main.js`) and workers (`dist/src/worker.js`) on 127.0.0.1, a bounded load loop, and
 * a reader for Prometheus text. Every wait is bounded in time.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createServer } from 'node:net';

const MAIN = new URL('../../src/main.js', import.meta.url).pathname;
const WORKER = new URL('../../src/worker.js', import.meta.url).pathname;

export interface Proc {
  readonly child: ChildProcess;
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exit: Promise<number | null>;
  /** What it wrote so far (stdout and stderr, last 64 kB). */
  readonly output: () => string;
  readonly alive: () => boolean;
}

export interface HttpProc extends Proc {
  /** http://127.0.0.1:PORT */
  readonly url: string;
}

/** A TCP port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export function startProcess(command: string, args: string[], env: Record<string, string>): Proc {
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-65_536);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    exit,
    output: () => output,
    alive: () => child.exitCode === null && child.signalCode === null,
  };
}

/** Poll `url` until it answers `status` (default 200); throws after `timeoutMs`. */
export async function waitForHttp(
  url: string,
  options: { timeoutMs?: number; status?: number; proc?: Proc } = {},
): Promise<void> {
  const limit = performance.now() + (options.timeoutMs ?? 30_000);
  let last = 'no answer';
  while (performance.now() < limit) {
    if (options.proc !== undefined && !options.proc.alive()) {
      throw new Error(`process exited while waiting for ${url}:\n${options.proc.output()}`);
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      if (response.status === (options.status ?? 200)) return;
      last = `status ${response.status}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready (${last}):\n${options.proc?.output() ?? ''}`);
}

/** The settings every process of one queue-mode cluster shares. */
export function clusterEnv(options: {
  packDir: string;
  redisPort: number;
  prefix: string;
  extra?: Record<string, string>;
}): Record<string, string> {
  return {
    QUEUE: 'redis',
    REDIS_URL: `redis://127.0.0.1:${options.redisPort}`,
    QUEUE_PREFIX: options.prefix,
    MODEL_DIR: options.packDir,
    ENGINE_WORKERS: '1',
    ENGINE_THREADS: '1',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    ...options.extra,
  };
}

/** An API node (`main.js`), ready when /health/live answers. */
export async function startApi(env: Record<string, string>): Promise<HttpProc> {
  const port = await freePort();
  const proc = startProcess(process.execPath, [MAIN], { ...env, PORT: String(port) });
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/health/live`, { proc });
  return { ...proc, url };
}

/** A queue worker (`worker.js`) with its ops port, ready when /health/ready answers 200. */
export async function startWorker(env: Record<string, string>): Promise<HttpProc> {
  const port = await freePort();
  const proc = startProcess(process.execPath, [WORKER], {
    ...env,
    WORKER_METRICS_PORT: String(port),
  });
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/health/ready`, { proc });
  return { ...proc, url };
}

/**
 * A private redis-server on `port` that keeps its data in `dir` (append-only file), so that a
 * stop and restart loses nothing, like a production Redis for BullMQ. Ready when it answers PING.
 */
export async function startRedis(port: number, dir: string): Promise<Proc> {
  const proc = startProcess(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
      '--save',
      '',
      '--appendonly',
      'yes',
      '--appendfsync',
      'everysec', // a clean stop (SIGTERM) still writes everything
    ],
    {},
  );
  const limit = performance.now() + 10_000;
  while (performance.now() < limit) {
    if (!proc.alive()) throw new Error(`redis-server exited:\n${proc.output()}`);
    if (await redisPing(port)) return proc;
    await sleep(50);
  }
  proc.child.kill('SIGKILL');
  throw new Error(`redis-server on ${port} did not answer PING:\n${proc.output()}`);
}

export function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('redis-cli', ['-p', String(port), 'ping'], { timeout: 2000 }, (error, stdout) =>
      resolve(error === null && stdout.trim() === 'PONG'),
    );
  });
}

/**
 * Active jobs of one BullMQ queue (`keyPrefix` is `QUEUE_PREFIX:QUEUE_NAME:`) that the worker
 * named `workerName` took (BullMQ keeps the taker's name in the job's `pb` field), counted in one
 * atomic step on the Redis at `port`.
 */
export function activeJobsOf(port: number, keyPrefix: string, workerName: string): Promise<number> {
  const script = `local n = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if redis.call('HGET', ARGV[1] .. id, 'pb') == ARGV[2] then n = n + 1 end
end
return n`;
  return new Promise((resolve, reject) => {
    execFile(
      'redis-cli',
      ['-p', String(port), 'EVAL', script, '1', `${keyPrefix}active`, keyPrefix, workerName],
      { timeout: 5000 },
      (error, stdout) => {
        const count = Number.parseInt(stdout.replace(/^\(integer\)\s*/, '').trim(), 10);
        if (error !== null || Number.isNaN(count)) {
          reject(error ?? new Error(`redis-cli EVAL: ${stdout}`));
        } else {
          resolve(count);
        }
      },
    );
  });
}

/** `redis-cli -p port ...args`: its stdout (raw output, one reply element per line). */
export function redisCli(port: number, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-p', String(port), ...args], { timeout: 10_000 }, (error, stdout) =>
      error === null ? resolve(stdout) : reject(error),
    );
  });
}

/** Every key under `prefix` (SCAN), and Redis's `used_memory` in bytes, on the Redis at `port`. */
export async function redisFootprint(
  port: number,
  prefix: string,
): Promise<{ keys: string[]; usedMemory: number }> {
  const [scan, info] = await Promise.all([
    redisCli(port, '--scan', '--pattern', `${prefix}*`),
    redisCli(port, 'info', 'memory'),
  ]);
  const used = /^used_memory:(\d+)/m.exec(info);
  return {
    keys: scan.split('\n').filter((line) => line.length > 0),
    usedMemory: Number(used?.[1] ?? Number.NaN),
  };
}

/** SIGTERM (or `signal`) and wait for the exit; SIGKILL after `timeoutMs`. */
export async function stop(
  proc: Proc,
  signal: NodeJS.Signals = 'SIGTERM',
  timeoutMs = 20_000,
): Promise<number | null> {
  if (!proc.alive()) return proc.exit;
  proc.child.kill(signal);
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), timeoutMs);
  try {
    return await proc.exit;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Run `send(i)` for i in [0, count) with `concurrency` loops. Every call is awaited; a call that
 * throws records the error as its outcome. `onDone` sees each outcome as it lands.
 */
export async function runLoad<T>(
  count: number,
  concurrency: number,
  send: (i: number) => Promise<T>,
  onDone?: (done: number) => void,
): Promise<(T | Error)[]> {
  const outcomes = new Array<T | Error>(count);
  let next = 0;
  let done = 0;
  const loop = async () => {
    while (next < count) {
      const i = next++;
      try {
        outcomes[i] = await send(i);
      } catch (error) {
        outcomes[i] = error instanceof Error ? error : new Error(String(error));
      }
      onDone?.(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, loop));
  return outcomes;
}

/** Sum of the samples of `name` whose labels include `labels`, in Prometheus text. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const present = match[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => present.includes(`${k}="${v}"`))) {
      sum += Number(match[3]);
    }
  }
  return sum;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
