/**
 * Configuration: the only reader of process.env. Every variable is declared once below with its
 * default and what it trades off; `loadConfig` validates them all at boot, reports every problem at
 * once, and returns a frozen object. The README's configuration table lists the same variables
 * (a test keeps them in step).
 */
import { availableParallelism } from 'node:os';

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

const text: Parser<string> = (raw) => {
  if (raw.length === 0) throw new Error('must not be empty');
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
  EXECUTION_PROVIDER: { default: 'cpu', parse: oneOf('cpu'), doc: 'ORT execution provider.' },
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
    doc: 'Folder that adapter folders loaded through the API must be inside (relative paths are resolved against it).',
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
      const shown = name.endsWith('_KEY') ? '<redacted>' : JSON.stringify(raw);
      problems.push(`${name}=${shown}: ${(error as Error).message}`);
    }
  }
  if (problems.length > 0) {
    throw new Error(`invalid configuration:\n  ${problems.join('\n  ')}`);
  }
  return Object.freeze(config) as Config;
}
