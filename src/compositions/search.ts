/**
 * A small gradient-free optimiser over a product of probability simplices: the mixture weights of
 * one or more adapter groups, each group's weights >= 0 summing to 1. Pure (no I/O, no clock):
 * the objective is an async function of a whole generation of points, so the caller can evaluate
 * them concurrently (one engine batch), and `shouldStop` is how a time budget or an abort reaches
 * it. Deterministic given `seed` and a deterministic objective.
 *
 * The method: separable CMA-ES (Ros & Hansen 2008, "A simple modification in CMA-ES achieving
 * linear time and space complexity") in R^n, where a sample x is evaluated at its Euclidean
 * projection onto each group's simplex (Duchi et al. 2008, "Efficient projections onto the l1-ball").
 * - Why CMA-ES: LoRAHub searches its module weights with a gradient-free optimiser over a handful
 *   of noisy-ish evaluations; CMA-ES ranks candidates only (invariant to the objective's scale,
 *   so a loss in nats and a penalty mix without tuning) and adapts its step size.
 * - Why separable: the dimension is a group's adapter count (tens), and budgets are tens to a few
 *   hundred evaluations; a full covariance needs ~n^2 evaluations to learn anything, the diagonal
 *   one learns ~n times faster, and needs no eigendecomposition.
 * - Why projection rather than softmax: projection reaches the simplex's faces and corners exactly
 *   (a single adapter, or a few with the others at exactly 0), which are the compositions worth
 *   serving (fewer adapters per item is less work); a softmax only approaches them.
 * Boundary handling: the projection is flat outside the simplex (adding a constant to every
 * coordinate of a group does not move it), so the ranking value adds a small quadratic penalty on
 * the distance between x and its projection (Hansen's "repair with penalty"), which keeps the
 * mean from drifting where every sample ranks alike. The penalty only ranks; `best` is judged by
 * the objective itself.
 */
import { Random } from '../util/random.js';

/** One weight vector per simplex (group), in the order of `sizes`. */
export type SimplexPoint = readonly (readonly number[])[];

export interface SimplexSearchOptions {
  /** Number of coordinates of each simplex (each >= 1). */
  readonly sizes: readonly number[];
  /** Mean of the first sampled generation; default each simplex's centre. */
  readonly start?: SimplexPoint;
  /**
   * Points evaluated first, before any sampled generation (for example the corners the gate
   * prefers): the search never ends worse than the best of them.
   */
  readonly initial?: readonly SimplexPoint[];
  readonly seed: number;
  /** Most objective evaluations (the last generation is cut to fit). */
  readonly maxEvaluations: number;
  /** Initial step size, in simplex units (a corner is sqrt(2) from another); default 0.25. */
  readonly sigma?: number;
  /** Samples per generation; default 4 + floor(3 ln n) (Hansen's default), at least 4. */
  readonly populationSize?: number;
  /** Converged when the largest per-coordinate step falls below this; default 1e-3. */
  readonly tolerance?: number;
  /** Checked before every generation: true ends the search (a time budget, an abort). */
  readonly shouldStop?: () => boolean;
}

export interface SimplexSearchResult {
  readonly best: SimplexPoint;
  readonly bestValue: number;
  /** Objective evaluations made (points answered from the cache are not counted). */
  readonly evaluations: number;
  readonly stoppedBy: 'evaluations' | 'stopped' | 'converged';
}

/**
 * The objective: a value to minimise for each point of a generation, in order. It may reject
 * (an abort); the search then rejects with the same error.
 */
export type SimplexObjective = (points: readonly SimplexPoint[]) => Promise<readonly number[]>;

/** Weight of the boundary penalty: small against a loss in nats, large enough to break ties. */
const BOUNDARY_PENALTY = 0.01;

