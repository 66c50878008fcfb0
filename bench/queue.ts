/**
 * Queue mode against embedded mode on this machine, in one run, and queue mode's scaling with
 * workers. The targets of the queue-mode issue:
 *   - added p50 latency of queue mode at concurrency 1 <= 2 ms;
 *   - queue-mode throughput at concurrency 64 >= 0.9 x embedded, with one worker;
 *   - mean worker batch at concurrency 64 >= 16 items (from the workers' own metrics);
 *   - reported: two workers with 1 intra-op thread each against one worker with 1 thread.
 *
 *   npm run bench:queue [-- --rounds 3 --requests 600 --pack models/demo --redis-url redis://...]
 *
 * - Processes, all on 127.0.0.1: an embedded API node; a queue-mode API node plus ONE worker
 *   with the same engine settings (--workers, --threads; defaults: the server's own), so the two
 *   modes run the same engine on the same cores; and for scaling, two more queues, each with its
 *   own API node: "one" with one worker of 1 engine thread x 1 intra-op thread, "two" with two
 *   such workers. Redis at --redis-url (default REDIS_URL or 127.0.0.1:6379) under a key prefix
 *   of this run, removed at the end. Idle processes take no CPU (their Redis reads block), so all
 *   stay up and rounds interleave the setups; the order alternates per round; results are
 *   medians over rounds.
 * - Client: `concurrency` loops on a keep-alive node:http agent, one input per request, a fixed
 *   count per level after a warm-up. The client shares the cores; its CPU time is reported.
 * - Worker batch size and jobs per fetch come from the workers' /metrics, as differences across
 *   each concurrency-64 phase; API CPU per request from the API nodes' process CPU counter.
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
import { buildFixturePack } from '../test/support/fixture-pack.js';
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
const TARGETS = { addedP50MsAtC1: 2, throughputRatioAtC64: 0.9, workerBatchAtC64: 16 };

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

/** Sums of counters in the /metrics text of `urls`, read together. */
async function scrape(urls: readonly string[]): Promise<Record<string, number>> {
  const texts = await Promise.all(urls.map((url) => fetch(`${url}/metrics`).then((r) => r.text())));
  const sum = (name: string) => texts.reduce((total, text) => total + metricSum(text, name), 0);
  return {
    batches: sum('moe_batch_size_items_count'),
    items: sum('moe_batch_size_items_sum'),
    fetches: sum('moe_queue_fetch_jobs_count'),
    fetched: sum('moe_queue_fetch_jobs_sum'),
    cpuSeconds: sum('process_cpu_seconds_total'),
  };
}

function delta(after: Record<string, number>, before: Record<string, number>) {
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]));
}

/** One setup under test: where its requests go, and whose metrics to read around a phase. */
interface Setup {
  readonly api: string;
  readonly workers: readonly string[];
  readonly levels: readonly number[];
}

interface Measured extends Phase {
  readonly workerBatch: number;
  readonly jobsPerFetch: number;
  readonly apiCpuMsPerRequest: number;
}

