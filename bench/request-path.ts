/**
 * Where the time of POST /v1/infer goes outside the engine: the real server (node
 * dist/src/main.js, child processes) under load at 1 client and at 64, profiled with V8's CPU
 * profiler (node --cpu-prof), side by side for server variants that differ only by environment
 * (default: the request log at LOG_LEVEL info, the default, against warn), then the engine alone
 * in this process for the same pack, split into its two ORT runs for an ONNX-file backbone.
 *
 *   npm run bench:request-path [-- --rounds 3 --requests 400,2048 --concurrency 1,64]
 *                              [--pack DIR] [--variant NAME:KEY=VALUE[,KEY=VALUE]]...
 *
 * Per variant and concurrency (sums over rounds; rounds interleave the variants at each level):
 * - client: p50 latency and throughput; the server-timing stages (tokenize, queue, forward);
 * - CPU from /proc: the server process's and its main (HTTP) thread's CPU ms per request, what
 *   the request path costs whatever the machine's load (wall times here are noisy: the 2 cores
 *   are shared with other work);
 * - the main thread's profile over the load window, per request: samples by what they were in
 *   (categories below, attributed to the innermost frame that matches one), and idle. The
 *   profiler samples wall time: a thread that the OS has descheduled (other threads on the 2
 *   cores) is counted where it stopped, so busy profile time >= the thread's CPU time, and the
 *   difference is waiting for a core (thread wake-ups);
 * - the engine alone (`model.engine.run`, this process, batch 1 one at a time, and batch 32):
 *   median batch time and its ORT runs; for a Hugging Face backbone (built into the pack's one
 *   graph) also a twin pack with the same encoder as an ONNX file, which the engine runs as two
 *   ORT runs per batch (backbone, then pack graph): what the second run costs.
 * Output JSON on stdout; progress on stderr.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Model } from '../src/inference/model.js';
import { encoderModelBytes } from '../src/onnx/bert.js';
import { readHfModel } from '../src/pack/hf-model.js';
import { MANIFEST_FILE } from '../src/pack/manifest.js';
import { buildFixturePack } from '../test/support/fixture-pack.js';
import { log, median, positiveInt, round2, SENTENCES } from './support.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '1,64' },
    requests: { type: 'string', default: '400,2048' },
    pack: { type: 'string' },
    variant: { type: 'string', multiple: true },
  },
});
const ROUNDS = positiveInt('rounds', values.rounds);
const LEVELS = values.concurrency.split(',').map((c) => positiveInt('concurrency', c));
const COUNTS = values.requests.split(',').map((c) => positiveInt('requests', c));
if (COUNTS.length !== LEVELS.length) throw new Error('--requests needs one count per level');
const VARIANTS = (values.variant ?? ['log_info:LOG_LEVEL=info', 'log_warn:LOG_LEVEL=warn']).map(
  (spec) => {
    const [name, assignments] = spec.split(/:(.*)/s);
    if (!name || assignments === undefined) throw new Error(`--variant NAME:K=V,..., got ${spec}`);
    const env = Object.fromEntries(
      assignments.split(',').map((kv) => {
        const [k, v] = kv.split(/=(.*)/s);
        if (!k || v === undefined) throw new Error(`--variant ${spec}: ${kv} is not KEY=VALUE`);
        return [k, v];
      }),
    );
    return { name, env };
  },
);
const CLOCK_TICKS = 100; // USER_HZ of /proc stat
const MAIN = new URL('../src/main.js', import.meta.url).pathname;

/**
 * Categories of main-thread samples, checked from the innermost frame outwards: the first frame
 * that matches one names the sample (so pino called from a fastify hook counts as logging).
 */
