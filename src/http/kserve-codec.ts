/**
 * The KServe v2 codec: the protocol's tensors and parameters to and from our own terms, as pure
 * functions (no fastify, no inference), unit-tested on their own (test/kserve-codec.test.ts).
 *
 *   request   `text` input (BYTES [N] or [N,1], JSON data or binary)  -> texts
 *             parameters (language, task, top_k, adapters, adapter_<group>, exclude, timeout,
 *             binary_data_output, priority)                        -> wire routing + options
 *   answer    InferAnswer -> output tensors, in the metadata's order:
 *               embedding                  FP32  [N,d]   pooled, L2-normalised
 *               routing_<group>_adapters   BYTES [N,k]   adapters mixed, best first ('' pads)
 *               routing_<group>_weights    FP32  [N,k]   their weights (0 pads)
 *               <task>_label               BYTES [N]
 *               <task>_scores              FP32  [N,L]   probabilities, in the label order
 *             -> JSON `data` or binary blobs, per output (`binary_data`) or per request
 *   names     repository model name `<model>:<id>` -> adapter id (checked against ID_PATTERN)
 *
 * Bad input is MoeError INPUT_INVALID naming the field.
 */

import type { AdapterState } from '../adapters/registry.js';
import { MoeError } from '../errors.js';
import type { InferAnswer, ModelDescription } from '../inference/service.js';
import { ID_PATTERN } from '../pack/manifest.js';
import { BinaryReader, decodeBytes, encodeBytes, encodeFloat32 } from './kserve-binary.js';
import type {
  KServeInferBody,
  KServeOutput,
  ModelMetadata,
  Parameters,
  RepositoryEntry,
} from './kserve-schemas.js';
import type { WireRouting } from './wire.js';

/** The one input tensor. */
export const TEXT_INPUT = 'text';

const utf8 = new TextDecoder('utf-8', { fatal: true });

// --- requests ------------------------------------------------------------------------------------

/** The texts of the `text` input, from JSON data or the binary data after the header. */
export function readTexts(inputs: KServeInferBody['inputs'], tail: Buffer | undefined): string[] {
  const reader = new BinaryReader(tail ?? Buffer.alloc(0));
  let texts: string[] | undefined;
  inputs.forEach((input, i) => {
    const field = `inputs[${i}]`;
    const size = input.parameters?.binary_data_size;
    if (size !== undefined && typeof size !== 'number') {
      throw invalid(`${field}.parameters.binary_data_size`, 'must be a number of bytes');
    }
    // Sizes are read for every input, so that the data of the next ones lines up.
    const raw = size === undefined ? undefined : reader.take(size, field);
    if (input.name !== TEXT_INPUT || texts !== undefined) {
      throw new MoeError(
        'INPUT_INVALID',
        `${field} is '${input.name}'; this model takes one input, '${TEXT_INPUT}' (BYTES, shape [N] or [N,1]).`,
        { field: `${field}.name` },
      );
    }
    if (input.datatype !== 'BYTES') {
      throw new MoeError(
        'INPUT_INVALID',
        `${field} ('${TEXT_INPUT}') has datatype ${input.datatype}; send BYTES (UTF-8 texts).`,
        { field: `${field}.datatype` },
      );
    }
    const [rows, columns = 1, ...more] = input.shape;
    if (rows === undefined || columns !== 1 || more.length > 0) {
      throw new MoeError(
        'INPUT_INVALID',
        `${field} has shape [${input.shape.join(',')}]; send [N] or [N,1] for N texts.`,
        { field: `${field}.shape` },
      );
    }
    for (const key of Object.keys(input.parameters ?? {})) {
      if (key !== 'binary_data_size') {
        throw new MoeError(
          'INPUT_INVALID',
          `${field}.parameters.${key} is not supported (shared memory is not); send the data in the body.`,
          { field: `${field}.parameters.${key}` },
        );
      }
    }
    const values = raw === undefined ? jsonTexts(input, field) : binaryTexts(input, raw, field);
    if (values.length !== rows) {
      throw new MoeError(
        'INPUT_INVALID',
        `${field} has shape [${input.shape.join(',')}] but ${values.length} elements.`,
        { field: `${field}.shape` },
      );
    }
    texts = values;
  });
  reader.finish();
  return texts ?? [];
}

