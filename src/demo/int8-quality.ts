/**
 * What int8 backbones cost in quality, measured on the demo's held-out sentences: the same frozen
 * random encoder built twice by our builder (float32, and `quantize: 'int8'`, src/onnx/bert.ts),
 * run over the same sentences, and the pack's trained parts (gate, adapters, heads: all float32,
 * trained on the float32 states) applied to each. This is post-training quantization as a user of
 * the pack would do it: nothing is retrained for int8.
 *
 * Figures (report.json `int8`):
 * - embedding cosine: cos(masked mean of int8 last_hidden_state, the same of float32), mean and
 *   min over the held-out sentences of every language; token cosine likewise over their tokens;
 * - head accuracy on the pack languages' held-out sentences, float32 and int8, the change in
 *   points, and how often the two predictions agree;
 * - the chosen language gate's accuracy change: a token_bag gate reads the token ids, never the
 *   backbone, so its routing cannot change (reported as measured, and why); the linear candidate
 *   (a gate over the pooled backbone state) is scored on both too.
 * The int8 states come from length-sorted batches of up to 64 held-out sentences (BackboneRunner):
 * int8 activations are quantized per batch, so another batching moves them slightly.
 */
import type { LinearGate, TokenBagGate } from '../pack/types.js';
import { argmax, type DemoPrediction } from './forward.js';
import { linearLogits, meanPool } from './train.js';

/** Targets of issue 14: cosine >= 0.99, head accuracy drop <= 1 point, gate drop <= 0.5 point. */
export const INT8_TARGETS = { cosine: 0.99, headDropPoints: 1, gateDropPoints: 0.5 } as const;

export interface Int8AccuracyChange {
  heldout_accuracy_float32: number;
  heldout_accuracy_int8: number;
  /** int8 minus float32, in percentage points. */
  change_points: number;
  /** Share of the held-out sentences where both give the same top-1 answer. */
  agreement: number;
}

export interface Int8QualityReport {
  method: string;
  /** Whether this pack's backbone.onnx is the int8 graph (build option --quantize int8). */
  served_backbone: 'float32' | 'int8';
  heldout_sentences: number;
  heldout_pack_languages: number;
  embedding_cosine: { mean: number; min: number };
  token_cosine: { mean: number; min: number; tokens: number };
  heads: Record<string, Int8AccuracyChange>;
  gate: Int8AccuracyChange & { type: string; note: string };
  linear_gate_candidate: Int8AccuracyChange | null;
  targets: {
    embedding_cosine_min: number;
    head_drop_points_max: number;
    gate_drop_points_max: number;
    met: boolean;
  };
}

export interface Int8QualityInput {
  readonly hiddenSize: number;
  /** Held-out sentence indices of every language, and those of the pack languages. */
  readonly heldout: readonly number[];
  readonly packHeldout: readonly number[];
  readonly ids: readonly Int32Array[];
  /** [length,d] states of sentence i, float32 and int8 backbone. */
  readonly floatStates: (i: number) => Float32Array;
  readonly int8States: (i: number) => Float32Array;
  readonly predict: (hidden: ArrayLike<number>, ids: ArrayLike<number>) => DemoPrediction;
  /** Per task (in the predictor's order): its id and the label of sentence i. */
  readonly tasks: readonly { readonly id: string; readonly label: (i: number) => number }[];
  /** The gate's class (language index) of sentence i. */
  readonly gateLabel: (i: number) => number;
  readonly gate: LinearGate | TokenBagGate;
  /** The linear candidate, when the chosen gate is another type. */
  readonly linearCandidate: LinearGate | null;
  readonly servedBackbone: 'float32' | 'int8';
}

