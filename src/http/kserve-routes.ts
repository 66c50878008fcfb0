/**
 * KServe v2 / Open Inference Protocol over REST, for tritonclient, the KServe SDK and anything else
 * that speaks it: health, server and model metadata, inference (JSON or the binary tensor data
 * extension), and the model repository extension mapped onto adapter load and unload.
 * https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md
 *
 * Model names are the ids of compositions.ts: `<model>` (learned routing) and
 * `<model>:<adapter>[+<adapter>...]` (those adapters pinned). The repository index lists the base
 * model and one `<model>:<adapter>` per adapter; loading `<model>:<id>` with
 * `{"parameters": {"path": "<folder inside ADAPTER_ROOT>"}}` loads that adapter as `<id>`.
 *
 * One BYTES input `text` [N] (or [N,1]). Outputs, for N inputs:
 *   embedding                  FP32  [N,d]   pooled, L2-normalised
 *   routing_<group>_adapters   BYTES [N,k]   adapters mixed, best first ('' pads shorter rows)
 *   routing_<group>_weights    FP32  [N,k]   their weights (0 pads)
 *   <task>_label               BYTES [N]
 *   <task>_scores              FP32  [N,L]   probabilities, in the label order of the metadata
 * Request parameters steer routing as /v1/infer does: `language`, `task`, `top_k` (number),
 * `adapters` (JSON object string) or `adapter_<group>`, `exclude` (comma-separated or a JSON array
 * string); `timeout` (microseconds) shortens the deadline; `priority` is accepted and ignored.
 *
 * Errors are `{"error": "message"}`: the routes say `errorFormat: 'kserve'` and the one error
 * handler writes them (with retry-after on 429 and 503, as everywhere).
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { type Static, Type } from 'typebox';
import { MoeError } from '../errors.js';
import type { InferRequest } from '../inference/model.js';
import type { InferAnswer, Inference, ModelDescription } from '../inference/service.js';
import { adminGuard } from './admin-auth.js';
import { applyComposition, compositionId, resolveComposition } from './compositions.js';
import {
  BinaryReader,
  decodeBytes,
  encodeBytes,
  encodeFloat32,
  HEADER_LENGTH,
  joinBody,
  splitBody,
} from './kserve-binary.js';
import {
  checkLimits,
  clientGone,
  insideRoot,
  type RouteLimits,
  serverTiming,
} from './native-routes.js';
import { Dict } from './schemas.js';

export interface KServeRouteOptions {
  readonly inference: Inference;
  readonly limits: RouteLimits;
  readonly adminApiKey: string | undefined;
  readonly adapterRoot: string;
  /** Server version for GET /v2. */
  readonly version: string;
}

/** The one input tensor. */
export const TEXT_INPUT = 'text';
export const EXTENSIONS = ['binary_tensor_data', 'model_repository'] as const;

const KSERVE_ROUTE = { errorFormat: 'kserve' } as const;

// --- schemas --------------------------------------------------------------------------------------

export const KServeErrorBody = Type.Object(
  { error: Type.String({ description: 'What went wrong and what to change.' }) },
  { description: 'Every error answer of the KServe v2 routes.' },
);

const errors = Object.fromEntries(
  [400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503, 504].map((s) => [s, KServeErrorBody]),
);

const Parameters = Dict(Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
  description: 'Name -> string, number or boolean.',
});

const NameParams = Type.Object({
  name: Type.String({ description: "'<model>' or '<model>:<adapter>[+<adapter>...]'." }),
});

const TensorMetadata = Type.Object({
  name: Type.String(),
  datatype: Type.String(),
  shape: Type.Array(Type.Integer(), { description: '-1: any size.' }),
});

const ModelMetadata = Type.Object({
  name: Type.String(),
  versions: Type.Array(Type.String()),
  platform: Type.String(),
  inputs: Type.Array(TensorMetadata),
  outputs: Type.Array(TensorMetadata),
});