/** Minimise `objective` over the product of simplices `options.sizes`. */
export async function searchSimplices(
  objective: SimplexObjective,
  options: SimplexSearchOptions,
): Promise<SimplexSearchResult> {
  const sizes = options.sizes;
  if (sizes.length === 0 || !sizes.every((s) => Number.isInteger(s) && s >= 1)) {
    throw new Error(`sizes must be positive integers; got [${sizes.join(', ')}]`);
  }
  if (!Number.isInteger(options.maxEvaluations) || options.maxEvaluations < 1) {
    throw new Error(`maxEvaluations must be a positive integer; got ${options.maxEvaluations}`);
  }
  const start = options.start ?? sizes.map((s) => new Array<number>(s).fill(1 / s));
  checkPoint(start, sizes, 'start');
  const initial = options.initial ?? [];
  for (const [i, p] of initial.entries()) checkPoint(p, sizes, `initial[${i}]`);

  // Evaluated points by key, so that samples projecting onto one point (a corner) cost one call.
  const cache = new Map<string, number>();
  let evaluations = 0;
  let best: { point: SimplexPoint; value: number } | undefined;
  const budgetLeft = () => options.maxEvaluations - evaluations;

  /** Values of `points` (projected already); new ones evaluated together, at most the budget. */
  const evaluate = async (points: readonly SimplexPoint[]): Promise<(number | undefined)[]> => {
    const keys = points.map(pointKey);
    const fresh: { key: string; point: SimplexPoint }[] = [];
    const freshKeys = new Set<string>();
    points.forEach((point, i) => {
      const key = keys[i]!;
      if (cache.has(key) || freshKeys.has(key) || fresh.length >= budgetLeft()) return;
      freshKeys.add(key);
      fresh.push({ key, point });
    });
    if (fresh.length > 0) {
      const values = await objective(fresh.map((f) => f.point));
      if (values.length !== fresh.length) {
        throw new Error(
          `the objective returned ${values.length} values for ${fresh.length} points`,
        );
      }
      evaluations += fresh.length;
      fresh.forEach(({ key, point }, i) => {
        const value = values[i]!;
        cache.set(key, value);
        if (best === undefined || value < best.value) best = { point, value };
      });
    }
    return keys.map((key) => cache.get(key));
  };

  const finish = (stoppedBy: SimplexSearchResult['stoppedBy']): SimplexSearchResult => {
    if (best === undefined) throw new Error('the search ended before evaluating any point');
    return { best: best.point, bestValue: best.value, evaluations, stoppedBy };
  };

  // The start and the caller's initial points first: whatever happens next, the result is at
  // least as good as these.
  // The start alone first: if the caller stops during the initial points (a time budget), the
  // start's value is there.
  await evaluate([projectPoint(start, sizes)]);
  if (initial.length > 0) await evaluate(initial.map((p) => projectPoint(p, sizes)));
  const n = sizes.reduce((a, b) => a + b, 0);
  // Free dimensions: a simplex of one coordinate has a single point.
  if (sizes.every((s) => s === 1)) return finish('converged');

  const cma = new SeparableCmaEs({
    mean: start.flat(),
    sigma: options.sigma ?? 0.25,
    populationSize: options.populationSize ?? Math.max(4, 4 + Math.floor(3 * Math.log(n))),
    seed: options.seed,
  });
  const tolerance = options.tolerance ?? 1e-3;
  // Each generation makes at least one fresh evaluation or shrinks the step; the cap only guards
  // against a generation made entirely of cached points forever (a flat objective).
  const maxGenerations = 10 * options.maxEvaluations + 100;
  for (let generation = 0; generation < maxGenerations; generation++) {
    if (budgetLeft() <= 0) return finish('evaluations');
    if (options.shouldStop?.()) return finish('stopped');
    if (cma.largestStep() < tolerance) return finish('converged');
    const samples = cma.ask();
    const projected = samples.map((x) => projectPoint(split(x, sizes), sizes));
    const values = await evaluate(projected);
    // Points cut off by the budget end the search before they are told (CMA-ES needs them all).
    if (values.some((v) => v === undefined)) return finish('evaluations');
    const ranked = samples.map((x, i) => {
      const distance = squaredDistance(x, projected[i]!.flat());
      return values[i]! + BOUNDARY_PENALTY * distance;
    });
    cma.tell(samples, ranked);
  }
  return finish('converged');
}