export function measureInt8Quality(input: Int8QualityInput): Int8QualityReport {
  const d = input.hiddenSize;
  const pooled = (states: Float32Array, i: number) => meanPool(states, input.ids[i]!.length, d);
  let cosSum = 0;
  let cosMin = 1;
  let tokenSum = 0;
  let tokenMin = 1;
  let tokens = 0;
  for (const i of input.heldout) {
    const a = input.floatStates(i);
    const b = input.int8States(i);
    const c = cosine(pooled(a, i), pooled(b, i), 0, d);
    cosSum += c;
    cosMin = Math.min(cosMin, c);
    for (let t = 0; t < input.ids[i]!.length; t++) {
      const ct = cosine(a, b, t * d, d);
      tokenSum += ct;
      tokenMin = Math.min(tokenMin, ct);
      tokens++;
    }
  }
  const set = input.packHeldout;
  const floatPredictions = new Map(
    set.map((i) => [i, input.predict(input.floatStates(i), input.ids[i]!)]),
  );
  const int8Predictions = new Map(
    set.map((i) => [i, input.predict(input.int8States(i), input.ids[i]!)]),
  );
  const change = (
    guessFloat: (i: number) => number,
    guessInt8: (i: number) => number,
    label: (i: number) => number,
  ): Int8AccuracyChange => {
    const n = Math.max(set.length, 1);
    const float = set.filter((i) => guessFloat(i) === label(i)).length / n;
    const int8 = set.filter((i) => guessInt8(i) === label(i)).length / n;
    return {
      heldout_accuracy_float32: round4(float),
      heldout_accuracy_int8: round4(int8),
      change_points: round2((int8 - float) * 100),
      agreement: round4(set.filter((i) => guessFloat(i) === guessInt8(i)).length / n),
    };
  };
  const heads = Object.fromEntries(
    input.tasks.map((task, j) => [
      task.id,
      change(
        (i) => argmax(floatPredictions.get(i)!.scores[j]!),
        (i) => argmax(int8Predictions.get(i)!.scores[j]!),
        task.label,
      ),
    ]),
  );
  const gate = {
    type: input.gate.type,
    ...change(
      (i) => floatPredictions.get(i)!.experts[0]!,
      (i) => int8Predictions.get(i)!.experts[0]!,
      input.gateLabel,
    ),
    note:
      input.gate.type === 'token_bag'
        ? 'a token_bag gate reads the token ids, never the backbone: its routing cannot change with the backbone (measured: the same)'
        : 'the gate reads the pooled backbone state',
  };
  const linear = input.linearCandidate;
  const linearTop1 = (states: (i: number) => Float32Array) => (i: number) =>
    argmax(linearLogits(pooled(states(i), i), linear!.weight.data, linear!.bias.data));
  const linearChange =
    linear === null
      ? null
      : change(linearTop1(input.floatStates), linearTop1(input.int8States), input.gateLabel);
  const met =
    cosMin >= INT8_TARGETS.cosine &&
    Object.values(heads).every((h) => -h.change_points <= INT8_TARGETS.headDropPoints) &&
    -gate.change_points <= INT8_TARGETS.gateDropPoints;
  return {
    method:
      'the frozen backbone built again with quantize int8 (int8 weights with per-column scales, uint8 activations quantized per batch at run time; src/onnx/bert.ts), run over the held-out sentences; the trained float32 gate, adapters and heads applied to both backbones’ states (post-training quantization: nothing retrained)',
    served_backbone: input.servedBackbone,
    heldout_sentences: input.heldout.length,
    heldout_pack_languages: set.length,
    embedding_cosine: {
      mean: round6(cosSum / Math.max(input.heldout.length, 1)),
      min: round6(cosMin),
    },
    token_cosine: { mean: round6(tokenSum / Math.max(tokens, 1)), min: round6(tokenMin), tokens },
    heads,
    gate,
    linear_gate_candidate: linearChange,
    targets: {
      embedding_cosine_min: INT8_TARGETS.cosine,
      head_drop_points_max: INT8_TARGETS.headDropPoints,
      gate_drop_points_max: INT8_TARGETS.gateDropPoints,
      met,
    },
  };
}

/** Cosine of a[offset, offset + n) and b[offset, offset + n). */
function cosine(a: ArrayLike<number>, b: ArrayLike<number>, offset: number, n: number): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let j = offset; j < offset + n; j++) {
    ab += a[j]! * b[j]!;
    aa += a[j]! * a[j]!;
    bb += b[j]! * b[j]!;
  }
  return aa === 0 || bb === 0 ? (aa === bb ? 1 : 0) : ab / Math.sqrt(aa * bb);
}

function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}