const CATEGORIES: readonly [string, (url: string, fn: string) => boolean][] = [
  ['request log (pino)', (u) => /node_modules\/(pino|sonic-boom|pino-std-serializers)\//.test(u)],
  [
    'response serialization',
    (u) => /fast-json-stringify|fastify\/lib\/(reply|serialize|error-serializer)/.test(u),
  ],
  [
    'body parse',
    (u) => /secure-json-parse|fastify\/lib\/contentTypeParser|http\/json-body/.test(u),
  ],
  [
    'validation (ajv)',
    (u, f) => /node_modules\/ajv\//.test(u) || (u === '' && /^validate/.test(f)),
  ],
  ['tokenizer calls', (u) => /node_modules\/tokenizers\/|src\/inference\/tokenizer/.test(u)],
  ['metrics (prom-client)', (u) => /prom-client|src\/metrics/.test(u)],
  [
    'engine host, messages to workers',
    (u) => /src\/engine\/|internal\/worker|worker_threads/.test(u),
  ],
  ['batcher, service, model', (u) => /src\/inference\//.test(u)],
  ['our HTTP layer', (u) => /src\/http\/|src\/app\.js/.test(u)],
  ['fastify core', (u) => /node_modules\/(fastify|find-my-way|avvio|@fastify)\//.test(u)],
  ['node http, net, streams, timers', (u) => /^node:/.test(u)],
];

interface Window {
  readonly start: number; // µs, CLOCK_MONOTONIC (process.hrtime and V8's profile clock)
  readonly end: number;
}

interface Phase {
  readonly requests: number;
  readonly seconds: number;
  readonly latencies: number[];
  readonly stages: Record<string, number[]>;
  readonly window: Window;
  readonly processCpuMs: number;
  readonly mainCpuMs: number;
  /** Engine batches run and items in them during the phase (the server's /metrics). */
  readonly batches: number;
  readonly batchItems: number;
}

const nowUs = () => Number(process.hrtime.bigint() / 1000n);

function cpuMs(pid: number, tid?: number): number {
  const path = tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`;
  const text = readFileSync(path, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => done(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

function post(agent: Agent, port: number, body: string) {
  return new Promise<{ status: number; timing: string | undefined }>((done, fail) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/v1/infer',
        agent,
        timeout: 30_000,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        res.resume();
        res.on('end', () =>
          done({
            status: res.statusCode ?? 0,
            timing: res.headers['server-timing'] as string | undefined,
          }),
        );
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', fail);
    req.end(body);
  });
}

const BODIES = SENTENCES.map((text) => JSON.stringify({ inputs: [text] }));

/** moe_batch_size_items_{sum,count} from the server's /metrics. */
function batchCounters(agent: Agent, port: number): Promise<{ sum: number; count: number }> {
  return new Promise((done, fail) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/metrics', agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
      });
      res.on('end', () => {
        const value = (name: string) =>
          Number(
            /^(\S+) (\S+)$/m.exec(
              text.split('\n').find((l) => l.startsWith(`${name} `)) ?? '',
            )?.[2],
          );
        done({
          sum: value('moe_batch_size_items_sum'),
          count: value('moe_batch_size_items_count'),
        });
      });
    });
    req.on('error', fail);
    req.end();
  });
}

async function load(port: number, concurrency: number, count: number, pid: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const send = async (n: number, latencies: number[], stages: Record<string, number[]>) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (;;) {
          const i = next++;
          if (i >= n) return;
          const t0 = performance.now();
          const reply = await post(agent, port, BODIES[i % BODIES.length]!);
          if (reply.status !== 200) throw new Error(`/v1/infer answered ${reply.status}`);
          latencies.push(performance.now() - t0);
          for (const part of reply.timing?.split(',') ?? []) {
            const [stage, dur] = part.trim().split(';dur=');
            if (!stage || !dur) continue;
            stages[stage] ??= [];
            stages[stage].push(Number(dur));
          }
        }
      }),
    );
  };
  try {
    await send(Math.max(2 * concurrency, 64), [], {}); // warm-up: connections, JIT
    const latencies: number[] = [];
    const stages: Record<string, number[]> = {};
    const counters0 = await batchCounters(agent, port);
    const cpu0 = cpuMs(pid);
    const main0 = cpuMs(pid, pid);
    const start = nowUs();
    await send(count, latencies, stages);
    const end = nowUs();
    const processCpuMs = cpuMs(pid) - cpu0;
    const mainCpuMs = cpuMs(pid, pid) - main0;
    const counters1 = await batchCounters(agent, port); // after the CPU readings
    return {
      requests: count,
      seconds: (end - start) / 1e6,
      latencies,
      stages,
      window: { start, end },
      processCpuMs,
      mainCpuMs,
      batches: counters1.count - counters0.count,
      batchItems: counters1.sum - counters0.sum,
    } satisfies Phase;
  } finally {
    agent.destroy();
  }
}

interface Server {
  readonly name: string;
  readonly child: ChildProcess;
  readonly port: number;
  readonly profileDir: string;
}

async function startServer(
  name: string,
  env: Record<string, string>,
  packDir: string,
  dir: string,
): Promise<Server> {
  const port = await freePort();
  const profileDir = join(dir, name);
  const child = spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, MAIN], {
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', MODEL_DIR: packDir, ...env },
    stdio: ['ignore', 'ignore', 'inherit'], // stdout: the JSON log (written, as in production)
  });
  const agent = new Agent({ keepAlive: false });
  const deadline = performance.now() + 120_000;
  while (performance.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server ${name} exited (${child.exitCode})`);
    const ready = await new Promise<boolean>((done) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/health/ready', agent }, (res) => {
        res.resume();
        done(res.statusCode === 200);
      });
      req.on('error', () => done(false));
      req.end();
    });
    if (ready) return { name, child, port, profileDir };
    await new Promise((done) => setTimeout(done, 200));
  }
  throw new Error(`server ${name} was not ready within 120 s`);
}

