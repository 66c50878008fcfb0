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
import Fastify, { type FastifyInstance, type FastifyServerOptions, LogController } from 'fastify';
import type { FitLimits } from './compositions/fit.js';
import { FitJobs, MemoryFitJobStates } from './compositions/fit-jobs.js';
import { type CompositionStore, MemoryCompositionStore } from './compositions/store.js';
import { VARIABLES } from './config.js';
import { MoeError } from './errors.js';
import { compositionRoutes } from './http/composition-routes.js';
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
  /**
   * Named compositions, started by the caller (main.ts: a file beside the pack, or Redis).
   * Default: in memory, lost on exit.
   */
  readonly compositions?: CompositionStore;
  /**
   * Composition fit jobs; the app closes them (aborting running fits) when it closes. Default:
   * states in memory, FIT_MAX_RUNNING's default bound.
   */
  readonly fits?: FitJobs;
  /** FIT_MAX_EXAMPLES, FIT_MAX_EVALUATIONS, FIT_MAX_SECONDS; default: their defaults. */
  readonly fitLimits?: FitLimits;
}

/** The fit limits when the caller gives none (config.ts documents them). */
export const DEFAULT_FIT_LIMITS: FitLimits = {
  maxExamples: VARIABLES.FIT_MAX_EXAMPLES.default,
  maxEvaluations: VARIABLES.FIT_MAX_EVALUATIONS.default,
  maxSeconds: VARIABLES.FIT_MAX_SECONDS.default,
};

export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    // 'errors' and 'off' replace fastify's two lines per request (onResponse below).
    logController: new LogController({
      disableRequestLogging: (options.requestLog ?? 'all') !== 'all',
    }),
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
          name: 'compositions',
          description:
            "Named compositions: stored routing recipes (fixed weights or gates with top-k / top-p per group), used as the model id '<model>:<name>'; fitted on labelled examples as a job. Changes need the admin key.",
        },
        {
          name: 'jobs',
          description:
            'Durable inference jobs (queue mode, QUEUE=redis) and composition fit jobs (both modes): read the result later.',
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

  const compositions = options.compositions ?? new MemoryCompositionStore();
  const fits =
    options.fits ??
    new FitJobs({
      inference: options.inference,
      store: compositions,
      states: new MemoryFitJobStates(VARIABLES.JOB_RESULT_TTL_SECONDS.default * 1000),
      maxRunning: VARIABLES.FIT_MAX_RUNNING.default,
    });
  // Running fits end (as cancelled) before the caller closes the inference service under them.
  app.addHook('onClose', () => fits.close());

  const createdAt = Math.floor(Date.now() / 1000);
  await app.register(nativeRoutes, {
    inference: options.inference,
    compositions,
    adminApiKey: options.adminApiKey,
    adapterRoot: options.adapterRoot,
    createdAt,
  });
  await app.register(openaiRoutes, {
    inference: options.inference,
    compositions,
    createdAt,
  });
  await app.register(kserveRoutes, {
    inference: options.inference,
    compositions,
    parseJson,
    adminApiKey: options.adminApiKey,
    adapterRoot: options.adapterRoot,
    version: options.version ?? '0.1.0',
  });
  await app.register(compositionRoutes, {
    inference: options.inference,
    store: compositions,
    fits,
    fitLimits: options.fitLimits ?? DEFAULT_FIT_LIMITS,
    adminApiKey: options.adminApiKey,
  });
  await app.register(jobRoutes, {
    jobs: options.jobs,
    fits,
    inference: options.inference,
    compositions,
    limits: options.limits,
  });
  await app.register(opsRoutes, { inference: options.inference, metrics: options.metrics });
  return app;
}
