/**
 * Configuration: the only reader of process.env. Every variable is declared once below with its
 * default and what it trades off; `loadConfig` validates them all at boot, reports every problem at
 * once, and returns a frozen object. The README's configuration table lists the same variables
 * (a test keeps them in step).
 */
import { availableParallelism } from 'node:os';
import type { ModelOptions } from './inference/model.js';

type Parser<T> = (raw: string) => T;

interface VariableSpec<T> {
  readonly default: T | undefined;
  readonly parse: Parser<T>;
  readonly doc: string;
}

const int =
  (min: number, max = Number.MAX_SAFE_INTEGER): Parser<number> =>
  (raw) => {
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new Error(`must be an integer from ${min} to ${max}`);
    }
    return value;
  };

const oneOf =
  <T extends string>(...choices: T[]): Parser<T> =>
  (raw) => {
    if (!(choices as string[]).includes(raw))
      throw new Error(`must be one of ${choices.join(', ')}`);
    return raw as T;
  };

const bool: Parser<boolean> = (raw) => {
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  throw new Error('must be true or false');
};

const text: Parser<string> = (raw) => {
  if (raw.length === 0) throw new Error('must not be empty');
  return raw;
};

const redisUrl: Parser<string> = (raw) => {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error('must be a URL such as redis://127.0.0.1:6379');
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new Error('must start with redis:// or rediss://');
  }
  return raw;
};

const queueName: Parser<string> = (raw) => {
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(raw)) {
    throw new Error('must be 1-100 letters, digits, dots, dashes or underscores (no colons)');
  }
  return raw;
};

const cores = availableParallelism();