async function measure(setup: Setup, level: number, count: number): Promise<Measured> {
  const [apiBefore, workersBefore] = await Promise.all([
    scrape([setup.api]),
    scrape(setup.workers),
  ]);
  const phase = await load(setup.api, level, count);
  const [apiAfter, workersAfter] = await Promise.all([scrape([setup.api]), scrape(setup.workers)]);
  const api = delta(apiAfter, apiBefore);
  const work = delta(workersAfter, workersBefore);
  return {
    ...phase,
    workerBatch: work.items! / Math.max(1, work.batches!),
    jobsPerFetch: work.fetched! / Math.max(1, work.fetches!),
    apiCpuMsPerRequest: (api.cpuSeconds! * 1000) / Math.max(1, phase.ok + phase.failed),
  };
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
    const single = { ...base, QUEUE: 'redis', ENGINE_WORKERS: '1', ENGINE_THREADS: '1' };
    log(
      `starting: embedded API; queue API + 1 worker (${WORKERS} engine x ${THREADS} threads); queues "one" (1 worker) and "two" (2 workers) of 1 engine x 1 thread`,
    );
    const started1 = await Promise.all([
      startApi({ ...base, QUEUE: 'embedded' }),
      startApi({ ...base, QUEUE: 'redis' }),
      startWorker({ ...base, QUEUE: 'redis' }),
    ]);
    procs.push(...started1);
    const started2 = await Promise.all([
      startApi({ ...single, QUEUE_NAME: 'one' }),
      startWorker({ ...single, QUEUE_NAME: 'one' }),
      startApi({ ...single, QUEUE_NAME: 'two' }),
      startWorker({ ...single, QUEUE_NAME: 'two' }),
      startWorker({ ...single, QUEUE_NAME: 'two' }),
    ]);
    procs.push(...started2);
    const [embedded, queueApi, worker] = started1;
    const [oneApi, oneWorker, twoApi, twoWorkerA, twoWorkerB] = started2;
    const setups: Record<string, Setup> = {
      embedded: { api: embedded!.url, workers: [], levels: LEVELS },
      queue: { api: queueApi!.url, workers: [worker!.url], levels: LEVELS },
      one: { api: oneApi!.url, workers: [oneWorker!.url], levels: [64] },
      two: { api: twoApi!.url, workers: [twoWorkerA!.url, twoWorkerB!.url], levels: [64] },
    };
    for (const setup of Object.values(setups)) await load(setup.api, 16, 200); // warm-up

    const phases: Record<string, Measured[]> = {};
    const names = Object.keys(setups);
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? names : [...names].reverse();
      for (const level of LEVELS) {
        for (const name of order) {
          const setup = setups[name]!;
          if (!setup.levels.includes(level)) continue;
          if ((performance.now() - started) / 1000 > MAX_SECONDS) break;
          const count = level === 1 ? SERIAL_REQUESTS : REQUESTS;
          const phase = await measure(setup, level, count);
          const key = `${name}@${level}`;
          phases[key] = [...(phases[key] ?? []), phase];
          log(
            `round ${round + 1} ${name} c=${level}: ${(phase.ok / phase.seconds).toFixed(1)} req/s, p50 ${percentile(phase.latenciesMs, 50).toFixed(2)} ms${setup.workers.length > 0 ? `, worker batch ${phase.workerBatch.toFixed(1)}, jobs/fetch ${phase.jobsPerFetch.toFixed(1)}` : ''}`,
          );
        }
      }
    }

    const report = (name: string) =>
      Object.fromEntries(
        setups[name]!.levels.map((level) => {
          const measured = phases[`${name}@${level}`] ?? [];
          const extra =
            setups[name]!.workers.length > 0
              ? {
                  worker_mean_batch_items: round2(median(measured.map((p) => p.workerBatch))),
                  jobs_per_fetch: round2(median(measured.map((p) => p.jobsPerFetch))),
                }
              : {};
          return [
            `c${level}`,
            {
              ...summary(measured),
              api_cpu_ms_per_request: round2(median(measured.map((p) => p.apiCpuMsPerRequest))),
              ...extra,
            },
          ];
        }),
      );
    /** Median over rounds of f(a's phase, b's phase) for the phases of one round. */
    const perRound = (a: string, b: string, f: (x: Measured, y: Measured) => number) =>
      median(
        (phases[a] ?? []).flatMap((x, i) => {
          const y = phases[b]?.[i];
          return y === undefined ? [] : [f(x, y)];
        }),
      );
    const rps = (p: Phase) => p.ok / p.seconds;
    const addedP50 = perRound(
      'embedded@1',
      'queue@1',
      (e, q) => percentile(q.latenciesMs, 50) - percentile(e.latenciesMs, 50),
    );
    const ratio = perRound('embedded@64', 'queue@64', (e, q) => rps(q) / rps(e));
    const scaling = perRound('one@64', 'two@64', (one, two) => rps(two) / rps(one));
    const batch = median((phases['queue@64'] ?? []).map((p) => p.workerBatch));
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
          embedded: report('embedded'),
          queue: report('queue'),
          scaling: {
            one_worker_1x1: report('one'),
            two_workers_1x1: report('two'),
          },
          ratios: {
            added_p50_ms_c1: round2(addedP50),
            throughput_queue_over_embedded_c64: round2(ratio),
            worker_mean_batch_items_c64: round2(batch),
            throughput_two_workers_over_one_c64: round2(scaling),
          },
          targets: {
            added_p50_ms_c1: `<= ${TARGETS.addedP50MsAtC1}`,
            throughput_queue_over_embedded_c64: `>= ${TARGETS.throughputRatioAtC64}`,
            worker_mean_batch_items_c64: `>= ${TARGETS.workerBatchAtC64}`,
          },
          met: {
            added_p50_ms_c1: addedP50 <= TARGETS.addedP50MsAtC1,
            throughput_queue_over_embedded_c64: ratio >= TARGETS.throughputRatioAtC64,
            worker_mean_batch_items_c64: batch >= TARGETS.workerBatchAtC64,
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
