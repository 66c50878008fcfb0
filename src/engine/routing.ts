/**
 * Routing: what one item asks of each adapter group, checked against the adapters registered, and
 * turned into the graph's routing feeds at dispatch (pack-graph-contract.ts) against the slots the
 * adapters sit in then.
 *
 * Two steps, because adapters move between slots (eviction, replacement) while items wait:
 * - `planItem(view, routing)`: pure validation in adapter ids, at request time and again at
 *   dispatch. Throws MoeError with a 4xx routing code for the first problem.
 * - `GroupFeedsBuilder`: at dispatch, the plan in slot indices: bias rows, gate scale, k, top-p.
 */
import { MoeError } from '../errors.js';
import { ROUTE_BLOCKED } from '../onnx/pack-graph-contract.js';

/** What one item asks of the router, in adapter ids. */
export interface ItemRouting {
  /** group id -> adapter id: exactly this adapter (k = 1, weight 1). */
  readonly pins?: Readonly<Record<string, string>>;
  /** group id -> adapter id -> weight: exactly this mixture (weights >= 0, summing to 1). */
  readonly weights?: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** Adapter ids (of any group) never to use for this item. */
  readonly exclude?: readonly string[];
  /** group id -> most adapters to mix (1..adapters in the group); default: the group's default_k. */
  readonly k?: Readonly<Record<string, number>>;
  /** group id -> top-p in (0, 1]: the fewest adapters whose gate probabilities reach p (<= k). */
  readonly topP?: Readonly<Record<string, number>>;
}

/** What routing needs to know about one group: the registry's view of it. */
export interface GroupView {
  readonly id: string;
  readonly gated: boolean;
  /** Every adapter registered in the group (in a slot or in the host cache). */
  readonly adapters: readonly string[];
  /** Whether the gate scores this adapter (false: reachable by pins and weights only). */
  readonly gateKnows: (id: string) => boolean;
  readonly defaultK: number;
  /** Ungated groups: the adapter used when a request names none. */
  readonly defaultAdapter: string | undefined;
  readonly defaultTopP: number;
}

export interface RoutingView {
  readonly groups: readonly GroupView[];
}

/** One group's routing for one item, in adapter ids. */
export type GroupPlan =
  | {
      readonly mode: 'gate';
      readonly k: number;
      readonly topP: number;
      readonly excluded: ReadonlySet<string>;
    }
  | { readonly mode: 'fixed'; readonly weights: readonly (readonly [string, number])[] };

/** Per group, in the view's group order. */
export type ItemPlan = readonly GroupPlan[];

/** Tolerance on explicit weights summing to 1 (clients send decimals). */
export const WEIGHT_SUM_TOLERANCE = 1e-4;

/**
 * Check an item's routing against the registered adapters and resolve the defaults. Rules per group:
 * - explicit weights or a pin fix the mixture (weights must be >= 0 and sum to 1; zero-weight
 *   entries are dropped); an ungated group with neither uses its default adapter, or needs one
 *   (ROUTING_PIN_REQUIRED);
 * - otherwise the gate chooses among the adapters it knows, minus the excluded ones, with k from
 *   1 to the adapters registered, and top-p in (0,1].
 */
export function planItem(view: RoutingView, routing: ItemRouting): ItemPlan {
  const groupIds = view.groups.map((g) => g.id);
  const pins = routing.pins ?? {};
  const weights = routing.weights ?? {};
  const kByGroup = routing.k ?? {};
  const topPByGroup = routing.topP ?? {};
  for (const group of [
    ...Object.keys(pins),
    ...Object.keys(weights),
    ...Object.keys(kByGroup),
    ...Object.keys(topPByGroup),
  ]) {
    if (!groupIds.includes(group)) {
      throw new MoeError(
        'ROUTING_UNKNOWN_GROUP',
        `Unknown adapter group '${group}'; the model's groups are: ${groupIds.join(', ')}.`,
        { group, choices: groupIds },
      );
    }
  }
  const all = view.groups.flatMap((g) => g.adapters);
  const excluded = new Set(routing.exclude ?? []);
  for (const id of excluded) {
    if (!all.includes(id)) {
      throw new MoeError(
        'ROUTING_UNKNOWN_ADAPTER',
        `Cannot exclude '${id}': no such adapter is loaded. Loaded adapters: ${all.join(', ')}.`,
        { adapter: id, choices: all },
      );
    }
  }

  return view.groups.map((group): GroupPlan => {
    const explicit = weights[group.id];
    const pin = pins[group.id];
    if (explicit !== undefined && pin !== undefined) {
      throw new MoeError(
        'ROUTING_CONFLICT',
        `Group '${group.id}' is given both a pinned adapter ('${pin}') and explicit weights; send one of the two.`,
        { group: group.id },
      );
    }
    const fixed =
      explicit ??
      (pin !== undefined ? { [pin]: 1 } : undefined) ??
      (group.gated || group.defaultAdapter === undefined
        ? undefined
        : { [group.defaultAdapter]: 1 });
    if (fixed !== undefined) return fixedPlan(group, fixed, excluded);
    if (!group.gated) {
      throw new MoeError(
        'ROUTING_PIN_REQUIRED',
        `Group '${group.id}' has no gate: pin one of its adapters (${group.adapters.join(', ')}).`,
        { group: group.id, choices: [...group.adapters] },
      );
    }
    const size = group.adapters.length;
    const k = kByGroup[group.id] ?? Math.min(group.defaultK, size);
    if (!Number.isInteger(k) || k < 1 || k > size) {
      throw new MoeError(
        'ROUTING_INVALID_K',
        `top_k for group '${group.id}' must be an integer from 1 to ${size} (its loaded adapters); got ${k}.`,
        { group: group.id, min: 1, max: size, got: k },
      );
    }
    const topP = topPByGroup[group.id] ?? group.defaultTopP;
    if (!(topP > 0 && topP <= 1)) {
      throw new MoeError(
        'ROUTING_INVALID_TOP_P',
        `top_p for group '${group.id}' must be above 0 and at most 1; got ${topP}.`,
        { group: group.id, got: topP },
      );
    }
    const usable = group.adapters.filter((id) => group.gateKnows(id) && !excluded.has(id));
    if (usable.length === 0) {
      throw new MoeError(
        'ROUTING_NO_ADAPTER_LEFT',
        `The excludes leave no adapter the gate can choose in group '${group.id}'; exclude fewer or pin one.`,
        { group: group.id },
      );
    }
    return { mode: 'gate', k: Math.min(k, usable.length), topP, excluded };
  });
}