/** Euclidean projection of `v` onto the probability simplex (Duchi et al. 2008, O(n log n)). */
export function projectToSimplex(v: readonly number[]): number[] {
  const n = v.length;
  if (n === 0) throw new Error('cannot project an empty vector');
  const sorted = [...v].sort((a, b) => b - a);
  let cumulative = 0;
  let theta = 0;
  for (let i = 0; i < n; i++) {
    cumulative += sorted[i]!;
    const candidate = (cumulative - 1) / (i + 1);
    if (sorted[i]! - candidate > 0) theta = candidate;
  }
  return v.map((x) => Math.max(0, x - theta));
}

function projectPoint(point: SimplexPoint, sizes: readonly number[]): SimplexPoint {
  return sizes.map((_, g) => projectToSimplex(point[g]!));
}

function split(x: readonly number[], sizes: readonly number[]): number[][] {
  const out: number[][] = [];
  let offset = 0;
  for (const size of sizes) {
    out.push(x.slice(offset, offset + size));
    offset += size;
  }
  return out;
}

function checkPoint(point: SimplexPoint, sizes: readonly number[], name: string): void {
  const ok =
    point.length === sizes.length &&
    point.every((w, g) => w.length === sizes[g] && w.every((x) => Number.isFinite(x)));
  if (!ok) throw new Error(`${name} must hold ${sizes.length} finite vectors of sizes [${sizes}]`);
}

/** Cache key: weights rounded to 1e-9 (projections of nearby samples can differ in the last bits). */
function pointKey(point: SimplexPoint): string {
  return point.map((w) => w.map((x) => Math.round(x * 1e9)).join(',')).join('|');
}

function squaredDistance(a: readonly number[], b: readonly number[]): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += (a[i]! - b[i]!) ** 2;
  return sum;
}

/**
 * Separable CMA-ES, ask/tell, minimising. The constants are Hansen's defaults ("The CMA Evolution
 * Strategy: A Tutorial", 2016, table 1) with the covariance learning rates scaled by (n + 2) / 3
 * for the diagonal model (Ros & Hansen 2008).
 */
export class SeparableCmaEs {
  private readonly n: number;
  private readonly lambda: number;
  private readonly mu: number;
  private readonly recombination: number[]; // [mu], positive, summing to 1
  private readonly muEff: number;
  private readonly cSigma: number;
  private readonly dSigma: number;
  private readonly cC: number;
  private readonly c1: number;
  private readonly cMu: number;
  private readonly expectedNorm: number; // E||N(0, I)||
  private readonly rng: Random;
  private mean: number[];
  private sigma: number;
  private readonly diagonal: number[]; // C's diagonal
  private readonly pathSigma: number[];
  private readonly pathC: number[];
  private generation = 0;

