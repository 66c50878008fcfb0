/**
 * Named compositions: a stored, versioned routing recipe that clients use as a model id
 * (`<model>:<name>`) or as `composition` in /v1/infer. Per adapter group it fixes either
 *
 *   weights  an exact mixture over adapters of the group (>= 0, summing to 1), or
 *   gate     the group's learned gate with a fixed top-k (`k`), or top-p (`topP`, at most
 *            `kMax` adapters; default every adapter of the group), or the group's defaults.
 *
 * Groups a composition does not name route as the request and the pack say (gates, defaults).
 *
 * This file is the model of a composition and its rules, free of storage and HTTP:
 * - `checkComposition` validates a client's definition against the adapters served now (422
 *   naming the field, 409 for a name that is the model id or an adapter id);
 * - `routingOf` turns a stored composition into the request's routing on the API node, so
 *   batchers, queue jobs and workers only ever see ordinary per-item routing (ItemRouting).
 */
import { WEIGHT_SUM_TOLERANCE } from '../engine/routing.js';
import { MoeError } from '../errors.js';
import type { FitOutcome, FitScore, FitSpec } from './fit.js';

/** What a composition fixes in one group. */
export type CompositionGroup =
  | { readonly kind: 'weights'; readonly weights: Readonly<Record<string, number>> }
  | {
      readonly kind: 'gate';
      /** Fixed top-k (top-p off). */
      readonly k?: number;
      /** Top-p in (0, 1]: the fewest adapters whose gate probabilities reach p. */
      readonly topP?: number;
      /** Cap on top-p's adapters; default: every adapter of the group. Only with topP. */
      readonly kMax?: number;
    };

/** A definition, as a client sends it (validated) or a fit produces it. */
export interface CompositionDefinition {
  readonly name: string;
  readonly description: string;
  /** group id -> what the composition fixes there; at least one group. */
  readonly groups: Readonly<Record<string, CompositionGroup>>;
}

/** How a stored composition was made. */
export type Provenance =
  | { readonly kind: 'manual' }
  | {
      readonly kind: 'fitted';
      /** The fit job that made it (GET /v1/jobs/{id} while its result lives). */
      readonly jobId: string;
      readonly task: string;
      readonly groups: readonly string[];
      readonly examples: number;
      readonly budget: FitSpec['budget'];
      readonly before: FitScore;
      readonly after: FitScore;
      readonly evaluations: number;
      readonly elapsedMs: number;
      readonly stoppedBy: FitOutcome['stoppedBy'];
    };

export interface StoredComposition extends CompositionDefinition {
  /** 1 on creation, +1 on each replacement. */
  readonly version: number;
  /** ISO time of the first version. */
  readonly createdAt: string;
  /** ISO time of this version. */
  readonly updatedAt: string;
  readonly provenance: Provenance;
}

/** What validation needs to know about the served model (ModelDescription fits). */
export interface CompositionModelView {
  readonly id: string;
  readonly groups: readonly {
    readonly id: string;
    readonly gated: boolean;
    readonly adapters: readonly string[];
  }[];
}

/** A client's group entry before validation (the wire form, snake_case). */
export interface CompositionGroupInput {
  readonly weights?: Readonly<Record<string, number>>;
  readonly gate?: { readonly k?: number; readonly top_p?: number; readonly k_max?: number };
}

/**
 * Validate a definition against the adapters served now. Weights are renormalised to sum to
 * exactly 1 and zero weights dropped. Throws COMPOSITION_INVALID (422, `details.field` names the
 * field), COMPOSITION_UNKNOWN_ADAPTER (422, with the group's adapters as `choices`) or
 * COMPOSITION_NAME_TAKEN (409).
 */
