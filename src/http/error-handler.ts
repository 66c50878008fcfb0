/**
 * The one mapping from errors to HTTP answers. Domain errors (MoeError, PackError) carry their
 * code and status; fastify's own errors (validation, content type, body size, broken JSON) are
 * mapped to catalogue codes here. Anything else is a 500 INTERNAL, logged with its stack; the
 * client sees no internals.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { type ErrorCode, MoeError } from '../errors.js';
import { isPackError } from '../pack/errors.js';

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

/** OpenAI's error object; `code` is our stable code, `param` the request field at fault. */
export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string };
}

/** KServe v2 / Open Inference Protocol: the message only. */
export interface KServeErrorBody {
  error: string;
}

/**
 * The error body format of a route family. A route picks its own with `config.errorFormat`;
 * routes without one, and unmatched URLs, answer natively, except under /v2 (KServe clients).
 */
export type ErrorFormat = 'native' | 'openai' | 'kserve';

declare module 'fastify' {
  interface FastifyContextConfig {
    errorFormat?: ErrorFormat;
    /**
     * How the route's wire format names the fields our errors name (`details.field`), e.g.
     * `{ inputs: 'input' }`: a field equal to a key, or starting with it and then `[` or `.`,
     * gets the key replaced.
     */
    errorFields?: Readonly<Record<string, string>>;
  }
}

/** Turn anything thrown into a MoeError a client may see. */
export function toMoeError(error: unknown, request?: FastifyRequest): MoeError {
  if (error instanceof MoeError) return error;
  if (isPackError(error)) {
    return new MoeError('ADAPTER_INVALID', error.message, {
      file: error.file,
      field: error.field,
      reason: error.code,
    });
  }
  const fastifyError = error as Partial<FastifyError> & {
    validation?: unknown[];
    validationContext?: string;
  };
  if (Array.isArray(fastifyError.validation)) {
    const first = fastifyError.validation[0] as
      | {
          instancePath?: string;
          message?: string;
          keyword?: string;
          params?: Record<string, unknown>;
        }
      | undefined;
    const where = fieldName(fastifyError.validationContext ?? 'body', first);
    const what = describeValidation(first);
    return new MoeError('INPUT_INVALID', `${where}: ${what}`, { field: where });
  }
  const mapped = FASTIFY_CODES[fastifyError.code ?? ''];
  if (mapped !== undefined) {
    return new MoeError(mapped.code, mapped.message(request), {});
  }
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode < 500) {
    return new MoeError('INPUT_INVALID', fastifyError.message ?? 'invalid request');
  }
  return new MoeError('INTERNAL', 'An unexpected error occurred; the server log has the details.');
}

export function errorBody(error: MoeError): ErrorBody {
  const details =
    error.details === undefined || Object.keys(error.details).length === 0
      ? undefined
      : { ...error.details };
  return { error: { code: error.code, message: error.message, ...(details ? { details } : {}) } };
}

/** Headers every error answer of this status gets (retry-after on 429 and 503). */
export function errorHeaders(error: MoeError): Record<string, string> {
  if (error.status === 429 || error.status === 503) {
    const seconds = Number(error.details?.retryAfterSeconds ?? 1);
    return { 'retry-after': String(Math.max(1, Math.ceil(seconds))) };
  }
  return {};
}

/** 5xx answers that are operational states, logged where they arise (once), not per request. */
const EXPECTED_5XX: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ENGINE_WORKER_CRASHED',
  'DRAINING',
  'QUEUE_UNAVAILABLE',
  'ADAPTERS_SYNCING',
  'QUEUE_MODE_REQUIRED',
  'QUEUE_MODE_UNSUPPORTED',
]);

export function handleError(
  error: unknown,
  request: FastifyRequest,
  reply: FastifyReply,
): FastifyReply {
  const moe = toMoeError(error, request);
  if (moe.status >= 500 && !EXPECTED_5XX.has(moe.code)) {
    request.log.error({ err: error }, 'request failed');
  }
  return reply.code(moe.status).headers(errorHeaders(moe)).send(formatError(moe, request));
}

/** The body of an error answer, in the format of the request's route family. */
export function formatError(
  error: MoeError,
  request: FastifyRequest,
): ErrorBody | OpenAIErrorBody | KServeErrorBody {
  const config = request.routeOptions.config ?? {};
  const path = request.url.split('?')[0]!;
  const format =
    config.errorFormat ?? (path === '/v2' || path.startsWith('/v2/') ? 'kserve' : 'native');
  if (format === 'kserve') return { error: error.message };
  const field = typeof error.details?.field === 'string' ? error.details.field : undefined;
  const renamed = field === undefined ? undefined : renameField(field, config.errorFields ?? {});
  if (format === 'openai') {
    return {
      error: {
        message: error.message,
        type: error.status >= 500 ? 'server_error' : 'invalid_request_error',
        param: renamed ?? null,
        code: error.code,
      },
    };
  }
  const body = errorBody(error);
  if (renamed !== field && body.error.details) body.error.details.field = renamed;
  return body;
}

function renameField(field: string, names: Readonly<Record<string, string>>): string {
  for (const [ours, theirs] of Object.entries(names)) {
    if (field === ours || field.startsWith(`${ours}[`) || field.startsWith(`${ours}.`)) {
      return theirs + field.slice(ours.length);
    }
  }
  return field;
}

const FASTIFY_CODES: Record<
  string,
  { code: ErrorCode; message: (request?: FastifyRequest) => string }
> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    code: 'INPUT_UNSUPPORTED_MEDIA_TYPE',
    message: (request) =>
      `content-type '${request?.headers['content-type'] ?? ''}' is not accepted here; send the body as application/json.`,
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    code: 'INPUT_INVALID',
    message: () => 'content-length does not match the body sent.',
  },
  FST_ERR_CTP_BODY_TOO_LARGE: {
    code: 'INPUT_BODY_TOO_LARGE',
    message: (request) =>
      `the body is larger than the ${request?.routeOptions.bodyLimit ?? 'configured'} bytes this server accepts (BODY_LIMIT_BYTES); send fewer or shorter inputs per request.`,
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: {
    code: 'INPUT_MALFORMED_JSON',
    message: () => 'the body is empty; send a JSON object.',
  },
  FST_ERR_CTP_INVALID_JSON_BODY: {
    code: 'INPUT_MALFORMED_JSON',
    message: () => 'the body is not valid JSON.',
  },
};

function fieldName(
  context: string,
  error?: { instancePath?: string; params?: Record<string, unknown> },
): string {
  const path = (error?.instancePath ?? '')
    .split('/')
    .filter(Boolean)
    .map((part) => (/^\d+$/.test(part) ? `[${part}]` : `.${part}`))
    .join('');
  const missing = error?.params?.missingProperty;
  const extra = error?.params?.additionalProperty;
  const leaf =
    typeof missing === 'string' ? `.${missing}` : typeof extra === 'string' ? `.${extra}` : '';
  const full = `${path}${leaf}`.replace(/^\./, '');
  return full === '' ? context : full;
}

function describeValidation(error?: {
  message?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}): string {
  if (error === undefined) return 'is invalid';
  if (error.keyword === 'required') return 'is required';
  if (error.keyword === 'additionalProperties')
    return 'is not a known field; check its spelling against /docs';
  if (error.keyword === 'enum' || error.keyword === 'const' || error.keyword === 'anyOf') {
    return `must be one of the documented values${error.params?.allowedValues ? `: ${String(error.params.allowedValues)}` : ''}`;
  }
  return error.message ?? 'is invalid';
}
