/**
 * The deployment files, checked statically (no Docker engine runs here, FIELD-NOTES): the compose
 * files parse and mount only what exists, workers can scale, every service has a health check;
 * the Dockerfile has the targets, user, volume and health check the compose file and README rely
 * on; Prometheus scrapes the API and every worker replica; every metric the Grafana dashboard
 * queries is one a live server exports; the README's deploy commands name real files, targets,
 * services and ports. The container health check script runs against a live server.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { VARIABLES } from '../src/config.js';
import { Metrics } from '../src/metrics.js';
import { buildFixturePack } from './support/fixture-pack.js';
import { type ListeningApp, startListeningApp } from './support/listening-app.js';
import { freePort } from './support/processes.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const HEALTHCHECK = new URL('../src/tools/healthcheck.js', import.meta.url).pathname;
const SERVICES = ['redis', 'api', 'worker', 'prometheus', 'grafana'];
/** The moe-serve services, which read the configuration of src/config.ts. */
const MOE_SERVICES = ['api', 'worker'];

// biome-ignore lint/suspicious/noExplicitAny: parsed YAML and JSON, read by known paths; a wrong path fails the test
type Yaml = Record<string, any>;

async function text(path: string): Promise<string> {
  return readFile(join(ROOT, path), 'utf8');
}

async function yamlFile(path: string): Promise<Yaml> {
  // Compose files use anchors and merge keys (<<: *moe-env).
  return parse(await text(path), { merge: true }) as Yaml;
}

/** Compose short or long volume syntax -> { source, target, bind } */
function volumes(service: Yaml): { source: string; target: string; bind: boolean }[] {
  return ((service.volumes ?? []) as (string | Yaml)[]).map((v) => {
    if (typeof v === 'string') {
      const [source = '', target = ''] = v.split(':');
      return { source, target, bind: source.startsWith('.') || source.startsWith('/') };
    }
    return { source: String(v.source), target: String(v.target), bind: v.type === 'bind' };
  });
}

/** `${NAME:-default}` -> default (compose interpolation with the variable unset). */
function interpolate(value: string): string {
  return value.replace(/\$\{[A-Z0-9_]+(?::?-([^}]*))?\}/g, (_, fallback) => fallback ?? '');
}

interface Stage {
  readonly name: string;
  readonly from: string;
  readonly lines: string[];
}

/** Dockerfile -> stages with their instructions (continuations joined, comments dropped). */
function dockerStages(source: string): { args: Record<string, string>; stages: Stage[] } {
  const joined = source
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('#'))
    .join('\n')
    .replace(/\\\n/g, ' ');
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const raw of joined.split('\n')) {
    const line = raw.trim().replace(/\s+/g, ' ');
    if (line === '') continue;
    const from = /^FROM (\S+)(?: AS (\S+))?$/i.exec(line);
    if (from) {
      const image = from[1]!.replace(/\$\{(\w+)\}/g, (_, name) => args[name] ?? '');
      stages.push({ name: from[2] ?? '', from: image, lines: [] });
    } else if (stages.length === 0) {
      const arg = /^ARG (\w+)=(\S+)$/.exec(line);
      if (arg) args[arg[1]!] = arg[2]!;
    } else {
      stages.at(-1)!.lines.push(line);
    }
  }
  return { args, stages };
}

function stage(stages: Stage[], name: string): Stage {
  const found = stages.find((s) => s.name === name);
  assert.ok(found, `the Dockerfile has no stage ${name}`);
  return found;
}

/** Does a .dockerignore pattern list exclude `path` (the simple forms this repo uses)? */
function dockerIgnored(patterns: string[], path: string): boolean {
  return patterns.some((pattern) => {
    const regex = new RegExp(
      `^${pattern.replace(/[.+^$()|[\]]/g, '\\$&').replace(/\*/g, '[^/]*')}(/.*)?$`,
    );
    return regex.test(path);
  });
}

let compose: Yaml;
let gpu: Yaml;

before(async () => {
  compose = await yamlFile('docker-compose.yml');
  gpu = await yamlFile('docker-compose.gpu.yml');
});