export const KServeInferBody = Type.Object(
  {
    id: Type.Optional(Type.String({ description: 'Echoed in the answer.' })),
    parameters: Type.Optional(Parameters),
    inputs: Type.Array(
      Type.Object(
        {
          name: Type.String(),
          shape: Type.Array(Type.Integer({ minimum: 0 })),
          datatype: Type.String(),
          parameters: Type.Optional(Parameters),
          data: Type.Optional(
            Type.Array(Type.Unknown(), { description: 'Row-major, flat or nested.' }),
          ),
        },
        { additionalProperties: false },
      ),
      { minItems: 1 },
    ),
    outputs: Type.Optional(
      Type.Array(
        Type.Object(
          { name: Type.String(), parameters: Type.Optional(Parameters) },
          { additionalProperties: false },
        ),
        { description: 'Outputs to return (default: all); `binary_data: true` per output.' },
      ),
    ),
  },
  {
    additionalProperties: false,
    description:
      'With the binary tensor data extension this JSON is the first Inference-Header-Content-Length bytes of the body; the tensor data follows.',
  },
);
type KServeInferBody = Static<typeof KServeInferBody>;

const InferResponse = Type.Object({
  model_name: Type.String(),
  model_version: Type.String(),
  id: Type.Optional(Type.String()),
  outputs: Type.Array(
    Type.Object({
      name: Type.String(),
      datatype: Type.String(),
      shape: Type.Array(Type.Integer()),
      parameters: Type.Optional(Parameters),
      data: Type.Optional(
        Type.Array(Type.Unknown(), {
          description: 'Row-major, flat: numbers for FP32, strings for BYTES.',
        }),
      ),
    }),
  ),
});

const RepositoryEntry = Type.Object({
  name: Type.String(),
  version: Type.Optional(Type.String()),
  state: Type.Union([
    Type.Literal('READY'),
    Type.Literal('LOADING'),
    Type.Literal('UNLOADING'),
    Type.Literal('UNAVAILABLE'),
  ]),
  reason: Type.Optional(Type.String()),
});

// --- routes ---------------------------------------------------------------------------------------

