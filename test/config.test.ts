/**
 * Configuration from the environment: documented defaults, typed values, every bad value reported
 * in one error, the admin key never echoed, and the README's table in step with `VARIABLES`.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { loadConfig, modelOptions, VARIABLES } from '../src/config.js';

// --- helpers ------------------------------------------------------------------------------------

const NAMES = Object.keys(VARIABLES) as (keyof typeof VARIABLES)[];
const SECRET = 'sk-admin-8d1f0c2b9e7a4f63';

/** The error loadConfig throws for `env` (fails the test when it does not throw). */
function configError(env: Record<string, string>): Error {
  try {
    loadConfig(env);
  } catch (error) {
    assert.ok(error instanceof Error);
    return error;
  }
  assert.fail(`loadConfig accepted ${JSON.stringify(env)}`);
}

/**
 * The variables of the README's configuration table (the table with a `PORT` row): the names in
 * the first cell of its rows, as in | `PORT` | 8080 | ... |.
 */
function readmeVariables(readme: string): string[] {
  const lines = readme.split('\n');
  const row = /^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|/;
  const at = lines.findIndex((line) => row.exec(line)?.[1] === 'PORT');
  if (at < 0) return [];
  let first = at;
  while (first > 0 && lines[first - 1]!.startsWith('|')) first--;
  let last = at;
  while (last + 1 < lines.length && lines[last + 1]!.startsWith('|')) last++;
  return lines.slice(first, last + 1).flatMap((line) => row.exec(line)?.[1] ?? []);
}

// --- tests --------------------------------------------------------------------------------------

describe('defaults', () => {
  it('gives every variable its documented default when the environment is empty', () => {
    const config = loadConfig({});
    assert.deepEqual(Object.keys(config).sort(), [...NAMES].sort());
    for (const name of NAMES) assert.equal(config[name], VARIABLES[name].default, name);
    assert.equal(config.PORT, 8080);
    assert.equal(config.HOST, '0.0.0.0');
    assert.equal(config.TRUNCATION, 'truncate');
    assert.equal(config.ADMIN_API_KEY, undefined, 'admin routes must be off by default');
    assert.equal(config.ENGINE_THREADS, undefined);
    assert.ok(config.ENGINE_WORKERS >= 1);
  });

  it('treats an empty value as unset', () => {
    const config = loadConfig({ PORT: '', ADMIN_API_KEY: '', MAX_BATCH_ITEMS: '' });
    assert.equal(config.PORT, 8080);
    assert.equal(config.ADMIN_API_KEY, undefined);
    assert.equal(config.MAX_BATCH_ITEMS, VARIABLES.MAX_BATCH_ITEMS.default);
  });

  it('returns a frozen object', () => {
    const config = loadConfig({});
    assert.ok(Object.isFrozen(config));
    assert.throws(() => {
      (config as { PORT: number }).PORT = 1;
    }, TypeError);
  });

  it('reads process.env when given nothing, and nothing else when given an object', () => {
    const saved = process.env.MAX_BATCH_ITEMS;
    process.env.MAX_BATCH_ITEMS = '7';
    try {
      assert.equal(loadConfig().MAX_BATCH_ITEMS, 7);
      assert.equal(loadConfig({}).MAX_BATCH_ITEMS, VARIABLES.MAX_BATCH_ITEMS.default);
    } finally {
      if (saved === undefined) delete process.env.MAX_BATCH_ITEMS;
      else process.env.MAX_BATCH_ITEMS = saved;
    }
  });

  it('documents every variable', () => {
    for (const name of NAMES) assert.ok(VARIABLES[name].doc.length > 10, `${name} has no doc`);
  });
});

