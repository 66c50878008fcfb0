/**
 * Writes the pack format's JSON Schemas from their TypeBox definitions (src/pack/manifest.ts):
 *   models/manifest.schema.json, models/adapter-config.schema.json
 * Run with `npm run --silent schema`; test/schema.test.ts fails when the committed files are stale.
 * Output is formatted the way biome formats JSON, so `biome check` stays clean.
 */

import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { adapterConfigJsonSchema, manifestJsonSchema } from '../pack/manifest.js';

export const SCHEMA_FILES = {
  'manifest.schema.json': manifestJsonSchema,
  'adapter-config.schema.json': adapterConfigJsonSchema,
} as const;

const LINE_WIDTH = 100;

/** JSON with 2-space indent; arrays of scalars on one line when they fit (as biome prints them). */
export function formatJson(value: unknown): string {
  return `${print(value, 0, 0)}\n`;
}

/** `prefix` is the width of what precedes the value on its line; `suffix` what follows it. */
function print(value: unknown, indent: number, prefix: number, suffix = 0): string {
  const pad = ' '.repeat(indent + 2);
  const close = ' '.repeat(indent);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    if (value.every((item) => item === null || typeof item !== 'object')) {
      const flat = `[${value.map((item) => JSON.stringify(item)).join(', ')}]`;
      if (prefix + flat.length + suffix <= LINE_WIDTH) return flat;
    }
    const items = value.map(
      (item, i) => pad + print(item, indent + 2, indent + 2, i < value.length - 1 ? 1 : 0),
    );
    return `[\n${items.join(',\n')}\n${close}]`;
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) return '{}';
    const lines = entries.map(([key, item], i) => {
      const head = `${pad}${JSON.stringify(key)}: `;
      return head + print(item, indent + 2, head.length, i < entries.length - 1 ? 1 : 0);
    });
    return `{\n${lines.join(',\n')}\n${close}}`;
  }
  return JSON.stringify(value);
}

async function main(): Promise<void> {
  const out = process.argv[2] ?? 'models';
  for (const [name, build] of Object.entries(SCHEMA_FILES)) {
    const path = join(out, name);
    await writeFile(path, formatJson(build()));
    process.stderr.write(`wrote ${path}\n`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  });
}
