/**
 * KServe v2 / Open Inference Protocol over REST, for tritonclient, the KServe SDK and anything else
 * that speaks it: health, server and model metadata, inference (JSON or the binary tensor data
 * extension), and the model repository extension mapped onto adapter load and unload.
 * https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md
 *
 * Model names are the ids of compositions/model-ids.ts: `<model>` (learned routing),
 * `<model>:<name>` (a named composition; the answer's parameters name it and its version) and
 * `<model>:<adapter>[+<adapter>...]` (those adapters pinned). The repository index lists the base
 * model, the named compositions and one `<model>:<adapter>` per adapter; loading `<model>:<id>`
 * with `{"parameters": {"path": "<folder inside ADAPTER_ROOT>"}}` loads that adapter as `<id>`;
 * unloading it is refused while named compositions use it, unless `{"parameters": {"force": true}}`
 * or `?force=true`.
 *
 * This file is the routes only: the schemas are in kserve-schemas.ts, the body parsers (binary
 * extension, no content-type) in kserve-body.ts, and the tensors and parameters in
 * kserve-codec.ts. Limits, deadline, client-gone and server-timing come from the request
 * pipeline (pipeline.ts), as for every family. Errors are `{"error": "message"}`: the routes say
 * `errorFormat: 'kserve'` and the one error handler writes them (with retry-after on 429 and 503).
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { guardUnload } from '../compositions/composition.js';
import {
  namedModelId,
  pinnedModelId,
  requestComposition,
  resolveModelId,
  servedBy,
} from '../compositions/model-ids.js';
import type { CompositionStore } from '../compositions/store.js';
import { MoeError } from '../errors.js';
import type { Inference } from '../inference/service.js';
import { adminGuard, insideRoot } from './admin-auth.js';
import type { JsonBodyParser } from './json-body.js';
import { HEADER_LENGTH, joinBody } from './kserve-binary.js';
import { installKServeBodyParsers } from './kserve-body.js';
import {
  adapterOf,
  encodeOutputs,
  modelMetadata,
  outputTensors,
  REPOSITORY_STATE,
  readParameters,
  readTexts,
  TEXT_INPUT,
} from './kserve-codec.js';
import {
  KServeErrors as errors,
  KServeInferBody,
  KServeInferResponse,
  ModelMetadata,
  NameParams,
  RepositoryEntry,
  RepositoryIndexBody,
  RepositoryLoadBody,
  RepositoryUnloadBody,
} from './kserve-schemas.js';
import { ForceQuery } from './native-routes.js';
import { toInferRequest } from './wire.js';

export interface KServeRouteOptions {
  readonly inference: Inference;
  readonly compositions: CompositionStore;
  /** The app's JSON parser (large bodies off the HTTP thread), for the JSON header of a body. */
  readonly parseJson: JsonBodyParser;
  readonly adminApiKey: string | undefined;
  readonly adapterRoot: string;
  /** Server version for GET /v2. */
  readonly version: string;
}

export const EXTENSIONS = ['binary_tensor_data', 'model_repository'] as const;

/** KServe error bodies; our `inputs` is the protocol's `text` tensor in messages. */
const KSERVE_ROUTE = { errorFormat: 'kserve', errorFields: { inputs: TEXT_INPUT } } as const;

export async function kserveRoutes(
  app: FastifyInstance,
  options: KServeRouteOptions,
): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();
  const { inference, compositions } = options;
  const admin = adminGuard(options.adminApiKey);
  const tails = installKServeBodyParsers(app, options.parseJson);

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
      const target = await resolveModelId(model, compositions, request.params.name, 'name');
      return modelMetadata(model, target.id);
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
      const model = inference.describe();
      const target = await resolveModelId(model, compositions, request.params.name, 'name');
      const ready = inference.readiness().ready;
      if (!ready) reply.code(503).header('retry-after', '1');
      return { name: target.id, ready };
    },
  );

  api.post(
    '/v2/models/:name/infer',
    {
      config: { ...KSERVE_ROUTE, inference: true },
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
              'application/json': { schema: KServeInferResponse },
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
      const target = await resolveModelId(model, compositions, request.params.name, 'name');
      const texts = readTexts(body.inputs, tails.get(request));
      const wishes = readParameters(body.parameters ?? {});
      const answer = await request.infer(
        toInferRequest({ texts }, wishes.routing, requestComposition(target, model)),
        { timeoutMs: wishes.timeoutMs },
      );
      const served = servedBy(target);
      const { outputs, blobs } = encodeOutputs(
        outputTensors(model, answer),
        body.outputs,
        wishes.binaryOutput,
      );
      const header = {
        model_name: target.id,
        model_version: model.version,
        ...(body.id === undefined ? {} : { id: body.id }),
        ...(served === undefined
          ? {}
          : { parameters: { composition: served.name, composition_version: served.version } }),
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
        summary:
          'The base model, the named compositions `<model>:<name>`, and one `<model>:<adapter>` per adapter, with its state.',
        tags: ['kserve'],
        body: RepositoryIndexBody,
        response: { 200: Type.Array(RepositoryEntry), ...errors },
      },
    },
    async (request) => {
      const model = inference.describe();
      const entries: RepositoryEntry[] = [
        { name: model.id, version: model.version, state: 'READY' },
        ...compositions.list().map((c) => ({
          name: namedModelId(model.id, c.name),
          version: String(c.version),
          state: 'READY' as const,
        })),
        ...inference.adapters().map((adapter) => ({
          name: pinnedModelId(model.id, [adapter.id]),
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
      onRequest: admin,
      schema: {
        summary:
          "Load (or reload) adapter <id> as model '<model>:<id>' from parameters.path. Admin.",
        tags: ['kserve'],
        security: [{ bearerAuth: [] }],
        params: NameParams,
        body: RepositoryLoadBody,
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
        await inference.loadAdapter(insideRoot(options.adapterRoot, path, 'parameters.path'), {
          id,
        });
      } else if (existing !== undefined && existing.source !== 'pack') {
        await inference.loadAdapter(existing.source, { id, group: existing.group });
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
      onRequest: admin,
      schema: {
        summary:
          "Unload the adapter of '<model>:<id>'; refused (409) while named compositions use it, unless force (query force=true or parameters.force). Admin.",
        tags: ['kserve'],
        security: [{ bearerAuth: [] }],
        params: NameParams,
        querystring: ForceQuery,
        body: RepositoryUnloadBody,
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
      const force = request.query.force === 'true' || request.body?.parameters?.force === true;
      guardUnload(compositions.list(), id, force);
      await inference.unloadAdapter(id);
      return { name, unload: true as const };
    },
  );
}
