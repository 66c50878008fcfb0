/**
 * Fitting a composition: a gradient-free search (LoRAHub-style) of the mixture weights of some
 * adapter groups that maximise a task head's accuracy (tie-break: lowest loss) on a few labelled
 * examples. It drives the model only through `Inference.infer` with explicit per-group weights, so
 * it works for top-of-backbone and in-layer adapters alike, in embedded and queue mode, and the
 * forward passes run where every other request runs (never on the HTTP thread).
 *
 * CONTRACT (shared by the HTTP routes and the search):
 * - `checkFitSpec` validates a client's `fit` object against the served model and the limits, and
 *   throws MoeError 422 naming the field for any problem.
 * - `fitComposition` runs the search within the budget and returns the best weights found, with
 *   the examples' score under the model's own routing before and under the fitted weights after.
 *
 * THE SEARCH (why it is built this way: 20 examples are few, and the check that matters is the
 * fitted weights against the gate's own routing on text the fit never saw):
 * 1. `before`: the examples under the model's own routing. Its routing gives, per fitted group,
 *    the gate's average weights over the examples (w0): where the search starts, and what it is
 *    pulled back toward.
 * 2. The first candidates are w0 and the corners (single adapters) that the gate chose first for
 *    some example (one group at one adapter, the other groups at w0): the fit is never worse on
 *    the examples than the gate's favourite adapters. Other adapters are reached only when the
 *    search is pulled there; the search stays near what the gate does unless the examples pay
 *    for moving (every corner first would spend 15 of the demo's ~60 evaluations on adapters of
 *    unrelated languages, and give the ranking more chances to fit noise in 20 examples).
 * 3. Separable CMA-ES on the product of the groups' simplices (search.ts), in generations whose
 *    candidates are evaluated concurrently (so that the engine batches them together), ranks
 *    candidates by accuracy on the examples, then by the penalised loss
 *        mean cross-entropy + regularization * TV(w, w0)
 *    (TV: total variation distance, averaged over the groups). Accuracy moves in steps of one
 *    example and is flat between them; the loss orders the points of a plateau, and the penalty
 *    makes moving away from the gate's own choice cost something. LoRAHub minimises loss + L1 on
 *    its weights; on the simplex every point has L1 = 1, so the penalty here is the distance to
 *    what the gate would do instead. Loss alone is not enough: in the test pack
 *    (test/compositions-fit.test.ts) the adapter that labelled every example right has flat
 *    probabilities, and mixtures of others have a lower mean cross-entropy with fewer right.
 * 4. The result is the best candidate by that order (the contract's "accuracy, then loss").
 */
import { MoeError } from '../errors.js';
import type { InferRequest } from '../inference/model.js';
import type { InferAnswer, Inference } from '../inference/service.js';
import { type SimplexPoint, searchSimplices } from './search.js';

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
  /** Longest example text in characters; default: no limit here (the HTTP body limit applies). */
  readonly maxExampleChars?: number;
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

export type FitRank = 'accuracy' | 'loss';

export interface FitRunOptions {
  /** Aborts the search (the outcome so far is discarded; the promise rejects). */
  readonly signal?: AbortSignal;
  /** Called after the first candidates and after every generation. */
  readonly onProgress?: (progress: FitProgress) => void;
  /** Seed of the search's samples; same seed, examples and model: same outcome. Default 1. */
  readonly seed?: number;
  /**
   * Weight of the pull toward the gate's average routing on the examples (nats of mean
   * cross-entropy per unit of total variation distance). Default DEFAULT_FIT_REGULARIZATION.
   */
  readonly regularization?: number;
  /**
   * How candidates are ranked: 'accuracy' (default; the contract's "accuracy, then loss") or
   * 'loss' (the penalised loss alone: smoother, and less swayed by one example more or less).
   */
  readonly rank?: FitRank;
  /** Examples per `infer` call (the server's per-request input limit); default 32. */
  readonly inputsPerCall?: number;
  /**
   * Most example inputs in flight at once over all concurrent calls (stay under the service's
   * admission limit: past it, calls are refused with OVERLOADED, which the fit retries); default 256.
   */
  readonly inputsInFlight?: number;
}