describe('parsing', () => {
  it('turns good values into typed values', () => {
    const typed: Record<string, number | string> = {
      PORT: 0,
      HOST: '::',
      MODEL_DIR: '/srv/models/demo',
      ENGINE_WORKERS: 2,
      ENGINE_THREADS: 1,
      EXECUTION_PROVIDER: 'cpu',
      MAX_BATCH_ITEMS: 64,
      MAX_BATCH_TOKENS: 16384,
      MAX_QUEUE_DELAY_MS: 5,
      MAX_QUEUED_ITEMS: 100,
      REQUEST_TIMEOUT_MS: 1,
      MAX_INPUTS: 16,
      MAX_INPUT_CHARS: 1000,
      BODY_LIMIT_BYTES: 1024,
      TRUNCATION: 'reject',
      ADMIN_API_KEY: SECRET,
      ADAPTER_ROOT: '/srv/adapters',
      SHUTDOWN_TIMEOUT_MS: 0,
      LOG_LEVEL: 'debug',
    };
    const env = Object.fromEntries(Object.entries(typed).map(([name, v]) => [name, String(v)]));
    const config = loadConfig(env) as unknown as Record<string, unknown>;
    for (const [name, value] of Object.entries(typed)) assert.equal(config[name], value, name);
  });

  it('checks the bounds of numbers', () => {
    assert.equal(loadConfig({ PORT: '65535' }).PORT, 65535);
    configError({ PORT: '65536' });
    configError({ PORT: '-1' });
    configError({ BODY_LIMIT_BYTES: '1023' });
    configError({ ENGINE_WORKERS: '0' });
    configError({ MAX_BATCH_ITEMS: '2.5' });
    configError({ REQUEST_TIMEOUT_MS: '0' });
  });
});

describe('errors', () => {
  it('reports every bad value at once, in one error, each with its name, value and rule', () => {
    const bad = {
      PORT: 'eighty',
      ENGINE_WORKERS: '0',
      MAX_BATCH_ITEMS: '1.5',
      TRUNCATION: 'cut',
      LOG_LEVEL: 'loud',
      EXECUTION_PROVIDER: 'tpu',
    };
    const error = configError({ ...bad, HOST: '127.0.0.1', MAX_QUEUE_DELAY_MS: '3' });
    const lines = error.message.split('\n').slice(1);
    assert.equal(lines.length, Object.keys(bad).length, error.message);
    for (const [name, value] of Object.entries(bad)) {
      const line = lines.find((l) => l.trim().startsWith(`${name}=`));
      assert.ok(line, `${name} is not reported: ${error.message}`);
      assert.ok(line.includes(JSON.stringify(value)), line);
    }
    assert.match(error.message, /PORT=.*integer from 0 to 65535/);
    assert.match(error.message, /TRUNCATION=.*truncate, reject/);
    assert.doesNotMatch(error.message, /HOST|MAX_QUEUE_DELAY_MS/);
  });

  it('never echoes a password in REDIS_URL', () => {
    const error = configError({ REDIS_URL: `http://user:${SECRET}@redis:6379` });
    assert.match(error.message, /REDIS_URL/);
    assert.ok(!error.message.includes(SECRET), error.message);
  });

  it('never echoes the admin key', () => {
    const error = configError({ ADMIN_API_KEY: SECRET, PORT: 'x', MAX_INPUTS: '-3' });
    assert.ok(!error.message.includes(SECRET), error.message);
    assert.ok(!String(error.stack).includes(SECRET));
    assert.ok(!JSON.stringify(error, Object.getOwnPropertyNames(error)).includes(SECRET));
    assert.equal(loadConfig({ ADMIN_API_KEY: SECRET }).ADMIN_API_KEY, SECRET);
  });
});

describe('model options', () => {
  it('carries the engine settings, the watchdog timeout included, to the engine', () => {
    const config = loadConfig({
      ENGINE_WORKERS: '3',
      ENGINE_THREADS: '2',
      ENGINE_BATCH_TIMEOUT_MS: '2500',
    });
    const engine = modelOptions(config, '/packs/demo').engine!;
    assert.equal(engine.workers, 3);
    assert.equal(engine.intraOpThreads, 2);
    assert.equal(engine.batchTimeoutMs, 2500);
    assert.equal(
      modelOptions(loadConfig({}), '/packs/demo').engine!.batchTimeoutMs,
      VARIABLES.ENGINE_BATCH_TIMEOUT_MS.default,
    );
    assert.match(configError({ ENGINE_BATCH_TIMEOUT_MS: '5' }).message, /ENGINE_BATCH_TIMEOUT_MS/);
  });
});

describe('README', () => {
  it('documents every variable in its configuration table, and no other', async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const documented = readmeVariables(readme);
    const missing = NAMES.filter((name) => !documented.includes(name));
    assert.deepEqual(missing, [], `README.md has no table row for ${missing.join(', ')}`);
    const unknown = documented.filter((name) => !(NAMES as string[]).includes(name));
    assert.deepEqual(unknown, [], `README.md documents unknown variables ${unknown.join(', ')}`);
    assert.equal(documented.length, new Set(documented).size, 'a variable is listed twice');
  });
});