function fixedPlan(
  group: GroupView,
  weights: Readonly<Record<string, number>>,
  excluded: ReadonlySet<string>,
): GroupPlan {
  let sum = 0;
  const chosen: [string, number][] = [];
  for (const [id, weight] of Object.entries(weights)) {
    if (!group.adapters.includes(id)) {
      throw new MoeError(
        'ROUTING_UNKNOWN_ADAPTER',
        `Adapter '${id}' is not loaded in group '${group.id}'; choose one of: ${group.adapters.join(', ')}.`,
        { group: group.id, adapter: id, choices: [...group.adapters] },
      );
    }
    if (!Number.isFinite(weight) || weight < 0) {
      throw new MoeError(
        'ROUTING_INVALID_WEIGHTS',
        `The weight of adapter '${id}' in group '${group.id}' is ${weight}; weights must be numbers >= 0 summing to 1.`,
        { group: group.id, adapter: id, got: weight },
      );
    }
    if (excluded.has(id)) {
      throw new MoeError(
        'ROUTING_NO_ADAPTER_LEFT',
        `Adapter '${id}' is both chosen and excluded in group '${group.id}'; drop one of the two.`,
        { group: group.id, adapter: id },
      );
    }
    sum += weight;
    if (weight > 0) chosen.push([id, weight]);
  }
  if (chosen.length === 0 || Math.abs(sum - 1) > WEIGHT_SUM_TOLERANCE) {
    throw new MoeError(
      'ROUTING_INVALID_WEIGHTS',
      `The weights for group '${group.id}' sum to ${sum}; they must sum to 1.`,
      { group: group.id, sum },
    );
  }
  return { mode: 'fixed', weights: chosen.map(([id, w]) => [id, w / sum] as const) };
}

/** Feeds of one group for one batch (pack-graph-contract.ts). */
export interface GroupFeeds {
  readonly bias: Float32Array; // [B,S]
  readonly gateScale: Float32Array; // [B]
  readonly k: BigInt64Array; // [B]
  readonly kmax: number;
  readonly topP: Float32Array; // [B]
}

/**
 * One group's plans in slot indices. `slotOf(id)` is where the adapter sits now (it must be in a
 * slot: the engine makes fixed adapters resident before it builds the feeds); `gateSlots` are the
 * occupied slots whose adapter the gate knows.
 */
export function groupFeeds(
  plans: readonly GroupPlan[],
  slots: number,
  slotOf: (id: string) => number,
  gateSlots: readonly { slot: number; id: string }[],
): GroupFeeds {
  const B = plans.length;
  const bias = new Float32Array(B * slots).fill(ROUTE_BLOCKED);
  const gateScale = new Float32Array(B);
  const k = new BigInt64Array(B);
  const topP = new Float32Array(B).fill(1);
  let kmax = 1;
  plans.forEach((plan, b) => {
    if (plan.mode === 'fixed') {
      for (const [id, weight] of plan.weights) bias[b * slots + slotOf(id)] = Math.log(weight);
      k[b] = BigInt(plan.weights.length);
      kmax = Math.max(kmax, plan.weights.length);
      return;
    }
    gateScale[b] = 1;
    for (const { slot, id } of gateSlots) if (!plan.excluded.has(id)) bias[b * slots + slot] = 0;
    k[b] = BigInt(plan.k);
    topP[b] = plan.topP;
    kmax = Math.max(kmax, plan.k);
  });
  return { bias, gateScale, k, kmax: Math.min(kmax, slots), topP };
}
