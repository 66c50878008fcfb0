/**
 * The native REST API: /v1/infer, /v1/models, /v1/adapters. Handlers translate between the wire
 * format (snake_case, plain number arrays) and the `Inference` interface; limits, errors and
 * metrics are handled once, in hooks and the error handler (app.ts).
 */
import { isAbsolute, relative, resolve } from 'node:path';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { MoeError } from '../errors.js';
import type { InferRequest } from '../inference/model.js';
import type { InferAnswer, Inference } from '../inference/service.js';
import type { AdapterInfo as RegistryAdapter } from '../pack/registry.js';
import { adminGuard } from './admin-auth.js';
import { modelList } from './compositions.js';
import {
  AdapterIdParams,
  AdapterInfo,
  AdapterList,
  ErrorBody,
  InferBody,
  InferResponse,
  LoadAdapterBody,
  ModelList,
} from './schemas.js';

/** Request limits every route family checks (from config). */
export interface RouteLimits {
  readonly maxInputs: number;
  readonly maxInputChars: number;
  readonly requestTimeoutMs: number;
}

export interface NativeRouteOptions {
  readonly inference: Inference;
  readonly limits: RouteLimits;
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
  const { inference, limits } = options;
  const admin = adminGuard(options.adminApiKey);

  api.post(
    '/v1/infer',
    {
      schema: {
        summary: 'Run texts through the model; every result shows how it was routed.',
        tags: ['inference'],
        body: InferBody,
        response: { 200: InferResponse, ...errors },
      },
    },
    async (request, reply) => {
      const body = request.body;
      checkLimits(body.inputs, limits);
      const answer = await inference.infer(toInferRequest(body), {
        deadline: performance.now() + limits.requestTimeoutMs,
        signal: clientGone(request, reply),
      });
      reply.header('server-timing', serverTiming(answer));
      return inferResponseBody(answer, body.return ?? []);
    },
  );

  api.get(
    '/v1/models',
    {
      schema: {
        summary:
          "The model served (groups, adapters, tasks), then its compositions '<model>:<adapter>' (OpenAI list form).",
        tags: ['models'],
        response: { 200: ModelList },
      },
    },
    async () => modelList(inference.describe(), options.createdAt),
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
      preHandler: admin,
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
      return adapterJson(await inference.loadAdapter(folder, request.body.id));
    },
  );

  api.delete(
    '/v1/adapters/:id',
    {
      preHandler: admin,
      schema: {
        summary: 'Unload an adapter (or clear a failed load). Admin.',
        tags: ['adapters'],
        security: [{ bearerAuth: [] }],
        params: AdapterIdParams,
        response: {
          200: Type.Object({ id: Type.String(), deleted: Type.Literal(true) }),
          ...errors,
        },
      },
    },
    async (request) => {
      await inference.unloadAdapter(request.params.id);
      return { id: request.params.id, deleted: true as const };
    },
  );
}

/** The wire form of an answer (also the `result` of a finished job at GET /v1/jobs/{id}). */
export function inferResponseBody(
  answer: InferAnswer,
  returnFields: readonly ('embedding' | 'scores')[],
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
  };
}

export function toInferRequest(body: InferBody): InferRequest {
  const ids = body.inputs.every((input) => Array.isArray(input));
  return {
    ...(ids
      ? { inputs: [], tokenIds: body.inputs as number[][] }
      : { inputs: body.inputs as string[] }),
    ...(body.task === undefined ? {} : { task: body.task }),
    ...(body.language === undefined ? {} : { language: body.language }),
    ...(body.adapters === undefined ? {} : { adapters: body.adapters }),
    ...(body.exclude === undefined ? {} : { exclude: body.exclude }),
    ...(body.top_k === undefined ? {} : { topK: body.top_k }),
  };
}

/** Request-size limits that name the limit (413), checked before any work. */
export function checkLimits(
  inputs: readonly (string | readonly number[])[],
  limits: Pick<NativeRouteOptions['limits'], 'maxInputs' | 'maxInputChars'>,
  field = 'inputs',
): void {
  if (inputs.length > limits.maxInputs) {
    throw new MoeError(
      'INPUT_TOO_MANY',
      `${field} has ${inputs.length} inputs; at most ${limits.maxInputs} per request (MAX_INPUTS). Split the request.`,
      { field, limit: limits.maxInputs },
    );
  }
  inputs.forEach((text, i) => {
    if (typeof text === 'string' && text.length > limits.maxInputChars) {
      throw new MoeError(
        'INPUT_TOO_LONG',
        `${field}[${i}] has ${text.length} characters; at most ${limits.maxInputChars} (MAX_INPUT_CHARS).`,
        { field: `${field}[${i}]`, limit: limits.maxInputChars },
      );
    }
  });
}

/** An AbortSignal that fires when the client closes the connection before the answer. */
export function clientGone(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort();
  });
  request.raw.once('aborted', () => controller.abort());
  return controller.signal;
}

export function serverTiming(answer: InferAnswer): string {
  const t = answer.timings;
  return [
    `tokenize;dur=${t.tokenizeMs.toFixed(2)}`,
    `queue;dur=${t.queueMs.toFixed(2)}`,
    `backbone;dur=${t.backboneMs.toFixed(2)}`,
    `mixture;dur=${t.mixtureMs.toFixed(2)}`,
  ].join(', ');
}

function adapterJson(info: RegistryAdapter) {
  return {
    id: info.id,
    group: info.group,
    type: info.type,
    rank: info.rank,
    activation: info.activation,
    state: info.state,
    loaded_at: info.loadedAt?.toISOString() ?? null,
    source: info.source,
    gated: info.gated,
    ...(info.error === undefined ? {} : { error: info.error }),
  };
}

/** `path` resolved inside the adapter root; 403 ADAPTER_PATH_FORBIDDEN when it escapes. */
export function insideRoot(root: string, path: string, field = 'path'): string {
  const base = resolve(root);
  const folder = resolve(base, path);
  const rel = relative(base, folder);
  if (rel.startsWith('..') || isAbsolute(rel)) {
    throw new MoeError(
      'ADAPTER_PATH_FORBIDDEN',
      `path '${path}' is outside the adapter root '${root}' (ADAPTER_ROOT); put the adapter folder inside it.`,
      { field },
    );
  }
  return folder;
}