export function checkComposition(
  model: CompositionModelView,
  input: {
    readonly name: string;
    readonly description?: string | undefined;
    readonly groups: Readonly<Record<string, CompositionGroupInput>>;
  },
): CompositionDefinition {
  checkName(model, input.name);
  const entries = Object.entries(input.groups);
  if (entries.length === 0) {
    throw invalid(
      'groups',
      'groups is empty; name at least one adapter group, e.g. {"language": {"weights": {"de": 0.6, "nl": 0.4}}}.',
    );
  }
  const groups: Record<string, CompositionGroup> = {};
  for (const [groupId, entry] of entries) {
    const group = model.groups.find((g) => g.id === groupId);
    if (group === undefined) {
      const choices = model.groups.map((g) => g.id);
      throw invalid(
        `groups.${groupId}`,
        `Unknown adapter group '${groupId}'; this model's groups are: ${choices.join(', ')}.`,
        { choices },
      );
    }
    const field = `groups.${groupId}`;
    if ((entry.weights === undefined) === (entry.gate === undefined)) {
      throw invalid(
        field,
        `${field} must have exactly one of 'weights' (a fixed mixture) or 'gate' (the learned gate).`,
      );
    }
    groups[groupId] =
      entry.weights !== undefined
        ? checkWeights(group, entry.weights, `${field}.weights`)
        : checkGate(group, entry.gate!, `${field}.gate`);
  }
  return { name: input.name, description: input.description ?? '', groups };
}

/** 409 when `name` is the model id or a loaded adapter id (both are model-id segments). */
export function checkName(model: CompositionModelView, name: string): void {
  if (name === model.id) {
    throw new MoeError(
      'COMPOSITION_NAME_TAKEN',
      `'${name}' is the model's own id; choose another composition name.`,
      { field: 'name' },
    );
  }
  const owner = model.groups.find((g) => g.adapters.includes(name));
  if (owner !== undefined) {
    throw new MoeError(
      'COMPOSITION_NAME_TAKEN',
      `'${name}' is the id of an adapter in group '${owner.id}' ('${model.id}:${name}' pins it); choose another composition name.`,
      { field: 'name', group: owner.id },
    );
  }
}

function checkWeights(
  group: CompositionModelView['groups'][number],
  weights: Readonly<Record<string, number>>,
  field: string,
): CompositionGroup {
  const entries = Object.entries(weights);
  if (entries.length === 0) {
    throw invalid(field, `${field} is empty; give at least one adapter a weight.`);
  }
  let sum = 0;
  for (const [adapter, weight] of entries) {
    if (!group.adapters.includes(adapter)) {
      throw new MoeError(
        'COMPOSITION_UNKNOWN_ADAPTER',
        `${field}.${adapter}: no adapter '${adapter}' is loaded in group '${group.id}'; choose from: ${group.adapters.join(', ')}.`,
        { field: `${field}.${adapter}`, group: group.id, choices: [...group.adapters] },
      );
    }
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0) {
      throw invalid(
        `${field}.${adapter}`,
        `${field}.${adapter} is ${weight}; weights must be numbers >= 0 summing to 1.`,
      );
    }
    sum += weight;
  }
  if (Math.abs(sum - 1) > WEIGHT_SUM_TOLERANCE) {
    throw invalid(field, `The weights in ${field} sum to ${sum}; they must sum to 1.`, { sum });
  }
  const kept = entries.filter(([, w]) => w > 0).map(([id, w]) => [id, w / sum] as const);
  return { kind: 'weights', weights: Object.fromEntries(kept) };
}

function checkGate(
  group: CompositionModelView['groups'][number],
  gate: NonNullable<CompositionGroupInput['gate']>,
  field: string,
): CompositionGroup {
  if (!group.gated) {
    throw invalid(
      field,
      `Group '${group.id}' has no gate; give it fixed 'weights' over its adapters (${group.adapters.join(', ')}).`,
    );
  }
  const size = group.adapters.length;
  const integerIn = (value: number | undefined, name: string) => {
    if (value === undefined) return;
    if (!Number.isInteger(value) || value < 1 || value > size) {
      throw invalid(
        `${field}.${name}`,
        `${field}.${name} must be an integer from 1 to ${size} (the adapters loaded in '${group.id}'); got ${value}.`,
        { min: 1, max: size },
      );
    }
  };
  integerIn(gate.k, 'k');
  integerIn(gate.k_max, 'k_max');
  if (gate.top_p !== undefined && !(gate.top_p > 0 && gate.top_p <= 1)) {
    throw invalid(
      `${field}.top_p`,
      `${field}.top_p must be above 0 and at most 1; got ${gate.top_p}.`,
    );
  }
  if (gate.k !== undefined && gate.top_p !== undefined) {
    throw invalid(
      `${field}.k`,
      `${field} has both k (fixed top-k) and top_p; send one, and cap top-p with k_max.`,
    );
  }
  if (gate.k_max !== undefined && gate.top_p === undefined) {
    throw invalid(`${field}.k_max`, `${field}.k_max caps top-p; send top_p with it (or use k).`);
  }
  return {
    kind: 'gate',
    ...(gate.k === undefined ? {} : { k: gate.k }),
    ...(gate.top_p === undefined ? {} : { topP: gate.top_p }),
    ...(gate.k_max === undefined ? {} : { kMax: gate.k_max }),
  };
}

