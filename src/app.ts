/**
 * buildApp(deps): the Fastify instance with every plugin, hook and route. It never listens and
 * never reads the environment (main.ts does both), so tests build it with real dependencies and
 * call `app.inject(...)`.
 *
 * Cross-cutting work lives here once: the error handler (every error becomes a catalogue code),
 * the 404 handler, draining (onRequest), request metrics (onResponse), the request pipeline of
 * the inference routes of every family (limits, deadline, client gone, server-timing; see
 * http/pipeline.ts), and the OpenAPI document (from the route schemas).
 */
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { MoeError } from './errors.js';
import { handleError } from './http/error-handler.js';
import { jobRoutes } from './http/job-routes.js';
import { installJsonBodyParser, jsonBodyParser } from './http/json-body.js';
import { kserveRoutes } from './http/kserve-routes.js';
import { nativeRoutes } from './http/native-routes.js';
import { openaiRoutes } from './http/openai-routes.js';
import { opsRoutes } from './http/ops-routes.js';
import { installInferencePipeline, type RouteLimits } from './http/pipeline.js';
import type { Inference, JobQueue } from './inference/service.js';
import type { Metrics } from './metrics.js';

export interface AppOptions {
  readonly inference: Inference;
  /** Durable jobs (queue mode); undefined: /v1/jobs answers 501 QUEUE_MODE_REQUIRED. */
  readonly jobs?: JobQueue | undefined;
  readonly metrics: Metrics;
  readonly limits: RouteLimits & { readonly bodyLimitBytes: number };
  readonly adminApiKey: string | undefined;
  readonly adapterRoot: string;
  /** Fastify logger setting; false in tests. */
  readonly logger?: FastifyServerOptions['logger'];
  /** REQUEST_LOG: which requests the log records (config.ts). Default 'all'. */
  readonly requestLog?: 'all' | 'errors' | 'off';
  /** Version shown in the OpenAPI document. */
  readonly version?: string;
}

export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    // 'errors' and 'off' replace fastify's two lines per request (onResponse below).
    disableRequestLogging: (options.requestLog ?? 'all') !== 'all',
    bodyLimit: options.limits.bodyLimitBytes,
    // Strict bodies: unknown fields are errors (not silently dropped), types are not coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    // Requests that arrive while closing get our own DRAINING answer (below), not fastify's.
    return503OnClosing: false,
  });

  // JSON only: a text/plain body is a 415, not a string that fails validation later. Large JSON
  // bodies are decoded and parsed off the HTTP thread (json-body.ts).
  app.removeContentTypeParser('text/plain');
  const parseJson = jsonBodyParser(app);
  installJsonBodyParser(app, parseJson);
  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) => {
    const error = new MoeError(
      'ROUTE_NOT_FOUND',
      `No route ${request.method} ${request.url.split('?')[0]}; /docs lists the routes.`,
    );
    return handleError(error, request, reply); // in the format of the URL's family (/v2: KServe)
  });

  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async () => {
    if (closing) {
      throw new MoeError(
        'DRAINING',
        'The server is shutting down and takes no new requests; retry on another instance.',
      );
    }
  });

  app.addHook('onResponse', async (request, reply) => {
    const labels = {
      route: request.routeOptions.url ?? 'unmatched',
      method: request.method,
      status: String(reply.statusCode),
    };
    options.metrics.httpRequests.inc(labels);
    options.metrics.httpDuration.observe(labels, reply.elapsedTime / 1000);
    if (options.requestLog === 'errors' && reply.statusCode >= 400) {
      request.log.info(
        {
          req: { method: request.method, url: request.url },
          res: { statusCode: reply.statusCode },
          responseTime: reply.elapsedTime,
        },
        'request completed',
      );
    }
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'moe-serve',
        description:
          'Mixture-of-experts inference: one backbone, adapters routed per input by learned gates. Every answer shows its routing.',
        version: options.version ?? '0.1.0',
      },
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', description: 'ADMIN_API_KEY' },
        },
      },
      tags: [
        { name: 'inference', description: 'Run texts through the model.' },
        { name: 'models', description: 'What the server serves.' },
        {
          name: 'adapters',
          description: 'The adapter registry; loading and unloading need the admin key.',
        },
        { name: 'operations', description: 'Health and metrics.' },
        {
          name: 'jobs',
          description: 'Durable jobs: queue now, read the result later (queue mode, QUEUE=redis).',
        },
        {
          name: 'openai',
          description: "OpenAI-compatible: embeddings; errors in OpenAI's form.",
        },
        {
          name: 'kserve',
          description:
            'KServe v2 / Open Inference Protocol (binary tensor data, model repository).',
        },
      ],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  installInferencePipeline(app, { inference: options.inference, limits: options.limits });

  const createdAt = Math.floor(Date.now() / 1000);
  await app.register(nativeRoutes, {
    inference: options.inference,
    adminApiKey: options.adminApiKey,
    adapterRoot: options.adapterRoot,
    createdAt,
  });
  await app.register(openaiRoutes, {
    inference: options.inference,
    createdAt,
  });
  await app.register(kserveRoutes, {
    inference: options.inference,
    parseJson,
    adminApiKey: options.adminApiKey,
    adapterRoot: options.adapterRoot,
    version: options.version ?? '0.1.0',
  });
  await app.register(jobRoutes, { jobs: options.jobs, limits: options.limits });
  await app.register(opsRoutes, { inference: options.inference, metrics: options.metrics });
  return app;
}
