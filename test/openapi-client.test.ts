/**
 * The OpenAPI document as a contract a client can be generated from: `openapi-typescript` turns
 * the live /docs/json into types, a small client over `openapi-fetch` is written beside them
 * (inside the repository, so that node_modules resolve), typechecked with the TypeScript compiler
 * API, compiled, loaded and run against the live server.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { FastifyInstance } from 'fastify';
import openapiTS, { astToString } from 'openapi-typescript';
import ts from 'typescript';
import { Random } from '../src/util/random.js';
import { buildFixturePack, randomAdapter, writeAdapterFolder } from './support/fixture-pack.js';
import { type ListeningApp, startListeningApp } from './support/listening-app.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const ADMIN_KEY = 'openapi-client-admin-key';

/** The generated client: only typed calls, checked by the compiler before it runs. */
const CLIENT = `import createClient from 'openapi-fetch';
import type { paths } from './api.js';

export async function run(baseUrl: string, adminKey: string, adapterPath: string) {
  const client = createClient<paths>({ baseUrl });
  const infer = await client.POST('/v1/infer', {
    body: { inputs: ['hello world', 'guten tag'], return: ['embedding', 'scores'], top_k: 2 },
  });
  if (infer.error !== undefined) throw new Error(JSON.stringify(infer.error));
  const results = infer.data.results.map((r) => ({
    languages: (r.routing.language ?? []).map((x) => x.adapter),
    dims: r.embedding?.length ?? 0,
    topic: r.outputs.topic?.label ?? '',
  }));

  const denied = await client.POST('/v1/adapters', { body: { path: adapterPath } });
  const deniedCode: string | undefined = denied.error?.error.code;
  const admin = { authorization: 'Bearer ' + adminKey };
  const loaded = await client.POST('/v1/adapters', {
    body: { path: adapterPath, id: 'generated' },
    headers: admin,
  });
  if (loaded.error !== undefined) throw new Error(JSON.stringify(loaded.error));
  const listed = await client.GET('/v1/adapters');
  if (listed.error !== undefined) throw new Error('GET /v1/adapters failed');
  const removed = await client.DELETE('/v1/adapters/{id}', {
    params: { path: { id: 'generated' } },
    headers: admin,
  });
  return {
    model: infer.data.model,
    results,
    deniedStatus: denied.response.status,
    deniedCode,
    loaded: { id: loaded.data.id, state: loaded.data.state, rank: loaded.data.rank },
    listed: listed.data.data.map((a) => a.id + ' ' + a.state),
    deleted: removed.data?.deleted === true,
  };
}

/** Never called: each line must be a type error, or the generated types are too loose. */
export function misuse(client: ReturnType<typeof createClient<paths>>) {
  // @ts-expect-error inputs are texts
  void client.POST('/v1/infer', { body: { inputs: [42] } });
  // @ts-expect-error return takes 'embedding' | 'scores'
  void client.POST('/v1/infer', { body: { inputs: ['x'], return: ['logits'] } });
  // @ts-expect-error no such route
  void client.GET('/v1/nothing');
  // @ts-expect-error loading an adapter needs a path
  void client.POST('/v1/adapters', { body: { id: 'x' } });
}
`;

/** Every (method, url) the app routes, from fastify's route tree; HEAD twins left out. */
function appRoutes(app: FastifyInstance): { method: string; url: string }[] {
  const routes: { method: string; url: string }[] = [];
  const prefixes: string[] = [];
  for (const line of app.printRoutes({ commonPrefix: false }).split('\n')) {
    const match = /^(.*?)[├└]── (\S+) \(([^)]+)\)/.exec(line);
    if (match === null) continue;
    prefixes.length = match[1]!.length / 4;
    prefixes.push(match[2]!);
    for (const method of match[3]!.split(',').map((m) => m.trim())) {
      if (method !== 'HEAD') routes.push({ method, url: prefixes.join('') });
    }
  }
  return routes;
}

/** What CLIENT's run() returns. */
interface ClientAnswer {
  model: string;
  results: { languages: string[]; dims: number; topic: string }[];
  deniedStatus: number;
  deniedCode: string | undefined;
  loaded: { id: string; state: string; rank: number };
  listed: string[];
  deleted: boolean;
}

interface Operation {
  requestBody?: { content?: Record<string, { schema?: object }> };
  responses?: Record<string, { content?: Record<string, { schema?: object }> }>;
}

