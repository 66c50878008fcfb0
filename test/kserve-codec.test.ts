/**
 * The KServe v2 codec on its own: request tensors and parameters in, routing wishes and texts
 * out; answers in, output tensors (JSON data or binary blobs) out; repository names to adapter
 * ids. Pure functions, checked against values written out by hand from the protocol.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MoeError } from '../src/errors.js';
import { decodeBytes, decodeFloat32, encodeBytes } from '../src/http/kserve-binary.js';
import {
  adapterOf,
  encodeOutputs,
  modelMetadata,
  outputTensors,
  readParameters,
  readTexts,
} from '../src/http/kserve-codec.js';
import type { InferAnswer, ModelDescription } from '../src/inference/service.js';

const MODEL: ModelDescription = {
  id: 'demo',
  version: '1.2.3',
  description: '',
  hiddenSize: 2,
  maxLength: 16,
  groups: [
    { id: 'language', gated: true, defaultK: 1, adapters: ['en', 'de', 'fr'] },
    { id: 'task', gated: false, defaultK: 1, adapters: ['topic'] },
  ],
  tasks: [
    { id: 'topic', labels: ['a', 'b', 'c'], pin: { group: 'task', adapter: 'topic' } },
    { id: 'mood', labels: ['sad', 'glad'], pin: undefined },
  ],
};

/** Two inputs: the first mixes two language adapters, the second one; only `topic` answered. */
const ANSWER: InferAnswer = {
  model: 'demo',
  inputTokens: 9,
  timings: { tokenizeMs: 0, queueMs: 0, forwardMs: 0 },
  results: [
    {
      routing: {
        language: [
          { adapter: 'de', weight: 0.75 },
          { adapter: 'en', weight: 0.25 },
        ],
        task: [{ adapter: 'topic', weight: 1 }],
      },
      outputs: { topic: { label: 'b', score: 0.5, scores: { a: 0.25, b: 0.5, c: 0.25 } } },
      embedding: Float32Array.of(0.6, 0.8),
      tokens: 5,
      truncated: false,
    },
    {
      routing: {
        language: [{ adapter: 'fr', weight: 1 }],
        task: [{ adapter: 'topic', weight: 1 }],
      },
      outputs: { topic: { label: 'c', score: 1, scores: { a: 0, b: 0, c: 1 } } },
      embedding: Float32Array.of(1, 0),
      tokens: 4,
      truncated: false,
    },
  ],
};

function invalid(fn: () => unknown, field: string | RegExp, message?: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof MoeError, String(error));
    assert.equal(error.code, 'INPUT_INVALID');
    if (typeof field === 'string') assert.equal(error.details?.field, field);
    else assert.match(String(error.details?.field), field);
    if (message !== undefined) assert.match(error.message, message);
    return true;
  });
}

const text = (data: unknown[], shape = [data.length]) => ({
  name: 'text',
  datatype: 'BYTES',
  shape,
  data,
});