  constructor(options: {
    mean: readonly number[];
    sigma: number;
    populationSize: number;
    seed: number;
  }) {
    const n = options.mean.length;
    if (n < 1) throw new Error('CMA-ES needs at least one dimension');
    if (!(options.sigma > 0)) throw new Error(`sigma must be > 0; got ${options.sigma}`);
    if (!Number.isInteger(options.populationSize) || options.populationSize < 2) {
      throw new Error(`populationSize must be an integer >= 2; got ${options.populationSize}`);
    }
    this.n = n;
    this.lambda = options.populationSize;
    this.mu = Math.floor(this.lambda / 2);
    const raw = Array.from(
      { length: this.mu },
      (_, i) => Math.log(this.mu + 0.5) - Math.log(i + 1),
    );
    const total = raw.reduce((a, b) => a + b, 0);
    this.recombination = raw.map((w) => w / total);
    this.muEff = 1 / this.recombination.reduce((a, w) => a + w * w, 0);
    const muEff = this.muEff;
    this.cSigma = (muEff + 2) / (n + muEff + 5);
    this.dSigma = 1 + 2 * Math.max(0, Math.sqrt((muEff - 1) / (n + 1)) - 1) + this.cSigma;
    this.cC = (4 + muEff / n) / (n + 4 + (2 * muEff) / n);
    const separable = (n + 2) / 3;
    const c1 = (2 / ((n + 1.3) ** 2 + muEff)) * separable;
    const cMu = ((2 * (muEff - 2 + 1 / muEff)) / ((n + 2) ** 2 + muEff)) * separable;
    // Keep 1 - c1 - cMu >= 0 (the old covariance never gets a negative share).
    this.c1 = Math.min(c1, 1);
    this.cMu = Math.max(0, Math.min(cMu, 1 - this.c1));
    this.expectedNorm = Math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n));
    this.rng = new Random(options.seed);
    this.mean = [...options.mean];
    this.sigma = options.sigma;
    this.diagonal = new Array<number>(n).fill(1);
    this.pathSigma = new Array<number>(n).fill(0);
    this.pathC = new Array<number>(n).fill(0);
  }

  /** The largest per-coordinate standard deviation of the next samples: sigma * max sqrt(C_jj). */
  largestStep(): number {
    return this.sigma * Math.sqrt(Math.max(...this.diagonal));
  }

  /** A generation of `populationSize` samples x = mean + sigma * sqrt(C) z, z ~ N(0, I). */
  ask(): number[][] {
    return Array.from({ length: this.lambda }, () =>
      Array.from(
        { length: this.n },
        (_, j) => this.mean[j]! + this.sigma * Math.sqrt(this.diagonal[j]!) * this.rng.normal(),
      ),
    );
  }

  /** Update from the last `ask`'s samples and their values (lower is better), in ask order. */
  tell(samples: readonly (readonly number[])[], values: readonly number[]): void {
    if (samples.length !== this.lambda || values.length !== this.lambda) {
      throw new Error(`tell needs the ${this.lambda} samples of the last ask and their values`);
    }
    const n = this.n;
    // Stable order: equal values keep their ask order, so the run is deterministic.
    const order = values
      .map((v, i) => [v, i] as const)
      .sort((a, b) => a[0] - b[0] || a[1] - b[1])
      .map(([, i]) => i);
    const chosen = order.slice(0, this.mu);
    const scale = this.diagonal.map((c) => Math.sqrt(c));
    // y_i = (x_i - m) / sigma = sqrt(C) z_i; y_w and z_w are their weighted means over the best mu.
    const y = chosen.map((i) => samples[i]!.map((x, j) => (x - this.mean[j]!) / this.sigma));
    const yW = new Array<number>(n).fill(0);
    chosen.forEach((_, r) => {
      for (let j = 0; j < n; j++) yW[j]! += this.recombination[r]! * y[r]![j]!;
    });
    this.mean = this.mean.map((m, j) => m + this.sigma * yW[j]!);

    const sigmaFactor = Math.sqrt(this.cSigma * (2 - this.cSigma) * this.muEff);
    let pathSigmaNorm = 0;
    for (let j = 0; j < n; j++) {
      this.pathSigma[j] =
        (1 - this.cSigma) * this.pathSigma[j]! + (sigmaFactor * yW[j]!) / scale[j]!;
      pathSigmaNorm += this.pathSigma[j]! ** 2;
    }
    pathSigmaNorm = Math.sqrt(pathSigmaNorm);
    this.generation += 1;
    const correction = Math.sqrt(1 - (1 - this.cSigma) ** (2 * this.generation));
    const stalled = pathSigmaNorm / correction >= (1.4 + 2 / (n + 1)) * this.expectedNorm;
    const hSigma = stalled ? 0 : 1;
    const cFactor = Math.sqrt(this.cC * (2 - this.cC) * this.muEff);
    for (let j = 0; j < n; j++) {
      this.pathC[j] = (1 - this.cC) * this.pathC[j]! + hSigma * cFactor * yW[j]!;
      let rankMu = 0;
      chosen.forEach((_, r) => {
        rankMu += this.recombination[r]! * y[r]![j]! ** 2;
      });
      const keep = 1 - this.c1 - this.cMu + (1 - hSigma) * this.c1 * this.cC * (2 - this.cC);
      this.diagonal[j] =
        keep * this.diagonal[j]! + this.c1 * this.pathC[j]! ** 2 + this.cMu * rankMu;
    }
    this.sigma *= Math.exp((this.cSigma / this.dSigma) * (pathSigmaNorm / this.expectedNorm - 1));
  }
}
