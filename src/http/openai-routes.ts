/**
 * OpenAI-compatible routes, for clients that already speak the OpenAI API (the official `openai`
 * packages, LangChain, LlamaIndex): POST /v1/embeddings and GET /v1/models/{id}. GET /v1/models
 * is the native listing, already in OpenAI's list form.
 *
 * - Routing from an OpenAI client: a `model` id that names a named composition
 *   (`<model>:<name>`) or pins adapters (`<model>:<adapter>`, see compositions/model-ids.ts),
 *   and/or the extra body field `routing` (what /v1/infer takes); the official clients pass
 *   unknown body fields through. A named composition is shown in the answer's `composition`.
 * - Embeddings are the native ones (pooled, L2-normalised); `dimensions` keeps the first n values
 *   and renormalises them (Matryoshka-style truncation, as OpenAI's text-embedding-3 models do).
 * - `encoding_format: "base64"` (what openai-node asks for by default) is little-endian float32.
 * - Errors: `{error: {message, type, param, code}}`, written by the one error handler because the
 *   routes say `errorFormat: 'openai'`; `code` is our stable catalogue code.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { type Static, Type } from 'typebox';
import { requestComposition, resolveModelId, servedBy } from '../compositions/model-ids.js';
import type { CompositionStore } from '../compositions/store.js';
import { MoeError } from '../errors.js';
import type { Inference } from '../inference/service.js';
import { AnyModelCard } from './composition-schemas.js';
import { encodeFloat32 } from './kserve-binary.js';
import { cardOf } from './model-cards.js';
import { RoutingFields, ServedBy } from './schemas.js';
import { toInferRequest } from './wire.js';

export interface OpenAIRouteOptions {
  readonly inference: Inference;
  readonly compositions: CompositionStore;
  /** Unix seconds when the model was loaded (the `created` of the model cards). */
  readonly createdAt: number;
}

/** Route config: OpenAI error bodies, with our field names spelled as this API spells them. */
const OPENAI_ROUTE = {
  errorFormat: 'openai',
  errorFields: {
    inputs: 'input',
    task: 'routing.task',
    language: 'routing.language',
    adapters: 'routing.adapters',
    exclude: 'routing.exclude',
    top_k: 'routing.top_k',
  },
} as const;

export const OpenAIErrorBody = Type.Object(
  {
    error: Type.Object({
      message: Type.String({ description: 'What went wrong and what to change.' }),
      type: Type.String({ description: "'invalid_request_error' (4xx) or 'server_error' (5xx)." }),
      param: Type.Union([Type.String(), Type.Null()], {
        description: 'The request field at fault, if one is.',
      }),
      code: Type.String({ description: 'Stable error code, e.g. MODEL_NOT_FOUND.' }),
    }),
  },
  { description: "Every error answer of the OpenAI-compatible routes (OpenAI's error form)." },
);

const errors = Object.fromEntries(
  [400, 404, 413, 415, 422, 429, 500, 503, 504].map((status) => [status, OpenAIErrorBody]),
);

const TokenIds = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 });

export const EmbeddingsRouting = Type.Object(RoutingFields, {
  additionalProperties: false,
  description:
    'moe-serve extension: routing as in POST /v1/infer. With the openai client, pass it as an extra body field.',
});

export const EmbeddingsBody = Type.Object(
  {
    input: Type.Union(
      [
        Type.String(),
        Type.Array(Type.String(), { minItems: 1 }),
        TokenIds,
        Type.Array(TokenIds, { minItems: 1 }),
      ],
      {
        description:
          "A text, texts, or token ids (one array, or one array per input) of the model's own vocabulary, used exactly as given: no special tokens are added, so send them if the model expects them.",
      },
    ),
    model: Type.String({
      description:
        "A model id from GET /v1/models: '<model>' (learned routing), '<model>:<name>' (a named composition) or '<model>:<adapter>[+<adapter>...]' (those adapters pinned).",
    }),
    encoding_format: Type.Optional(
      Type.Union([Type.Literal('float'), Type.Literal('base64')], {
        description: "'float' (default): number arrays; 'base64': little-endian float32 bytes.",
      }),
    ),
    dimensions: Type.Optional(
      Type.Integer({
        minimum: 1,
        description:
          'Keep the first n values and renormalise to unit length (1..hidden_size of the model).',
      }),
    ),
    user: Type.Optional(Type.String({ description: 'Accepted for compatibility; not used.' })),
    routing: Type.Optional(EmbeddingsRouting),
  },
  { additionalProperties: false },
);
export type EmbeddingsBody = Static<typeof EmbeddingsBody>;