/** name -> spec. Order is the README's order. */
export const VARIABLES = {
  PORT: { default: 8080, parse: int(0, 65535), doc: 'TCP port of the HTTP server.' },
  HOST: { default: '0.0.0.0', parse: text, doc: 'Address to listen on.' },
  MODEL_DIR: {
    default: 'models/demo',
    parse: text,
    doc: 'Model pack folder. The default demo pack is built there on first start when missing.',
  },
  BACKBONE_CACHE_DIR: {
    default: undefined,
    parse: text,
    doc: 'Where the graph built from a Hugging Face backbone folder is cached (one subfolder per pack and content digest). Unset: inside the pack, <pack>/.cache/backbone. Set it when the pack is on read-only storage.',
  },
  ENGINE_WORKERS: {
    default: Math.max(1, Math.floor(cores / 2)),
    parse: int(1, 64),
    doc: 'Engine worker threads, each with its own ORT sessions. Default: half the cores. More workers: more throughput under load; fewer, faster threads: lower latency per batch.',
  },
  ENGINE_THREADS: {
    default: undefined,
    parse: int(1, 256),
    doc: 'ORT intra-op threads per worker. Default: cores / workers. Keep workers x threads <= cores, or the thread pools fight.',
  },
  ENGINE_BATCH_TIMEOUT_MS: {
    default: 60_000,
    parse: int(100, 3_600_000),
    doc: 'Watchdog: a batch still running after this fails its items with 503 ENGINE_TIMEOUT and its engine worker is replaced. Set it well above the slowest batch you expect (a full batch on a cold or loaded machine).',
  },
  EXECUTION_PROVIDER: {
    default: 'cpu',
    parse: oneOf('cpu', 'cuda', 'webgpu'),
    doc: "ORT execution provider: 'cpu', 'cuda' (NVIDIA, CUDA 12 + cuDNN 9; the cuda image) or 'webgpu' (a GPU through Vulkan). The one in use is in /health/ready and moe_execution_provider_info.",
  },
  EXECUTION_DEVICE_ID: {
    default: 0,
    parse: int(0, 255),
    doc: "GPU ordinal for 'cuda'. 'webgpu' takes the default adapter (ORT's Node binding has no device option for it), so it accepts only 0.",
  },
  PROVIDER_FALLBACK: {
    default: false,
    parse: bool,
    doc: "When the GPU provider cannot start: 'true' runs on cpu (one warning in the log; /health/ready and the metrics name both providers), 'false' refuses to boot with the reason. Default false: a GPU deployment that quietly runs on CPU misses its targets with nothing red.",
  },
  MAX_BATCH_ITEMS: {
    default: 32,
    parse: int(1, 4096),
    doc: 'Most items per engine batch. Bigger batches: more throughput, longer waits for each.',
  },
  MAX_BATCH_TOKENS: {
    default: 8192,
    parse: int(1, 1 << 24),
    doc: 'Most padded tokens (items x longest item) per batch; bounds the memory and time of one batch.',
  },
  MAX_QUEUE_DELAY_MS: {
    default: 0,
    parse: int(0, 10_000),
    doc: 'How long a lone item waits for company while the engine is idle. 0: run at once (the next batch still forms while one runs).',
  },
  MAX_QUEUED_ITEMS: {
    default: 2048,
    parse: int(1, 1 << 20),
    doc: 'Admission bound: items waiting or running. Beyond it requests get 429 with retry-after.',
  },
  REQUEST_TIMEOUT_MS: {
    default: 30_000,
    parse: int(1, 3_600_000),
    doc: 'Deadline of an inference request; past it the answer is 504 REQUEST_TIMEOUT and its queued items are dropped.',
  },
  MAX_INPUTS: {
    default: 256,
    parse: int(1, 100_000),
    doc: 'Most inputs in one request (413 beyond).',
  },
  MAX_INPUT_CHARS: {
    default: 20_000,
    parse: int(1, 10_000_000),
    doc: 'Most characters in one input (413 beyond); long inputs are also cut or refused at the pack max_length in tokens.',
  },
  MAX_REQUEST_CHARS: {
    default: 4_000_000,
    parse: int(1, 1 << 30),
    doc: "Most characters over all inputs of one request (413 INPUT_TOTAL_TOO_LONG beyond), checked before any tokenizing. Tokenizing stops near the pack's max_length per input anyway; this bounds what one request may make the server copy and hold. Lower it to refuse bulk requests early.",
  },
  BODY_LIMIT_BYTES: {
    default: 4 * 1024 * 1024,
    parse: int(1024, 1 << 30),
    doc: 'Largest request body (413 beyond).',
  },
  TRUNCATION: {
    default: 'truncate',
    parse: oneOf('truncate', 'reject'),
    doc: "Inputs longer than the pack's max_length: 'truncate' (the answer says truncated) or 'reject' (413 INPUT_TOO_LONG).",
  },
  ADMIN_API_KEY: {
    default: undefined,
    parse: text,
    doc: 'Key for admin routes (adapter load/unload), sent as `authorization: Bearer KEY` or `x-api-key`. Unset: admin routes are disabled (403), not open.',
  },
  ADAPTER_ROOT: {
    default: 'models',
    parse: text,
    doc: 'Folder that adapter folders loaded through the API must be inside (relative paths are resolved against it). Queue mode: the same shared volume on every API node and worker (the registry stores folders relative to it).',
  },
  ADAPTER_SYNC_TIMEOUT_MS: {
    default: 30_000,
    parse: int(100, 600_000),
    doc: 'Queue mode: longest wait of an adapter load/unload for another one in progress, and for every live worker to apply it (a worker that fails it rolls it back). Workers still silent after it catch up later. Longer: the admin answer waits out slow workers; shorter: it returns sooner.',
  },
  STATE_DIR: {
    default: undefined,
    parse: text,
    doc: 'Embedded mode: the folder where named compositions are kept (compositions.json, written atomically), so they survive a restart. Unset: inside the pack, <pack>/.state. Set it when the pack is on read-only storage. Queue mode keeps them in Redis instead.',
  },
  FIT_MAX_EXAMPLES: {
    default: 256,
    parse: int(1, 100_000),
    doc: 'Most labelled examples one composition fit takes (422 beyond). Every evaluation runs all of them through the model, so this times FIT_MAX_EVALUATIONS bounds the work of a fit.',
  },
  FIT_MAX_EVALUATIONS: {
    default: 500,
    parse: int(1, 1_000_000),
    doc: 'Most candidate weightings one fit may evaluate (its budget.evaluations is capped here). More: a better search on many adapters; each costs one pass over the examples.',
  },
  FIT_MAX_SECONDS: {
    default: 300,
    parse: int(1, 86_400),
    doc: 'Longest a fit may run (its budget.seconds is capped here); it stops with the best weights found so far.',
  },
  FIT_MAX_RUNNING: {
    default: 1,
    parse: int(1, 64),
    doc: "Fits running at once on one API node; one more answers 429 FIT_BUSY with retry-after. A fit's forward passes share the engine (or the queue workers) with live traffic, so keep it small.",
  },
  QUEUE: {
    default: 'embedded',
    parse: oneOf('embedded', 'redis'),
    doc: "'embedded': this process runs the model. 'redis': this API process tokenizes and puts requests on a BullMQ queue in Redis; worker processes (`npm run worker`) run them.",
  },
  REDIS_URL: {
    default: 'redis://127.0.0.1:6379',
    parse: redisUrl,
    doc: 'Redis of queue mode (API and worker roles), as redis://[user:password@]host:port[/db] or rediss:// for TLS.',
  },
  QUEUE_NAME: {
    default: 'moe-infer',
    parse: queueName,
    doc: 'BullMQ queue name. Every API and worker process of one deployment uses the same name and the same model pack.',
  },
  QUEUE_PREFIX: {
    default: 'moe',
    parse: queueName,
    doc: 'Prefix of every Redis key of the queue, to share one Redis between deployments.',
  },
  QUEUE_ADD_TIMEOUT_MS: {
    default: 1000,
    parse: int(10, 60_000),
    doc: 'Longest wait for Redis to accept a job; past it (or at once while Redis is disconnected) the answer is 503 QUEUE_UNAVAILABLE. Shorter: fail faster when Redis hangs; longer: ride out slow Redis.',
  },
  JOB_ATTEMPTS: {
    default: 3,
    parse: int(1, 100),
    doc: 'Times a job is run at most when a worker fails it (engine errors) and, separately, when workers die holding it (stalled). Deadline and request errors are never retried.',
  },
  JOB_BACKOFF_MS: {
    default: 100,
    parse: int(0, 600_000),
    doc: 'First retry delay of a failed job; it doubles with each retry.',
  },
  JOB_LOCK_MS: {
    default: 5000,
    parse: int(1000, 600_000),
    doc: "A worker's lock on its jobs, renewed every half of it. A worker that dies loses its jobs to the others after about 1 to 1.5 times this. Shorter: faster takeover; longer: tolerates longer event-loop stalls.",
  },
  JOB_TIMEOUT_MS: {
    default: 600_000,
    parse: int(1, 86_400_000),
    doc: 'Deadline of a durable job (POST /v1/jobs): a job not started by then fails with REQUEST_TIMEOUT and is not run.',
  },
  JOB_RESULT_TTL_SECONDS: {
    default: 3600,
    parse: int(1, 30 * 86_400),
    doc: 'How long finished durable jobs (results and errors) stay readable at GET /v1/jobs/{id}; costs Redis memory per job. Synchronous requests keep nothing once answered.',
  },
  WORKER_CONCURRENCY: {
    default: 64,
    parse: int(1, 10_000),
    doc: "Jobs one worker process holds at most; their inputs share the worker's engine batches. A worker takes jobs in bulk while less than one full batch (MAX_BATCH_ITEMS) waits in it, so it holds about one running and one waiting batch. Default 64 (two batches of 32). Fewer: the engine may wait for the next jobs; more: a worker may keep jobs an idle one could run.",
  },
  WORKER_METRICS_PORT: {
    default: undefined,
    parse: int(0, 65535),
    doc: 'Worker role: serve /metrics and /health/ready on this port (0: any free port, logged). Unset: no HTTP server in the worker.',
  },
  SHUTDOWN_TIMEOUT_MS: {
    default: 30_000,
    parse: int(0, 3_600_000),
    doc: 'On SIGTERM/SIGINT: longest wait for in-flight requests before exiting anyway.',
  },
  LOG_LEVEL: {
    default: 'info',
    parse: oneOf('fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'),
    doc: 'Log level (JSON logs on stdout).',
  },
  REQUEST_LOG: {
    default: 'all',
    parse: oneOf('all', 'errors', 'off'),
    doc: "The request log (at info): 'all' (fastify's two lines per request, on arrival and on answer), 'errors' (one line per request answered with a status >= 400), 'off' (failures are still logged as 'request failed'). Measured (npm run bench:request-path): 'all' cost the HTTP thread 15-40 us of CPU per request at 64 clients (70-220 us at 1): 0.4-4% of the server's CPU per request.",
  },
} satisfies Record<string, VariableSpec<unknown>>;