async function stopServer(server: Server): Promise<void> {
  if (server.child.exitCode !== null) return;
  const exited = new Promise((done) => server.child.once('exit', done));
  server.child.kill('SIGTERM'); // drains, exits 0: --cpu-prof writes the profiles at exit
  await exited;
}

interface Profile {
  nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** The main thread's profile (file name CPU.<date>.<time>.<pid>.0.<seq>.cpuprofile). */
function mainThreadProfile(dir: string, pid: number): Profile {
  const file = readdirSync(dir).find((f) => f.includes(`.${pid}.0.`));
  if (file === undefined) throw new Error(`no main-thread profile of ${pid} in ${dir}`);
  return JSON.parse(readFileSync(join(dir, file), 'utf8')) as Profile;
}

/** Microseconds of samples per category inside `windows`. */
function categorize(profile: Profile, windows: readonly Window[]): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const memo = new Map<number, string>();
  const label = (id: number): string => {
    const hit = memo.get(id);
    if (hit !== undefined) return hit;
    const leaf = byId.get(id)!.callFrame.functionName;
    let found: string | undefined;
    if (leaf === '(idle)' || leaf === '(program)' || leaf === '(garbage collector)') {
      found = leaf;
    }
    for (let cur: number | undefined = id; found === undefined && cur !== undefined; ) {
      const { url, functionName } = byId.get(cur)!.callFrame;
      found = CATEGORIES.find(([, test]) => test(url, functionName))?.[0];
      cur = parent.get(cur);
    }
    const name = found ?? 'other';
    memo.set(id, name);
    return name;
  };
  const totals = new Map<string, number>();
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i]!;
    if (!windows.some((w) => t >= w.start && t < w.end)) continue;
    const dt = profile.timeDeltas[i + 1] ?? 0;
    const name = label(profile.samples[i]!);
    totals.set(name, (totals.get(name) ?? 0) + dt);
  }
  return totals;
}