describe('readTexts', () => {
  it('takes JSON data, flat or nested as [N,1], and binary data after the header', () => {
    assert.deepEqual(readTexts([text(['a', 'b'])], undefined), ['a', 'b']);
    assert.deepEqual(readTexts([text([['a'], ['b']], [2, 1])], undefined), ['a', 'b']);
    const blob = encodeBytes(['héllo', 'wörld']);
    const binary = {
      name: 'text',
      datatype: 'BYTES',
      shape: [2],
      parameters: { binary_data_size: blob.length },
    };
    assert.deepEqual(readTexts([binary], blob), ['héllo', 'wörld']);
  });

  it('names what is wrong: input name, datatype, shape, element count, data kind, leftovers', () => {
    invalid(() => readTexts([{ ...text(['a']), name: 'x' }], undefined), 'inputs[0].name');
    invalid(() => readTexts([text(['a']), text(['b'])], undefined), 'inputs[1].name');
    invalid(
      () => readTexts([{ ...text(['a']), datatype: 'FP32' }], undefined),
      'inputs[0].datatype',
    );
    invalid(() => readTexts([text(['a'], [1, 2])], undefined), 'inputs[0].shape');
    invalid(() => readTexts([text(['a', 'b'], [3])], undefined), 'inputs[0].shape', /3\] but 2/);
    invalid(() => readTexts([text([1])], undefined), 'inputs[0].data', /must be a string/);
    invalid(
      () => readTexts([{ name: 'text', datatype: 'BYTES', shape: [1] }], undefined),
      'inputs[0].data',
    );
    const blob = encodeBytes(['a']);
    invalid(
      () =>
        readTexts(
          [{ ...text(['a']), parameters: { binary_data_size: blob.length } }],
          Buffer.concat([blob, Buffer.from([0])]),
        ),
      'inputs[0].data',
    );
    invalid(
      () =>
        readTexts(
          [
            {
              name: 'text',
              datatype: 'BYTES',
              shape: [1],
              parameters: { binary_data_size: blob.length },
            },
          ],
          Buffer.concat([blob, Buffer.from([0])]),
        ),
      'inputs',
      /1 bytes of binary data/,
    );
    invalid(
      () => readTexts([{ ...text(['a']), parameters: { shared_memory_region: 'r' } }], undefined),
      'inputs[0].parameters.shared_memory_region',
    );
    const bad = Buffer.from([1, 0, 0, 0, 0xff]);
    invalid(
      () =>
        readTexts(
          [
            {
              name: 'text',
              datatype: 'BYTES',
              shape: [1],
              parameters: { binary_data_size: bad.length },
            },
          ],
          bad,
        ),
      'inputs[0]',
      /not valid UTF-8/,
    );
  });
});

describe('readParameters', () => {
  it('maps routing parameters to the wire routing fields, and answer options apart', () => {
    assert.deepEqual(
      readParameters({
        language: 'de',
        task: 'topic',
        top_k: 2,
        adapters: '{"task": "topic"}',
        adapter_style: 'formal',
        exclude: 'en, fr',
        binary_data_output: true,
        timeout: 2500,
        priority: 3,
      }),
      {
        routing: {
          language: 'de',
          task: 'topic',
          top_k: 2,
          adapters: { task: 'topic', style: 'formal' },
          exclude: ['en', 'fr'],
        },
        binaryOutput: true,
        timeoutMs: 2.5,
      },
    );
    assert.deepEqual(readParameters({ exclude: '["en"]' }).routing, { exclude: ['en'] });
    assert.deepEqual(readParameters({}), {
      routing: {},
      binaryOutput: undefined,
      timeoutMs: undefined,
    });
  });

  it('refuses bad values and unknown names, naming the parameter', () => {
    invalid(() => readParameters({ top_k: 0 }), 'parameters.top_k');
    invalid(() => readParameters({ top_k: '2' }), 'parameters.top_k');
    invalid(() => readParameters({ adapters: '["en"]' }), 'parameters.adapters');
    invalid(() => readParameters({ adapters: '{' }), 'parameters.adapters', /not valid JSON/);
    invalid(() => readParameters({ exclude: '[1]' }), 'parameters.exclude');
    invalid(() => readParameters({ language: '' }), 'parameters.language');
    invalid(() => readParameters({ binary_data_output: 'yes' }), 'parameters.binary_data_output');
    invalid(() => readParameters({ timeout: 0 }), 'parameters.timeout');
    invalid(() => readParameters({ temperature: 1 }), 'parameters.temperature', /takes: language/);
  });
});

