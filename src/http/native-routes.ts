/**
 * The native REST API: /v1/infer, /v1/models, /v1/adapters. Handlers translate between the wire
 * format (snake_case, plain number arrays) and the `Inference` interface. Limits, the deadline,
 * client-gone and server-timing are handled once for every route family by the request pipeline
 * (pipeline.ts, hooks); errors by the one error handler and request metrics by an onResponse
 * hook (app.ts); admin routes authenticate in onRequest, before the body is read (admin-auth.ts).
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { AdapterInfo as RegistryAdapter } from '../adapters/registry.js';
import { guardUnload } from '../compositions/composition.js';
import {
  type ModelTarget,
  requestComposition,
  resolveCompositionName,
  servedBy,
} from '../compositions/model-ids.js';
import type { CompositionStore } from '../compositions/store.js';
import type { InferRequest } from '../inference/model.js';
import type { InferAnswer, Inference } from '../inference/service.js';
import { adminGuard, insideRoot } from './admin-auth.js';
import { ModelList } from './composition-schemas.js';
import { modelList } from './model-cards.js';
import {
  AdapterIdParams,
  AdapterInfo,
  AdapterList,
  ErrorBody,
  InferBody,
  InferResponse,
  LoadAdapterBody,
} from './schemas.js';
import { nativeInputs, toInferRequest } from './wire.js';

export interface NativeRouteOptions {
  readonly inference: Inference;
  readonly compositions: CompositionStore;
  readonly adminApiKey: string | undefined;
  readonly adapterRoot: string;
  /** Unix seconds when the model was loaded (the OpenAI-style `created`). */
  readonly createdAt: number;
}

const errors = {
  400: ErrorBody,
  401: ErrorBody,
  403: ErrorBody,
  404: ErrorBody,
  409: ErrorBody,
  413: ErrorBody,
  415: ErrorBody,
  422: ErrorBody,
  429: ErrorBody,
  500: ErrorBody,
  503: ErrorBody,
  504: ErrorBody,
};

export async function nativeRoutes(
  app: FastifyInstance,
  options: NativeRouteOptions,
): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();
  const { inference } = options;
  const admin = adminGuard(options.adminApiKey);

  api.post(
    '/v1/infer',
    {
      config: { inference: true },
      schema: {
        summary: 'Run texts through the model; every result shows how it was routed.',
        tags: ['inference'],
        body: InferBody,
        response: { 200: InferResponse, ...errors },
      },
    },
    async (request) => {
      const body = request.body;
      const { inferRequest, target } = await nativeRequest(inference, options.compositions, body);
      const answer = await request.infer(inferRequest);
      return inferResponseBody(answer, body.return ?? [], servedBy(target));
    },
  );

  api.get(
    '/v1/models',
    {
      schema: {
        summary:
          "The model served (groups, adapters, tasks), then its named compositions '<model>:<name>', then '<model>:<adapter>' per adapter (OpenAI list form).",
        tags: ['models'],
        response: { 200: ModelList },
      },
    },
    async () => modelList(inference.describe(), options.compositions, options.createdAt),
  );

  api.get(
    '/v1/adapters',
    {
      schema: {
        summary: 'Every adapter: group, rank, state and when it was loaded.',
        tags: ['adapters'],
        response: { 200: AdapterList },
      },
    },
    async () => ({ object: 'list' as const, data: inference.adapters().map(adapterJson) }),
  );

  api.post(
    '/v1/adapters',
    {
      onRequest: admin,
      schema: {
        summary: 'Load (or replace) an adapter from a folder in the pack adapter format. Admin.',
        tags: ['adapters'],
        security: [{ bearerAuth: [] }],
        body: LoadAdapterBody,
        response: { 200: AdapterInfo, ...errors },
      },
    },
    async (request) => {
      const folder = insideRoot(options.adapterRoot, request.body.path);
      const { id, group } = request.body;
      return adapterJson(
        await inference.loadAdapter(folder, {
          ...(id === undefined ? {} : { id }),
          ...(group === undefined ? {} : { group }),
        }),
      );
    },
  );

  api.delete(
    '/v1/adapters/:id',
    {
      onRequest: admin,
      schema: {
        summary:
          'Unload an adapter (or clear a failed load). 409 while named compositions use it, unless force=true. Admin.',
        tags: ['adapters'],
        security: [{ bearerAuth: [] }],
        params: AdapterIdParams,
        querystring: ForceQuery,
        response: {
          200: Type.Object({
            id: Type.String(),
            deleted: Type.Literal(true),
            broken_compositions: Type.Optional(
              Type.Array(Type.String(), {
                description:
                  'With force: the compositions that used the adapter; kept, they answer 422 COMPOSITION_BROKEN until it is loaded again.',
              }),
            ),
          }),
          ...errors,
        },
      },
    },
    async (request) => {
      const id = request.params.id;
      const affected = guardUnload(options.compositions.list(), id, request.query.force === 'true');
      await inference.unloadAdapter(id);
      return {
        id,
        deleted: true as const,
        ...(affected.length === 0 ? {} : { broken_compositions: affected }),
      };
    },
  );
}