/** Budget when the client names none (each part capped by the limits). */
export const DEFAULT_FIT_BUDGET: FitBudget = { evaluations: 150, seconds: 60 };

/**
 * Default pull toward the gate's routing: moving all the way from it to another adapter must
 * lower the examples' mean cross-entropy by 0.05 nats to pay off.
 */
export const DEFAULT_FIT_REGULARIZATION = 0.05;

/**
 * Validate a client's `fit` object (body field `fit`) against the served model and the limits;
 * MoeError FIT_INVALID (422) naming the field (`fit.examples[3].label`, ...) on the first problem.
 * Rules:
 * - `task`: one of the model's tasks.
 * - `examples`: 1..maxExamples objects `{text, label}`, text non-empty (and at most
 *   maxExampleChars), label one of the task's labels.
 * - `groups`: a non-empty list of distinct groups of the model, each with at least one loaded
 *   adapter, and not the group whose adapter the task's head pins (its head is trained through
 *   that one adapter: mixing it would answer another question, and the request would conflict).
 *   Gated and ungated groups are both accepted (explicit weights route either); a group with one
 *   adapter is accepted and gets weight 1 (nothing to search).
 * - `budget` (optional): `evaluations` an integer in 1..maxEvaluations and `seconds` a number in
 *   (0, maxSeconds]; missing parts default to DEFAULT_FIT_BUDGET capped by the limits.
 * - No other fields (a misspelt `budget` would silently be the default otherwise).
 */
export function checkFitSpec(
  model: ReturnType<Inference['describe']>,
  fit: unknown,
  limits: FitLimits,
): FitSpec {
  const record = objectAt(fit, 'fit');
  onlyKeys(record, 'fit', ['examples', 'task', 'groups', 'budget']);

  const taskIds = model.tasks.map((t) => t.id);
  if (typeof record.task !== 'string') {
    throw invalid('fit.task', `must name a task, one of: ${taskIds.join(', ')}`, taskIds);
  }
  const task = model.tasks.find((t) => t.id === record.task);
  if (task === undefined) {
    throw invalid(
      'fit.task',
      `unknown task '${record.task}'; choose one of: ${taskIds.join(', ')}`,
      taskIds,
    );
  }

  if (!Array.isArray(record.examples) || record.examples.length === 0) {
    throw invalid('fit.examples', 'must be a non-empty list of {text, label}');
  }
  if (record.examples.length > limits.maxExamples) {
    throw invalid(
      'fit.examples',
      `has ${record.examples.length} examples; at most ${limits.maxExamples} are accepted`,
    );
  }
  const examples = record.examples.map((raw: unknown, i: number): FitExample => {
    const field = `fit.examples[${i}]`;
    const example = objectAt(raw, field);
    onlyKeys(example, field, ['text', 'label']);
    if (typeof example.text !== 'string' || !/\S/.test(example.text)) {
      throw invalid(`${field}.text`, 'must be a non-empty text');
    }
    if (limits.maxExampleChars !== undefined && example.text.length > limits.maxExampleChars) {
      throw invalid(
        `${field}.text`,
        `has ${example.text.length} characters; at most ${limits.maxExampleChars} are accepted`,
      );
    }
    if (typeof example.label !== 'string' || !task.labels.includes(example.label)) {
      throw invalid(
        `${field}.label`,
        `unknown label ${JSON.stringify(example.label)} for task '${task.id}'; choose one of: ${task.labels.join(', ')}`,
        task.labels,
      );
    }
    return { text: example.text, label: example.label };
  });

  const groupIds = model.groups.map((g) => g.id);
  if (!Array.isArray(record.groups) || record.groups.length === 0) {
    throw invalid(
      'fit.groups',
      `must name at least one adapter group: ${groupIds.join(', ')}`,
      groupIds,
    );
  }
  const groups: string[] = [];
  record.groups.forEach((raw: unknown, i: number) => {
    const field = `fit.groups[${i}]`;
    const group = model.groups.find((g) => g.id === raw);
    if (typeof raw !== 'string' || group === undefined) {
      throw invalid(
        field,
        `unknown group ${JSON.stringify(raw)}; choose from: ${groupIds.join(', ')}`,
        groupIds,
      );
    }
    if (groups.includes(group.id)) throw invalid(field, `group '${group.id}' is named twice`);
    if (group.adapters.length === 0)
      throw invalid(field, `group '${group.id}' has no adapter loaded`);
    if (task.pin?.group === group.id) {
      throw invalid(
        field,
        `task '${task.id}' runs through ${group.id}=${task.pin.adapter} (its head is trained on it); fit other groups`,
      );
    }
    groups.push(group.id);
  });

  return { task: task.id, groups, examples, budget: checkBudget(record.budget, limits) };
}