function binaryTexts(input: KServeInferBody['inputs'][number], raw: Buffer, field: string) {
  if (input.data !== undefined) {
    throw new MoeError('INPUT_INVALID', `${field} has both data and binary_data_size; send one.`, {
      field: `${field}.data`,
    });
  }
  return decodeBytes(raw, field).map((bytes, j) => {
    try {
      return utf8.decode(bytes);
    } catch {
      throw new MoeError('INPUT_INVALID', `${field} element ${j} is not valid UTF-8.`, { field });
    }
  });
}

function jsonTexts(input: KServeInferBody['inputs'][number], field: string): string[] {
  if (input.data === undefined) {
    throw new MoeError('INPUT_INVALID', `${field} has neither data nor binary_data_size.`, {
      field: `${field}.data`,
    });
  }
  return (input.data as unknown[]).flat(Number.POSITIVE_INFINITY).map((value, j) => {
    if (typeof value !== 'string') {
      throw new MoeError('INPUT_INVALID', `${field}.data[${j}] must be a string (BYTES).`, {
        field: `${field}.data`,
      });
    }
    return value;
  });
}

/** What the request parameters ask for. */
export interface KServeWishes {
  /** In the wire's own spelling, for the one mapping to InferRequest (wire.ts). */
  readonly routing: WireRouting;
  readonly binaryOutput: boolean | undefined;
  /** From `timeout` (µs); the configured REQUEST_TIMEOUT_MS caps it. */
  readonly timeoutMs: number | undefined;
}

export const PARAMETERS = [
  'language',
  'task',
  'top_k',
  'adapters',
  'adapter_<group>',
  'exclude',
  'binary_data_output',
  'timeout',
  'priority',
];

/** Request parameters -> routing wishes and answer options; unknown names are a 400. */
export function readParameters(parameters: Parameters): KServeWishes {
  const adapters: Record<string, string> = {};
  const routing: { -readonly [K in keyof WireRouting]: WireRouting[K] } = {};
  let binaryOutput: boolean | undefined;
  let timeoutMs: number | undefined;
  for (const [key, value] of Object.entries(parameters)) {
    const field = `parameters.${key}`;
    if (key === 'language' || key === 'task') {
      routing[key] = text(value, field);
    } else if (key === 'top_k') {
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
        throw invalid(field, 'must be an integer >= 1');
      }
      routing.top_k = value;
    } else if (key === 'adapters') {
      const parsed = json(text(value, field), field);
      if (
        typeof parsed !== 'object' ||
        parsed === null ||
        Array.isArray(parsed) ||
        !Object.values(parsed).every((v) => typeof v === 'string')
      ) {
        throw invalid(field, 'must be a JSON object string: {"<group>": "<adapter>"}');
      }
      Object.assign(adapters, parsed);
    } else if (key.startsWith('adapter_')) {
      adapters[key.slice('adapter_'.length)] = text(value, field);
    } else if (key === 'exclude') {
      const raw = text(value, field).trim();
      const list = raw.startsWith('[') ? json(raw, field) : raw.split(',').map((s) => s.trim());
      if (!Array.isArray(list) || !list.every((v) => typeof v === 'string' && v.length > 0)) {
        throw invalid(field, 'must be adapter ids, comma-separated or as a JSON array string');
      }
      routing.exclude = list as string[];
    } else if (key === 'binary_data_output') {
      if (typeof value !== 'boolean') throw invalid(field, 'must be a boolean');
      binaryOutput = value;
    } else if (key === 'timeout') {
      if (typeof value !== 'number' || !(value > 0)) throw invalid(field, 'must be > 0 (µs)');
      timeoutMs = value / 1000;
    } else if (key !== 'priority') {
      throw new MoeError(
        'INPUT_INVALID',
        `Unknown parameter '${key}'; this model takes: ${PARAMETERS.join(', ')}.`,
        { field, choices: PARAMETERS },
      );
    }
  }
  if (Object.keys(adapters).length > 0) routing.adapters = adapters;
  return { routing, binaryOutput, timeoutMs };
}