describe('answers as tensors', () => {
  it('describes every output in the metadata, in order', () => {
    const metadata = modelMetadata(MODEL, 'demo:de');
    assert.equal(metadata.name, 'demo:de');
    assert.deepEqual(metadata.versions, ['1.2.3']);
    assert.deepEqual(metadata.inputs, [{ name: 'text', datatype: 'BYTES', shape: [-1] }]);
    assert.deepEqual(
      metadata.outputs.map((o) => `${o.name} ${o.datatype} [${o.shape.join(',')}]`),
      [
        'embedding FP32 [-1,2]',
        'routing_language_adapters BYTES [-1,-1]',
        'routing_language_weights FP32 [-1,-1]',
        'routing_task_adapters BYTES [-1,-1]',
        'routing_task_weights FP32 [-1,-1]',
        'topic_label BYTES [-1]',
        'topic_scores FP32 [-1,3]',
        'mood_label BYTES [-1]',
        'mood_scores FP32 [-1,2]',
      ],
    );
  });

  it('writes the answer row-major, padding shorter routing rows, tasks the answer has', () => {
    const { outputs, blobs } = encodeOutputs(outputTensors(MODEL, ANSWER), undefined, undefined);
    assert.deepEqual(blobs, []);
    const byName = Object.fromEntries(outputs.map((o) => [o.name, o]));
    assert.deepEqual(Object.keys(byName), [
      'embedding',
      'routing_language_adapters',
      'routing_language_weights',
      'routing_task_adapters',
      'routing_task_weights',
      'topic_label',
      'topic_scores',
    ]);
    const round = (xs: unknown[] | undefined) => xs!.map((x) => Math.round(Number(x) * 1e6) / 1e6);
    assert.deepEqual(byName.embedding!.shape, [2, 2]);
    assert.deepEqual(round(byName.embedding!.data), [0.6, 0.8, 1, 0]);
    assert.deepEqual(byName.routing_language_adapters!.shape, [2, 2]);
    assert.deepEqual(byName.routing_language_adapters!.data, ['de', 'en', 'fr', '']);
    assert.deepEqual(byName.routing_language_weights!.data, [0.75, 0.25, 1, 0]);
    assert.deepEqual(byName.routing_task_adapters!.shape, [2, 1]);
    assert.deepEqual(byName.topic_label!.data, ['b', 'c']);
    assert.deepEqual(byName.topic_scores!.shape, [2, 3]);
    assert.deepEqual(byName.topic_scores!.data, [0.25, 0.5, 0.25, 0, 0, 1]);
  });

  it('returns the outputs asked for, binary by their own flag or the request default', () => {
    const tensors = outputTensors(MODEL, ANSWER);
    const { outputs, blobs } = encodeOutputs(
      tensors,
      [
        { name: 'topic_label', parameters: { binary_data: true } },
        { name: 'embedding' },
        { name: 'routing_language_weights', parameters: { binary_data: false } },
      ],
      true,
    );
    assert.deepEqual(
      outputs.map((o) => o.name),
      ['topic_label', 'embedding', 'routing_language_weights'],
    );
    assert.equal(blobs.length, 2);
    assert.deepEqual(outputs[0]!.parameters, { binary_data_size: blobs[0]!.length });
    assert.deepEqual(
      decodeBytes(blobs[0]!, 'x').map((b) => b.toString()),
      ['b', 'c'],
    );
    assert.deepEqual(outputs[1]!.parameters, { binary_data_size: 16 });
    assert.deepEqual(
      Array.from(decodeFloat32(blobs[1]!, 'x')).map((x) => Math.round(x * 1e6) / 1e6),
      [0.6, 0.8, 1, 0],
    );
    assert.equal(outputs[1]!.data, undefined);
    assert.deepEqual(outputs[2]!.data, [0.75, 0.25, 1, 0]);
    invalid(
      () => encodeOutputs(tensors, [{ name: 'mood_label' }], undefined),
      'outputs[0].name',
      /does not have; choose from: embedding/,
    );
    invalid(
      () =>
        encodeOutputs(
          tensors,
          [{ name: 'embedding', parameters: { classification: 2 } }],
          undefined,
        ),
      'outputs[0].parameters.classification',
    );
  });
});

describe('adapterOf', () => {
  it('the base model is no adapter; <model>:<id> and a bare id are that adapter', () => {
    assert.equal(adapterOf(MODEL, 'demo'), undefined);
    assert.equal(adapterOf(MODEL, 'demo:de'), 'de');
    assert.equal(adapterOf(MODEL, 'legal-v2.1_x'), 'legal-v2.1_x');
  });

  it('refuses several adapters and ids outside the adapter id rules', () => {
    invalid(() => adapterOf(MODEL, 'demo:de+topic'), 'name', /several adapters/);
    for (const bad of [
      'demo:',
      'demo:-x',
      'demo:a b',
      'demo:a/b',
      `demo:${'a'.repeat(65)}`,
      'demo:é',
    ]) {
      invalid(() => adapterOf(MODEL, bad), 'name', /not a valid adapter id/);
    }
    assert.equal(adapterOf(MODEL, `demo:${'a'.repeat(64)}`), 'a'.repeat(64));
  });
});
