/**
 * Queue mode against embedded mode on this machine, in one run: throughput and p50/p99 latency at
 * concurrency 1 and 64, and the ratios the scale-out issue targets:
 *   - added p50 latency of queue mode at concurrency 1 <= 5 ms;
 *   - queue-mode throughput at concurrency 64 >= 0.7 x embedded, with one worker.
 *
 *   npm run bench:queue [-- --rounds 3 --requests 600 --pack models/demo --redis-url redis://...]
 *
 * - Processes: an embedded API node; a queue-mode API node plus ONE worker process; Redis at
 *   --redis-url (default REDIS_URL or 127.0.0.1:6379) under a key prefix of this run, removed at
 *   the end. All on 127.0.0.1, with the same engine settings (--workers, --threads; defaults:
 *   the server's own), so the two modes run the same engine on the same cores. Idle processes
 *   take no CPU (their Redis reads block), so both stay up and rounds interleave the modes; the
 *   order alternates per round, results are medians over rounds.
 * - Client: `concurrency` loops on a keep-alive node:http agent, one input per request, a fixed
 *   count per level after a warm-up. The client shares the cores; its CPU time is reported.
 * - The pack: --pack, else models/demo when built, else a fixture pack of the demo's size
 *   (d 256, 4 layers, 4 heads, 128 tokens) with random weights, in a temp folder.
 *
 * JSON on stdout; progress on stderr. Every loop is bounded in count and time.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildFixturePack } from '../src/pack/fixture.js';
import {
  type HttpProc,
  metricSum,
  startApi,
  startWorker,
  stop,
} from '../test/support/processes.js';
import { log, median, percentile, positiveInt, round2, SENTENCES } from './support.js';

const cores = availableParallelism();
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    requests: { type: 'string', default: '600' },
    workers: { type: 'string', default: String(Math.max(1, Math.floor(cores / 2))) },
    threads: { type: 'string' },
    pack: { type: 'string' },
    'redis-url': { type: 'string', default: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
    'max-seconds': { type: 'string', default: '400' },
  },
});
const ROUNDS = positiveInt('rounds', values.rounds);
const REQUESTS = positiveInt('requests', values.requests);
const WORKERS = positiveInt('workers', values.workers);
const THREADS = positiveInt(
  'threads',
  values.threads ?? String(Math.max(1, Math.floor(cores / WORKERS))),
);
const MAX_SECONDS = positiveInt('max-seconds', values['max-seconds']);
const REDIS_URL = values['redis-url'];
const LEVELS = [1, 64] as const;
/** Requests at concurrency 1 per round (latency, not throughput, is what it measures). */
const SERIAL_REQUESTS = Math.min(REQUESTS, 200);
const PHASE_LIMIT_MS = 60_000;
const REQUEST_TIMEOUT_MS = 30_000;
const DEMO_DIR = 'models/demo';
const FIXTURE = { hiddenSize: 256, layers: 4, heads: 4, maxLength: 128 };
const TARGETS = { addedP50MsAtC1: 5, throughputRatioAtC64: 0.7 };

/** Realistic single inputs, 9-14 words, several languages. */
const BODIES = SENTENCES.map((text) => JSON.stringify({ inputs: [text] }));

// --- HTTP client ---------------------------------------------------------------------------------

function post(agent: Agent, url: URL, body: string): Promise<number> {
  return new Promise((done, fail) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path: '/v1/infer',
        agent,
        timeout: REQUEST_TIMEOUT_MS,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        res.resume();
        res.on('end', () => done(res.statusCode ?? 0));
        res.on('error', fail);
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', fail);
    req.end(body);
  });
}

interface Phase {
  readonly ok: number;
  readonly failed: number;
  readonly seconds: number;
  readonly latenciesMs: number[];
  readonly clientCpuMsPerRequest: number;
  readonly cutShort: boolean;
}

