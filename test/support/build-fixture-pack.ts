/**
 * Builds the test fixture pack (random weights; see test/support/fixture-pack.ts).
 *   node dist/test/support/build-fixture-pack.js [--out models/fixture] [--seed N]
 *     [--languages N] [--gate linear|mlp|token_bag] [--task-gate none|linear|mlp]
 * Progress and the folder written go to stderr; stdout stays empty.
 */

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { loadPack } from '../../src/pack/load.js';
import { buildFixturePack, type FixturePackOptions } from './fixture-pack.js';

const USAGE =
  'usage: build-fixture-pack [--out models/fixture] [--seed N] [--languages N] [--gate linear|mlp|token_bag] [--task-gate none|linear|mlp]';

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: 'string', default: 'models/fixture' },
      seed: { type: 'string', default: '1' },
      languages: { type: 'string' },
      gate: { type: 'string' },
      'task-gate': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stderr.write(`${USAGE}\n`);
    return;
  }
  const options: FixturePackOptions = { seed: integer('--seed', values.seed) };
  if (values.languages !== undefined)
    options.languageAdapters = integer('--languages', values.languages);
  if (values.gate !== undefined)
    options.gate = oneOf('--gate', values.gate, ['linear', 'mlp', 'token_bag'] as const);
  if (values['task-gate'] !== undefined) {
    const taskGate = oneOf('--task-gate', values['task-gate'], ['none', 'linear', 'mlp'] as const);
    options.taskGate = taskGate === 'none' ? null : taskGate;
  }
  const out = values.out;
  process.stderr.write(`building fixture pack (seed ${options.seed}) in ${out} ...\n`);
  await buildFixturePack(out, options);
  const pack = await loadPack(out);
  const summary = pack.groups.map((g) => `${g.id}: ${g.adapters.map((a) => a.id).join(',')}`);
  process.stderr.write(
    `wrote ${resolve(out)} (${summary.join('; ')}; heads: ${pack.heads.map((h) => h.id).join(',')})\n`,
  );
}

function integer(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0)
    throw new Error(`${flag} must be a non-negative integer, got '${text}'`);
  return value;
}

function oneOf<T extends string>(flag: string, text: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) {
    throw new Error(`${flag} must be one of ${allowed.join(', ')}, got '${text}'`);
  }
  return text as T;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n${USAGE}\n`);
    process.exitCode = 1;
  });
}
