/**
 * Hugging Face folders served end to end: `createPack` (what `npm run pack -- create` does), the
 * pack loader, the cached backbone graph, the engine (backbone then mixture session) and the HTTP
 * routes, checked against the float64 reference with sentence-transformers pooling; ONNX export
 * folders as backbones; the pack-level errors; the command line.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { Model } from '../src/inference/model.js';
import { prepareEngineGraph } from '../src/inference/pack-graph-plan.js';
import { writeEncoderModel } from '../src/onnx/bert.js';
import { createPack } from '../src/pack/create.js';
import { PackError, type PackErrorCode } from '../src/pack/errors.js';
import { readHfModel } from '../src/pack/hf-model.js';
import { loadPack } from '../src/pack/load.js';
import { MANIFEST_FILE } from '../src/pack/manifest.js';
import type { Pooling } from '../src/pack/types.js';
import { Random } from '../src/util/random.js';
import { hfEncoderReference, pooledReference } from './support/encoder-reference.js';
import { type HfFolder, type HfFolderSpec, writeHfFolder } from './support/hf-folder.js';
import { buildTestService } from './support/listening-app.js';

const run = promisify(execFile);
const root = await mkdtemp(join(tmpdir(), 'hf-pack-test-'));
after(() => rm(root, { recursive: true, force: true }));
let count = 0;
const fresh = (what: string) => join(root, `${what}${count++}`);
const quiet = () => undefined;

/** Token-id inputs of different lengths (so the engine batch has padding), no pad ids inside. */
function inputs(hf: HfFolder, lengths: number[], seed = 7): number[][] {
  const rng = new Random(seed);
  return lengths.map((n) =>
    Array.from({ length: n }, () => {
      let id = hf.padTokenId;
      while (id === hf.padTokenId) id = rng.int(hf.vocabSize);
      return id;
    }),
  );
}