function text(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0) throw invalid(field, 'must be a string');
  return value;
}

function json(value: string, field: string): unknown {
  try {
    return JSON.parse(value);
  } catch {
    throw invalid(field, 'is not valid JSON');
  }
}

function invalid(field: string, what: string): MoeError {
  return new MoeError('INPUT_INVALID', `${field} ${what}.`, { field });
}

// --- answers -------------------------------------------------------------------------------------

export interface Tensor {
  readonly name: string;
  readonly datatype: 'FP32' | 'BYTES';
  readonly shape: number[];
  /** Row-major. */
  readonly data: ArrayLike<number> | string[];
}

/** Every output of the model, described for the metadata route (-1: depends on the request). */
export function modelMetadata(model: ModelDescription, name: string): ModelMetadata {
  const outputs = [
    { name: 'embedding', datatype: 'FP32', shape: [-1, model.hiddenSize] },
    ...model.groups.flatMap((group) => [
      { name: `routing_${group.id}_adapters`, datatype: 'BYTES', shape: [-1, -1] },
      { name: `routing_${group.id}_weights`, datatype: 'FP32', shape: [-1, -1] },
    ]),
    ...model.tasks.flatMap((task) => [
      { name: `${task.id}_label`, datatype: 'BYTES', shape: [-1] },
      { name: `${task.id}_scores`, datatype: 'FP32', shape: [-1, task.labels.length] },
    ]),
  ];
  return {
    name,
    versions: [model.version],
    platform: 'moe-serve',
    inputs: [{ name: TEXT_INPUT, datatype: 'BYTES', shape: [-1] }],
    outputs,
  };
}

/** The answer as tensors, in the metadata's order (tasks: those the answer has). */
export function outputTensors(model: ModelDescription, answer: InferAnswer): Tensor[] {
  const results = answer.results;
  const n = results.length;
  const d = model.hiddenSize;
  const embedding = new Float32Array(n * d);
  results.forEach((result, i) => {
    embedding.set(result.embedding, i * d);
  });
  const tensors: Tensor[] = [
    { name: 'embedding', datatype: 'FP32', shape: [n, d], data: embedding },
  ];
  for (const group of model.groups) {
    const rows = results.map((result) => result.routing[group.id] ?? []);
    const k = Math.max(0, ...rows.map((row) => row.length));
    const adapters: string[] = [];
    const weights = new Float32Array(n * k);
    rows.forEach((row, i) => {
      for (let j = 0; j < k; j++) {
        adapters.push(row[j]?.adapter ?? '');
        weights[i * k + j] = row[j]?.weight ?? 0;
      }
    });
    tensors.push(
      { name: `routing_${group.id}_adapters`, datatype: 'BYTES', shape: [n, k], data: adapters },
      { name: `routing_${group.id}_weights`, datatype: 'FP32', shape: [n, k], data: weights },
    );
  }
  for (const task of model.tasks) {
    if (n === 0 || results[0]!.outputs[task.id] === undefined) continue;
    const labels = task.labels;
    const scores = new Float32Array(n * labels.length);
    results.forEach((result, i) => {
      const out = result.outputs[task.id]!;
      labels.forEach((label, j) => {
        scores[i * labels.length + j] = out.scores[label] ?? 0;
      });
    });
    tensors.push(
      {
        name: `${task.id}_label`,
        datatype: 'BYTES',
        shape: [n],
        data: results.map((r) => r.outputs[task.id]!.label),
      },
      { name: `${task.id}_scores`, datatype: 'FP32', shape: [n, labels.length], data: scores },
    );
  }
  return tensors;
}

