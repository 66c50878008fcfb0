/**
 * The simplex optimiser (src/compositions/search.ts) on functions whose optimum is known.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  projectToSimplex,
  type SimplexPoint,
  searchSimplices,
} from '../src/compositions/search.js';

/** An objective of one point at a time, recording every point it is asked about. */
function recording(f: (p: SimplexPoint) => number) {
  const asked: SimplexPoint[] = [];
  const generations: number[] = [];
  const objective = async (points: readonly SimplexPoint[]) => {
    asked.push(...points);
    generations.push(points.length);
    return points.map(f);
  };
  return { objective, asked, generations };
}

const squaredDistanceTo = (target: readonly (readonly number[])[]) => (p: SimplexPoint) =>
  p.reduce((s, w, g) => s + w.reduce((t, x, i) => t + (x - target[g]![i]!) ** 2, 0), 0);

function assertOnSimplex(w: readonly number[]): void {
  assert.ok(
    w.every((x) => x >= 0),
    `negative weight in ${w}`,
  );
  assert.ok(Math.abs(w.reduce((a, b) => a + b, 0) - 1) < 1e-9, `sum of ${w} is not 1`);
}

describe('projectToSimplex', () => {
  it('leaves simplex points alone and maps others to the nearest simplex point', () => {
    assert.deepEqual(projectToSimplex([0.25, 0.75]), [0.25, 0.75]);
    assert.deepEqual(projectToSimplex([3, 0]), [1, 0]);
    // Nearest point to (1, 1, 0): (0.5, 0.5, 0), by symmetry and the sum.
    const p = projectToSimplex([1, 1, 0]);
    const want = [0.5, 0.5, 0];
    assert.ok(
      p.every((x, i) => Math.abs(x - want[i]!) < 1e-12),
      `${p}`,
    );
    assert.deepEqual(projectToSimplex([7]), [1]);
  });

  it('is unmoved by adding a constant to every coordinate, and always lands on the simplex', () => {
    const v = [0.4, -1.2, 2.5, 0.1];
    const shifted = projectToSimplex(v.map((x) => x + 10));
    const plain = projectToSimplex(v);
    assert.ok(plain.every((x, i) => Math.abs(x - shifted[i]!) < 1e-9));
    assertOnSimplex(plain);
    assertOnSimplex(projectToSimplex([-5, -6, -7]));
  });
});

describe('searchSimplices', () => {
  it('finds an interior minimum of a quadratic on one simplex', async () => {
    const target = [[0.6, 0.3, 0.1, 0]];
    const { objective } = recording(squaredDistanceTo(target));
    const result = await searchSimplices(objective, { sizes: [4], seed: 7, maxEvaluations: 400 });
    assertOnSimplex(result.best[0]!);
    assert.ok(
      result.best[0]!.every((x, i) => Math.abs(x - target[0]![i]!) < 0.03),
      `best ${result.best[0]} vs ${target[0]}`,
    );
  });

  it('finds a corner (a single adapter) exactly, in each of two simplices', async () => {
    // Linear objective: its minimum on a simplex is a corner. Start at the centres.
    const f = (p: SimplexPoint) => -p[0]![2]! - p[1]![0]!;
    const { objective } = recording(f);
    const result = await searchSimplices(objective, {
      sizes: [5, 3],
      seed: 3,
      maxEvaluations: 300,
    });
    assert.deepEqual(result.best, [
      [0, 0, 1, 0, 0],
      [1, 0, 0],
    ]);
    assert.equal(result.bestValue, -2);
  });

  it('is deterministic given the seed, and another seed samples other points', async () => {
    const f = squaredDistanceTo([[0.2, 0.2, 0.6]]);
    const runA = recording(f);
    const runB = recording(f);
    const runC = recording(f);
    const a = await searchSimplices(runA.objective, { sizes: [3], seed: 11, maxEvaluations: 60 });
    const b = await searchSimplices(runB.objective, { sizes: [3], seed: 11, maxEvaluations: 60 });
    await searchSimplices(runC.objective, { sizes: [3], seed: 12, maxEvaluations: 60 });
    assert.deepEqual(runA.asked, runB.asked);
    assert.deepEqual(a, b);
    assert.notDeepEqual(runA.asked.slice(1), runC.asked.slice(1));
  });

  it('never evaluates more points than the budget, and says the budget stopped it', async () => {
    const { objective, asked, generations } = recording(squaredDistanceTo([[0.5, 0.5, 0, 0]]));
    const result = await searchSimplices(objective, {
      sizes: [4],
      seed: 1,
      maxEvaluations: 25,
      populationSize: 6,
      tolerance: 0,
    });
    assert.equal(result.stoppedBy, 'evaluations');
    assert.equal(result.evaluations, asked.length);
    assert.ok(asked.length <= 25, `${asked.length} evaluations`);
    // The generations after the first call have at most populationSize fresh points.
    assert.ok(generations.slice(1).every((n) => n <= 6));
  });

  it('stops when told to (a time budget), after the first points', async () => {
    let calls = 0;
    const objective = async (points: readonly SimplexPoint[]) => {
      calls += 1;
      return points.map(() => 1);
    };
    const result = await searchSimplices(objective, {
      sizes: [3],
      seed: 1,
      maxEvaluations: 1000,
      shouldStop: () => calls >= 2,
    });
    assert.equal(result.stoppedBy, 'stopped');
    assert.equal(calls, 2);
  });

  it('evaluates the start and the initial points first, and ends no worse than them', async () => {
    const { objective, asked } = recording((p) => (p[0]![1] === 1 ? -1 : 0));
    const result = await searchSimplices(objective, {
      sizes: [6],
      start: [[0.5, 0.5, 0, 0, 0, 0]],
      initial: [[[0, 1, 0, 0, 0, 0]]],
      seed: 2,
      maxEvaluations: 30,
    });
    assert.deepEqual(asked.slice(0, 2), [[[0.5, 0.5, 0, 0, 0, 0]], [[0, 1, 0, 0, 0, 0]]]);
    assert.deepEqual(result.best, [[0, 1, 0, 0, 0, 0]]);
    assert.equal(result.bestValue, -1);
  });

  it('has nothing to search in one-adapter groups', async () => {
    const { objective, asked } = recording(() => 0.5);
    const result = await searchSimplices(objective, { sizes: [1, 1], seed: 1, maxEvaluations: 50 });
    assert.equal(result.stoppedBy, 'converged');
    assert.deepEqual(asked, [[[1], [1]]]);
  });

  it('rejects with the objective error', async () => {
    const objective = async () => {
      throw new Error('aborted by the caller');
    };
    await assert.rejects(
      searchSimplices(objective, { sizes: [3], seed: 1, maxEvaluations: 10 }),
      /aborted by the caller/,
    );
  });
});
