/**
 * The model cards of GET /v1/models and GET /v1/models/{id} (OpenAI's model object, with our own
 * fields): the base model, each named composition (`<model>:<name>`), and one pinning id per
 * loaded adapter (`<model>:<adapter>`). What the ids mean and how they resolve is
 * compositions/model-ids.ts.
 */
import type { StoredComposition } from '../compositions/composition.js';
import { adapterTargets, type ModelTarget, namedModelId } from '../compositions/model-ids.js';
import type { CompositionStore } from '../compositions/store.js';
import type { ModelDescription } from '../inference/service.js';
import { compositionJson } from './composition-json.js';

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

/** The card of a pinning id: its parent model and the adapters it pins. */
export function pinsCard(
  model: ModelDescription,
  target: { readonly id: string; readonly pins: Readonly<Record<string, string>> },
  createdAt: number,
) {
  return {
    id: target.id,
    object: 'model' as const,
    created: createdAt,
    owned_by: 'moe-serve',
    parent: model.id,
    adapters: { ...target.pins },
  };
}

/** The card of a named composition: its parent model and the composition itself. */
export function namedCard(
  model: ModelDescription,
  composition: StoredComposition,
  createdAt: number,
) {
  return {
    id: namedModelId(model.id, composition.name),
    object: 'model' as const,
    created: createdAt,
    owned_by: 'moe-serve',
    parent: model.id,
    composition: compositionJson(composition, model),
  };
}

/** The card of whatever `target` names. */
export function cardOf(model: ModelDescription, target: ModelTarget, createdAt: number) {
  switch (target.kind) {
    case 'base':
      return modelCard(model, createdAt);
    case 'pins':
      return pinsCard(model, target, createdAt);
    case 'named':
      return namedCard(model, target.composition, createdAt);
  }
}

/** GET /v1/models: the base model card, then the named compositions, then one id per adapter. */
export function modelList(model: ModelDescription, store: CompositionStore, createdAt: number) {
  return {
    object: 'list' as const,
    data: [
      modelCard(model, createdAt),
      ...store.list().map((c) => namedCard(model, c, createdAt)),
      ...adapterTargets(model).map((t) => pinsCard(model, t, createdAt)),
    ],
  };
}
