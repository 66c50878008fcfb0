/**
 * The Hugging Face folder reader (src/pack/hf-model.ts, hf-tokenizer.ts) on folders the tests
 * generate with Hugging Face's layout: what it reads, and a clear PackError naming the file and
 * the field or tensor for every bad folder.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { PackError, type PackErrorCode } from '../src/pack/errors.js';
import { inspectHfFolder, readHfModel } from '../src/pack/hf-model.js';
import { type HfFolderSpec, writeHfFolder } from './support/hf-folder.js';

const root = await mkdtemp(join(tmpdir(), 'hf-model-test-'));
after(() => rm(root, { recursive: true, force: true }));
let count = 0;
const make = (spec: HfFolderSpec) => writeHfFolder(join(root, `m${count++}`), spec);

async function expectPackError(
  promise: Promise<unknown>,
  expected: { code: PackErrorCode; file: string; field?: string; message?: RegExp },
): Promise<PackError> {
  let caught: unknown;
  await promise.then(
    () => assert.fail(`expected ${expected.code}, but it loaded`),
    (error: unknown) => {
      caught = error;
    },
  );
  assert.ok(caught instanceof PackError, `expected a PackError, got ${String(caught)}`);
  assert.equal(caught.code, expected.code, caught.message);
  assert.equal(caught.file, expected.file);
  if (expected.field !== undefined) assert.equal(caught.field, expected.field);
  assert.ok(caught.message.startsWith(`${expected.file}: `), caught.message);
  if (expected.message) assert.match(caught.message, expected.message);
  return caught;
}

// biome-ignore lint/suspicious/noExplicitAny: JSON documents edited in place by the tests
type Json = Record<string, any>;

/** Edit a safetensors file's JSON header in place (same data section). */
async function editHeader(path: string, edit: (header: Json) => void) {
  const bytes = await readFile(path);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8'));
  edit(header);
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  await writeFile(path, Buffer.concat([head, Buffer.from(text), bytes.subarray(8 + length)]));
}

async function editJson(path: string, edit: (json: Json) => void) {
  const json = JSON.parse(await readFile(path, 'utf8'));
  edit(json);
  await writeFile(path, JSON.stringify(json));
}

describe('reading Hugging Face folders', () => {
  test('BERT: config, positions, token type row 0, tokenizer and length limits', async () => {
    const hf = await make({ family: 'bert', maxPositions: 40 });
    const { info, config, weights } = await readHfModel(hf.dir);
    assert.deepEqual(config, {
      family: 'bert',
      vocabSize: hf.vocabSize + 3,
      hiddenSize: 32,
      layers: 2,
      heads: 2,
      intermediateSize: 64,
      hiddenAct: 'gelu',
      layerNormEps: 1e-12,
      maxPositions: 40,
      padTokenId: 0,
      positions: 'absolute',
    });
    assert.equal(info.maxLength, 40);
    assert.equal(info.tokenizer?.vocabSize, hf.vocabSize);
    assert.equal(info.tokenizer?.specialTokens.cls_token?.id, 2);
    assert.equal(info.sentenceTransformers, undefined);
    assert.deepEqual(
      Array.from(weights.tokenType0!),
      Array.from(hf.tensors.get('embeddings.token_type_embeddings.weight')!.data.subarray(0, 32)),
    );
    // Math layout: the query weight is PyTorch's [out,in] transposed.
    const torch = hf.tensors.get('encoder.layer.1.attention.self.query.weight')!.data;
    assert.equal(weights.layers[1]!.query.weight[3 * 32 + 5], torch[5 * 32 + 3]);
  });

  test('XLM-R: positions after padding_idx, so 2 fewer usable positions', async () => {
    const hf = await make({ family: 'xlm-roberta', maxPositions: 42 });
    const info = await inspectHfFolder(hf.dir);
    assert.equal(info.config.positions, 'after-padding');
    assert.equal(info.config.padTokenId, 1);
    assert.equal(info.config.layerNormEps, 1e-5);
    assert.equal(info.maxLength, 40);
  });

  test('DistilBERT names (dim, n_layers, n_heads, hidden_dim, activation), no token types', async () => {
    const hf = await make({ family: 'distilbert', hiddenAct: 'relu', layers: 3 });
    const { config, weights } = await readHfModel(hf.dir);
    assert.equal(config.family, 'distilbert');
    assert.equal(config.layers, 3);
    assert.equal(config.hiddenAct, 'relu');
    assert.equal(weights.tokenType0, undefined);
  });

  test('the same weights with or without a prefix, in one file or shards, F32 or F16', async () => {
    const spec = { family: 'roberta', seed: 4, dtype: 'F16' } as const;
    const plain = await readHfModel((await make(spec)).dir);
    const prefixed = await readHfModel((await make({ ...spec, prefix: true })).dir);
    const sharded = await make({ ...spec, shards: 4 });
    const shards = await readHfModel(sharded.dir);
    assert.equal(shards.info.weightFiles.length, 4);
    assert.deepEqual(prefixed.weights, plain.weights);
    assert.deepEqual(shards.weights, plain.weights);
    // F16 values as stored, widened exactly.
    const stored = sharded.tensors.get('encoder.layer.0.output.dense.bias')!.data;
    assert.deepEqual(Array.from(shards.weights.layers[0]!.output.bias), Array.from(stored));
  });

  test('sentence-transformers pooling, Normalize and max_seq_length', async () => {
    const hf = await make({
      family: 'bert',
      sentenceTransformers: { pooling: 'cls', normalize: true, maxSeqLength: 24 },
    });
    const info = await inspectHfFolder(hf.dir);
    assert.deepEqual(info.sentenceTransformers?.pooling, { mode: 'cls', normalize: true });
    assert.equal(info.maxLength, 24);
    const noNorm = await make({
      family: 'bert',
      sentenceTransformers: { pooling: 'max', normalize: false },
    });
    assert.deepEqual((await inspectHfFolder(noNorm.dir)).sentenceTransformers?.pooling, {
      mode: 'max',
      normalize: false,
    });
  });
});

