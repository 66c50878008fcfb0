/**
 * Model ids that name a routing composition, for clients whose only routing knob is a model name
 * (the OpenAI `model` field, the KServe model name in the URL):
 *
 *   <model>                            the base model: the gates route every input
 *   <model>:<adapter>[+<adapter>...]   these adapters pinned, at most one per group, e.g.
 *                                      `demo:de` or `demo:de+sentiment` (MAD-X style stacking)
 *
 * Adapter ids are unique across groups and cannot contain ':' or '+' (the pack ID_PATTERN), so the
 * id is unambiguous. Listings (/v1/models, the KServe repository index) show the base model and
 * one id per loaded adapter; any combination with at most one adapter per group is accepted.
 * A request carries its composition's pins apart from its own (InferRequest.composition), and the
 * model checks them against each other (a conflict is ROUTING_CONFLICT, naming the model id).
 */
import { MoeError } from '../errors.js';
import type { ModelDescription } from '../inference/service.js';

export interface Composition {
  readonly id: string;
  /** group id -> adapter id pinned; empty for the base model. */
  readonly pins: Readonly<Record<string, string>>;
}

export function compositionId(model: string, adapters: readonly string[]): string {
  return adapters.length === 0 ? model : `${model}:${adapters.join('+')}`;
}

/** The base model, then one composition per loaded adapter, in group order. */
export function listCompositions(model: ModelDescription): Composition[] {
  const singles = model.groups.flatMap((group) =>
    group.adapters.map((adapter) => ({
      id: compositionId(model.id, [adapter]),
      pins: { [group.id]: adapter },
    })),
  );
  return [{ id: model.id, pins: {} }, ...singles];
}

/** Parse a model id against the adapters loaded now; 404 MODEL_NOT_FOUND naming the choices. */
export function resolveComposition(
  model: ModelDescription,
  id: string,
  field = 'model',
): Composition {
  if (id === model.id) return { id, pins: {} };
  const prefix = `${model.id}:`;
  if (!id.startsWith(prefix)) throw unknownModel(model, id, field, `'${id}' is not served here.`);
  const pins: Record<string, string> = {};
  for (const adapter of id.slice(prefix.length).split('+')) {
    const group = model.groups.find((g) => g.adapters.includes(adapter));
    if (group === undefined) {
      throw unknownModel(model, id, field, `No adapter '${adapter}' is loaded.`);
    }
    if (pins[group.id] !== undefined) {
      throw unknownModel(
        model,
        id,
        field,
        `'${pins[group.id]}' and '${adapter}' are both in group '${group.id}'; pin one adapter per group.`,
      );
    }
    pins[group.id] = adapter;
  }
  return { id, pins };
}

function unknownModel(model: ModelDescription, id: string, field: string, why: string): MoeError {
  const choices = listCompositions(model).map((c) => c.id);
  return new MoeError(
    'MODEL_NOT_FOUND',
    `Unknown model '${id}': ${why} Use '${model.id}' (learned routing) or '${model.id}:<adapter>[+<adapter>...]' with loaded adapters: ${choices.join(', ')}.`,
    { field, choices },
  );
}

/** The OpenAI-style model card of the base model, with its native fields. */
export function modelCard(model: ModelDescription, createdAt: number) {
  return {
    id: model.id,
    object: 'model' as const,
    created: createdAt,
    owned_by: 'moe-serve',
    version: model.version,
    description: model.description,
    hidden_size: model.hiddenSize,
    max_length: model.maxLength,
    groups: model.groups.map((g) => ({
      id: g.id,
      gated: g.gated,
      default_k: g.defaultK,
      adapters: [...g.adapters],
    })),
    tasks: model.tasks.map((t) => ({
      id: t.id,
      labels: [...t.labels],
      ...(t.pin ? { pin: t.pin } : {}),
    })),
  };
}

/** The card of a composition id: its parent model and the adapters it pins. */
export function compositionCard(
  model: ModelDescription,
  composition: Composition,
  createdAt: number,
) {
  return {
    id: composition.id,
    object: 'model' as const,
    created: createdAt,
    owned_by: 'moe-serve',
    parent: model.id,
    adapters: { ...composition.pins },
  };
}

/** GET /v1/models: the base model card first, then every listed composition. */
export function modelList(model: ModelDescription, createdAt: number) {
  const [, ...compositions] = listCompositions(model);
  return {
    object: 'list' as const,
    data: [
      modelCard(model, createdAt),
      ...compositions.map((c) => compositionCard(model, c, createdAt)),
    ],
  };
}