async function load(url: string, concurrency: number, count: number): Promise<Phase> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const target = new URL(url);
  const latenciesMs: number[] = [];
  let next = 0;
  let ok = 0;
  let failed = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const limit = t0 + PHASE_LIMIT_MS;
  const loop = async () => {
    while (next < count && performance.now() < limit) {
      const body = BODIES[next++ % BODIES.length]!;
      const start = performance.now();
      const status = await post(agent, target, body).catch(() => 0);
      latenciesMs.push(performance.now() - start);
      if (status === 200) ok++;
      else failed++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  agent.destroy();
  return {
    ok,
    failed,
    seconds,
    latenciesMs,
    clientCpuMsPerRequest: (cpu.user + cpu.system) / 1000 / Math.max(1, ok + failed),
    cutShort: next < count,
  };
}

function summary(phases: readonly Phase[]) {
  return {
    throughput_rps: round2(median(phases.map((p) => p.ok / p.seconds))),
    p50_ms: round2(median(phases.map((p) => percentile(p.latenciesMs, 50)))),
    p99_ms: round2(median(phases.map((p) => percentile(p.latenciesMs, 99)))),
    failed: phases.reduce((sum, p) => sum + p.failed, 0),
    client_cpu_ms_per_request: round2(median(phases.map((p) => p.clientCpuMsPerRequest))),
    cut_short: phases.some((p) => p.cutShort),
  };
}

// --- the run -------------------------------------------------------------------------------------

async function pickPack(temp: string): Promise<{ dir: string; kind: string }> {
  if (values.pack !== undefined) return { dir: values.pack, kind: values.pack };
  const demo = await stat(join(DEMO_DIR, 'manifest.json')).then(
    () => true,
    () => false,
  );
  if (demo) return { dir: DEMO_DIR, kind: 'demo' };
  log('models/demo is not built: using a fixture pack of the demo size (random weights)');
  const dir = await buildFixturePack(join(temp, 'pack'), { seed: 7, ...FIXTURE });
  return { dir, kind: `fixture d${FIXTURE.hiddenSize} L${FIXTURE.layers} T${FIXTURE.maxLength}` };
}

/** Remove every key of this run's prefix (SCAN + UNLINK through redis-cli). */
function dropKeys(prefix: string): Promise<void> {
  const script = `redis-cli -u "$1" --scan --pattern "$2:*" | xargs -r -n 500 redis-cli -u "$1" unlink > /dev/null`;
  return new Promise((done) => {
    execFile('sh', ['-c', script, 'sh', REDIS_URL, prefix], { timeout: 30_000 }, () => done());
  });
}

async function main(): Promise<void> {
  const started = performance.now();
  const temp = await mkdtemp(join(tmpdir(), 'moe-bench-queue-'));
  const prefix = `moe-bench-${process.pid}-${Date.now()}`;
  const procs: HttpProc[] = [];
  const stopAll = () => Promise.all(procs.map((p) => stop(p)));
  const onSignal = () => {
    for (const p of procs) p.child.kill('SIGKILL');
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const pack = await pickPack(temp);
    const base = {
      MODEL_DIR: pack.dir,
      ENGINE_WORKERS: String(WORKERS),
      ENGINE_THREADS: String(THREADS),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      JOB_RESULT_TTL_SECONDS: '60',
    };
    log(`starting: embedded API, queue API + 1 worker (${WORKERS} engine x ${THREADS} threads)`);
    const [embedded, queueApi, worker] = await Promise.all([
      startApi({ ...base, QUEUE: 'embedded' }),
      startApi({ ...base, QUEUE: 'redis' }),
      startWorker({ ...base, QUEUE: 'redis' }),
    ]);
    procs.push(embedded, queueApi, worker);
    const modes = { embedded: embedded.url, queue: queueApi.url } as const;
    for (const url of Object.values(modes)) await load(url, 16, 200); // warm-up

    const phases: Record<string, Phase[]> = {};
    for (let round = 0; round < ROUNDS; round++) {
      const order =
        round % 2 === 0 ? (['embedded', 'queue'] as const) : (['queue', 'embedded'] as const);
      for (const level of LEVELS) {
        for (const mode of order) {
          if ((performance.now() - started) / 1000 > MAX_SECONDS) break;
          const count = level === 1 ? SERIAL_REQUESTS : REQUESTS;
          const phase = await load(modes[mode], level, count);
          const key = `${mode}@${level}`;
          phases[key] = [...(phases[key] ?? []), phase];
          log(
            `round ${round + 1} ${mode} c=${level}: ${(phase.ok / phase.seconds).toFixed(1)} req/s, p50 ${percentile(phase.latenciesMs, 50).toFixed(2)} ms`,
          );
        }
      }
    }
    const workerMetrics = await fetch(`${worker.url}/metrics`).then((r) => r.text());
    const batches = metricSum(workerMetrics, 'moe_batch_size_items_count');
    const items = metricSum(workerMetrics, 'moe_batch_size_items_sum');

    const result: Record<string, Record<string, ReturnType<typeof summary>>> = {};
    for (const mode of ['embedded', 'queue'] as const) {
      result[mode] = Object.fromEntries(
        LEVELS.map((level) => [`c${level}`, summary(phases[`${mode}@${level}`] ?? [])]),
      );
    }
    const perRound = (level: number, f: (e: Phase, q: Phase) => number) =>
      median(
        (phases[`embedded@${level}`] ?? []).flatMap((e, i) => {
          const q = phases[`queue@${level}`]?.[i];
          return q === undefined ? [] : [f(e, q)];
        }),
      );
    const addedP50 = perRound(
      1,
      (e, q) => percentile(q.latenciesMs, 50) - percentile(e.latenciesMs, 50),
    );
    const ratio = perRound(64, (e, q) => q.ok / q.seconds / (e.ok / e.seconds));
    process.stdout.write(
      `${JSON.stringify(
        {
          bench: 'queue',
          machine: {
            cores,
            loadavg_1m: round2(loadavg()[0]!),
            node: process.version,
          },
          pack: pack.kind,
          engine: { workers: WORKERS, threads: THREADS },
          rounds: ROUNDS,
          requests: { c1: SERIAL_REQUESTS, c64: REQUESTS },
          embedded: result.embedded,
          queue: { ...result.queue, worker_mean_batch_items: round2(items / Math.max(1, batches)) },
          ratios: {
            added_p50_ms_c1: round2(addedP50),
            throughput_queue_over_embedded_c64: round2(ratio),
          },
          targets: {
            added_p50_ms_c1: `<= ${TARGETS.addedP50MsAtC1}`,
            throughput_queue_over_embedded_c64: `>= ${TARGETS.throughputRatioAtC64}`,
          },
          met: {
            added_p50_ms_c1: addedP50 <= TARGETS.addedP50MsAtC1,
            throughput_queue_over_embedded_c64: ratio >= TARGETS.throughputRatioAtC64,
          },
          seconds: round2((performance.now() - started) / 1000),
        },
        null,
        2,
      )}\n`,
    );
  } finally {
    await stopAll();
    await dropKeys(prefix);
    await rm(temp, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  log(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exit(1);
});