function checkBudget(raw: unknown, limits: FitLimits): FitBudget {
  const defaults: FitBudget = {
    evaluations: Math.min(DEFAULT_FIT_BUDGET.evaluations, limits.maxEvaluations),
    seconds: Math.min(DEFAULT_FIT_BUDGET.seconds, limits.maxSeconds),
  };
  if (raw === undefined) return defaults;
  const budget = objectAt(raw, 'fit.budget');
  onlyKeys(budget, 'fit.budget', ['evaluations', 'seconds']);
  const { evaluations, seconds } = budget;
  if (
    evaluations !== undefined &&
    !(
      Number.isInteger(evaluations) &&
      (evaluations as number) >= 1 &&
      (evaluations as number) <= limits.maxEvaluations
    )
  ) {
    throw invalid(
      'fit.budget.evaluations',
      `must be an integer from 1 to ${limits.maxEvaluations}; got ${JSON.stringify(evaluations)}`,
    );
  }
  if (
    seconds !== undefined &&
    !(typeof seconds === 'number' && seconds > 0 && seconds <= limits.maxSeconds)
  ) {
    throw invalid(
      'fit.budget.seconds',
      `must be a number above 0 and at most ${limits.maxSeconds}; got ${JSON.stringify(seconds)}`,
    );
  }
  return {
    evaluations: (evaluations as number | undefined) ?? defaults.evaluations,
    seconds: (seconds as number | undefined) ?? defaults.seconds,
  };
}

function invalid(field: string, problem: string, choices?: readonly string[]): MoeError {
  return new MoeError('FIT_INVALID', `${field}: ${problem}.`, {
    field,
    ...(choices === undefined ? {} : { choices: [...choices] }),
  });
}

function objectAt(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(field, 'must be an object');
  }
  return value as Record<string, unknown>;
}

function onlyKeys(
  record: Record<string, unknown>,
  field: string,
  allowed: readonly string[],
): void {
  for (const key of Object.keys(record)) {
    if (!allowed.includes(key)) {
      throw invalid(`${field}.${key}`, `unknown field; ${field} takes: ${allowed.join(', ')}`);
    }
  }
}

/** One evaluated weighting: its score on the examples and the penalised loss the search ranks. */
interface Evaluated {
  readonly point: SimplexPoint;
  readonly score: FitScore;
  readonly objective: number;
}

/**
 * Better by the ranking chosen (FitRunOptions.rank): 'accuracy' (the contract's order: higher
 * accuracy, then lower penalised loss) or 'loss' (lower penalised loss only).
 */
function better(a: Evaluated, b: Evaluated | undefined, rank: FitRank): boolean {
  if (b === undefined) return true;
  if (rank === 'accuracy' && a.score.accuracy !== b.score.accuracy) {
    return a.score.accuracy > b.score.accuracy;
  }
  return a.objective < b.objective;
}

/** Rank cost of one example answered wrong: above any mean cross-entropy (floored at 1e-12). */
const WRONG_EXAMPLE_RANK_COST = 100;

/** Raised inside the objective when the time budget ran out mid-generation. */
class OutOfTime extends Error {}

