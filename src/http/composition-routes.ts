/**
 * Named compositions over REST: POST /v1/compositions creates or replaces one (admin), or, with
 * `fit`, starts a fit job that stores one (202, GET /v1/jobs/{id}); GET lists them or shows one
 * with its version and how it was made; DELETE removes one (admin). Using one is a model id
 * (`<model>:<name>`) or the `composition` field of /v1/infer (compositions/model-ids.ts).
 *
 * The store (compositions/store.ts) persists before it swaps: the previous version serves until
 * the new one is stored. The rules a definition must follow are compositions/composition.ts;
 * the fit's are compositions/fit.ts (checkFitSpec).
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance } from 'fastify';
import { checkComposition, checkName } from '../compositions/composition.js';
import { checkFitSpec, type FitLimits } from '../compositions/fit.js';
import type { FitJobs } from '../compositions/fit-jobs.js';
import type { CompositionStore } from '../compositions/store.js';
import { MoeError } from '../errors.js';
import type { Inference } from '../inference/service.js';
import { adminGuard } from './admin-auth.js';
import { compositionJson } from './composition-json.js';
import {
  CompositionBody,
  CompositionDeleted,
  CompositionList,
  CompositionNameParams,
  CreateCompositionBody,
  FitJobAccepted,
} from './composition-schemas.js';
import { ErrorBody } from './schemas.js';

export interface CompositionRouteOptions {
  readonly inference: Inference;
  readonly store: CompositionStore;
  readonly fits: FitJobs;
  readonly fitLimits: FitLimits;
  readonly adminApiKey: string | undefined;
}

const errors = Object.fromEntries(
  [400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503].map((status) => [status, ErrorBody]),
);

export async function compositionRoutes(
  app: FastifyInstance,
  options: CompositionRouteOptions,
): Promise<void> {
  const api = app.withTypeProvider<TypeBoxTypeProvider>();
  const { inference, store, fits } = options;
  const admin = adminGuard(options.adminApiKey);

  api.post(
    '/v1/compositions',
    {
      onRequest: admin,
      schema: {
        summary:
          'Create or replace a named composition (201 / 200), or fit one on labelled examples (202, a job). Admin.',
        tags: ['compositions'],
        security: [{ bearerAuth: [] }],
        body: CreateCompositionBody,
        response: { 200: CompositionBody, 201: CompositionBody, 202: FitJobAccepted, ...errors },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const model = inference.describe();
      if (body.fit !== undefined) {
        if (body.groups !== undefined) {
          throw new MoeError(
            'COMPOSITION_INVALID',
            "Send either 'groups' (a composition you define) or 'fit' (weights fitted on examples), not both.",
            { field: 'groups' },
          );
        }
        checkName(model, body.name);
        const spec = checkFitSpec(model, body.fit, options.fitLimits);
        const job = await fits.start({
          name: body.name,
          description: body.description ?? '',
          spec,
        });
        reply.code(202).header('location', `/v1/jobs/${encodeURIComponent(job.id)}`);
        return {
          id: job.id,
          kind: 'composition_fit' as const,
          state: job.state,
          created_at: job.createdAt,
          composition: job.name,
        };
      }
      if (body.groups === undefined) {
        throw new MoeError(
          'COMPOSITION_INVALID',
          'groups is required (per group {"weights": {...}} or {"gate": {...}}), or send fit to fit the weights on examples.',
          { field: 'groups' },
        );
      }
      const definition = checkComposition(model, {
        name: body.name,
        description: body.description,
        groups: body.groups,
      });
      const { stored, created } = await store.put(definition, { kind: 'manual' });
      reply.code(created ? 201 : 200);
      return compositionJson(stored, model);
    },
  );

  api.get(
    '/v1/compositions',
    {
      schema: {
        summary: 'Every named composition, with its version and how it was made.',
        tags: ['compositions'],
        response: { 200: CompositionList },
      },
    },
    async () => {
      const model = inference.describe();
      return {
        object: 'list' as const,
        data: store.list().map((c) => compositionJson(c, model)),
      };
    },
  );

  api.get(
    '/v1/compositions/:name',
    {
      schema: {
        summary: 'One composition: its groups, version and how it was made (manual or fitted).',
        tags: ['compositions'],
        params: CompositionNameParams,
        response: { 200: CompositionBody, ...errors },
      },
    },
    async (request) => {
      const found = await store.find(request.params.name);
      if (found === undefined) throw notFound(store, request.params.name);
      return compositionJson(found, inference.describe());
    },
  );

  api.delete(
    '/v1/compositions/:name',
    {
      onRequest: admin,
      schema: {
        summary: 'Delete a composition; requests naming it get 404 from then on. Admin.',
        tags: ['compositions'],
        security: [{ bearerAuth: [] }],
        params: CompositionNameParams,
        response: { 200: CompositionDeleted, ...errors },
      },
    },
    async (request) => {
      const deleted = await store.delete(request.params.name);
      if (deleted === undefined) throw notFound(store, request.params.name);
      return { name: deleted.name, version: deleted.version, deleted: true as const };
    },
  );
}

function notFound(store: CompositionStore, name: string): MoeError {
  const choices = store.list().map((c) => c.name);
  return new MoeError(
    'COMPOSITION_NOT_FOUND',
    `No composition '${name}'. ${choices.length === 0 ? 'None is stored.' : `Stored: ${choices.join(', ')}.`}`,
    { field: 'name', choices },
  );
}
