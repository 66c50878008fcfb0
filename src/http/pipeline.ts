/**
 * The one request pipeline of the inference routes of every family (native POST /v1/infer,
 * OpenAI POST /v1/embeddings, KServe POST /v2/models/{name}/infer): request limits, the deadline,
 * the client-gone signal and the `server-timing` header are handled here once, as fastify hooks
 * and one request decorator, not in each route. A route joins with `config: { inference: true }`
 * and runs its request with `request.infer(...)`:
 *
 *   onRequest        the deadline starts (REQUEST_TIMEOUT_MS from the request's arrival, so the
 *                    upload and parsing of the body count) and an AbortSignal fires when the
 *                    client closes the connection before its answer (its queued items are dropped)
 *   request.infer()  the request limits (MAX_INPUTS, MAX_INPUT_CHARS, MAX_REQUEST_CHARS; 413
 *                    naming the limit, before any tokenizing), then Inference.infer with the
 *                    deadline (optionally shortened by the route, e.g. KServe's `timeout`) and
 *                    the signal
 *   onSend           `server-timing` from the answer's timings (tokenize, queue, backbone, mixture)
 *
 * Handlers keep to their wire format only: body -> InferRequest (wire.ts), answer -> body.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { MoeError } from '../errors.js';
import type { InferRequest } from '../inference/model.js';
import type { InferAnswer, Inference, Timings } from '../inference/service.js';
import { wireField } from './error-handler.js';

/** Request limits of every route family (from config). */
export interface RouteLimits {
  /** MAX_INPUTS */
  readonly maxInputs: number;
  /** MAX_INPUT_CHARS */
  readonly maxInputChars: number;
  /** MAX_REQUEST_CHARS */
  readonly maxRequestChars: number;
  /** REQUEST_TIMEOUT_MS */
  readonly requestTimeoutMs: number;
}

/** What the pipeline keeps for one request of an inference route. */
export interface InferenceContext {
  /** When the request arrived, on the performance.now() clock. */
  readonly startedAt: number;
  /** Absolute, on the performance.now() clock. */
  readonly deadline: number;
  /** Aborted when the client goes away before its answer. */
  readonly signal: AbortSignal;
  /** Set once the answer is there; onSend writes them as server-timing. */
  timings: Timings | undefined;
}

export interface RouteInferOptions {
  /** A shorter deadline the client asked for (ms from arrival); the configured one caps it. */
  readonly timeoutMs?: number | undefined;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route runs inference through the pipeline (request.infer). */
    inference?: boolean;
  }
  interface FastifyRequest {
    /** Set by the pipeline on inference routes; null elsewhere. */
    inferenceContext: InferenceContext | null;
    /** Limits, deadline and client-gone applied: run `request` (see the header). */
    infer(request: InferRequest, options?: RouteInferOptions): Promise<InferAnswer>;
  }
}

export function installInferencePipeline(
  app: FastifyInstance,
  options: { readonly inference: Inference; readonly limits: RouteLimits },
): void {
  const { inference, limits } = options;
  app.decorateRequest('inferenceContext', null);
  app.decorateRequest(
    'infer',
    async function infer(
      this: FastifyRequest,
      request: InferRequest,
      inferOptions: RouteInferOptions = {},
    ): Promise<InferAnswer> {
      const context = this.inferenceContext;
      if (context === null) {
        throw new Error(`${this.method} ${this.url}: request.infer needs config.inference`);
      }
      checkLimits(request, limits, wireField(this, 'inputs'));
      const deadline =
        inferOptions.timeoutMs === undefined
          ? context.deadline
          : Math.min(context.deadline, context.startedAt + inferOptions.timeoutMs);
      const answer = await inference.infer(request, { deadline, signal: context.signal });
      context.timings = answer.timings;
      return answer;
    },
  );

  app.addHook('onRequest', async (request, reply) => {
    if (request.routeOptions.config?.inference !== true) return;
    const controller = new AbortController();
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) controller.abort();
    });
    request.raw.once('aborted', () => controller.abort());
    const startedAt = performance.now();
    request.inferenceContext = {
      startedAt,
      deadline: startedAt + limits.requestTimeoutMs,
      signal: controller.signal,
      timings: undefined,
    };
  });

  app.addHook('onSend', async (request, reply) => {
    const timings = request.inferenceContext?.timings;
    if (timings !== undefined) reply.header('server-timing', serverTiming(timings));
  });
}

/**
 * Request-size limits that name the limit (413), checked before any work. `field` is how the
 * route's wire format names the inputs (`inputs`, OpenAI `input`, KServe `text`). Token-id inputs
 * count toward MAX_INPUTS only: the body limit bounds them, and the tokenizer's work on them is
 * a copy.
 */
export function checkLimits(request: InferRequest, limits: RouteLimits, field = 'inputs'): void {
  const count = request.tokenIds?.length ?? request.inputs.length;
  if (count > limits.maxInputs) {
    throw new MoeError(
      'INPUT_TOO_MANY',
      `${field} has ${count} inputs; at most ${limits.maxInputs} per request (MAX_INPUTS). Split the request.`,
      { field: 'inputs', limit: limits.maxInputs },
    );
  }
  let total = 0;
  request.inputs.forEach((text, i) => {
    if (text.length > limits.maxInputChars) {
      throw new MoeError(
        'INPUT_TOO_LONG',
        `${field}[${i}] has ${text.length} characters; at most ${limits.maxInputChars} (MAX_INPUT_CHARS).`,
        { field: `inputs[${i}]`, limit: limits.maxInputChars },
      );
    }
    total += text.length;
  });
  if (total > limits.maxRequestChars) {
    throw new MoeError(
      'INPUT_TOTAL_TOO_LONG',
      `${field} has ${total} characters in all; at most ${limits.maxRequestChars} per request (MAX_REQUEST_CHARS). Split the request.`,
      { field: 'inputs', limit: limits.maxRequestChars },
    );
  }
}

export function serverTiming(t: Timings): string {
  return [
    `tokenize;dur=${t.tokenizeMs.toFixed(2)}`,
    `queue;dur=${t.queueMs.toFixed(2)}`,
    `forward;dur=${t.forwardMs.toFixed(2)}`,
  ].join(', ');
}