/**
 * Search the mixture weights of `spec.groups` within `spec.budget` (see the header for the
 * method). Each candidate is one pass over the examples (`infer` with explicit weights per group,
 * `inputsPerCall` examples a call); a generation's candidates run concurrently. The time budget is
 * the calls' deadline too: a generation cut by it is dropped and the best so far returned
 * (`stoppedBy: 'time'`); if not even `before` and the first candidates finish in time, the call
 * rejects with the timeout. An abort rejects with the signal's reason.
 */
export async function fitComposition(
  inference: Pick<Inference, 'infer' | 'describe'>,
  spec: FitSpec,
  options: FitRunOptions = {},
): Promise<FitOutcome> {
  const started = performance.now();
  const deadline = started + spec.budget.seconds * 1000;
  const { signal } = options;
  signal?.throwIfAborted();
  const regularization = options.regularization ?? DEFAULT_FIT_REGULARIZATION;
  const rank = options.rank ?? 'accuracy';
  const inputsPerCall = Math.max(1, options.inputsPerCall ?? 32);
  const callsInFlight = Math.max(1, Math.floor((options.inputsInFlight ?? 256) / inputsPerCall));
  const model = inference.describe();
  const adaptersOf = spec.groups.map((id) => {
    const group = model.groups.find((g) => g.id === id);
    if (group === undefined)
      throw new MoeError('FIT_INVALID', `fit.groups: unknown group '${id}'.`);
    return group.adapters;
  });
  const texts = spec.examples.map((e) => e.text);
  const labels = spec.examples.map((e) => e.label);
  const limiter = new CallLimiter(callsInFlight);

  /** All examples under one routing, `inputsPerCall` per call, the calls in parallel. */
  const run = async (adapters: InferRequest['adapters']): Promise<InferAnswer['results']> => {
    const chunks: string[][] = [];
    for (let i = 0; i < texts.length; i += inputsPerCall)
      chunks.push(texts.slice(i, i + inputsPerCall));
    const answers = await Promise.all(
      chunks.map((inputs) =>
        limiter.run(() =>
          inferRetryingOverload(
            inference,
            { inputs, task: spec.task, ...(adapters === undefined ? {} : { adapters }) },
            { deadline, ...(signal === undefined ? {} : { signal }) },
          ),
        ),
      ),
    );
    return answers.flatMap((a) => a.results);
  };
  const scoreOf = (results: InferAnswer['results']): FitScore => {
    let loss = 0;
    let correct = 0;
    results.forEach((result, i) => {
      const output = result.outputs[spec.task]!;
      loss -= Math.log(Math.max(output.scores[labels[i]!] ?? 0, 1e-12));
      if (output.label === labels[i]) correct += 1;
    });
    return { loss: loss / results.length, accuracy: correct / results.length };
  };

  // 1. The model's own routing: the score to beat, and the gate's average weights (w0).
  const beforeResults = await run(undefined);
  const before = scoreOf(beforeResults);
  const start: number[][] = adaptersOf.map((adapters) =>
    new Array<number>(adapters.length).fill(0),
  );
  const favourites = new Set<string>(); // "group index/adapter index" chosen first for an example
  for (const result of beforeResults) {
    spec.groups.forEach((group, g) => {
      const routed = result.routing[group] ?? [];
      routed.forEach(({ adapter, weight }, rank) => {
        const a = adaptersOf[g]!.indexOf(adapter);
        if (a < 0) return; // unloaded since describe(): not searchable
        start[g]![a]! += weight / beforeResults.length;
        if (rank === 0) favourites.add(`${g}/${a}`);
      });
    });
  }
  start.forEach((w, g) => {
    const total = w.reduce((x, y) => x + y, 0);
    start[g] = total > 0 ? w.map((x) => x / total) : w.map(() => 1 / w.length);
  });
  const distanceFromStart = (point: SimplexPoint) =>
    point.reduce(
      (sum, w, g) => sum + 0.5 * w.reduce((s, x, a) => s + Math.abs(x - start[g]![a]!), 0),
      0,
    ) / point.length;
  // The favourites' corners: each group at its favourite adapter, the other groups at w0.
  const initial: SimplexPoint[] = [...favourites].map((key) => {
    const [g, a] = key.split('/').map(Number) as [number, number];
    return start.map((w, h) => (h === g ? w.map((_, i) => (i === a ? 1 : 0)) : w));
  });

  const evaluated: Evaluated[] = [];
  let best: Evaluated | undefined;
  const weightsOf = (point: SimplexPoint): Record<string, Record<string, number>> =>
    Object.fromEntries(
      spec.groups.map((group, g) => [
        group,
        Object.fromEntries(
          adaptersOf[g]!.flatMap((adapter, a) =>
            point[g]![a]! > 0 ? [[adapter, point[g]![a]!]] : [],
          ),
        ),
      ]),
    );
  const report = () =>
    options.onProgress?.({
      evaluations: evaluated.length,
      budgetEvaluations: spec.budget.evaluations,
      elapsedMs: performance.now() - started,
      best: best!.score,
    });

  const objective = async (points: readonly SimplexPoint[]): Promise<number[]> => {
    let scores: FitScore[];
    try {
      scores = await Promise.all(points.map(async (point) => scoreOf(await run(weightsOf(point)))));
    } catch (error) {
      if (error instanceof MoeError && error.code === 'REQUEST_TIMEOUT' && evaluated.length > 0) {
        throw new OutOfTime();
      }
      throw error;
    }
    const values = points.map((point, i) => {
      const entry = {
        point,
        score: scores[i]!,
        objective: scores[i]!.loss + regularization * distanceFromStart(point),
      };
      evaluated.push(entry);
      if (better(entry, best, rank)) best = entry;
      // The same order as `better`, as one number for the rank-based search: each example
      // answered wrong costs more than any loss difference (a mean cross-entropy is below 28
      // nats, probabilities being floored at 1e-12, and the penalty adds at most
      // `regularization`).
      const wrong = Math.round((1 - entry.score.accuracy) * spec.examples.length);
      return rank === 'accuracy'
        ? wrong * (WRONG_EXAMPLE_RANK_COST + regularization) + entry.objective
        : entry.objective;
    });
    report();
    return values;
  };

  let stoppedBy: FitOutcome['stoppedBy'];
  try {
    const result = await searchSimplices(objective, {
      sizes: adaptersOf.map((a) => a.length),
      start,
      initial,
      seed: options.seed ?? 1,
      maxEvaluations: spec.budget.evaluations,
      shouldStop: () => signal?.aborted === true || performance.now() >= deadline,
    });
    stoppedBy = result.stoppedBy === 'stopped' ? 'time' : result.stoppedBy;
  } catch (error) {
    signal?.throwIfAborted(); // an abort mid-generation rejects with its reason, not the engine's
    if (!(error instanceof OutOfTime)) throw error;
    stoppedBy = 'time';
  }
  signal?.throwIfAborted();
  const chosen = best!;
  return {
    weights: weightsOf(chosen.point),
    before,
    after: chosen.score,
    evaluations: evaluated.length,
    elapsedMs: performance.now() - started,
    stoppedBy,
  };
}

/** At most `limit` calls at once; the others wait in order. */
class CallLimiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  async run<T>(call: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((go) => this.waiting.push(go));
    this.active += 1;
    try {
      return await call();
    } finally {
      this.active -= 1;
      this.waiting.shift()?.();
    }
  }
}

/**
 * `infer` as background work (InferOptions.background: batched behind interactive items, within
 * part of the admission bound), retried while the service sheds load (OVERLOADED, 429) until the
 * deadline: a fit yields to interactive traffic, and does not fail because of it.
 */
async function inferRetryingOverload(
  inference: Pick<Inference, 'infer'>,
  request: InferRequest,
  options: { deadline: number; signal?: AbortSignal },
): Promise<InferAnswer> {
  for (let delayMs = 20; ; delayMs = Math.min(delayMs * 2, 1000)) {
    try {
      return await inference.infer(request, { ...options, background: true });
    } catch (error) {
      const overloaded = error instanceof MoeError && error.code === 'OVERLOADED';
      if (!overloaded || performance.now() + delayMs >= options.deadline) throw error;
      options.signal?.throwIfAborted();
      await new Promise((wake) => setTimeout(wake, delayMs));
    }
  }
}
