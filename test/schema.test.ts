import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { Ajv } from 'ajv';
import { adapterConfigJsonSchema, manifestJsonSchema } from '../src/pack/manifest.js';
import { formatJson, SCHEMA_FILES } from '../src/tools/write-schemas.js';

// Tests run from the repository root (npm test); the committed schemas live in models/.
for (const [name, build] of Object.entries(SCHEMA_FILES)) {
  test(`models/${name} is what the TypeBox definitions produce (run \`npm run schema\`)`, async () => {
    const committed = await readFile(`models/${name}`, 'utf8');
    assert.deepEqual(JSON.parse(committed), build(), `models/${name} is stale: run npm run schema`);
    assert.equal(
      committed,
      formatJson(build()),
      `models/${name} is not formatted: run npm run schema`,
    );
  });
}

test('the schemas compile as draft-07 and every property has a description', () => {
  for (const schema of [manifestJsonSchema(), adapterConfigJsonSchema()]) {
    new Ajv({ strict: true }).compile(schema);
    const missing: string[] = [];
    const walk = (node: unknown, path: string) => {
      if (node === null || typeof node !== 'object') return;
      const properties = (node as { properties?: Record<string, unknown> }).properties;
      for (const [key, child] of Object.entries(properties ?? {})) {
        const described = child as { description?: string; items?: { description?: string } };
        if (!described.description) missing.push(`${path}/${key}`);
      }
      for (const [key, child] of Object.entries(node)) walk(child, `${path}/${key}`);
    };
    walk(schema, '');
    assert.deepEqual(missing, []);
  }
});