/** The sentence embedding of each input by the float64 reference, one item at a time. */
function expected(hf: HfFolder, ids: number[][], pooling: Pooling): Float64Array[] {
  return ids.map((row) => {
    const mask = [row.map(() => 1)];
    const hidden = hfEncoderReference(hf.config, hf.tensors, { ids: [row], mask });
    const d = hidden[0]!.length / row.length;
    return pooledReference(hidden, mask, d, pooling.mode, pooling.normalize)[0]!;
  });
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function open(packDir: string, backboneCacheDir?: string) {
  return Model.open({
    packDir,
    engine: { workers: 1, intraOpThreads: 1 },
    log: quiet,
    ...(backboneCacheDir === undefined ? {} : { backboneCacheDir }),
  });
}

async function expectPackError(
  promise: Promise<unknown>,
  code: PackErrorCode,
  file: string,
  field: string,
  message?: RegExp,
): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof PackError, `expected a PackError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.equal(error.file, file);
    assert.equal(error.field, field);
    if (message) assert.match(error.message, message);
    return true;
  });
}

describe('a Hugging Face folder served as a pack backbone', () => {
  const cases: [string, HfFolderSpec, Pooling | undefined, Pooling][] = [
    [
      'XLM-R, F16, sentence-transformers mean + Normalize',
      {
        family: 'xlm-roberta',
        dtype: 'F16',
        sentenceTransformers: { pooling: 'mean', normalize: true },
      },
      undefined,
      { mode: 'mean', normalize: true },
    ],
    [
      'BERT with token types, prefixed names in 2 shards, sentence-transformers cls, no Normalize',
      {
        family: 'bert',
        prefix: true,
        shards: 2,
        sentenceTransformers: { pooling: 'cls', normalize: false },
      },
      undefined,
      { mode: 'cls', normalize: false },
    ],
    [
      "DistilBERT, BF16, the pack's own pooling (max + normalize)",
      { family: 'distilbert', dtype: 'BF16' },
      { mode: 'max', normalize: true },
      { mode: 'max', normalize: true },
    ],
    [
      'RoBERTa without sentence-transformers files: mean + normalize by default',
      { family: 'roberta' },
      undefined,
      { mode: 'mean', normalize: true },
    ],
  ];
  for (const [name, spec, override, pooling] of cases) {
    test(`${name}: embeddings within 1e-4 of the reference, padding in the batch`, async () => {
      const hf = await writeHfFolder(fresh('hf'), spec);
      const pack = await createPack({
        backbone: hf.dir,
        out: fresh('pack'),
        ...(override ? { pooling: override } : {}),
      });
      assert.deepEqual(pack.pooling, pooling);
      const model = await open(pack.dir);
      try {
        const ids = inputs(hf, [9, 3, 14, 1]);
        const results = await model.infer({ inputs: [], tokenIds: ids });
        const want = expected(hf, ids, pooling);
        results.forEach((result, i) => {
          assert.equal(result.tokens, ids[i]!.length);
          assert.deepEqual(result.routing, {});
          assert.deepEqual(result.outputs, {});
          const error = maxAbsDiff(result.embedding, want[i]!);
          assert.ok(error <= 1e-4, `input ${i}: max abs error ${error}`);
        });
        // Texts go through the folder's own tokenizer, special tokens added by its template.
        const [text] = await model.infer({ inputs: ['Das Wetter ist heute gut.'] });
        const ids2 = Array.from(
          (await model.tokenizer.encode('Das Wetter ist heute gut.', 'truncate')).ids,
        );
        assert.ok(maxAbsDiff(text!.embedding, expected(hf, [ids2], pooling)[0]!) <= 1e-4);
      } finally {
        await model.close();
      }
    });
  }

  test('the built graph is cached by content: reused on the next start, rebuilt when weights change', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert' });
    const pack = await createPack({ backbone: hf.dir, out: fresh('pack') });
    assert.equal(pack.backbone.kind, 'huggingface');
    const graphOf = async (loaded: typeof pack) => {
      const graph = await prepareEngineGraph(loaded);
      return { path: String(graph.worker.model), built: graph.built };
    };
    const first = await graphOf(pack);
    assert.equal(first.built, true);
    assert.ok(first.path.startsWith(join(pack.dir, '.cache', 'graph')));
    const { mtimeMs } = await stat(first.path);
    const again = await graphOf(await loadPack(pack.dir));
    assert.deepEqual(again, { path: first.path, built: false });
    assert.equal((await stat(first.path)).mtimeMs, mtimeMs);

    // New weights (same names and shapes): a new key, a new graph, the old one removed.
    const weights = join(pack.dir, 'backbone', 'model.safetensors');
    const bytes = await readFile(weights);
    const last = bytes.byteLength - 1;
    bytes.writeUInt8(bytes.readUInt8(last) ^ 0x40, last);
    await rm(weights); // the pack's file may be a hard link to the source: replace, not edit
    await writeFile(weights, bytes);
    const changed = await graphOf(await loadPack(pack.dir));
    assert.equal(changed.built, true);
    assert.notEqual(changed.path, first.path);
    assert.deepEqual(await readdir(join(pack.dir, '.cache', 'graph')), [
      changed.path.split('/').at(-2)!,
    ]);

    // A cache folder outside the pack (BACKBONE_CACHE_DIR), e.g. for a read-only pack.
    const shared = fresh('cache');
    const model = await open(pack.dir, shared);
    await model.close();
    const [entry] = await readdir(shared);
    assert.match(entry!, new RegExp(`^${pack.manifest.name}-[0-9a-f]{32}$`));
  });

  test('OpenAI embeddings with token ids, through the HTTP app, match the reference', async () => {
    const hf = await writeHfFolder(fresh('hf'), {
      family: 'xlm-roberta',
      sentenceTransformers: { pooling: 'mean', normalize: true },
    });
    const pack = await createPack({ backbone: hf.dir, out: fresh('pack'), name: 'xlmr' });
    const service = await buildTestService({ packDir: pack.dir, adapterRoot: root });
    try {
      const ids = inputs(hf, [6, 11, 2], 3);
      const response = await service.app.inject({
        method: 'POST',
        url: '/v1/embeddings',
        payload: { model: 'xlmr', input: ids, encoding_format: 'float' },
      });
      assert.equal(response.statusCode, 200, response.body);
      const body = response.json() as {
        data: { embedding: number[] }[];
        usage: { prompt_tokens: number };
      };
      assert.equal(body.usage.prompt_tokens, 6 + 11 + 2);
      const want = expected(hf, ids, { mode: 'mean', normalize: true });
      body.data.forEach((item, i) => {
        assert.ok(maxAbsDiff(item.embedding, want[i]!) <= 1e-4);
      });
      const infer = await service.app.inject({
        method: 'POST',
        url: '/v1/infer',
        payload: { inputs: ['Hello there'], return: ['embedding'] },
      });
      assert.equal(infer.statusCode, 200, infer.body);
    } finally {
      await service.close();
    }
  });
});

describe('an ONNX export folder as the backbone', () => {
  /** An export as Optimum writes it: onnx/model.onnx + onnx/model.onnx_data, config, tokenizer. */
  async function exportFolder(hf: HfFolder, quantizedFrom?: HfFolder): Promise<string> {
    const dir = fresh('export');
    await mkdir(join(dir, 'onnx'), { recursive: true });
    const { config, weights } = await readHfModel(hf.dir);
    await writeEncoderModel(join(dir, 'onnx', 'model.onnx'), config, weights, {
      dataFile: 'model.onnx_data',
    });
    if (quantizedFrom) {
      // Stands in for a quantized model: another model, so the test sees which file runs.
      const other = await readHfModel(quantizedFrom.dir);
      await writeEncoderModel(
        join(dir, 'onnx', 'model_quantized.onnx'),
        other.config,
        other.weights,
      );
    }
    for (const file of [
      'config.json',
      'tokenizer.json',
      'tokenizer_config.json',
      'special_tokens_map.json',
    ]) {
      await writeFile(join(dir, file), await readFile(join(hf.dir, file)));
    }
    return dir;
  }

  test('serves model.onnx with its .onnx_data, or model_quantized.onnx when asked', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert', seed: 2 });
    const other = await writeHfFolder(fresh('hf'), { family: 'bert', seed: 3 });
    const dir = await exportFolder(hf, other);
    const ids = inputs(hf, [5, 8]);
    for (const [variant, source] of [
      ['default', hf],
      ['quantized', other],
    ] as const) {
      const pack = await createPack({
        backbone: dir,
        kind: 'onnx-export',
        variant,
        out: fresh('pack'),
      });
      assert.equal(pack.backbone.kind, 'onnx-export');
      assert.equal(pack.hiddenSize, 32);
      assert.equal(pack.maxLength, 40);
      const model = await open(pack.dir);
      try {
        const results = await model.infer({ inputs: [], tokenIds: ids });
        const want = expected(source, ids, { mode: 'mean', normalize: true });
        results.forEach((r, i) => {
          assert.ok(maxAbsDiff(r.embedding, want[i]!) <= 1e-4, variant);
        });
      } finally {
        await model.close();
      }
    }
  });

  test('hosts top-of-backbone groups only: in-layer groups are refused, saying why', async () => {
    const hf = await writeHfFolder(fresh('hf'), { family: 'bert' });
    const pack = await createPack({
      backbone: await exportFolder(hf),
      kind: 'onnx-export',
      out: fresh('pack'),
    });
    const manifestPath = join(pack.dir, MANIFEST_FILE);
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    manifest.groups = [
      {
        id: 'task',
        default_k: 1,
        adapters: [{ id: 'a', path: 'adapters/a' }],
        gate: null,
        placement: 'layers',
      },
    ];
    await writeFile(manifestPath, JSON.stringify(manifest));
    await expectPackError(
      loadPack(pack.dir),
      'PACK_UNSUPPORTED_MODEL',
      manifestPath,
      '/groups/0/placement',
      /ONNX export backbone hosts top-of-backbone adapter groups only/,
    );
  });
});

describe('the manifest backbone section: errors naming manifest.json and the field', () => {
  async function hfPack() {
    const hf = await writeHfFolder(fresh('hf'), { family: 'xlm-roberta', maxPositions: 42 });
    const pack = await createPack({ backbone: hf.dir, out: fresh('pack') });
    const manifestPath = join(pack.dir, MANIFEST_FILE);
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    // biome-ignore lint/suspicious/noExplicitAny: a manifest edited in place by the tests
    const edit = async (change: (m: Record<string, any>) => void) => {
      const copy = structuredClone(manifest);
      change(copy);
      await writeFile(manifestPath, JSON.stringify(copy));
    };
    return { hf, pack, manifestPath, edit };
  }

  test('exactly one kind of backbone; sizes required with an ONNX file', async () => {
    const { pack, manifestPath, edit } = await hfPack();
    await edit((m) => {
      m.backbone.file = 'x.onnx';
    });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone/huggingface',
      /exactly one of/,
    );
    await edit((m) => {
      m.backbone = {};
    });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone',
      /needs one of file/,
    );
    await writeFile(join(pack.dir, 'x.onnx'), '');
    await edit((m) => {
      m.backbone = { file: 'x.onnx', max_length: 8 };
    });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone/hidden_size',
      /required with backbone\.file/,
    );
  });

  test('hidden_size and max_length are checked against the folder', async () => {
    const { pack, manifestPath, edit } = await hfPack();
    await edit((m) => {
      m.backbone.hidden_size = 64;
    });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_SHAPE_MISMATCH',
      manifestPath,
      '/backbone/hidden_size',
      /64 differs from 32/,
    );
    await edit((m) => {
      m.backbone.max_length = 41;
    });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_INVALID_MANIFEST',
      manifestPath,
      '/backbone/max_length',
      /more than the 40 positions/,
    );
    await edit((m) => {
      m.backbone.max_length = 16;
    });
    assert.equal((await loadPack(pack.dir)).maxLength, 16);
  });

  test("a tokenizer with more ids than the backbone's embedding table", async () => {
    const { hf, pack, manifestPath, edit } = await hfPack();
    const big = JSON.parse(await readFile(join(hf.dir, 'tokenizer.json'), 'utf8'));
    big.added_tokens.push({ id: hf.vocabSize + 10, content: '<big>', special: true });
    await writeFile(join(pack.dir, 'big-tokenizer.json'), JSON.stringify(big));
    await edit((m) => {
      m.tokenizer.file = 'big-tokenizer.json';
    });
    await expectPackError(
      loadPack(pack.dir),
      'PACK_VOCAB_MISMATCH',
      join(pack.dir, 'big-tokenizer.json'),
      '/model/vocab',
      /embedding table has \d+ rows/,
    );
    assert.ok(manifestPath);
  });
});

describe('npm run pack -- create, then npm run infer', () => {
  test('makes a pack that the infer command serves; a pickled folder gets the conversion command', async () => {
    const hf = await writeHfFolder(fresh('hf'), {
      family: 'bert',
      sentenceTransformers: { pooling: 'mean', normalize: true },
    });
    const out = fresh('pack');
    const created = await run('node', [
      'dist/src/tools/pack.js',
      'create',
      '--backbone',
      hf.dir,
      '--out',
      out,
    ]);
    assert.equal(created.stdout.trim(), out);
    assert.match(created.stderr, /pack graph: .*model\.onnx/);
    const inferred = await run('node', [
      'dist/src/tools/infer.js',
      '--pack',
      out,
      'The weather is good today.',
    ]);
    const line = JSON.parse(inferred.stdout.trim()) as { embedding: number[]; outputs: object };
    assert.equal(line.embedding.length, 32);
    assert.deepEqual(line.outputs, {});
    assert.ok(Math.abs(Math.hypot(...line.embedding) - 1) < 1e-3);

    const pickled = await writeHfFolder(fresh('hf'), { family: 'bert' });
    await rename(join(pickled.dir, 'model.safetensors'), join(pickled.dir, 'pytorch_model.bin'));
    const failed = await run('node', [
      'dist/src/tools/pack.js',
      'create',
      '--backbone',
      pickled.dir,
      '--out',
      fresh('pack'),
    ]).then(
      () => assert.fail('pack create accepted a pickled folder'),
      (error: { code: number; stderr: string }) => error,
    );
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /PACK_PICKLE_WEIGHTS/);
    assert.match(failed.stderr, /save_pretrained\('.*', safe_serialization=True\)/);
  });
});