async function choosePack(): Promise<{ dir: string; temp?: string }> {
  if (values.pack !== undefined) return { dir: resolve(values.pack) };
  try {
    await stat(join('models/demo', 'report.json'));
    return { dir: resolve('models/demo') };
  } catch {
    const temp = await mkdtemp(join(tmpdir(), 'moe-request-path-'));
    log(`[bench] models/demo is not built; a demo-sized fixture pack in ${temp}`);
    await buildFixturePack(temp, {
      hiddenSize: 256,
      layers: 4,
      heads: 4,
      maxLength: 128,
      name: 'bench-fixture',
      seed: 7,
    });
    return { dir: temp, temp };
  }
}

/**
 * A copy of a pack whose Hugging Face backbone is replaced by the same encoder as an ONNX file
 * (our builder's float32 graph): the same weights served as two ORT runs per batch (backbone, then
 * the pack graph) instead of one. Undefined when the pack's backbone is not a Hugging Face folder.
 */
async function twinWithOnnxFile(packDir: string, dir: string): Promise<string | undefined> {
  const manifest = JSON.parse(await readFile(join(packDir, MANIFEST_FILE), 'utf8'));
  if (manifest.backbone.huggingface === undefined) return undefined;
  const twin = join(dir, 'twin');
  await cp(packDir, twin, { recursive: true, filter: (src) => !src.includes('/.cache') });
  const { config, weights } = await readHfModel(join(packDir, manifest.backbone.huggingface));
  await writeFile(join(twin, 'backbone.onnx'), encoderModelBytes(config, weights));
  const { quantize: _, huggingface: __, ...rest } = manifest.backbone;
  manifest.backbone = { ...rest, file: 'backbone.onnx', hidden_size: config.hiddenSize };
  await writeFile(join(twin, MANIFEST_FILE), JSON.stringify(manifest));
  return twin;
}

/**
 * The engine alone, in this process: batch time (`engine.run`) and the worker's ORT run times, at
 * batch 1 (one at a time) and batch 32, for the pack and, when its backbone is a Hugging Face
 * folder built into its one graph, for its twin with the same encoder as an ONNX file (two runs),
 * interleaved batch by batch.
 */
async function engineAlone(packDir: string, dir: string) {
  const twin = await twinWithOnnxFile(packDir, dir);
  const models = [await Model.open({ packDir, log: () => undefined })];
  if (twin !== undefined) models.push(await Model.open({ packDir: twin, log: () => undefined }));
  try {
    const items = await models[0]!.prepare({ inputs: SENTENCES });
    const out: Record<string, Record<string, unknown>> = {};
    for (const batch of [1, 32]) {
      const rows = models.map(() => ({
        total: [] as number[],
        backbone: [] as number[],
        graph: [] as number[],
      }));
      const runs = batch === 1 ? 200 : 24;
      for (let r = -8; r < runs; r++) {
        const chosen = Array.from(
          { length: batch },
          (_, j) => items[((r + 8) * batch + j) % items.length]!,
        );
        for (const [m, model] of models.entries()) {
          const t0 = performance.now();
          const outcome = await model.engine.run(chosen);
          if (r < 0) continue; // warm-up
          rows[m]!.total.push(performance.now() - t0);
          rows[m]!.backbone.push(outcome.timings.backboneMs);
          rows[m]!.graph.push(outcome.timings.graphMs);
        }
      }
      models.forEach((model, m) => {
        const name = m === 0 ? model.pack.backbone.kind : 'same encoder as an ONNX file';
        out[name] ??= {};
        out[name]![`batch_${batch}`] = {
          engine_run_p50_ms: round2(median(rows[m]!.total)),
          external_backbone_run_p50_ms: round2(median(rows[m]!.backbone)),
          pack_graph_run_p50_ms: round2(median(rows[m]!.graph)),
        };
      });
      if (twin !== undefined) {
        out.two_runs_over_one_graph ??= {};
        out.two_runs_over_one_graph[`batch_${batch}`] = round2(
          median(rows[1]!.total) / median(rows[0]!.total),
        );
      }
    }
    return { workers: models[0]!.engine.settings.workers, ...out };
  } finally {
    for (const model of models) await model.close();
  }
}

