/** Health and metrics routes for orchestrators and Prometheus. */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Inference, Readiness as ReadinessState } from '../inference/service.js';
import type { Metrics } from '../metrics.js';
import { Liveness, Readiness } from './schemas.js';

/** The JSON body of /health/ready (the API role here, the worker role's own server too). */
export function readinessBody(readiness: ReadinessState) {
  return {
    ready: readiness.ready,
    checks: { ...readiness.checks },
    execution_provider: readiness.executionProvider ?? null,
    execution_provider_requested: readiness.executionProviderRequested ?? null,
    provider_fallback: readiness.providerFallbackReason !== undefined,
    provider_fallback_reason: readiness.providerFallbackReason ?? null,
  };
}

export async function opsRoutes(
  app: FastifyInstance,
  options: { inference: Inference; metrics: Metrics },
): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();

  api.get(
    '/health/live',
    {
      schema: { summary: 'The process is up.', tags: ['operations'], response: { 200: Liveness } },
    },
    async () => ({ status: 'ok' as const }),
  );

  api.get(
    '/health/ready',
    {
      schema: {
        summary:
          'Ready for traffic: model loaded, engine workers up, not draining (503 otherwise).',
        tags: ['operations'],
        response: { 200: Readiness, 503: Readiness },
      },
    },
    async (_request, reply) => {
      const readiness = options.inference.readiness();
      reply.code(readiness.ready ? 200 : 503);
      if (!readiness.ready) reply.header('retry-after', '1');
      return readinessBody(readiness);
    },
  );

  api.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text exposition format).',
        tags: ['operations'],
        response: {
          200: {
            description: 'Prometheus text exposition format 0.0.4.',
            content: { 'text/plain': { schema: Type.String() } },
          },
        },
      },
    },
    async (_request, reply) => {
      const text = await options.metrics.text();
      return reply.type(options.metrics.contentType).send(text);
    },
  );
}