describe('docker-compose.yml', () => {
  it('parses and has the services redis, api, worker, prometheus and grafana', () => {
    assert.deepEqual(Object.keys(compose.services).sort(), [...SERVICES].sort());
  });

  it('mounts only files and folders that exist, and declares its named volumes', () => {
    for (const [name, service] of Object.entries<Yaml>(compose.services)) {
      for (const volume of volumes(service)) {
        if (volume.bind) {
          assert.ok(existsSync(resolve(ROOT, volume.source)), `${name} mounts ${volume.source}`);
        } else {
          assert.ok(
            volume.source in compose.volumes,
            `${name}: volume ${volume.source} undeclared`,
          );
        }
      }
    }
  });

  it('builds from this folder with a target the Dockerfile has', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    for (const file of [compose, gpu]) {
      for (const [name, service] of Object.entries<Yaml>(file.services)) {
        if (service.build === undefined) continue;
        assert.ok(existsSync(resolve(ROOT, service.build.context, 'Dockerfile')), name);
        stage(stages, service.build.target);
      }
    }
  });

  it('lets workers scale: no container name, no published port, no fixed host name', () => {
    const worker = compose.services.worker;
    assert.equal(worker.container_name, undefined);
    assert.equal(worker.ports, undefined);
    assert.equal(worker.hostname, undefined);
    assert.deepEqual(worker.command, ['node', 'dist/src/worker.js']);
  });

  it('gives every service a health check (api: the image HEALTHCHECK), and orders the start', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    for (const [name, service] of Object.entries<Yaml>(compose.services)) {
      if (name === 'api') {
        const image = stage(stages, service.build.target);
        assert.ok(
          image.lines.some((line) => line.startsWith('HEALTHCHECK ')),
          'api image',
        );
      } else {
        assert.ok(Array.isArray(service.healthcheck?.test), `${name} has no healthcheck`);
      }
    }
    const worker = compose.services.worker;
    assert.deepEqual(worker.healthcheck.test, [
      'CMD',
      'node',
      'dist/src/tools/healthcheck.js',
      '--worker',
    ]);
    // The API builds the demo pack on the shared volume before any worker starts.
    assert.equal(worker.depends_on.api.condition, 'service_healthy');
    assert.equal(worker.depends_on.redis.condition, 'service_healthy');
    assert.equal(compose.services.api.depends_on.redis.condition, 'service_healthy');
  });

  it('configures moe-serve with variables src/config.ts knows, in queue mode over the redis service', () => {
    for (const name of MOE_SERVICES) {
      const env = compose.services[name].environment as Record<string, string>;
      for (const key of Object.keys(env)) assert.ok(key in VARIABLES, `${name}: unknown ${key}`);
      assert.equal(env.QUEUE, 'redis');
      assert.equal(env.REDIS_URL, 'redis://redis:6379');
    }
    for (const key of Object.keys(gpu.services.worker.environment)) {
      assert.ok(key in VARIABLES, `gpu worker: unknown ${key}`);
    }
  });

  it('API nodes and workers read run-time adapter folders from one shared volume at ADAPTER_ROOT', () => {
    const root = compose['x-moe-env'].ADAPTER_ROOT as string;
    assert.ok(root.startsWith('/'), 'an absolute path, the same in every container');
    const mounts = MOE_SERVICES.map((name) => {
      const env = compose.services[name].environment as Record<string, string>;
      assert.equal(env.ADAPTER_ROOT, root, `${name}: ADAPTER_ROOT`);
      const mount = volumes(compose.services[name]).find((v) => v.target === root);
      assert.ok(mount !== undefined && !mount.bind, `${name} mounts a named volume at ${root}`);
      return mount.source;
    });
    assert.equal(new Set(mounts).size, 1, 'the same volume');
  });

  it('the GPU override runs cuda workers with the GPUs reserved', () => {
    const worker = gpu.services.worker;
    assert.equal(worker.build.target, 'cuda');
    assert.equal(interpolate(worker.environment.EXECUTION_PROVIDER), 'cuda');
    const devices = worker.deploy.resources.reservations.devices as Yaml[];
    assert.ok(devices.some((d) => d.driver === 'nvidia' && d.capabilities.includes('gpu')));
    assert.deepEqual(Object.keys(gpu.services), ['worker'], 'API nodes run no model');
  });
});

