/**
 * Request and response schemas of the native REST API. They drive validation (ajv, through
 * fastify) and the OpenAPI document, so what the docs say is what the server checks.
 */
import { type Static, type TSchema, Type } from 'typebox';
import { ID_PATTERN } from '../pack/manifest.js';

/** A JSON object with arbitrary keys and values of one schema (OpenAPI-friendly form). */
export const Dict = <T extends TSchema>(value: T, options: Record<string, unknown> = {}) =>
  Type.Unsafe<Record<string, Static<T>>>({
    type: 'object',
    additionalProperties: value,
    ...options,
  });

export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'Stable error code, e.g. ROUTING_UNKNOWN_ADAPTER.' }),
      message: Type.String({ description: 'What went wrong and what to change.' }),
      details: Type.Optional(
        Dict(Type.Unknown(), { description: 'Machine-readable context: field, limit, choices.' }),
      ),
    }),
  },
  { $id: 'ErrorBody', description: 'Every error answer of the native API.' },
);

/** The routing wishes of a request; shared by /v1/infer and the OpenAI `routing` extension. */
export const RoutingFields = {
  task: Type.Optional(
    Type.String({
      description:
        "Only this task's output; the adapter its head pins is used. GET /v1/models lists tasks.",
    }),
  ),
  language: Type.Optional(
    Type.String({ description: "Pin this adapter in the 'language' group." }),
  ),
  adapters: Type.Optional(
    Dict(
      Type.Union([
        Type.String({ description: 'Pin: this adapter alone (weight 1).' }),
        Dict(Type.Number({ minimum: 0 }), {
          description: 'Explicit mixture: adapter id -> weight; weights >= 0 summing to 1.',
        }),
      ]),
      {
        description:
          'group id -> an adapter id to pin, or {adapter id: weight} for an exact mixture of several (e.g. {"task": {"a": 0.7, "b": 0.3}}).',
      },
    ),
  ),
  exclude: Type.Optional(
    Type.Array(Type.String(), { description: 'Adapter ids never to route to.' }),
  ),
  top_k: Type.Optional(
    Type.Integer({
      minimum: 1,
      description: 'Adapters mixed in every gated group that is not pinned (1..group size).',
    }),
  ),
  top_p: Type.Optional(
    Type.Number({
      exclusiveMinimum: 0,
      maximum: 1,
      description:
        'In every gated group that is not pinned: the fewest adapters (at most top_k) whose gate probabilities reach p. 1: always top_k.',
    }),
  ),
};

/** The routing fields as one object (the OpenAI `routing` field; wire.ts maps it). */
export const RoutingObject = Type.Object(RoutingFields, { additionalProperties: false });

/**
 * An adapter id, as the pack format defines it (letters, digits, '.', '_', '-'; at most 64):
 * every route that takes one checks it, so ids (and the metric labels they become) stay bounded.
 */
export const AdapterId = (description: string) =>
  Type.String({ pattern: ID_PATTERN, description: `${description} Pattern: ${ID_PATTERN}.` });

export const InferBody = Type.Object(
  {
    inputs: Type.Union(
      [
        Type.Array(Type.String(), { minItems: 1 }),
        Type.Array(Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 }), { minItems: 1 }),
      ],
      {
        description:
          "Texts to run, or token ids of the model's vocabulary (one array per input, run exactly as given: no special tokens added); each is answered in order. Limits: MAX_INPUTS inputs, MAX_INPUT_CHARS characters each.",
      },
    ),
    ...RoutingFields,
    composition: Type.Optional(
      Type.String({
        pattern: ID_PATTERN,
        description:
          "A named composition (GET /v1/compositions) to route with, as the model id '<model>:<name>' does. The request's other routing fields still apply; fixing a group the composition fixes differently is ROUTING_CONFLICT, and top_k / top_p override its gate settings.",
      }),
    ),
    return: Type.Optional(
      Type.Array(Type.Union([Type.Literal('embedding'), Type.Literal('scores')]), {
        description:
          "Extra fields per result: 'embedding' (L2-normalised vector), 'scores' (every label's probability).",
      }),
    ),
  },
  { additionalProperties: false },
);
export type InferBody = Static<typeof InferBody>;

const RoutedAdapter = Type.Object({
  adapter: Type.String(),
  weight: Type.Number({ description: 'Mixing weight; the weights of a group sum to 1.' }),
});

const TaskOutput = Type.Object({
  label: Type.String(),
  score: Type.Number({ description: 'Probability of the label.' }),
  scores: Type.Optional(
    Dict(Type.Number(), { description: 'label -> probability (with return: ["scores"]).' }),
  ),
});