export async function kserveRoutes(
  app: FastifyInstance,
  options: KServeRouteOptions,
): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();
  const { inference, limits } = options;
  const admin = adminGuard(options.adminApiKey);
  /** The binary data after the JSON header of a request (binary tensor data extension). */
  const tails = new WeakMap<FastifyRequest, Buffer>();
  installBodyParsers(app, tails);

  api.get(
    '/v2/health/live',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary: 'The process is up.',
        tags: ['kserve'],
        response: { 200: Type.Object({ live: Type.Boolean() }) },
      },
    },
    async () => ({ live: true }),
  );

  api.get(
    '/v2/health/ready',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary: 'Ready for inference (503 otherwise).',
        tags: ['kserve'],
        response: {
          200: Type.Object({ ready: Type.Boolean() }),
          503: Type.Object({ ready: Type.Boolean() }),
        },
      },
    },
    async (_request, reply) => {
      const ready = inference.readiness().ready;
      if (!ready) reply.code(503).header('retry-after', '1');
      return { ready };
    },
  );

  api.get(
    '/v2',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary: 'Server metadata and the protocol extensions it supports.',
        tags: ['kserve'],
        response: {
          200: Type.Object({
            name: Type.String(),
            version: Type.String(),
            extensions: Type.Array(Type.String()),
          }),
        },
      },
    },
    async () => ({ name: 'moe-serve', version: options.version, extensions: [...EXTENSIONS] }),
  );

  api.get(
    '/v2/models/:name',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary: 'Model metadata: the text input and every output tensor.',
        tags: ['kserve'],
        params: NameParams,
        response: { 200: ModelMetadata, ...errors },
      },
    },
    async (request) => {
      const model = inference.describe();
      const composition = resolveComposition(model, request.params.name, 'name');
      return modelMetadata(model, composition.id);
    },
  );

  api.get(
    '/v2/models/:name/ready',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary: 'The model (or composition) can answer now (503 otherwise).',
        tags: ['kserve'],
        params: NameParams,
        response: {
          ...errors,
          200: Type.Object({ name: Type.String(), ready: Type.Boolean() }),
          503: Type.Object({ name: Type.String(), ready: Type.Boolean() }),
        },
      },
    },
    async (request, reply) => {
      const composition = resolveComposition(inference.describe(), request.params.name, 'name');
      const ready = inference.readiness().ready;
      if (!ready) reply.code(503).header('retry-after', '1');
      return { name: composition.id, ready };
    },
  );

  api.post(
    '/v2/models/:name/infer',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary:
          'Run texts (BYTES input `text`); answers embedding, routing and task tensors, as JSON or binary.',
        tags: ['kserve'],
        consumes: ['application/json', 'application/octet-stream'],
        params: NameParams,
        headers: Type.Object({
          [HEADER_LENGTH]: Type.Optional(
            Type.String({
              pattern: '^[0-9]+$',
              description: 'Binary extension: byte length of the JSON header.',
            }),
          ),
        }),
        body: KServeInferBody,
        response: {
          ...errors,
          200: {
            description:
              'JSON; or, when an output is binary, the JSON header (Inference-Header-Content-Length bytes) followed by the binary outputs.',
            content: {
              'application/json': { schema: InferResponse },
              'application/octet-stream': {
                schema: Type.Unsafe<Buffer>({ type: 'string', format: 'binary' }),
              },
            },
          },
        },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const model = inference.describe();
      const composition = resolveComposition(model, request.params.name, 'name');
      const texts = readTexts(body.inputs, tails.get(request));
      checkLimits(texts, limits, TEXT_INPUT);
      const wishes = readParameters(body.parameters ?? {});
      const timeoutMs = wishes.timeoutMs ?? limits.requestTimeoutMs;
      const answer = await inference.infer(
        applyComposition({ inputs: texts, ...wishes.routing }, composition),
        {
          deadline: performance.now() + Math.min(timeoutMs, limits.requestTimeoutMs),
          signal: clientGone(request, reply),
        },
      );
      reply.header('server-timing', serverTiming(answer));
      const tensors = selectOutputs(outputTensors(model, answer), body.outputs);
      const blobs: Buffer[] = [];
      const outputs = tensors.map(({ tensor, binary }) => {
        const head = { name: tensor.name, datatype: tensor.datatype, shape: tensor.shape };
        if (!binary(wishes.binaryOutput)) {
          return { ...head, data: Array.from<number | string>(tensor.data) };
        }
        const blob =
          tensor.datatype === 'BYTES'
            ? encodeBytes(tensor.data as string[])
            : encodeFloat32(tensor.data as ArrayLike<number>);
        blobs.push(blob);
        return { ...head, parameters: { binary_data_size: blob.length } };
      });
      const header = {
        model_name: composition.id,
        model_version: model.version,
        ...(body.id === undefined ? {} : { id: body.id }),
        outputs,
      };
      if (blobs.length === 0) return header;
      const { body: bytes, headerLength } = joinBody(header, blobs);
      return reply
        .header(HEADER_LENGTH, String(headerLength))
        .type('application/octet-stream')
        .send(bytes);
    },
  );

  api.post(
    '/v2/repository/index',
    {
      config: KSERVE_ROUTE,
      schema: {
        summary: 'The base model and one `<model>:<adapter>` per adapter, with its state.',
        tags: ['kserve'],
        body: Type.Object(
          {
            ready: Type.Optional(Type.Boolean({ description: 'Only models that are READY.' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Array(RepositoryEntry), ...errors },
      },
    },
    async (request) => {
      const model = inference.describe();
      const entries: Static<typeof RepositoryEntry>[] = [
        { name: model.id, version: model.version, state: 'READY' },
        ...inference.adapters().map((adapter) => ({
          name: compositionId(model.id, [adapter.id]),
          state: REPOSITORY_STATE[adapter.state],
          ...(adapter.error === undefined ? {} : { reason: adapter.error }),
        })),
      ];
      return request.body.ready ? entries.filter((e) => e.state === 'READY') : entries;
    },
  );

  api.post(
    '/v2/repository/models/:name/load',
    {
      config: KSERVE_ROUTE,
      preHandler: admin,
      schema: {
        summary:
          "Load (or reload) adapter <id> as model '<model>:<id>' from parameters.path. Admin.",
        tags: ['kserve'],
        security: [{ bearerAuth: [] }],
        params: NameParams,
        body: Type.Object(
          {
            parameters: Type.Optional(
              Type.Object(
                {
                  path: Type.Optional(
                    Type.String({
                      minLength: 1,
                      description:
                        'Adapter folder (adapter_config.json + adapter.safetensors) inside ADAPTER_ROOT. Needed unless the adapter was loaded from a folder before.',
                    }),
                  ),
                },
                { additionalProperties: false },
              ),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ name: Type.String(), load: Type.Literal(true) }),
          ...errors,
        },
      },
    },
    async (request) => {
      const model = inference.describe();
      const name = request.params.name;
      const id = adapterOf(model, name);
      const path = request.body.parameters?.path;
      if (id === undefined) {
        if (path !== undefined) {
          throw new MoeError(
            'INPUT_INVALID',
            `'${name}' is the base model, loaded from its pack; load adapters as '${model.id}:<adapter>'.`,
            { field: 'parameters.path' },
          );
        }
        return { name, load: true as const };
      }
      const existing = inference.adapters().find((a) => a.id === id);
      if (path !== undefined) {
        await inference.loadAdapter(insideRoot(options.adapterRoot, path, 'parameters.path'), id);
      } else if (existing !== undefined && existing.source !== 'pack') {
        await inference.loadAdapter(existing.source, id);
      } else if (existing?.state !== 'ready') {
        throw new MoeError(
          'INPUT_INVALID',
          `To load '${name}', send {"parameters": {"path": "<adapter folder inside ADAPTER_ROOT>"}}.`,
          { field: 'parameters.path' },
        );
      }
      return { name, load: true as const };
    },
  );

  api.post(
    '/v2/repository/models/:name/unload',
    {
      config: KSERVE_ROUTE,
      preHandler: admin,
      schema: {
        summary: "Unload the adapter of '<model>:<id>'. Admin.",
        tags: ['kserve'],
        security: [{ bearerAuth: [] }],
        params: NameParams,
        body: Type.Object(
          {
            parameters: Type.Optional(
              Type.Object(
                {
                  unload_dependents: Type.Optional(
                    Type.Boolean({ description: 'Accepted; adapters have no dependents.' }),
                  ),
                },
                { additionalProperties: false },
              ),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ name: Type.String(), unload: Type.Literal(true) }),
          ...errors,
        },
      },
    },
    async (request) => {
      const model = inference.describe();
      const name = request.params.name;
      const id = adapterOf(model, name);
      if (id === undefined) {
        throw new MoeError(
          'INPUT_INVALID',
          `The base model '${name}' cannot be unloaded; unload its adapters ('${model.id}:<adapter>').`,
          { field: 'name' },
        );
      }
      await inference.unloadAdapter(id);
      return { name, unload: true as const };
    },
  );
}

// --- bodies ---------------------------------------------------------------------------------------

/**
 * Body parsing for this plugin only (parsers are encapsulated): JSON as usual, the binary
 * extension (a JSON header of Inference-Header-Content-Length bytes, then tensor data) under
 * application/octet-stream or application/json, and bodies with no content-type at all (what
 * tritonclient sends) read the same way. An empty body is an empty JSON object, since
 * tritonclient posts the repository index with none. Other content types stay a 415.
 */
function installBodyParsers(app: FastifyInstance, tails: WeakMap<FastifyRequest, Buffer>): void {
  const parseJson = app.getDefaultJsonParser('error', 'ignore');
  const parse = (request: FastifyRequest, raw: Buffer): Promise<unknown> => {
    const length = request.headers[HEADER_LENGTH];
    const { header, tail } = splitBody(raw, Array.isArray(length) ? length[0] : length);
    if (tail.length > 0) tails.set(request, tail);
    if (header.length === 0) return Promise.resolve({});
    return new Promise((resolve, reject) => {
      parseJson(request, header.toString('utf8'), (error, value) =>
        error ? reject(error) : resolve(value),
      );
    });
  };
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser(
    ['application/json', 'application/octet-stream'],
    { parseAs: 'buffer' },
    async (request: FastifyRequest, body: Buffer | string) => parse(request, body as Buffer),
  );
  app.addContentTypeParser(
    '*',
    { parseAs: 'buffer' },
    async (request: FastifyRequest, body: Buffer | string) => {
      const type = request.headers['content-type'];
      if (type !== undefined) {
        throw new MoeError(
          'INPUT_UNSUPPORTED_MEDIA_TYPE',
          `content-type '${type}' is not accepted here; send application/json, or application/octet-stream with Inference-Header-Content-Length.`,
        );
      }
      return parse(request, body as Buffer);
    },
  );
  app.addHook('preValidation', async (request) => {
    if (request.body === undefined && request.method === 'POST') request.body = {};
  });
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The texts of the `text` input, from JSON data or the binary data after the header. */
function readTexts(inputs: KServeInferBody['inputs'], tail: Buffer | undefined): string[] {
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
    let values: string[];
    if (raw !== undefined) {
      if (input.data !== undefined) {
        throw new MoeError(
          'INPUT_INVALID',
          `${field} has both data and binary_data_size; send one.`,
          { field: `${field}.data` },
        );
      }
      values = decodeBytes(raw, field).map((bytes, j) => {
        try {
          return utf8.decode(bytes);
        } catch {
          throw new MoeError('INPUT_INVALID', `${field} element ${j} is not valid UTF-8.`, {
            field,
          });
        }
      });
    } else {
      if (input.data === undefined) {
        throw new MoeError('INPUT_INVALID', `${field} has neither data nor binary_data_size.`, {
          field: `${field}.data`,
        });
      }
      const flat = (input.data as unknown[]).flat(Number.POSITIVE_INFINITY);
      values = flat.map((value, j) => {
        if (typeof value !== 'string') {
          throw new MoeError('INPUT_INVALID', `${field}.data[${j}] must be a string (BYTES).`, {
            field: `${field}.data`,
          });
        }
        return value;
      });
    }
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

interface Wishes {
  readonly routing: Omit<InferRequest, 'inputs'>;
  readonly binaryOutput: boolean | undefined;
  readonly timeoutMs: number | undefined;
}

const PARAMETERS = [
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
function readParameters(parameters: Record<string, string | number | boolean>): Wishes {
  const adapters: Record<string, string> = {};
  const routing: { -readonly [K in keyof Omit<InferRequest, 'inputs'>]: InferRequest[K] } = {};
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
      routing.topK = value;
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

// --- tensors --------------------------------------------------------------------------------------

interface Tensor {
  readonly name: string;
  readonly datatype: 'FP32' | 'BYTES';
  readonly shape: number[];
  /** Row-major. */
  readonly data: ArrayLike<number> | string[];
}

/** Every output of the model, described for the metadata route (-1: depends on the request). */
function modelMetadata(model: ModelDescription, name: string) {
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
function outputTensors(model: ModelDescription, answer: InferAnswer): Tensor[] {
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
 * The requested outputs (all when none are named), each with its binary choice: the output's own
 * `binary_data` parameter, else the request's `binary_data_output`, else JSON.
 */
function selectOutputs(
  tensors: Tensor[],
  requested: KServeInferBody['outputs'],
): { tensor: Tensor; binary: (requestDefault: boolean | undefined) => boolean }[] {
  if (requested === undefined || requested.length === 0) {
    return tensors.map((tensor) => ({ tensor, binary: (all) => all === true }));
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
    let own: boolean | undefined;
    for (const [key, value] of Object.entries(output.parameters ?? {})) {
      if (key !== 'binary_data' || typeof value !== 'boolean') {
        throw invalid(
          `outputs[${i}].parameters.${key}`,
          'is not supported; outputs take binary_data (boolean) only',
        );
      }
      own = value;
    }
    return { tensor, binary: (all) => own ?? all === true };
  });
}

const REPOSITORY_STATE = {
  ready: 'READY',
  loading: 'LOADING',
  unloading: 'UNLOADING',
  failed: 'UNAVAILABLE',
} as const;

/** The adapter a repository model name stands for; undefined: the base model. */
function adapterOf(model: ModelDescription, name: string): string | undefined {
  if (name === model.id) return undefined;
  const id = name.startsWith(`${model.id}:`) ? name.slice(model.id.length + 1) : name;
  if (id.includes('+') || id.length === 0) {
    throw new MoeError(
      'INPUT_INVALID',
      `'${name}' names several adapters; load and unload them one at a time ('${model.id}:<adapter>').`,
      { field: 'name' },
    );
  }
  return id;
}