describe('Dockerfile', () => {
  it('has a cpu target by default and a cuda target on CUDA 12 + cuDNN 9', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    assert.equal(stages.at(-1)!.name, 'cpu', 'the last stage is what `docker build .` makes');
    assert.match(stage(stages, 'cpu').from, /^node:20-bookworm-slim$/);
    assert.match(stage(stages, 'cuda').from, /^nvidia\/cuda:12\.[\d.]+-cudnn(9)?-runtime-/);
  });

  it('installs onnxruntime-node without downloads for cpu, with its CUDA 12 libraries for cuda', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    for (const name of ['build', 'deps-cpu']) {
      assert.ok(stage(stages, name).lines.includes('ENV ONNXRUNTIME_NODE_INSTALL=skip'), name);
    }
    assert.ok(stage(stages, 'deps-cuda').lines.includes('ENV ONNXRUNTIME_NODE_INSTALL=cuda12'));
    assert.ok(stage(stages, 'build').lines.some((l) => l.startsWith('RUN npm ci')));
    assert.ok(stage(stages, 'build').lines.includes('RUN npm run build'));
  });

  it('runs as a non-root user, with a health check, the models and adapters volumes and main.js', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    for (const name of ['cpu', 'cuda']) {
      const lines = stage(stages, name).lines;
      const user = lines.filter((l) => l.startsWith('USER ')).at(-1);
      assert.ok(user !== undefined && user !== 'USER root' && user !== 'USER 0', name);
      assert.ok(lines.includes('VOLUME ["/app/models", "/app/adapters"]'), name);
      assert.ok(lines.includes('WORKDIR /app'), name);
      assert.ok(
        lines.some(
          (l) =>
            l.startsWith('HEALTHCHECK ') &&
            l.endsWith('CMD ["node", "dist/src/tools/healthcheck.js"]'),
        ),
        name,
      );
      assert.equal(lines.at(-1), 'CMD ["node", "dist/src/main.js"]', name);
    }
    assert.ok(existsSync(join(ROOT, 'src/tools/healthcheck.ts')));
    assert.ok(existsSync(join(ROOT, 'src/main.ts')) && existsSync(join(ROOT, 'src/worker.ts')));
  });

  it('copies only files that exist and that .dockerignore lets through', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    const ignore = (await text('.dockerignore'))
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    for (const { name, lines } of stages) {
      for (const line of lines) {
        if (!line.startsWith('COPY ') || line.includes('--from=')) continue;
        const sources = line.split(' ').slice(1, -1);
        for (const source of sources) {
          assert.ok(existsSync(join(ROOT, source)), `${name}: ${line}`);
          assert.ok(!dockerIgnored(ignore, source), `${name}: .dockerignore drops ${source}`);
        }
      }
    }
    for (const dropped of ['node_modules', 'dist', 'models/demo', '.git']) {
      assert.ok(dockerIgnored(ignore, dropped), dropped);
    }
  });
});

describe('Prometheus', () => {
  it('parses and scrapes the api and every worker replica through Docker DNS', async () => {
    const config = await yamlFile('docker/prometheus/prometheus.yml');
    const jobs = config.scrape_configs as Yaml[];
    const target = (service: string) =>
      jobs
        .flatMap((job) => (job.dns_sd_configs ?? []) as Yaml[])
        .find((sd) => (sd.names as string[]).includes(service));
    const api = target('api');
    assert.ok(api, 'no job scrapes the api service');
    assert.equal(api.type, 'A');
    assert.equal(api.port, VARIABLES.PORT.default, 'the api container listens on PORT');
    const worker = target('worker');
    assert.ok(worker, 'no job scrapes the worker service');
    assert.equal(worker.type, 'A');
    assert.equal(String(worker.port), compose.services.worker.environment.WORKER_METRICS_PORT);
    assert.ok(compose.services.worker.expose.includes(String(worker.port)));
    for (const job of jobs) assert.equal(job.metrics_path ?? '/metrics', '/metrics');
    assert.equal(new Set(jobs.map((job) => job.job_name)).size, jobs.length);
  });
});