type Variables = typeof VARIABLES;
export type Config = Readonly<{
  [K in keyof Variables]: Variables[K]['parse'] extends Parser<infer T>
    ? Variables[K]['default'] extends undefined
      ? T | undefined
      : T
    : never;
}>;

/** Validate `env` (default: process.env). Throws one Error listing every bad variable. */
export function loadConfig(
  env: Readonly<Record<string, string | undefined>> = process.env,
): Config {
  const problems: string[] = [];
  const config: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(VARIABLES) as [string, VariableSpec<unknown>][]) {
    const raw = env[name];
    if (raw === undefined || raw === '') {
      config[name] = spec.default;
      continue;
    }
    try {
      config[name] = spec.parse(raw);
    } catch (error) {
      const shown = name.endsWith('_KEY')
        ? '<redacted>'
        : // A URL's user:password@ part is a secret too (REDIS_URL).
          JSON.stringify(raw.replace(/\/\/.*@/, '//<redacted>@'));
      problems.push(`${name}=${shown}: ${(error as Error).message}`);
    }
  }
  if (
    config.EXECUTION_PROVIDER === 'webgpu' &&
    config.EXECUTION_DEVICE_ID !== undefined &&
    config.EXECUTION_DEVICE_ID !== 0
  ) {
    problems.push(
      `EXECUTION_DEVICE_ID=${JSON.stringify(String(config.EXECUTION_DEVICE_ID))}: webgpu uses the default GPU adapter; only cuda takes a device id`,
    );
  }
  if (problems.length > 0) {
    throw new Error(`invalid configuration:\n  ${problems.join('\n  ')}`);
  }
  return Object.freeze(config) as Config;
}

/** The model and engine settings both roles (API in embedded mode, queue worker) run with. */
export function modelOptions(config: Config, packDir: string): ModelOptions {
  return {
    packDir,
    truncation: config.TRUNCATION,
    ...(config.BACKBONE_CACHE_DIR === undefined
      ? {}
      : { backboneCacheDir: config.BACKBONE_CACHE_DIR }),
    engine: {
      workers: config.ENGINE_WORKERS,
      ...(config.ENGINE_THREADS === undefined ? {} : { intraOpThreads: config.ENGINE_THREADS }),
      batchTimeoutMs: config.ENGINE_BATCH_TIMEOUT_MS,
      executionProvider: config.EXECUTION_PROVIDER,
      deviceId: config.EXECUTION_DEVICE_ID,
      allowProviderFallback: config.PROVIDER_FALLBACK,
    },
  };
}
