import type { EngineGraph } from './engine.js';
import type { RunOutputs } from './protocol.js';

export interface RoutedAdapter {
  readonly adapter: string;
  readonly weight: number;
}

export interface TaskOutput {
  /** The best label and its probability. */
  readonly label: string;
  readonly score: number;
  /** Every label's probability (they sum to 1). */
  readonly scores: Readonly<Record<string, number>>;
}

/** How sure a group's gate was about an item, before any request bias. */
export interface GateHealth {
  /** Entropy (nats) of the gate's softmax over all its experts. */
  readonly entropy: number;
  /** Top-1 minus top-2 probability. */
  readonly margin: number;
}

/** One item's answer from the engine. */
export interface EngineItemResult {
  /** group id -> adapters mixed for this item, best first, weights summing to 1. */
  readonly routing: Readonly<Record<string, readonly RoutedAdapter[]>>;
  /** gated group id -> how sure its gate was. */
  readonly gates: Readonly<Record<string, GateHealth>>;
  /** task (head) id -> its prediction. */
  readonly outputs: Readonly<Record<string, TaskOutput>>;
  /** The pooled final state (L2-normalised when the pack says so). [d] */
  readonly embedding: Float32Array;
}

/**
 * Turn the pack graph's output tensors for a batch of `rows` items into per-item results.
 * `slotIds[g][s]` is the adapter that sat in slot s of group g when the batch was dispatched.
 */
export function decodeBatch(
  graph: Pick<EngineGraph, 'groups' | 'heads' | 'hiddenSize'>,
  outputs: RunOutputs,
  slotIds: readonly (readonly (string | undefined)[])[],
  rows: number,
): EngineItemResult[] {
  const d = graph.hiddenSize;
  return Array.from({ length: rows }, (_, b) => {
    const routing: Record<string, RoutedAdapter[]> = {};
    const gates: Record<string, GateHealth> = {};
    graph.groups.forEach((group, g) => {
      const experts = outputs.experts[g]!;
      const weights = outputs.weights[g]!;
      const kmax = experts.length / rows;
      const used = Number(outputs.kUsed[g]![b]);
      const chosen: RoutedAdapter[] = [];
      for (let j = 0; j < used; j++) {
        const adapter = slotIds[g]![Number(experts[b * kmax + j])];
        if (adapter !== undefined) chosen.push({ adapter, weight: weights[b * kmax + j]! });
      }
      routing[group.id] = chosen;
      if (group.gated) {
        gates[group.id] = { entropy: outputs.entropy[g]![b]!, margin: outputs.margin[g]![b]! };
      }
    });
    const taskOutputs: Record<string, TaskOutput> = {};
    graph.heads.forEach((head, h) => {
      const probs = outputs.scores[h]!;
      const width = head.labels.length;
      const scores: Record<string, number> = {};
      let best = 0;
      for (let l = 0; l < width; l++) {
        const p = probs[b * width + l]!;
        scores[head.labels[l]!] = p;
        if (p > probs[b * width + best]!) best = l;
      }
      taskOutputs[head.id] = { label: head.labels[best]!, score: probs[b * width + best]!, scores };
    });
    return {
      routing,
      gates,
      outputs: taskOutputs,
      embedding: outputs.embedding.slice(b * d, (b + 1) * d),
    };
  });
}