/** The named composition (and its version) that routed a request. */
export const ServedBy = Type.Object(
  { name: Type.String(), version: Type.Integer() },
  { description: 'The named composition that routed this request, and its version.' },
);

export const InferResponse = Type.Object({
  model: Type.String(),
  results: Type.Array(
    Type.Object({
      routing: Dict(Type.Array(RoutedAdapter), {
        description: 'group id -> adapters this input went through, best first.',
      }),
      outputs: Dict(TaskOutput, { description: 'task id -> prediction.' }),
      embedding: Type.Optional(Type.Array(Type.Number())),
      tokens: Type.Integer({ description: 'Tokens fed to the model, special tokens included.' }),
      truncated: Type.Boolean({ description: 'The input was cut to the model maximum length.' }),
    }),
  ),
  usage: Type.Object({ input_tokens: Type.Integer() }),
  composition: Type.Optional(ServedBy),
});
export type InferResponse = Static<typeof InferResponse>;

export const AdapterInfo = Type.Object({
  id: Type.String(),
  group: Type.String(),
  type: Type.Union(
    [Type.Literal('bottleneck'), Type.Literal('lora'), Type.Literal('bottleneck-layers')],
    {
      description:
        "'bottleneck': on the backbone's last hidden state; 'lora': LoRA in every layer (PEFT); 'bottleneck-layers': bottleneck adapters in every layer (AdapterHub).",
    },
  ),
  rank: Type.Integer({ description: 'LoRA rank, or bottleneck width.' }),
  activation: Type.Optional(Type.String()),
  state: Type.Union([
    Type.Literal('loading'),
    Type.Literal('ready'),
    Type.Literal('failed'),
    Type.Literal('unloading'),
  ]),
  loaded_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  source: Type.String({ description: "'pack', or the folder it was loaded from." }),
  gated: Type.Boolean({ description: 'The gate scores it; false: reachable by pinning only.' }),
  error: Type.Optional(Type.String({ description: 'Why the last load failed (state failed).' })),
  notes: Type.Optional(
    Type.Array(Type.String(), {
      description:
        'What the load left out that the client should know, e.g. a PEFT classifier head that is not served because the adapter was loaded at run time (with what to do instead). Absent when there is nothing to say.',
    }),
  ),
});

export const AdapterList = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(AdapterInfo),
});

export const LoadAdapterBody = Type.Object(
  {
    path: Type.String({
      minLength: 1,
      description:
        'Adapter folder inside ADAPTER_ROOT: our own format (adapter_config.json + adapter.safetensors), a PEFT LoRA folder or an AdapterHub folder (safetensors weights).',
    }),
    id: Type.Optional(
      AdapterId("Serve it under this id (default: its config's id, or the folder's name)."),
    ),
    group: Type.Optional(
      AdapterId(
        "The group to load it into (default: its config's group, or the pack's one group for its kind).",
      ),
    ),
  },
  { additionalProperties: false },
);
export type LoadAdapterBody = Static<typeof LoadAdapterBody>;

export const AdapterIdParams = Type.Object({ id: AdapterId('The adapter to unload.') });

export const ModelCard = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer({ description: 'Unix seconds when this server loaded the model.' }),
  owned_by: Type.String(),
  version: Type.String(),
  description: Type.String(),
  hidden_size: Type.Integer(),
  max_length: Type.Integer(),
  groups: Type.Array(
    Type.Object({
      id: Type.String(),
      gated: Type.Boolean(),
      default_k: Type.Integer(),
      adapters: Type.Array(Type.String()),
    }),
  ),
  tasks: Type.Array(
    Type.Object({
      id: Type.String(),
      labels: Type.Array(Type.String()),
      pin: Type.Optional(Type.Object({ group: Type.String(), adapter: Type.String() })),
    }),
  ),
});

export const Liveness = Type.Object({ status: Type.Literal('ok') });

export const Readiness = Type.Object({
  ready: Type.Boolean(),
  checks: Dict(Type.Boolean()),
  execution_provider: Type.Union([Type.String(), Type.Null()], {
    description: 'The ORT execution provider the engine runs on (null where no engine runs here).',
  }),
  execution_provider_requested: Type.Union([Type.String(), Type.Null()], {
    description: 'The one configured (EXECUTION_PROVIDER).',
  }),
  provider_fallback: Type.Boolean({
    description: 'True when the requested provider could not start and the engine runs on cpu.',
  }),
  provider_fallback_reason: Type.Union([Type.String(), Type.Null()]),
});
