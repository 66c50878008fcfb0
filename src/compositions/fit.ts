/**
 * Fitting a composition: a gradient-free search (LoRAHub-style) of the mixture weights of some
 * adapter groups that maximise a task head's accuracy (tie-break: lowest loss) on a few labelled
 * examples. It drives the model only through `Inference.infer` with explicit per-group weights, so
 * it works for top-of-backbone and in-layer adapters alike, in embedded and queue mode, and the
 * forward passes run where every other request runs (never on the HTTP thread).
 *
 * CONTRACT (shared by the HTTP routes and the search; the search body is being written):
 * - `checkFitSpec` validates a client's `fit` object against the served model and the limits, and
 *   throws MoeError 422 naming the field for any problem.
 * - `fitComposition` runs the search within the budget and returns the best weights found, with
 *   the examples' score under the model's own routing before and under the fitted weights after.
 */
import type { Inference } from '../inference/service.js';

export interface FitExample {
  readonly text: string;
  readonly label: string;
}

export interface FitBudget {
  /** Most candidate weightings evaluated (each is one pass over the examples). */
  readonly evaluations: number;
  /** Wall-clock limit of the whole search. */
  readonly seconds: number;
}

export interface FitSpec {
  /** Task (head) id whose accuracy is maximised. */
  readonly task: string;
  /** Adapter groups whose mixture weights are searched (every adapter loaded in each group). */
  readonly groups: readonly string[];
  readonly examples: readonly FitExample[];
  readonly budget: FitBudget;
}

export interface FitLimits {
  readonly maxExamples: number;
  readonly maxEvaluations: number;
  readonly maxSeconds: number;
}

export interface FitScore {
  /** Mean cross-entropy of the task head on the examples. */
  readonly loss: number;
  /** Share of examples whose top label is the example's label. */
  readonly accuracy: number;
}

export interface FitProgress {
  readonly evaluations: number;
  readonly budgetEvaluations: number;
  readonly elapsedMs: number;
  readonly best: FitScore;
}

export interface FitOutcome {
  /** group id -> adapter id -> weight (>= 0, summing to 1); zero weights left out. */
  readonly weights: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** The examples under the model's own routing (the gates, default k and top-p). */
  readonly before: FitScore;
  /** The examples under `weights`. */
  readonly after: FitScore;
  readonly evaluations: number;
  readonly elapsedMs: number;
  readonly stoppedBy: 'evaluations' | 'time' | 'converged';
}

export interface FitRunOptions {
  /** Aborts the search (the outcome so far is discarded; the promise rejects). */
  readonly signal?: AbortSignal;
  readonly onProgress?: (progress: FitProgress) => void;
}

/** Validate a client's `fit` object (body field `fit`); 422 naming the field on any problem. */
export function checkFitSpec(
  _model: ReturnType<Inference['describe']>,
  _fit: unknown,
  _limits: FitLimits,
): FitSpec {
  throw new Error('fitting compositions: being written');
}

/** Search the mixture weights of `spec.groups` within `spec.budget`. */
export async function fitComposition(
  _inference: Pick<Inference, 'infer' | 'describe'>,
  _spec: FitSpec,
  _options: FitRunOptions = {},
): Promise<FitOutcome> {
  throw new Error('fitting compositions: being written');
}
