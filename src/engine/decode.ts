import type { MixtureLayout } from '../onnx/mixture-contract.js';
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

/** One item's answer from the engine. */
export interface EngineItemResult {
  /** group id -> adapters mixed for this item, best first, weights summing to 1. */
  readonly routing: Readonly<Record<string, readonly RoutedAdapter[]>>;
  /** task (head) id -> its prediction. */
  readonly outputs: Readonly<Record<string, TaskOutput>>;
  /** Masked mean of the final hidden states, L2-normalised. [d] */
  readonly embedding: Float32Array;
}

/**
 * Turn the mixture graph's output tensors for a batch into per-item results. `ks[b][g]` is the
 * number of experts item b mixes in group g; the slots after it (weight 0) are left out.
 */
export function decodeBatch(
  layout: MixtureLayout,
  outputs: RunOutputs,
  ks: readonly (readonly number[])[],
): EngineItemResult[] {
  const d = layout.hiddenSize;
  return ks.map((itemKs, b) => {
    const routing: Record<string, RoutedAdapter[]> = {};
    layout.groups.forEach((group, g) => {
      const experts = outputs.experts[g]!;
      const weights = outputs.weights[g]!;
      const kmax = experts.length / ks.length;
      const chosen: RoutedAdapter[] = [];
      for (let j = 0; j < itemKs[g]!; j++) {
        const adapter = group.adapters[Number(experts[b * kmax + j])]!;
        chosen.push({ adapter, weight: weights[b * kmax + j]! });
      }
      routing[group.id] = chosen;
    });
    const taskOutputs: Record<string, TaskOutput> = {};
    layout.heads.forEach((head, h) => {
      const probs = outputs.scores[h]!;
      const width = head.labels.length;
      const scores: Record<string, number> = {};
      let best = 0;
      for (let l = 0; l < width; l++) {
        const p = probs[b * width + l]!;
        scores[head.labels[l]!] = p;
        if (p > probs[b * width + best]!) best = l;
      }
      taskOutputs[head.id] = {
        label: head.labels[best]!,
        score: probs[b * width + best]!,
        scores,
      };
    });
    return {
      routing,
      outputs: taskOutputs,
      embedding: outputs.embedding.slice(b * d, (b + 1) * d),
    };
  });
}
