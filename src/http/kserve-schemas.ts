/**
 * Request and response schemas of the KServe v2 / Open Inference Protocol routes
 * (kserve-routes.ts). They drive validation and the OpenAPI document, as the native ones do.
 */
import { type Static, Type } from 'typebox';
import { Dict } from './schemas.js';

export const KServeErrorBody = Type.Object(
  { error: Type.String({ description: 'What went wrong and what to change.' }) },
  { description: 'Every error answer of the KServe v2 routes.' },
);

/** The error answers of every status the routes give, in KServe's form. */
export const KServeErrors = Object.fromEntries(
  [400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503, 504].map((s) => [s, KServeErrorBody]),
);

export const Parameters = Dict(Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
  description: 'Name -> string, number or boolean.',
});
export type Parameters = Static<typeof Parameters>;

export const NameParams = Type.Object({
  name: Type.String({ description: "'<model>' or '<model>:<adapter>[+<adapter>...]'." }),
});

const TensorMetadata = Type.Object({
  name: Type.String(),
  datatype: Type.String(),
  shape: Type.Array(Type.Integer(), { description: '-1: any size.' }),
});

export const ModelMetadata = Type.Object({
  name: Type.String(),
  versions: Type.Array(Type.String()),
  platform: Type.String(),
  inputs: Type.Array(TensorMetadata),
  outputs: Type.Array(TensorMetadata),
});
export type ModelMetadata = Static<typeof ModelMetadata>;

export const KServeInferBody = Type.Object(
  {
    id: Type.Optional(Type.String({ description: 'Echoed in the answer.' })),
    parameters: Type.Optional(Parameters),
    inputs: Type.Array(
      Type.Object(
        {
          name: Type.String(),
          shape: Type.Array(Type.Integer({ minimum: 0 })),
          datatype: Type.String(),
          parameters: Type.Optional(Parameters),
          data: Type.Optional(
            Type.Array(Type.Unknown(), { description: 'Row-major, flat or nested.' }),
          ),
        },
        { additionalProperties: false },
      ),
      { minItems: 1 },
    ),
    outputs: Type.Optional(
      Type.Array(
        Type.Object(
          { name: Type.String(), parameters: Type.Optional(Parameters) },
          { additionalProperties: false },
        ),
        { description: 'Outputs to return (default: all); `binary_data: true` per output.' },
      ),
    ),
  },
  {
    additionalProperties: false,
    description:
      'With the binary tensor data extension this JSON is the first Inference-Header-Content-Length bytes of the body; the tensor data follows.',
  },
);
export type KServeInferBody = Static<typeof KServeInferBody>;

export const KServeOutput = Type.Object({
  name: Type.String(),
  datatype: Type.String(),
  shape: Type.Array(Type.Integer()),
  parameters: Type.Optional(Parameters),
  data: Type.Optional(
    Type.Array(Type.Unknown(), {
      description: 'Row-major, flat: numbers for FP32, strings for BYTES.',
    }),
  ),
});
export type KServeOutput = Static<typeof KServeOutput>;

export const KServeInferResponse = Type.Object({
  model_name: Type.String(),
  model_version: Type.String(),
  id: Type.Optional(Type.String()),
  parameters: Type.Optional(
    Type.Object(
      { composition: Type.String(), composition_version: Type.Integer() },
      { description: 'Set when a named composition routed the request: its name and version.' },
    ),
  ),
  outputs: Type.Array(KServeOutput),
});

export const RepositoryEntry = Type.Object({
  name: Type.String(),
  version: Type.Optional(Type.String()),
  state: Type.Union([
    Type.Literal('READY'),
    Type.Literal('LOADING'),
    Type.Literal('UNLOADING'),
    Type.Literal('UNAVAILABLE'),
  ]),
  reason: Type.Optional(Type.String()),
});
export type RepositoryEntry = Static<typeof RepositoryEntry>;

export const RepositoryIndexBody = Type.Object(
  { ready: Type.Optional(Type.Boolean({ description: 'Only models that are READY.' })) },
  { additionalProperties: false },
);

export const RepositoryLoadBody = Type.Object(
  {
    parameters: Type.Optional(
      Type.Object(
        {
          path: Type.Optional(
            Type.String({
              minLength: 1,
              description:
                'Adapter folder (adapter_config.json + adapter.safetensors) inside ADAPTER_ROOT. Needed unless the adapter was loaded from a folder before.',
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

export const RepositoryUnloadBody = Type.Object(
  {
    parameters: Type.Optional(
      Type.Object(
        {
          unload_dependents: Type.Optional(
            Type.Boolean({ description: 'Accepted; adapters have no dependents.' }),
          ),
          force: Type.Optional(
            Type.Boolean({
              description:
                'true: unload even while named compositions use the adapter (kept, they answer COMPOSITION_BROKEN until it is loaded again).',
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