/**
 * The native body as an InferRequest, with its `composition` resolved against the store (also
 * for POST /v1/jobs); `target` says which composition it is, for the answer.
 */
export async function nativeRequest(
  inference: Inference,
  store: CompositionStore,
  body: InferBody,
): Promise<{ inferRequest: InferRequest; target: ModelTarget | undefined }> {
  if (body.composition === undefined) {
    return { inferRequest: toInferRequest(nativeInputs(body.inputs), body), target: undefined };
  }
  const model = inference.describe();
  const target = await resolveCompositionName(model, store, body.composition);
  return {
    inferRequest: toInferRequest(
      nativeInputs(body.inputs),
      body,
      requestComposition(target, model),
    ),
    target,
  };
}

/** `?force=true` of the unload routes. */
export const ForceQuery = Type.Object({
  force: Type.Optional(
    Type.Union([Type.Literal('true'), Type.Literal('false')], {
      description:
        'true: unload even while named compositions use the adapter (they are kept and answer 422 COMPOSITION_BROKEN until it is loaded again).',
    }),
  ),
});

/** The wire form of an answer (also the `result` of a finished job at GET /v1/jobs/{id}). */
export function inferResponseBody(
  answer: InferAnswer,
  returnFields: readonly ('embedding' | 'scores')[],
  composition?: { readonly name: string; readonly version: number },
): InferResponse {
  const wants = new Set(returnFields);
  return {
    model: answer.model,
    results: answer.results.map((result) => ({
      routing: Object.fromEntries(
        Object.entries(result.routing).map(([group, chosen]) => [group, [...chosen]]),
      ),
      outputs: Object.fromEntries(
        Object.entries(result.outputs).map(([task, out]) => [
          task,
          wants.has('scores')
            ? { label: out.label, score: out.score, scores: { ...out.scores } }
            : { label: out.label, score: out.score },
        ]),
      ),
      ...(wants.has('embedding') ? { embedding: Array.from(result.embedding) } : {}),
      tokens: result.tokens,
      truncated: result.truncated,
    })),
    usage: { input_tokens: answer.inputTokens },
    ...(composition === undefined ? {} : { composition: { ...composition } }),
  };
}

function adapterJson(info: RegistryAdapter) {
  return {
    id: info.id,
    group: info.group,
    type: info.type,
    rank: info.rank,
    ...(info.activation === undefined ? {} : { activation: info.activation }),
    state: info.state,
    loaded_at: info.loadedAt?.toISOString() ?? null,
    source: info.source,
    gated: info.gated,
    ...(info.error === undefined ? {} : { error: info.error }),
    ...(info.notes.length === 0 ? {} : { notes: [...info.notes] }),
  };
}
