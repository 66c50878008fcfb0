/**
 * Model ids, for clients whose only routing knob is a model name (the OpenAI `model` field, the
 * KServe model name in the URL), and the `composition` field of /v1/infer:
 *
 *   <model>                            the base model: the gates route every input
 *   <model>:<name>                     the named composition <name> (POST /v1/compositions)
 *   <model>:<adapter>[+<adapter>...]   these adapters pinned, at most one per group, e.g.
 *                                      `demo:de` or `demo:de+sentiment` (MAD-X style stacking)
 *
 * Adapter ids and composition names cannot contain ':' or '+' (the pack ID_PATTERN), and a
 * composition cannot be created under a loaded adapter's id, so an id is unambiguous; should an
 * adapter be loaded later under a composition's name, the composition wins (named first).
 * Resolution happens on the API node; a named composition becomes the request's routing there
 * (`requestComposition`), so batchers, queue jobs and workers never see compositions.
 */
import { MoeError } from '../errors.js';
import type { RequestComposition } from '../inference/model.js';
import type { ModelDescription } from '../inference/service.js';
import { routingOf, type StoredComposition } from './composition.js';
import type { CompositionStore } from './store.js';

/** What a model id names. */
export type ModelTarget =
  | { readonly kind: 'base'; readonly id: string }
  | { readonly kind: 'pins'; readonly id: string; readonly pins: Readonly<Record<string, string>> }
  | { readonly kind: 'named'; readonly id: string; readonly composition: StoredComposition };

/** `<model>` or `<model>:<a>+<b>`. */
export function pinnedModelId(model: string, adapters: readonly string[]): string {
  return adapters.length === 0 ? model : `${model}:${adapters.join('+')}`;
}

/** `<model>:<name>`. */
export function namedModelId(model: string, name: string): string {
  return `${model}:${name}`;
}

/** One pinning model id per loaded adapter, in group order (what the listings show). */
export function adapterTargets(model: ModelDescription): (ModelTarget & { kind: 'pins' })[] {
  return model.groups.flatMap((group) =>
    group.adapters.map((adapter) => ({
      kind: 'pins' as const,
      id: pinnedModelId(model.id, [adapter]),
      pins: { [group.id]: adapter },
    })),
  );
}

/**
 * Resolve a model id: MODEL_NOT_FOUND (404) naming the choices when it names nothing served.
 * Named compositions this node knows come first; an id that is neither those nor loaded
 * adapters is looked up in the shared store (queue mode: created on another node just now).
 */
export async function resolveModelId(
  model: ModelDescription,
  store: CompositionStore,
  id: string,
  field = 'model',
): Promise<ModelTarget> {
  if (id === model.id) return { kind: 'base', id };
  const prefix = `${model.id}:`;
  if (!id.startsWith(prefix)) {
    throw unknownModel(model, store, id, field, `'${id}' is not served here.`);
  }
  const rest = id.slice(prefix.length);
  const known = store.get(rest);
  if (known !== undefined) return { kind: 'named', id, composition: known };
  const pins: Record<string, string> = {};
  let why: string | undefined;
  for (const adapter of rest.split('+')) {
    const group = model.groups.find((g) => g.adapters.includes(adapter));
    if (group === undefined) {
      why = `No adapter '${adapter}' is loaded, and no composition is named so.`;
      break;
    }
    if (pins[group.id] !== undefined) {
      throw unknownModel(
        model,
        store,
        id,
        field,
        `'${pins[group.id]}' and '${adapter}' are both in group '${group.id}'; pin one adapter per group.`,
      );
    }
    pins[group.id] = adapter;
  }
  if (why === undefined) return { kind: 'pins', id, pins };
  const found = rest.includes('+') ? undefined : await store.find(rest);
  if (found !== undefined) return { kind: 'named', id, composition: found };
  throw unknownModel(model, store, id, field, why);
}

/** The `composition` field of /v1/infer: a composition name. COMPOSITION_NOT_FOUND (404). */
export async function resolveCompositionName(
  model: ModelDescription,
  store: CompositionStore,
  name: string,
  field = 'composition',
): Promise<ModelTarget & { kind: 'named' }> {
  const found = await store.find(name);
  if (found === undefined) {
    const choices = store.list().map((c) => c.name);
    throw new MoeError(
      'COMPOSITION_NOT_FOUND',
      `No composition '${name}'. ${choices.length === 0 ? 'None is stored yet: create one with POST /v1/compositions.' : `Stored compositions: ${choices.join(', ')}.`}`,
      { field, choices },
    );
  }
  return { kind: 'named', id: namedModelId(model.id, name), composition: found };
}

/** What the target fixes in a request; undefined for the base model. */
export function requestComposition(
  target: ModelTarget,
  model: ModelDescription,
): RequestComposition | undefined {
  switch (target.kind) {
    case 'base':
      return undefined;
    case 'pins':
      return { id: target.id, pins: target.pins };
    case 'named': {
      const routing = routingOf(target.composition, model);
      return { id: target.id, ...routing };
    }
  }
}

/** The named composition that serves a request, as answers show it; undefined otherwise. */
export function servedBy(
  target: ModelTarget | undefined,
): { readonly name: string; readonly version: number } | undefined {
  return target?.kind === 'named'
    ? { name: target.composition.name, version: target.composition.version }
    : undefined;
}

function unknownModel(
  model: ModelDescription,
  store: CompositionStore,
  id: string,
  field: string,
  why: string,
): MoeError {
  const choices = [
    model.id,
    ...store.list().map((c) => namedModelId(model.id, c.name)),
    ...adapterTargets(model).map((t) => t.id),
  ];
  return new MoeError(
    'MODEL_NOT_FOUND',
    `Unknown model '${id}': ${why} Use '${model.id}' (learned routing), '${model.id}:<composition>' (GET /v1/compositions) or '${model.id}:<adapter>[+<adapter>...]' with loaded adapters: ${choices.join(', ')}.`,
    { field, choices },
  );
}
