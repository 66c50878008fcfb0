import { MoeError } from '../errors.js';
import { type MixtureLayout, ROUTE_BLOCKED, ROUTE_PINNED } from '../onnx/mixture-contract.js';

/**
 * What one item asks of the router. Adapter ids, not bank indices: they are resolved against the
 * mixture layout current when the batch is dispatched, so a batch always matches the graph it runs on.
 */
export interface ItemRouting {
  /** group id -> adapter id: use exactly this adapter in this group (k = 1, weight 1). */
  readonly pins?: Readonly<Record<string, string>>;
  /** Adapter ids (of any group) never to use for this item. */
  readonly exclude?: readonly string[];
  /** group id -> how many adapters to mix (1..adapters in the group); default: the group's default_k. */
  readonly k?: Readonly<Record<string, number>>;
}

/** Feeds for one group of the mixture graph, for a whole batch. */
export interface GroupFeeds {
  readonly bias: Float32Array; // [B,E]
  readonly k: BigInt64Array; // [B]
  readonly kmax: number;
}

/**
 * Turn per-item routing requests into the bias / k tensors of every group.
 * Pure: throws MoeError (a 4xx routing code) for the first problem in an item.
 *
 * Rules, per group:
 * - a pin puts that adapter first (ROUTE_PINNED) and uses k = 1; an ungated group without a pin
 *   uses its default adapter as the pin, or needs one (ROUTING_PIN_REQUIRED);
 * - excluded adapters and adapters the gate was not trained on get ROUTE_BLOCKED;
 * - k must be 1..E (adapters loaded in the group); it is then lowered to the number of adapters the
 *   item may still use, so the answer's routing lists only adapters really mixed.
 */
export function routeItem(layout: MixtureLayout, routing: ItemRouting): RoutedItem {
  const pins = routing.pins ?? {};
  const kByGroup = routing.k ?? {};
  const groupIds = layout.groups.map((g) => g.id);
  for (const group of [...Object.keys(pins), ...Object.keys(kByGroup)]) {
    if (!groupIds.includes(group)) {
      throw new MoeError(
        'ROUTING_UNKNOWN_GROUP',
        `Unknown adapter group '${group}'; the model's groups are: ${groupIds.join(', ')}.`,
        { group, choices: groupIds },
      );
    }
  }
  const excluded = new Set(routing.exclude ?? []);
  for (const id of excluded) {
    if (!layout.groups.some((g) => g.adapters.includes(id))) {
      throw new MoeError(
        'ROUTING_UNKNOWN_ADAPTER',
        `Cannot exclude '${id}': no such adapter is loaded. Loaded adapters: ${allAdapters(layout).join(', ')}.`,
        { adapter: id, choices: allAdapters(layout) },
      );
    }
  }

  return layout.groups.map((group) => {
    const size = group.adapters.length;
    const bias = new Float32Array(size);
    const pin = pins[group.id] ?? (group.gated ? undefined : group.defaultAdapter);
    if (pin !== undefined) {
      const index = group.adapters.indexOf(pin);
      if (index < 0) {
        throw new MoeError(
          'ROUTING_UNKNOWN_ADAPTER',
          `Adapter '${pin}' is not loaded in group '${group.id}'; choose one of: ${group.adapters.join(', ')}.`,
          { group: group.id, adapter: pin, choices: [...group.adapters] },
        );
      }
      if (excluded.has(pin)) {
        throw new MoeError(
          'ROUTING_NO_ADAPTER_LEFT',
          `Adapter '${pin}' is both pinned and excluded in group '${group.id}'; drop one of the two.`,
          { group: group.id, adapter: pin },
        );
      }
      bias.fill(ROUTE_BLOCKED);
      bias[index] = ROUTE_PINNED;
      return { bias, k: 1 };
    }
    if (!group.gated) {
      throw new MoeError(
        'ROUTING_PIN_REQUIRED',
        `Group '${group.id}' has no gate: pin one of its adapters (${group.adapters.join(', ')}).`,
        { group: group.id, choices: [...group.adapters] },
      );
    }
    const k = kByGroup[group.id] ?? Math.min(group.defaultK, size);
    if (!Number.isInteger(k) || k < 1 || k > size) {
      throw new MoeError(
        'ROUTING_INVALID_K',
        `top_k for group '${group.id}' must be an integer from 1 to ${size} (its loaded adapters); got ${k}.`,
        { group: group.id, min: 1, max: size, got: k },
      );
    }
    let usable = 0;
    group.adapters.forEach((id, e) => {
      if (excluded.has(id) || !group.gateKnows[e]) bias[e] = ROUTE_BLOCKED;
      else usable++;
    });
    if (usable === 0) {
      throw new MoeError(
        'ROUTING_NO_ADAPTER_LEFT',
        `The excludes leave no adapter the gate can choose in group '${group.id}'; exclude fewer or pin one.`,
        { group: group.id },
      );
    }
    return { bias, k: Math.min(k, usable) };
  });
}

/** An item's routing resolved against one layout: per group, its bias row [E] and its k. */
export type RoutedItem = readonly { readonly bias: Float32Array; readonly k: number }[];

/** Stack resolved items into the per-group feeds of one batch. */
export function stackRouting(layout: MixtureLayout, items: readonly RoutedItem[]): GroupFeeds[] {
  return layout.groups.map((group, g) => {
    const size = group.adapters.length;
    const bias = new Float32Array(items.length * size);
    const k = new BigInt64Array(items.length);
    let kmax = 1;
    items.forEach((item, b) => {
      const row = item[g]!;
      bias.set(row.bias, b * size);
      k[b] = BigInt(row.k);
      kmax = Math.max(kmax, row.k);
    });
    return { bias, k, kmax };
  });
}

function allAdapters(layout: MixtureLayout): string[] {
  return layout.groups.flatMap((g) => g.adapters);
}