/** Adapter ids a composition names (its fixed mixtures), for the unload guard. */
export function adaptersOf(composition: CompositionDefinition): string[] {
  return Object.values(composition.groups).flatMap((group) =>
    group.kind === 'weights' ? Object.keys(group.weights) : [],
  );
}

/**
 * The unload guard of DELETE /v1/adapters/{id} and the KServe repository unload: 409
 * ADAPTER_USED_BY_COMPOSITION naming the compositions whose fixed mixtures use `adapter`, unless
 * `force`. With force the adapter is unloaded and those compositions are kept (nothing a client
 * stored is lost): they answer 422 COMPOSITION_BROKEN until the adapter is loaded again or they
 * are replaced. Returns the compositions affected.
 */
export function guardUnload(
  compositions: readonly StoredComposition[],
  adapter: string,
  force: boolean,
): string[] {
  const users = compositions.filter((c) => adaptersOf(c).includes(adapter)).map((c) => c.name);
  if (users.length > 0 && !force) {
    throw new MoeError(
      'ADAPTER_USED_BY_COMPOSITION',
      `Adapter '${adapter}' is used by the composition(s) ${users.join(', ')}: delete or replace them first, or unload with force=true (they are kept and answer 422 COMPOSITION_BROKEN until '${adapter}' is loaded again).`,
      { adapter, compositions: users },
    );
  }
  return users;
}

/** What a composition asks of the request's routing, per group (see InferRequest.composition). */
export interface CompositionRouting {
  readonly weights: Record<string, Readonly<Record<string, number>>>;
  readonly k: Record<string, number>;
  readonly topP: Record<string, number>;
}

/**
 * The routing a stored composition asks for, against the adapters served now. An adapter it
 * names may have been unloaded since (with force): COMPOSITION_BROKEN (422) naming them. A
 * gated group's k is capped at the adapters its group has now.
 */
export function routingOf(
  composition: StoredComposition,
  model: CompositionModelView,
): CompositionRouting {
  const routing: CompositionRouting = { weights: {}, k: {}, topP: {} };
  const missing: string[] = [];
  for (const [groupId, entry] of Object.entries(composition.groups)) {
    const group = model.groups.find((g) => g.id === groupId);
    if (entry.kind === 'weights') {
      const gone = Object.keys(entry.weights).filter((id) => !group?.adapters.includes(id));
      missing.push(...gone);
      routing.weights[groupId] = entry.weights;
      continue;
    }
    const size = group?.adapters.length ?? 1;
    if (entry.k !== undefined) {
      routing.k[groupId] = Math.min(entry.k, size);
      routing.topP[groupId] = 1;
    } else if (entry.topP !== undefined) {
      routing.k[groupId] = Math.min(entry.kMax ?? size, size);
      routing.topP[groupId] = entry.topP;
    }
  }
  if (missing.length > 0) {
    throw new MoeError(
      'COMPOSITION_BROKEN',
      `Composition '${composition.name}' (version ${composition.version}) uses adapters that are not loaded any more: ${missing.join(', ')}. Load them again, or replace the composition (POST /v1/compositions).`,
      { composition: composition.name, missing },
    );
  }
  return routing;
}

function invalid(field: string, message: string, extra: Record<string, unknown> = {}): MoeError {
  return new MoeError('COMPOSITION_INVALID', message, { field, ...extra });
}
