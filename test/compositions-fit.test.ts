/**
 * Fitting compositions (src/compositions/fit.ts) against a real model: a fixture pack served by
 * the embedded inference service, with real engine workers and onnxruntime sessions.
 *
 * The fit test's examples are labelled by one language adapter: each example's label is what the
 * topic head answers when that adapter is pinned. The gate's own routing answers some of them
 * differently (checked, so that the test means something), and the fit must find the adapter.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  checkFitSpec,
  DEFAULT_FIT_BUDGET,
  type FitLimits,
  type FitProgress,
  type FitSpec,
  fitComposition,
} from '../src/compositions/fit.js';
import { MoeError } from '../src/errors.js';
import { type InferRequest, Model } from '../src/inference/model.js';
import { EmbeddedInference, type Inference } from '../src/inference/service.js';
import { Metrics } from '../src/metrics.js';
import { buildFixturePack, FIXTURE_HEADS, FIXTURE_TEXTS } from './support/fixture-pack.js';

const LIMITS: FitLimits = { maxExamples: 64, maxEvaluations: 500, maxSeconds: 120 };
const TASK = 'topic';
const deadline = () => performance.now() + 30_000;

describe('fitting compositions on a real model', () => {
  let root: string;
  let inference: EmbeddedInference;
  /** The adapter the examples are labelled by, and the examples. */
  let target: string;
  let examples: { text: string; label: string }[];
  let gateAccuracy: number;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'moe-fit-'));
    const packDir = await buildFixturePack(join(root, 'pack'), {
      seed: 5,
      hiddenSize: 32,
      languageAdapters: 6,
    });
    const model = await Model.open({ packDir, engine: { workers: 1, intraOpThreads: 1 } });
    inference = new EmbeddedInference(model, new Metrics(), {
      maxBatchItems: 64,
      maxBatchTokens: 8192,
      maxQueueDelayMs: 0,
      maxQueuedItems: 1024,
    });
    const texts = [...FIXTURE_TEXTS];
    const labelsUnder = async (request: { language?: string }) =>
      (
        await inference.infer({ inputs: texts, task: TASK, ...request }, { deadline: deadline() })
      ).results.map((r) => r.outputs[TASK]!.label);
    const gateLabels = await labelsUnder({});
    // The adapter whose answers differ most from the gate's routing's: the fit has most to find.
    let most = -1;
    for (const language of inference.describe().groups.find((g) => g.id === 'language')!.adapters) {
      const labels = await labelsUnder({ language });
      const differ = labels.filter((l, i) => l !== gateLabels[i]).length;
      if (differ > most) {
        most = differ;
        target = language;
        examples = texts.map((text, i) => ({ text, label: labels[i]! }));
      }
    }
    gateAccuracy = examples.filter((e, i) => e.label === gateLabels[i]).length / examples.length;
  });

  after(async () => {
    await inference?.close();
    await rm(root, { recursive: true, force: true });
  });

  const spec = (budget: Partial<FitSpec['budget']> = {}): FitSpec => ({
    task: TASK,
    groups: ['language'],
    examples,
    budget: { evaluations: 120, seconds: 60, ...budget },
  });

  it('finds the adapter that labelled the examples, and reports before and after', async () => {
    // Meaningful only if the gate's routing gets some of them wrong.
    assert.ok(gateAccuracy < 1, `the gate's routing already answers all (${gateAccuracy})`);
    const progress: FitProgress[] = [];
    const outcome = await fitComposition(inference, spec(), {
      onProgress: (p) => progress.push(p),
    });
    assert.equal(outcome.before.accuracy, gateAccuracy);
    assert.equal(outcome.after.accuracy, 1);
    const weights = outcome.weights.language!;
    const heaviest = Object.entries(weights).sort((a, b) => b[1] - a[1])[0]![0];
    assert.equal(heaviest, target, `fitted ${JSON.stringify(weights)}, labelled by ${target}`);
    const sum = Object.values(weights).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - 1) < 1e-9 && Object.values(weights).every((w) => w > 0));
    assert.ok(outcome.evaluations <= 120 && outcome.evaluations === progress.at(-1)!.evaluations);
    assert.ok(progress.every((p, i) => i === 0 || p.evaluations > progress[i - 1]!.evaluations));

    // `after` is the examples' score under the returned weights, served as any request is.
    const answer = await inference.infer(
      { inputs: examples.map((e) => e.text), task: TASK, adapters: { language: weights } },
      { deadline: deadline() },
    );
    const probabilities = answer.results.map(
      (r, i) => r.outputs[TASK]!.scores[examples[i]!.label]!,
    );
    const loss = -probabilities.reduce((s, p) => s + Math.log(p), 0) / probabilities.length;
    assert.ok(Math.abs(loss - outcome.after.loss) < 1e-5, `${loss} vs ${outcome.after.loss}`);
  });

  it("ranks by the penalised loss alone with rank 'loss'", async () => {
    const texts = examples.map((e) => e.text);
    const lossUnder = async (request: Partial<InferRequest>) => {
      const answer = await inference.infer(
        { inputs: texts, task: TASK, ...request },
        { deadline: deadline() },
      );
      const p = answer.results.map((r, i) => r.outputs[TASK]!.scores[examples[i]!.label]!);
      return -p.reduce((s, x) => s + Math.log(x), 0) / p.length;
    };
    const outcome = await fitComposition(inference, spec(), { rank: 'loss', regularization: 0 });
    // The adapters the gate chose first for some example are among the first candidates: the
    // weights chosen have no higher loss than any of them.
    const gate = await inference.infer({ inputs: texts, task: TASK }, { deadline: deadline() });
    const favourites = new Set(gate.results.map((r) => r.routing.language![0]!.adapter));
    assert.ok(favourites.size >= 1);
    for (const language of favourites) {
      assert.ok(outcome.after.loss <= (await lossUnder({ language })) + 1e-9, language);
    }
    assert.ok(outcome.after.loss < outcome.before.loss);
    assert.ok(
      Math.abs(
        (await lossUnder({ adapters: { language: outcome.weights.language! } })) -
          outcome.after.loss,
      ) < 1e-5,
    );
  });

  it('fits two groups at once, each on its own simplex', async () => {
    const sentiment = examples.map((e, i) => ({
      text: e.text,
      label: i % 2 === 0 ? 'positive' : 'negative',
    }));
    const outcome = await fitComposition(inference, {
      task: 'sentiment',
      groups: ['task', 'language'],
      examples: sentiment,
      budget: { evaluations: 30, seconds: 60 },
    });
    for (const group of ['task', 'language']) {
      const weights = Object.values(outcome.weights[group]!);
      assert.ok(weights.length >= 1 && weights.every((w) => w > 0));
      assert.ok(Math.abs(weights.reduce((a, b) => a + b, 0) - 1) < 1e-9, group);
    }
    assert.ok(outcome.evaluations <= 30);
    assert.ok(['evaluations', 'converged'].includes(outcome.stoppedBy), outcome.stoppedBy);
  });

  it('is deterministic given the seed', async () => {
    const a = await fitComposition(inference, spec({ evaluations: 40 }), { seed: 9 });
    const b = await fitComposition(inference, spec({ evaluations: 40 }), { seed: 9 });
    assert.deepEqual(a.weights, b.weights);
    assert.deepEqual(a.after, b.after);
    assert.equal(a.evaluations, b.evaluations);
  });

  it('stops at the evaluation budget, splitting the examples into calls of inputsPerCall', async () => {
    let calls = 0;
    let largest = 0;
    const counting: Pick<Inference, 'infer' | 'describe'> = {
      describe: () => inference.describe(),
      infer: (request, options) => {
        calls += 1;
        largest = Math.max(largest, request.inputs.length);
        return inference.infer(request, options);
      },
    };
    const outcome = await fitComposition(counting, spec({ evaluations: 15 }), {
      inputsPerCall: 10,
    });
    assert.equal(outcome.stoppedBy, 'evaluations');
    assert.equal(outcome.evaluations, 15);
    const callsPerPass = Math.ceil(examples.length / 10);
    assert.equal(calls, (1 + 15) * callsPerPass); // `before`, then each candidate
    assert.equal(largest, 10);
  });

  it('stops at the time budget with the best found so far', async () => {
    // A slower service (each call waits 40 ms first): the 1 s budget ends the search.
    const slow: Pick<Inference, 'infer' | 'describe'> = {
      describe: () => inference.describe(),
      infer: async (request, options) => {
        await new Promise((wake) => setTimeout(wake, 40));
        return inference.infer(request, options);
      },
    };
    const t0 = performance.now();
    const outcome = await fitComposition(slow, spec({ evaluations: 500, seconds: 1 }));
    const elapsed = performance.now() - t0;
    assert.equal(outcome.stoppedBy, 'time');
    assert.ok(outcome.evaluations > 0 && outcome.evaluations < 500);
    assert.ok(elapsed < 3000, `took ${elapsed} ms`);
  });

  it('rejects when aborted', async () => {
    const controller = new AbortController();
    await assert.rejects(
      fitComposition(inference, spec(), {
        signal: controller.signal,
        onProgress: () => controller.abort(new Error('client cancelled the fit')),
      }),
      /client cancelled the fit/,
    );
  });

  describe('checkFitSpec', () => {
    const valid = () => ({
      task: TASK,
      groups: ['language'],
      examples: [
        { text: 'The team won the match.', label: 'sports' },
        { text: 'Stocks fell again today.', label: 'business' },
      ],
    });

    it('accepts a valid fit and fills the budget defaults, capped by the limits', () => {
      const model = inference.describe();
      const fit = checkFitSpec(model, valid(), LIMITS);
      assert.deepEqual(fit, { ...valid(), budget: DEFAULT_FIT_BUDGET });
      const capped = checkFitSpec(model, valid(), { ...LIMITS, maxEvaluations: 10, maxSeconds: 5 });
      assert.deepEqual(capped.budget, { evaluations: 10, seconds: 5 });
      const named = checkFitSpec(model, { ...valid(), budget: { seconds: 2 } }, LIMITS);
      assert.deepEqual(named.budget, { evaluations: DEFAULT_FIT_BUDGET.evaluations, seconds: 2 });
      // An ungated group is fine when the task's head does not pin it (sentiment has no pin).
      const ungated = checkFitSpec(
        model,
        {
          task: 'sentiment',
          groups: ['task', 'language'],
          examples: [{ text: 'Good.', label: 'positive' }],
        },
        LIMITS,
      );
      assert.deepEqual(ungated.groups, ['task', 'language']);
    });

    const cases: [string, (fit: ReturnType<typeof valid>) => unknown, string, RegExp][] = [
      ['not an object', () => [1], 'fit', /must be an object/],
      ['an unknown task', (f) => ({ ...f, task: 'weather' }), 'fit.task', /sentiment/],
      [
        'an unknown label',
        (f) => ({ ...f, examples: [f.examples[0], { text: 'x y', label: 'x' }] }),
        'fit.examples[1].label',
        new RegExp(`unknown label "x".*${FIXTURE_HEADS.topic.join(', ')}`),
      ],
      ['no examples', (f) => ({ ...f, examples: [] }), 'fit.examples', /non-empty/],
      [
        'too many examples',
        (f) => ({ ...f, examples: new Array(65).fill(f.examples[0]) }),
        'fit.examples',
        /65 examples; at most 64/,
      ],
      [
        'an empty text',
        (f) => ({ ...f, examples: [{ text: '  ', label: 'sports' }] }),
        'fit.examples[0].text',
        /non-empty/,
      ],
      ['no groups', (f) => ({ ...f, groups: [] }), 'fit.groups', /at least one/],
      [
        'an unknown group',
        (f) => ({ ...f, groups: ['dialect'] }),
        'fit.groups[0]',
        /language, task/,
      ],
      [
        'a group twice',
        (f) => ({ ...f, groups: ['language', 'language'] }),
        'fit.groups[1]',
        /twice/,
      ],
      [
        "the task's own pinned group",
        (f) => ({ ...f, groups: ['task'] }),
        'fit.groups[0]',
        /runs through task=topic/,
      ],
      [
        'a budget over the limit',
        (f) => ({ ...f, budget: { evaluations: 501 } }),
        'fit.budget.evaluations',
        /1 to 500/,
      ],
      [
        'a budget of no time',
        (f) => ({ ...f, budget: { seconds: 0 } }),
        'fit.budget.seconds',
        /above 0/,
      ],
      ['an unknown field', (f) => ({ ...f, budjet: {} }), 'fit.budjet', /unknown field/],
    ];
    for (const [what, make, field, message] of cases) {
      it(`refuses ${what} with 422 naming ${field}`, () => {
        assert.throws(
          () => checkFitSpec(inference.describe(), make(valid()), LIMITS),
          (error: unknown) => {
            assert.ok(error instanceof MoeError);
            assert.equal(error.code, 'FIT_INVALID');
            assert.equal(error.status, 422);
            assert.equal(error.details?.field, field);
            assert.match(error.message, message);
            assert.ok(error.message.startsWith(`${field}: `), error.message);
            return true;
          },
        );
      });
    }
  });
});