describe('Grafana', () => {
  let app: ListeningApp;
  let root: string;
  let live: string;
  let dashboard: Yaml;

  before(async () => {
    dashboard = JSON.parse(await text('docker/grafana/dashboards/moe-serve.json')) as Yaml;
    root = await mkdtemp(join(tmpdir(), 'moe-deploy-'));
    const packDir = await buildFixturePack(join(root, 'pack'), { seed: 5 });
    app = await startListeningApp({
      packDir,
      adapterRoot: root,
      batching: { maxQueuedItems: 8 },
    });
    const post = (inputs: string[]) =>
      fetch(`${app.url}/v1/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs, top_k: 2 }),
      });
    assert.equal((await post(['the quick brown fox', 'der schnelle braune fuchs'])).status, 200);
    assert.equal((await post(['le renard'])).status, 200);
    assert.equal((await post(Array.from({ length: 9 }, () => 'too many'))).status, 429);
    live = await (await fetch(`${app.url}/metrics`)).text();
  });

  after(async () => {
    await app?.close();
    await rm(root, { recursive: true, force: true });
  });

  function exprs(): string[] {
    return (dashboard.panels as Yaml[]).flatMap((panel) =>
      ((panel.targets ?? []) as Yaml[]).map((t) => String(t.expr)),
    );
  }

  it('provisions the Prometheus data source the dashboard uses, and the dashboards folder it is in', async () => {
    const sources = (await yamlFile('docker/grafana/provisioning/datasources/prometheus.yml'))
      .datasources as Yaml[];
    assert.equal(sources.length, 1);
    assert.equal(sources[0]!.url, 'http://prometheus:9090');
    assert.ok('prometheus' in compose.services);
    const uid = sources[0]!.uid;
    for (const panel of dashboard.panels as Yaml[]) {
      if (panel.type === 'row') continue;
      assert.equal(panel.datasource?.uid, uid, panel.title);
      for (const target of panel.targets as Yaml[]) assert.equal(target.datasource.uid, uid);
    }
    const providers = (await yamlFile('docker/grafana/provisioning/dashboards/moe-serve.yml'))
      .providers as Yaml[];
    const mounts = volumes(compose.services.grafana);
    for (const provider of providers) {
      const mount = mounts.find((m) => m.target === provider.options.path);
      assert.ok(mount, `nothing is mounted at ${provider.options.path}`);
      assert.ok(existsSync(join(ROOT, mount.source, 'moe-serve.json')));
    }
    const home = compose.services.grafana.environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH;
    assert.ok(providers.some((p) => home === `${p.options.path}/moe-serve.json`));
  });

  it('has the panels the deployment needs', () => {
    const all = exprs().join('\n');
    for (const metric of [
      'moe_http_requests_total', // request rate
      'moe_http_request_duration_seconds_bucket', // latency quantiles
      'moe_batch_size_items', // batch size
      'moe_queue_depth_items', // queue depth (batcher)
      'moe_queue_jobs', // queue depth (Redis)
      'moe_adapter_weight_total', // per-adapter routing share
      'moe_gate_entropy_nats', // gate entropy
      'nodejs_eventloop_lag', // event-loop lag
      'moe_engine_worker_restarts_total', // worker restarts
      'moe_execution_provider_info', // execution provider
    ]) {
      assert.ok(all.includes(metric), `no panel queries ${metric}`);
    }
    const ids = (dashboard.panels as Yaml[]).map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  });

  it('queries only metrics a live server exports, and only their labels', async () => {
    const registry = new Metrics().registry;
    /** Metrics a live embedded server has no samples of: the queue roles' (QUEUE=redis). */
    const queueOnly = new Set([
      'moe_queue_jobs',
      'moe_queue_job_wait_seconds',
      'moe_queue_job_run_seconds',
      'moe_queue_jobs_processed_total',
      'moe_queue_job_retries_total',
      'moe_queue_jobs_stalled_total',
    ]);
    const types = new Map<string, string>();
    for (const match of live.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(match[1]!, match[2]!);
    /** metric family -> label names seen on its samples */
    const seen = new Map<string, Set<string>>();
    for (const match of live.matchAll(/^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? \S+$/gm)) {
      const family = match[1]!.replace(/_(bucket|sum|count)$/, '');
      const labels = seen.get(family) ?? new Set<string>();
      for (const label of (match[2] ?? '').matchAll(/(\w+)="/g)) labels.add(label[1]!);
      seen.set(match[1]!, labels);
      seen.set(family, labels);
    }
    for (const expr of exprs()) {
      const names = [...expr.matchAll(/\b(?:moe|nodejs|process)_\w+/g)].map((m) => m[0]);
      assert.ok(names.length > 0, `no metric in ${expr}`);
      const allowed = new Set(['job', 'instance']);
      for (const name of names) {
        const family = name.replace(/_(bucket|sum|count)$/, '');
        const type = types.get(name) ?? types.get(family);
        assert.ok(type !== undefined, `${name} is not exported (${expr})`);
        if (name !== family && !types.has(name)) {
          assert.equal(
            type,
            'histogram',
            `${name}: only histograms have ${name.slice(family.length)}`,
          );
          if (name.endsWith('_bucket')) allowed.add('le');
        }
        if (queueOnly.has(family)) {
          const metric = registry.getSingleMetric(family);
          assert.ok(metric, `${family} is not in src/metrics.ts`);
          // prom-client keeps the declared label names on the metric object.
          for (const label of (metric as unknown as { labelNames: string[] }).labelNames) {
            allowed.add(label);
          }
        } else {
          assert.ok(seen.has(name), `the live server has no sample of ${name} (${expr})`);
          for (const label of seen.get(name)!) allowed.add(label);
        }
      }
      const used = [
        ...[...expr.matchAll(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g)]
          .flatMap((m) => m[1]!.split(','))
          .map((l) => l.trim())
          .filter((l) => l !== ''),
        ...[...expr.matchAll(/\{([^}]*)\}/g)].flatMap((m) =>
          [...m[1]!.matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)].map((l) => l[1]!),
        ),
      ];
      for (const label of used) {
        // label_replace writes `requested` from `provider`: both are labels of the info metric.
        assert.ok(allowed.has(label), `label ${label} is not on the metrics of ${expr}`);
      }
    }
  });

  it('the container health check passes against a ready server and fails without one', async () => {
    const port = new URL(app.url).port;
    const run = (env: Record<string, string>, args: string[] = []) =>
      new Promise<{ code: number; stderr: string }>((done) => {
        execFile(
          process.execPath,
          [HEALTHCHECK, ...args],
          { env: { ...process.env, ...env }, timeout: 10_000 },
          (error, _stdout, stderr) => done({ code: error ? Number(error.code ?? 1) : 0, stderr }),
        );
      });
    assert.deepEqual(await run({ PORT: port }), { code: 0, stderr: '' });
    assert.equal((await run({ WORKER_METRICS_PORT: port }, ['--worker'])).code, 0);
    const closed = await run({ PORT: String(await freePort()) });
    assert.equal(closed.code, 1);
    assert.match(closed.stderr, /healthcheck: http:\/\/127\.0\.0\.1:\d+\/health\/ready/);
    const unset = await run({ WORKER_METRICS_PORT: '' }, ['--worker']);
    assert.equal(unset.code, 1);
    assert.match(unset.stderr, /set WORKER_METRICS_PORT/);
  });
});

describe('README', () => {
  let readme: string;
  before(async () => {
    readme = await text('README.md');
  });

  /** The shell code blocks of a `## title` section. */
  function commands(title: string): string[] {
    const start = readme.indexOf(`\n## ${title}\n`);
    assert.ok(start >= 0, `README.md has no "## ${title}" section`);
    const end = readme.indexOf('\n## ', start + 1);
    const section = readme.slice(start, end < 0 ? undefined : end);
    return [...section.matchAll(/```sh\n([\s\S]*?)```/g)]
      .flatMap((m) => m[1]!.split('\n'))
      .map((line) => line.replace(/\s+#.*$/, '').trim())
      .filter((line) => line.startsWith('docker'));
  }

  it('deploy and GPU commands name files, targets, services and ports that exist', async () => {
    const { stages } = dockerStages(await text('Dockerfile'));
    const lines = [...commands('Deploy'), ...commands('GPU')];
    assert.ok(
      lines.some((l) => /^docker compose up\b/.test(l)),
      'docker compose up',
    );
    assert.ok(
      lines.some((l) => /--scale worker=\d+/.test(l)),
      '--scale worker=N',
    );
    assert.ok(
      lines.some((l) => /^docker build .*--target cuda\b/.test(l)),
      'the cuda image',
    );
    assert.ok(
      lines.some((l) => l.includes('-f docker-compose.gpu.yml')),
      'the GPU override',
    );
    for (const line of lines) {
      // Compose files: the -f options before the subcommand (`logs -f` follows instead).
      const files = /^docker compose((?: -f \S+)*)/.exec(line)?.[1] ?? '';
      for (const m of files.matchAll(/-f (\S+)/g)) {
        assert.ok(existsSync(join(ROOT, m[1]!)), `${line}: no ${m[1]}`);
      }
      for (const m of line.matchAll(/--target (\S+)/g)) stage(stages, m[1]!);
      for (const m of line.matchAll(/--scale (\w+)=/g)) {
        assert.ok(m[1]! in compose.services, `${line}: no service ${m[1]}`);
      }
      const services = /^docker compose (?:-f \S+ )*(?:logs|restart|stop|ps)(?: -f)? (.+)$/.exec(
        line,
      );
      for (const name of services?.[1]?.split(' ') ?? []) {
        assert.ok(name in compose.services, `${line}: no service ${name}`);
      }
    }
    const published = Object.values<Yaml>(compose.services)
      .flatMap((s) => (s.ports ?? []) as string[])
      .map((p) => interpolate(p).split(':')[0]);
    const deploy = readme.slice(readme.indexOf('\n## Deploy\n'));
    for (const port of deploy.matchAll(/localhost:(\d+)/g)) {
      assert.ok(
        published.includes(port[1]!),
        `README names port ${port[1]}, compose publishes ${published}`,
      );
    }
    for (const port of published) assert.ok(deploy.includes(`localhost:${port}`), port);
  });
});