describe('bad folders: clear errors naming the file and the field or tensor', () => {
  test('a missing folder, a missing config.json, broken JSON', async () => {
    await expectPackError(inspectHfFolder(join(root, 'nope')), {
      code: 'PACK_FILE_MISSING',
      file: join(root, 'nope'),
      message: /model folder not found/,
    });
    const hf = await make({ family: 'bert' });
    const config = join(hf.dir, 'config.json');
    await writeFile(config, '{"model_type": "bert",');
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_INVALID_CONFIG',
      file: config,
      message: /not valid JSON/,
    });
    await rm(config);
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_FILE_MISSING',
      file: config,
      message: /needs config\.json/,
    });
  });

  test('an unsupported model_type lists the supported ones', async () => {
    const hf = await make({ family: 'bert' });
    await editJson(join(hf.dir, 'config.json'), (c) => {
      c.model_type = 'gpt2';
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_MODEL',
      file: join(hf.dir, 'config.json'),
      field: '/model_type',
      message:
        /"gpt2" is not supported; supported model types: bert, roberta, xlm-roberta, distilbert/,
    });
  });

  test('an unsupported activation or position embedding type', async () => {
    const hf = await make({ family: 'bert' });
    const config = join(hf.dir, 'config.json');
    await editJson(config, (c) => {
      c.hidden_act = 'mish';
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_MODEL',
      file: config,
      field: '/hidden_act',
      message: /"mish" is not supported; supported: gelu, gelu_new/,
    });
    await editJson(config, (c) => {
      c.hidden_act = 'gelu';
      c.position_embedding_type = 'relative_key';
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_MODEL',
      file: config,
      field: '/position_embedding_type',
    });
  });

  test('an unsupported dtype names the tensor', async () => {
    const hf = await make({ family: 'bert' });
    const weights = join(hf.dir, 'model.safetensors');
    // I32 has F32's size: the file stays well formed, only the dtype is wrong.
    await editHeader(weights, (h) => {
      h['encoder.layer.0.output.dense.bias'].dtype = 'I32';
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_DTYPE',
      file: weights,
      field: 'encoder.layer.0.output.dense.bias',
      message: /dtype I32 is not supported; weights must be F32, F16, BF16/,
    });
  });

  test('a shape that disagrees with config.json names the tensor and both shapes', async () => {
    const hf = await make({ family: 'bert' });
    await editJson(join(hf.dir, 'config.json'), (c) => {
      c.intermediate_size = 80;
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: join(hf.dir, 'model.safetensors'),
      field: 'encoder.layer.0.intermediate.dense.weight',
      message:
        /shape \[64,32\] disagrees with .*config\.json, which implies \[80,32\] \(intermediate_size x hidden_size\)/,
    });
    const more = await make({ family: 'distilbert', layers: 3 });
    await editJson(join(more.dir, 'config.json'), (c) => {
      c.n_layers = 2;
    });
    await expectPackError(inspectHfFolder(more.dir), {
      code: 'PACK_SHAPE_MISMATCH',
      file: join(more.dir, 'model.safetensors'),
      message: /the checkpoint has layer 2, but .* says 2 layers \(n_layers\)/,
    });
  });

  test('a missing tensor is named, with the prefix the checkpoint uses', async () => {
    const hf = await make({ family: 'roberta', prefix: true });
    const weights = join(hf.dir, 'model.safetensors');
    await editHeader(weights, (h) => {
      h['roberta.encoder.layer.1.attention.self.value.weight_renamed'] =
        h['roberta.encoder.layer.1.attention.self.value.weight'];
      delete h['roberta.encoder.layer.1.attention.self.value.weight'];
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_MISSING_TENSOR',
      file: weights,
      field: 'roberta.encoder.layer.1.attention.self.value.weight',
      message: /tensor not found in the checkpoint; a roberta model needs it/,
    });
  });

  test('a shard the index names is missing', async () => {
    const hf = await make({ family: 'bert', shards: 2 });
    const shard = join(hf.dir, 'model-00002-of-00002.safetensors');
    await rm(shard);
    const error = await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_FILE_MISSING',
      file: join(hf.dir, 'model.safetensors.index.json'),
      message: /model-00002-of-00002\.safetensors not found/,
    });
    assert.match(error.field, /^\/weight_map\//);
  });

  test('only a pickled pytorch_model.bin: safetensors required, with the conversion command', async () => {
    const hf = await make({ family: 'bert' });
    await rename(join(hf.dir, 'model.safetensors'), join(hf.dir, 'pytorch_model.bin'));
    const error = await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_PICKLE_WEIGHTS',
      file: join(hf.dir, 'pytorch_model.bin'),
      message: /safetensors \(model\.safetensors\) are required/,
    });
    assert.ok(
      error.message.includes(
        `python -c "from transformers import AutoModel; AutoModel.from_pretrained('${hf.dir}').save_pretrained('${hf.dir}', safe_serialization=True)"`,
      ),
    );
  });

  test('a tokenizer with more ids than the embedding table has rows', async () => {
    const hf = await make({ family: 'bert', vocabPadding: 0 });
    const rows = hf.vocabSize;
    const tokenizer = join(hf.dir, 'tokenizer.json');
    await editJson(tokenizer, (t) => {
      t.added_tokens.push({ id: rows + 1, content: '<extra>', special: true });
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_VOCAB_MISMATCH',
      file: tokenizer,
      field: '/model/vocab',
      message: new RegExp(`${rows + 2} token ids but the model's embedding table has ${rows} rows`),
    });
  });

  test('a special token that is not in the vocabulary', async () => {
    const hf = await make({ family: 'bert' });
    const file = join(hf.dir, 'tokenizer_config.json');
    await editJson(file, (c) => {
      c.pad_token = '<pad>';
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_INVALID_CONFIG',
      file,
      field: '/pad_token',
      message: /special token "<pad>" is not in/,
    });
  });

  test('sentence-transformers modules and pooling modes that cannot be reproduced', async () => {
    const hf = await make({
      family: 'bert',
      sentenceTransformers: { pooling: 'mean', normalize: true },
    });
    const modules = join(hf.dir, 'modules.json');
    const json = JSON.parse(await readFile(modules, 'utf8'));
    json.splice(2, 0, {
      idx: 2,
      name: '2',
      path: '2_Dense',
      type: 'sentence_transformers.models.Dense',
    });
    await writeFile(modules, JSON.stringify(json));
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_MODEL',
      file: modules,
      field: '/2/type',
      message: /sentence_transformers\.models\.Dense is not supported/,
    });
    json.splice(2, 1);
    await writeFile(modules, JSON.stringify(json));
    const pooling = join(hf.dir, '1_Pooling', 'config.json');
    await editJson(pooling, (c) => {
      c.pooling_mode_mean_tokens = false;
      c.pooling_mode_lasttoken = true;
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_MODEL',
      file: pooling,
      field: '/pooling_mode_lasttoken',
      message: /not supported; supported: mean, cls, max/,
    });
    await editJson(pooling, (c) => {
      c.pooling_mode_lasttoken = false;
      c.pooling_mode_mean_tokens = true;
      c.pooling_mode_cls_token = true;
    });
    await expectPackError(inspectHfFolder(hf.dir), {
      code: 'PACK_UNSUPPORTED_MODEL',
      file: pooling,
      message: /several pooling modes are set .*concatenated poolings are not supported/,
    });
  });
});