async function main(): Promise<void> {
  const pack = await choosePack();
  const dir = await mkdtemp(join(tmpdir(), 'moe-request-path-prof-'));
  const servers: Server[] = [];
  try {
    for (const v of VARIANTS) servers.push(await startServer(v.name, v.env, pack.dir, dir));
    log(`[bench] ${servers.map((s) => s.name).join(', ')} ready on ${pack.dir}`);
    const phases = new Map<string, Phase[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const [l, c] of LEVELS.entries()) {
        for (const s of servers) {
          const phase = await load(s.port, c, COUNTS[l]!, s.child.pid!);
          const key = `${s.name}|${c}`;
          phases.set(key, [...(phases.get(key) ?? []), phase]);
          log(
            `[bench] round ${round + 1}/${ROUNDS} c=${c} ${s.name}: ${(phase.requests / phase.seconds).toFixed(0)} rps, p50 ${median(phase.latencies).toFixed(2)} ms, main thread ${((phase.mainCpuMs * 1000) / phase.requests).toFixed(0)} us CPU/request`,
          );
        }
      }
    }
    for (const s of servers) await stopServer(s);

    const results: Record<string, unknown> = {};
    for (const s of servers) {
      const profile = mainThreadProfile(s.profileDir, s.child.pid!);
      for (const c of LEVELS) {
        const list = phases.get(`${s.name}|${c}`)!;
        const requests = list.reduce((a, p) => a + p.requests, 0);
        const per = (ms: number) => round2((ms * 1000) / requests); // µs per request
        const stages = Object.keys(list[0]!.stages);
        const samples = categorize(
          profile,
          list.map((p) => p.window),
        );
        const idle = samples.get('(idle)') ?? 0;
        const busy = [...samples].filter(([k]) => k !== '(idle)').reduce((a, [, v]) => a + v, 0);
        results[`${s.name}|concurrency_${c}`] = {
          requests,
          throughput_rps: round2(median(list.map((p) => p.requests / p.seconds))),
          p50_ms: round2(median(list.flatMap((p) => p.latencies))),
          mean_batch: round2(
            list.reduce((a, p) => a + p.batchItems, 0) / list.reduce((a, p) => a + p.batches, 0),
          ),
          server_timing_p50_ms: Object.fromEntries(
            stages.map((k) => [k, round2(median(list.flatMap((p) => p.stages[k] ?? [])))]),
          ),
          cpu_us_per_request: {
            process: per(list.reduce((a, p) => a + p.processCpuMs, 0)),
            main_thread: per(list.reduce((a, p) => a + p.mainCpuMs, 0)),
          },
          main_thread_profile_us_per_request: {
            busy: round2(busy / requests),
            idle: round2(idle / requests),
            by_category: Object.fromEntries(
              [...samples]
                .filter(([k]) => k !== '(idle)')
                .sort((a, b) => b[1] - a[1])
                .map(([k, v]) => [k, round2(v / requests)]),
            ),
          },
        };
      }
    }
    log('[bench] the engine alone, in this process');
    const engine = await engineAlone(pack.dir, dir);
    process.stdout.write(
      `${JSON.stringify(
        {
          bench: 'request-path',
          pack: pack.dir,
          variants: VARIANTS,
          concurrency: LEVELS,
          requests_per_round: COUNTS,
          rounds: ROUNDS,
          load_average: loadavg().map(round2),
          results,
          engine_alone: engine,
        },
        null,
        2,
      )}\n`,
    );
  } finally {
    for (const s of servers) if (s.child.exitCode === null) s.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
    if (pack.temp !== undefined) await rm(pack.temp, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  log(`[bench] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exitCode = 1;
});