let root: string;
let packDir: string;
let adapterRoot: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'moe-openapi-'));
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 29 });
  adapterRoot = join(root, 'adapters');
  await writeAdapterFolder(
    join(adapterRoot, 'gen'),
    randomAdapter(new Random(3), { id: 'gen', group: 'language', hiddenSize: 32, rank: 2 }),
  );
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('OpenAPI document and a client generated from it', () => {
  let server: ListeningApp;
  let doc: { openapi: string; paths: Record<string, Record<string, Operation>> };
  let workdir: string;

  before(async () => {
    server = await startListeningApp({ packDir, adapterRoot, adminApiKey: ADMIN_KEY });
    const response = await fetch(`${server.url}/docs/json`);
    assert.equal(response.status, 200);
    doc = (await response.json()) as typeof doc;
    await mkdir(join(REPO, '.tmp'), { recursive: true });
    workdir = await mkdtemp(join(REPO, '.tmp', 'openapi-client-'));
  });
  after(async () => {
    await server.close();
    await rm(workdir, { recursive: true, force: true });
  });

  it('covers every route with its request body and its success answers', () => {
    assert.equal(doc.openapi, '3.1.0');
    const routes = appRoutes(server.app).filter((r) => !r.url.startsWith('/docs'));
    assert.ok(routes.length >= 18, `only ${routes.length} routes found`);
    for (const { method, url } of routes) {
      const path = url.replace(/:(\w+)/g, '{$1}');
      const operation = doc.paths[path]?.[method.toLowerCase()];
      assert.ok(operation, `${method} ${path} is not in /docs/json`);
      if (method === 'POST') {
        const body = operation.requestBody?.content?.['application/json']?.schema;
        assert.ok(body, `${method} ${path}: no request body schema`);
      }
      const success = Object.entries(operation.responses ?? {}).filter(([s]) => /^2\d\d$/.test(s));
      assert.ok(success.length > 0, `${method} ${path}: no success answer documented`);
      for (const [status, response] of success) {
        const content = Object.values(response.content ?? {});
        assert.ok(
          content.length > 0 && content.every((c) => c.schema),
          `${method} ${path} ${status}: no schema`,
        );
      }
    }
  });

  it('generates types with openapi-typescript that typecheck with a client over openapi-fetch', async () => {
    const types = astToString(await openapiTS(doc as never, { silent: true }));
    await writeFile(join(workdir, 'api.ts'), types);
    await writeFile(join(workdir, 'client.ts'), CLIENT);
    const program = ts.createProgram([join(workdir, 'client.ts')], {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      lib: ['lib.es2023.d.ts'],
      types: ['node'],
      typeRoots: [join(REPO, 'node_modules', '@types')],
      strict: true,
      noUncheckedIndexedAccess: true,
      skipLibCheck: true,
      outDir: workdir,
      rootDir: workdir,
    });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    const text = ts.formatDiagnostics(diagnostics, {
      getCanonicalFileName: (f) => f,
      getCurrentDirectory: () => workdir,
      getNewLine: () => '\n',
    });
    assert.equal(diagnostics.length, 0, text);
    assert.match(types, /"\/v1\/embeddings"/);
    assert.match(types, /"\/v2\/models\/\{name\}\/infer"/);
    const emitted = program.emit();
    assert.equal(emitted.emitSkipped, false);
  });

  it('calls /v1/infer and /v1/adapters through the generated client', async () => {
    const client = (await import(pathToFileURL(join(workdir, 'client.js')).href)) as {
      run(baseUrl: string, adminKey: string, adapterPath: string): Promise<ClientAnswer>;
    };
    const answer = await client.run(server.url, ADMIN_KEY, 'gen');
    assert.equal(answer.model, 'fixture');
    assert.equal(answer.results.length, 2);
    for (const result of answer.results) {
      assert.equal(result.languages.length, 2);
      assert.equal(result.dims, server.model.pack.hiddenSize);
      assert.ok(['world', 'sports', 'business', 'science'].includes(result.topic));
    }
    assert.equal(answer.deniedStatus, 401);
    assert.equal(answer.deniedCode, 'ADMIN_UNAUTHORIZED');
    assert.deepEqual(answer.loaded, { id: 'generated', state: 'ready', rank: 2 });
    assert.ok(answer.listed.includes('generated ready'));
    assert.equal(answer.deleted, true);
    assert.ok(!server.model.registry.list().some((a) => a.id === 'generated'));
  });
});
