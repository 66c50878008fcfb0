/**
 * Jobs. Durable inference jobs: POST /v1/jobs takes the body of /v1/infer and answers 202 with a
 * job id at once; GET /v1/jobs/{id} tells where the job is and, once done, its result (or the
 * error a synchronous request would have got). Results stay readable for JOB_RESULT_TTL_SECONDS,
 * from any API node. Queue mode only: the jobs live in Redis; without a `JobQueue` (embedded
 * mode) they answer 501 QUEUE_MODE_REQUIRED.
 *
 * Composition fit jobs (POST /v1/compositions with `fit`, ids 'fit-...') are read here too, in
 * both modes (compositions/fit-jobs.ts).
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { FIT_JOB_PREFIX, type FitJobs } from '../compositions/fit-jobs.js';
import type { CompositionStore } from '../compositions/store.js';
import { MoeError } from '../errors.js';
import type { Inference, JobQueue, JobStatus } from '../inference/service.js';
import { fitJobJson } from './composition-json.js';
import { FitJobBody } from './composition-schemas.js';
import { inferResponseBody, nativeRequest } from './native-routes.js';
import { checkLimits, type RouteLimits } from './pipeline.js';
import { ErrorBody, InferBody, InferResponse } from './schemas.js';

export interface JobRouteOptions {
  /** Undefined in embedded mode. */
  readonly jobs: JobQueue | undefined;
  readonly fits: FitJobs;
  readonly inference: Inference;
  readonly compositions: CompositionStore;
  readonly limits: RouteLimits;
}

const JobState = Type.Union(
  [
    Type.Literal('waiting'),
    Type.Literal('active'),
    Type.Literal('delayed'),
    Type.Literal('completed'),
    Type.Literal('failed'),
  ],
  {
    description:
      'waiting: queued; active: a worker runs it; delayed: waiting to be retried after a failed attempt; completed: `result` is set; failed: `error` is set (the error /v1/infer would have answered).',
  },
);

const JobIdParams = Type.Object({ id: Type.String({ description: 'The id POST /v1/jobs gave.' }) });

const JobAccepted = Type.Object({
  id: Type.String(),
  state: JobState,
  created_at: Type.String({ format: 'date-time' }),
});

const JobBody = Type.Object({
  id: Type.String(),
  state: JobState,
  created_at: Type.String({ format: 'date-time' }),
  finished_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  attempts: Type.Integer({ description: 'Times a worker started the job (retries included).' }),
  result: Type.Optional(InferResponse),
  error: Type.Optional(ErrorBody.properties.error),
});

const errors = {
  400: ErrorBody,
  404: ErrorBody,
  413: ErrorBody,
  415: ErrorBody,
  422: ErrorBody,
  500: ErrorBody,
  501: ErrorBody,
  503: ErrorBody,
};

export async function jobRoutes(app: FastifyInstance, options: JobRouteOptions): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();
  const jobs = (): JobQueue => {
    if (options.jobs === undefined) {
      throw new MoeError(
        'QUEUE_MODE_REQUIRED',
        'Durable jobs need queue mode: start the server with QUEUE=redis (and REDIS_URL) and run workers with `npm run worker`. In embedded mode use POST /v1/infer.',
      );
    }
    return options.jobs;
  };

  api.post(
    '/v1/jobs',
    {
      schema: {
        summary: 'Queue a request (the body of /v1/infer) as a durable job; 202 with its id.',
        tags: ['jobs'],
        body: InferBody,
        response: { 202: JobAccepted, ...errors },
      },
    },
    async (request, reply) => {
      const queue = jobs();
      const body = request.body;
      // A durable job has no client waiting on the connection and its own deadline
      // (JOB_TIMEOUT_MS), so of the request pipeline only the limits apply.
      const { inferRequest } = await nativeRequest(options.inference, options.compositions, body);
      checkLimits(inferRequest, options.limits);
      const job = await queue.submit(inferRequest, { returnFields: body.return ?? [] });
      reply.code(202).header('location', `/v1/jobs/${encodeURIComponent(job.id)}`);
      return { id: job.id, state: job.state, created_at: job.createdAt.toISOString() };
    },
  );

  api.get(
    '/v1/jobs/:id',
    {
      schema: {
        summary:
          "A job's state, and its result or error once finished: a durable inference job, or a composition fit ('fit-...', both modes).",
        tags: ['jobs'],
        params: JobIdParams,
        response: { 200: Type.Union([JobBody, FitJobBody]), ...errors },
      },
    },
    async (request) => {
      const id = request.params.id;
      if (id.startsWith(FIT_JOB_PREFIX)) return fitJobJson(await options.fits.status(id));
      return jobJson(await jobs().status(id));
    },
  );
}

function jobJson(job: JobStatus) {
  return {
    id: job.id,
    state: job.state,
    created_at: job.createdAt.toISOString(),
    finished_at: job.finishedAt?.toISOString() ?? null,
    attempts: job.attempts,
    ...(job.answer === undefined
      ? {}
      : { result: inferResponseBody(job.answer, job.returnFields) }),
    ...(job.error === undefined ? {} : { error: job.error.toJSON() }),
  };
}
