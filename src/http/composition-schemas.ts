/**
 * Request and response schemas of the composition routes (composition-routes.ts) and of fit
 * jobs at GET /v1/jobs/{id}. The body schema checks shapes and types only (400 naming the
 * field); the rules that need the model (groups, adapters, weights summing to 1, k ranges) are
 * checked by compositions/composition.ts and fit.ts with 422 naming the field, so the client
 * learns what the served model accepts.
 */
import { type Static, Type } from 'typebox';
import { ID_PATTERN } from '../pack/manifest.js';
import { Dict, ErrorBody, ModelCard } from './schemas.js';

const GateSettings = Type.Object(
  {
    k: Type.Optional(
      Type.Integer({ description: 'Fixed top-k: mix the k adapters the gate scores highest.' }),
    ),
    top_p: Type.Optional(
      Type.Number({
        description:
          'Top-p in (0, 1]: per input, the fewest adapters whose gate probabilities sum to at least p (confident inputs get 1, ambiguous ones more). Not with k.',
      }),
    ),
    k_max: Type.Optional(
      Type.Integer({
        description:
          "Cap on top-p's adapters (default: every adapter of the group). Only with top_p.",
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      "The group's learned gate chooses per input. {} uses the group's default_k and the pack's default_top_p.",
  },
);

const CompositionGroupBody = Type.Object(
  {
    weights: Type.Optional(
      Dict(Type.Number(), {
        description:
          'A fixed mixture: adapter id -> weight, every weight >= 0, summing to 1 (e.g. {"de": 0.6, "nl": 0.4}).',
      }),
    ),
    gate: Type.Optional(GateSettings),
  },
  { additionalProperties: false, description: "Exactly one of 'weights' or 'gate'." },
);

const FitBody = Type.Object(
  {
    examples: Type.Array(
      Type.Object({ text: Type.String(), label: Type.String() }, { additionalProperties: false }),
      {
        description:
          "Labelled examples: text and one of the task head's labels. At most FIT_MAX_EXAMPLES.",
      },
    ),
    task: Type.String({ description: 'The task (head) whose accuracy the weights maximise.' }),
    groups: Type.Array(Type.String(), {
      description:
        'Adapter groups whose mixture weights are searched (over every adapter loaded in each).',
    }),
    budget: Type.Optional(
      Type.Object(
        {
          evaluations: Type.Optional(
            Type.Integer({
              description:
                'Most candidate weightings evaluated (one pass over the examples each); at most FIT_MAX_EVALUATIONS.',
            }),
          ),
          seconds: Type.Optional(
            Type.Number({
              description: 'Wall-clock limit of the search; at most FIT_MAX_SECONDS.',
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
  },
  {
    additionalProperties: false,
    description:
      'Fit the mixture weights of `groups` on the examples (a gradient-free search), then store the result as this composition. Answers 202 with a job id (GET /v1/jobs/{id}).',
  },
);

export const CreateCompositionBody = Type.Object(
  {
    name: Type.String({
      pattern: ID_PATTERN,
      description: `Composition name; use it as the model id '<model>:<name>' or as \`composition\` in /v1/infer. Not the model id or a loaded adapter id. Pattern: ${ID_PATTERN}. An existing name is replaced (its version + 1).`,
    }),
    description: Type.Optional(Type.String({ maxLength: 1000 })),
    groups: Type.Optional(
      Dict(CompositionGroupBody, {
        description:
          "group id -> {weights} or {gate}; at least one group. Groups not named route as the request and the model say. Not with 'fit'.",
      }),
    ),
    fit: Type.Optional(FitBody),
  },
  { additionalProperties: false },
);
export type CreateCompositionBody = Static<typeof CreateCompositionBody>;

export const CompositionNameParams = Type.Object({
  name: Type.String({ pattern: ID_PATTERN, description: 'The composition name.' }),
});

const Score = Type.Object({
  loss: Type.Number({ description: 'Mean cross-entropy of the task head on the examples.' }),
  accuracy: Type.Number({ description: 'Share of the examples whose top label is theirs.' }),
});

const FitBudgetBody = Type.Object({
  evaluations: Type.Integer(),
  seconds: Type.Number(),
});

const StoppedBy = Type.Union(
  [Type.Literal('evaluations'), Type.Literal('time'), Type.Literal('converged')],
  { description: 'What ended the search.' },
);

const Provenance = Type.Union(
  [
    Type.Object({ kind: Type.Literal('manual') }),
    Type.Object({
      kind: Type.Literal('fitted'),
      job_id: Type.String(),
      task: Type.String(),
      groups: Type.Array(Type.String()),
      examples: Type.Integer({ description: 'Examples fitted on.' }),
      budget: FitBudgetBody,
      before: Score,
      after: Score,
      evaluations: Type.Integer(),
      elapsed_ms: Type.Number(),
      stopped_by: StoppedBy,
    }),
  ],
  {
    description:
      "How this version was made: 'manual' (POST with groups) or 'fitted' (the fit's spec, the examples' score under the model's own routing before and under the fitted weights after, its evaluations and time).",
  },
);

export const CompositionBody = Type.Object({
  name: Type.String(),
  model: Type.String({ description: "The model id that serves it: '<model>:<name>'." }),
  description: Type.String(),
  version: Type.Integer({ description: '1 on creation, +1 on each replacement.' }),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time', description: 'When this version was stored.' }),
  groups: Dict(
    Type.Object({
      weights: Type.Optional(Dict(Type.Number())),
      gate: Type.Optional(
        Type.Object({
          k: Type.Optional(Type.Integer()),
          top_p: Type.Optional(Type.Number()),
          k_max: Type.Optional(Type.Integer()),
        }),
      ),
    }),
    { description: 'group id -> {weights} (normalised, zero weights dropped) or {gate}.' },
  ),
  provenance: Provenance,
  missing_adapters: Type.Array(Type.String(), {
    description:
      'Adapters it names that are not loaded now (unloaded with force): while not empty, requests using it answer 422 COMPOSITION_BROKEN.',
  }),
});
export type CompositionBody = Static<typeof CompositionBody>;

export const CompositionList = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(CompositionBody),
});

export const CompositionDeleted = Type.Object({
  name: Type.String(),
  version: Type.Integer({ description: 'The version that was deleted.' }),
  deleted: Type.Literal(true),
});

const JobStateBody = Type.Union([
  Type.Literal('waiting'),
  Type.Literal('active'),
  Type.Literal('completed'),
  Type.Literal('failed'),
]);

export const FitJobAccepted = Type.Object({
  id: Type.String({ description: "The job id ('fit-...'); GET /v1/jobs/{id} follows it." }),
  kind: Type.Literal('composition_fit'),
  state: JobStateBody,
  created_at: Type.String({ format: 'date-time' }),
  composition: Type.String({ description: 'The composition name the result is stored as.' }),
});

export const FitJobBody = Type.Object({
  id: Type.String(),
  kind: Type.Literal('composition_fit'),
  state: JobStateBody,
  created_at: Type.String({ format: 'date-time' }),
  finished_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  composition: Type.String({ description: 'The composition name the result is stored as.' }),
  task: Type.String(),
  groups: Type.Array(Type.String()),
  examples: Type.Integer(),
  budget: FitBudgetBody,
  progress: Type.Optional(
    Type.Object({
      evaluations: Type.Integer(),
      budget_evaluations: Type.Integer(),
      elapsed_ms: Type.Number(),
      best: Score,
    }),
  ),
  result: Type.Optional(
    Type.Object({
      before: Score,
      after: Score,
      evaluations: Type.Integer(),
      elapsed_ms: Type.Number(),
      stopped_by: StoppedBy,
      weights: Dict(Dict(Type.Number()), { description: 'group id -> adapter id -> weight.' }),
      composition: Type.Object({ name: Type.String(), version: Type.Integer() }),
    }),
  ),
  error: Type.Optional(ErrorBody.properties.error),
});

/** A model id that pins adapters (`<model>:<adapter>[+<adapter>...]`); see compositions/model-ids.ts. */
export const PinsCard = Type.Object({
  id: Type.String({ description: "'<model>:<adapter>[+<adapter>...]': these adapters pinned." }),
  object: Type.Literal('model'),
  created: Type.Integer({ description: 'Unix seconds when this server loaded the model.' }),
  owned_by: Type.String(),
  parent: Type.String({ description: 'The base model id.' }),
  adapters: Dict(Type.String(), { description: 'group id -> adapter this id pins.' }),
});

/** A named composition as a model id (`<model>:<name>`). */
export const NamedCompositionCard = Type.Object({
  id: Type.String({ description: "'<model>:<name>': the named composition." }),
  object: Type.Literal('model'),
  created: Type.Integer({ description: 'Unix seconds when this server loaded the model.' }),
  owned_by: Type.String(),
  parent: Type.String({ description: 'The base model id.' }),
  composition: CompositionBody,
});

/** Any card GET /v1/models/{id} answers. */
export const AnyModelCard = Type.Union([ModelCard, NamedCompositionCard, PinsCard]);

export const ModelList = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(AnyModelCard, {
    description:
      'The base model (learned routing) first, then the named compositions, then one id per loaded adapter (that adapter pinned). Use an id as the OpenAI `model` or the KServe model name.',
  }),
});