export const EmbeddingsResponse = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(
    Type.Object({
      object: Type.Literal('embedding'),
      index: Type.Integer(),
      embedding: Type.Union([
        Type.Array(Type.Number()),
        Type.String({ description: 'base64 of little-endian float32 (encoding_format base64).' }),
      ]),
    }),
  ),
  model: Type.String({ description: 'The model id as requested.' }),
  usage: Type.Object({ prompt_tokens: Type.Integer(), total_tokens: Type.Integer() }),
  composition: Type.Optional(ServedBy),
});

export async function openaiRoutes(
  app: FastifyInstance,
  options: OpenAIRouteOptions,
): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();
  const { inference } = options;

  api.post(
    '/v1/embeddings',
    {
      config: { ...OPENAI_ROUTE, inference: true },
      schema: {
        summary: 'OpenAI-compatible embeddings; route with the model id or the `routing` field.',
        tags: ['openai'],
        body: EmbeddingsBody,
        response: { 200: EmbeddingsResponse, ...errors },
      },
    },
    async (request) => {
      const body = request.body;
      const model = inference.describe();
      const target = await resolveModelId(model, options.compositions, body.model);
      const composition = requestComposition(target, model);
      const served = servedBy(target);
      const inputs = typeof body.input === 'string' ? [body.input] : body.input;
      const tokenized = inputs.some((x) => typeof x !== 'string');
      const tokenIds = !tokenized
        ? undefined
        : typeof inputs[0] === 'number'
          ? [inputs as number[]]
          : (inputs as number[][]);
      if (body.dimensions !== undefined && body.dimensions > model.hiddenSize) {
        throw new MoeError(
          'INPUT_INVALID',
          `dimensions is ${body.dimensions}; this model's embeddings have ${model.hiddenSize}, so ask for 1..${model.hiddenSize}.`,
          { field: 'dimensions', limit: model.hiddenSize },
        );
      }
      const answer = await request.infer(
        toInferRequest(
          tokenIds === undefined ? { texts: inputs as string[] } : { tokenIds },
          body.routing ?? {},
          composition,
        ),
      );
      const base64 = body.encoding_format === 'base64';
      return {
        object: 'list' as const,
        data: answer.results.map((result, index) => {
          const vector = shorten(result.embedding, body.dimensions);
          return {
            object: 'embedding' as const,
            index,
            embedding: base64 ? encodeFloat32(vector).toString('base64') : Array.from(vector),
          };
        }),
        model: body.model,
        usage: { prompt_tokens: answer.inputTokens, total_tokens: answer.inputTokens },
        ...(served === undefined ? {} : { composition: served }),
      };
    },
  );

  api.get(
    '/v1/models/:id',
    {
      config: OPENAI_ROUTE,
      schema: {
        summary:
          'One model id: the base model card, a named composition, or the adapters an id pins.',
        tags: ['models', 'openai'],
        params: Type.Object({ id: Type.String() }),
        response: { 200: AnyModelCard, 404: OpenAIErrorBody },
      },
    },
    async (request) => {
      const model = inference.describe();
      const target = await resolveModelId(model, options.compositions, request.params.id, 'id');
      return cardOf(model, target, options.createdAt);
    },
  );
}

/** The first `dimensions` values, renormalised to unit length; the vector itself when undefined. */
export function shorten(vector: Float32Array, dimensions: number | undefined): Float32Array {
  if (dimensions === undefined || dimensions >= vector.length) return vector;
  const out = vector.slice(0, dimensions);
  let norm = 0;
  for (const x of out) norm += x * x;
  norm = Math.sqrt(norm);
  if (norm > 0) for (let i = 0; i < out.length; i++) out[i] = out[i]! / norm;
  return out;
}