/**
 * The requested outputs (all when none are named), each as JSON data or, when binary, as a blob
 * (in order) that its `binary_data_size` announces. An output is binary by its own `binary_data`
 * parameter, else by the request's `binary_data_output`, else not.
 */
export function encodeOutputs(
  tensors: readonly Tensor[],
  requested: KServeInferBody['outputs'],
  binaryDefault: boolean | undefined,
): { outputs: KServeOutput[]; blobs: Buffer[] } {
  const blobs: Buffer[] = [];
  const outputs = selectOutputs(tensors, requested).map(({ tensor, binary }) => {
    const head = { name: tensor.name, datatype: tensor.datatype, shape: tensor.shape };
    if (!(binary ?? binaryDefault === true)) {
      return { ...head, data: Array.from<number | string>(tensor.data) };
    }
    const blob =
      tensor.datatype === 'BYTES'
        ? encodeBytes(tensor.data as string[])
        : encodeFloat32(tensor.data as ArrayLike<number>);
    blobs.push(blob);
    return { ...head, parameters: { binary_data_size: blob.length } };
  });
  return { outputs, blobs };
}

/** The named outputs with their own binary choice (undefined: the request's default). */
function selectOutputs(
  tensors: readonly Tensor[],
  requested: KServeInferBody['outputs'],
): { tensor: Tensor; binary: boolean | undefined }[] {
  if (requested === undefined || requested.length === 0) {
    return tensors.map((tensor) => ({ tensor, binary: undefined }));
  }
  return requested.map((output, i) => {
    const tensor = tensors.find((t) => t.name === output.name);
    if (tensor === undefined) {
      throw new MoeError(
        'INPUT_INVALID',
        `outputs[${i}] is '${output.name}', which this answer does not have; choose from: ${tensors.map((t) => t.name).join(', ')}.`,
        { field: `outputs[${i}].name`, choices: tensors.map((t) => t.name) },
      );
    }
    let binary: boolean | undefined;
    for (const [key, value] of Object.entries(output.parameters ?? {})) {
      if (key !== 'binary_data' || typeof value !== 'boolean') {
        throw invalid(
          `outputs[${i}].parameters.${key}`,
          'is not supported; outputs take binary_data (boolean) only',
        );
      }
      binary = value;
    }
    return { tensor, binary };
  });
}

// --- the model repository ------------------------------------------------------------------------

export const REPOSITORY_STATE: Record<AdapterState, RepositoryEntry['state']> = {
  ready: 'READY',
  loading: 'LOADING',
  unloading: 'UNLOADING',
  failed: 'UNAVAILABLE',
};

const ADAPTER_ID = new RegExp(ID_PATTERN);

/**
 * The adapter a repository model name stands for (`<model>:<id>`, or a bare `<id>`); undefined:
 * the base model. The id follows the same rules as everywhere (ID_PATTERN), so that no route
 * registers an adapter, or a metric label, under an arbitrary string.
 */
export function adapterOf(model: ModelDescription, name: string): string | undefined {
  if (name === model.id) return undefined;
  const id = name.startsWith(`${model.id}:`) ? name.slice(model.id.length + 1) : name;
  if (id.includes('+')) {
    throw new MoeError(
      'INPUT_INVALID',
      `'${name}' names several adapters; load and unload them one at a time ('${model.id}:<adapter>').`,
      { field: 'name' },
    );
  }
  if (!ADAPTER_ID.test(id)) {
    throw new MoeError(
      'INPUT_INVALID',
      `'${id.slice(0, 80)}' is not a valid adapter id: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (${ID_PATTERN}).`,
      { field: 'name' },
    );
  }
  return id;
}
