/**
 * Compositions on the demo pack's nine languages without an adapter (issue 15, item 4): for each
 * of pt, it, ca, gl, da, sk, hr, be, bg, the accuracy of a task head on that language's held-out
 * sentences (the demo build's split: no part of the pack trained on them) under
 *   none      no language adapter: an identity adapter `none` (every weight 0, residual: the
 *             backbone's state passes unchanged) loaded into the `language` group and pinned;
 *             the group is gated and its routing always mixes at least one adapter, so "no
 *             adapter" is an ordinary adapter id here, as LoRAX's `__base_model__`
 *   top1      the gate's top-1 (the pack's default, k = 1)
 *   top2      the gate's top-2, mixed with its renormalised probabilities
 *   topp      top-p: per item, the fewest adapters whose gate probabilities reach p (at most k)
 *   fit_cv    weights fitted with fitComposition on labelled held-out sentences of the language,
 *             each scored by a fit that never saw it: the held-out sentences are cut into
 *             --folds folds; each fold is scored under weights fitted on the other folds;
 *             candidates ranked by accuracy, then penalised loss (fitComposition's default)
 *   fit_cv_loss  the same folds, candidates ranked by the penalised loss alone (rank 'loss')
 *   fit_train weights fitted on --train-fit sentences of the language's training split, scored
 *             on all its held-out sentences
 * Every row is scored on the same sentences: all the language's held-out sentences.
 *
 * Why two fitted rows, and not "20 held-out sentences, scored on the rest": the demo holds out
 * 20% of each language (11-12 sentences of these nine), fewer than 20. Its training sentences of
 * these languages did train the task adapters and heads (routed by the gate; train accuracy 1.0),
 * so fit_train fits on sentences the heads know by heart under the gate's routing, while fit_cv
 * fits on unseen sentences, fewer of them.
 *
 * The identity adapter stays loaded for the fits: the fitted weights may give it a share (a
 * mixture with `none` shrinks the language adapters' change to the backbone state).
 *
 *   npm run bench:compositions [-- --tasks theme,article --folds 3 --train-fit 20
 *                                  --evaluations 60 --top-p 0.9 --top-p-k 4 --seed 1]
 *
 * One JSON line per task and language on stdout, then one summary line per task (means over the
 * nine, and per row the held-out sentences it answers right where top-1 does not and the other
 * way round); the summary as a table on stderr (progress too).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type FitScore, fitComposition } from '../src/compositions/fit.js';
import {
  ARTICLE_LABELS,
  AUXILIARY_LANGUAGES,
  DEMO_LANGUAGES,
  loadDemoCorpus,
  THEME_LABELS,
} from '../src/demo/corpus.js';
import { DEMO_REPORT_FILE } from '../src/demo/ensure.js';
import { type InferRequest, Model } from '../src/inference/model.js';
import { EmbeddedInference } from '../src/inference/service.js';
import { Metrics } from '../src/metrics.js';
import { writeAdapterFolder } from '../src/pack/import/moe-serve.js';
import { ensurePack } from '../src/tools/default-pack.js';
import { Random } from '../src/util/random.js';
import { log, positiveInt, round3 } from './support.js';

const { values } = parseArgs({
  options: {
    pack: { type: 'string' },
    tasks: { type: 'string', default: 'theme,article' },
    folds: { type: 'string', default: '3' },
    'train-fit': { type: 'string', default: '20' },
    evaluations: { type: 'string', default: '60' },
    'top-p': { type: 'string', default: '0.9' },
    'top-p-k': { type: 'string', default: '4' },
    seed: { type: 'string', default: '1' },
    workers: { type: 'string', default: '1' },
    threads: { type: 'string', default: '2' },
  },
});
const TASKS = values.tasks!.split(',');
if (!TASKS.every((t) => t === 'theme' || t === 'article')) {
  throw new Error('--tasks takes theme and/or article (the demo heads), comma-separated');
}
const FOLDS = positiveInt('folds', values.folds!);
const TRAIN_FIT = positiveInt('train-fit', values['train-fit']!);
const EVALUATIONS = positiveInt('evaluations', values.evaluations!);
const TOP_P = Number(values['top-p']);
const TOP_P_K = positiveInt('top-p-k', values['top-p-k']!);
const SEED = positiveInt('seed', values.seed!);
if (!(TOP_P > 0 && TOP_P <= 1)) throw new Error('--top-p must be in (0, 1]');
if (FOLDS < 2) throw new Error('--folds must be at least 2');

const GROUP = 'language';
const NONE = 'none';
const ROWS = ['none', 'top1', 'top2', 'topp', 'fit_cv', 'fit_cv_loss', 'fit_train'] as const;
type Row = (typeof ROWS)[number];

interface Scored extends FitScore {
  /** Mean adapters mixed per sentence in the language group. */
  readonly meanK: number;
  /** Adapter -> sentences whose largest weight it had. */
  readonly firstChoice: Record<string, number>;
  /** Weight of the second adapter mixed (0 when one only). */
  readonly secondWeight: number;
}

/** Sentences a row answers right where top-1 does not, and the other way round. */
interface Discordant {
  better: number;
  worse: number;
}

async function main(): Promise<void> {
  const packDir = await ensurePack(values.pack, log);
  // The pack's own split: the seed and fraction its build used (report.json), so that "held
  // out" here is what the build held out.
  const report = JSON.parse(await readFile(join(packDir, DEMO_REPORT_FILE), 'utf8')) as {
    seed: number;
    split: { heldout_fraction: number };
  };
  const corpus = loadDemoCorpus({
    languages: [...DEMO_LANGUAGES, ...AUXILIARY_LANGUAGES],
    seed: report.seed,
    heldoutFraction: report.split.heldout_fraction,
  });
  const root = await mkdtemp(join(tmpdir(), 'moe-bench-compositions-'));
  const model = await Model.open({
    packDir,
    engine: {
      workers: positiveInt('workers', values.workers!),
      intraOpThreads: positiveInt('threads', values.threads!),
    },
  });
  const inference = new EmbeddedInference(model, new Metrics(), {
    maxBatchItems: 64,
    maxBatchTokens: 16_384,
    maxQueueDelayMs: 0,
    maxQueuedItems: 4096,
  });
  try {
    const hiddenSize = model.describe().hiddenSize;
    await inference.loadAdapter(await writeIdentityAdapter(join(root, NONE), hiddenSize));
    const deadline = () => performance.now() + 600_000;
    const score = async (
      texts: readonly string[],
      labels: readonly string[],
      task: string,
      routing: Partial<InferRequest>,
    ): Promise<Scored[]> => {
      const answer = await inference.infer(
        { inputs: texts, task, ...routing },
        { deadline: deadline() },
      );
      return answer.results.map((result, i) => {
        const output = result.outputs[task]!;
        const routed = result.routing[GROUP] ?? [];
        const byWeight = [...routed].sort((a, b) => b.weight - a.weight);
        const first = byWeight[0]?.adapter ?? '?';
        return {
          secondWeight: byWeight[1]?.weight ?? 0,
          loss: -Math.log(Math.max(output.scores[labels[i]!] ?? 0, 1e-12)),
          accuracy: output.label === labels[i] ? 1 : 0,
          meanK: routed.length,
          firstChoice: { [first]: 1 },
        };
      });
    };

    for (const task of TASKS) {
      // The demo's labels, as its build names them (corpus.ts).
      const labelOf = (s: { article: number; theme: number }) =>
        task === 'theme' ? THEME_LABELS[s.theme]! : ARTICLE_LABELS[s.article - 1]!;
      const perLanguage: Record<string, Record<Row, Scored>> = {};
      const againstTop1 = Object.fromEntries(
        ROWS.map((r) => [r, { better: 0, worse: 0 }]),
      ) as Record<Row, Discordant>;
      let heldoutSentences = 0;
      for (const language of AUXILIARY_LANGUAGES) {
        const lang = corpus.languages.findIndex((l) => l.id === language.id);
        const of = (split: 'train' | 'heldout') =>
          corpus.sentences.filter((s) => s.lang === lang && s.split === split);
        const heldout = of('heldout');
        const texts = heldout.map((s) => s.text);
        const labels = heldout.map(labelOf);
        heldoutSentences += heldout.length;
        const started = performance.now();
        const rows: Partial<Record<Row, Scored[]>> = {};
        rows.none = await score(texts, labels, task, { adapters: { [GROUP]: NONE } });
        rows.top1 = await score(texts, labels, task, { topK: 1 });
        rows.top2 = await score(texts, labels, task, { topK: 2 });
        rows.topp = await score(texts, labels, task, { topK: TOP_P_K, topP: TOP_P });

        // fit_cv (ranked by accuracy, then loss: the default) and fit_cv_loss (by loss alone):
        // fold f is scored under weights fitted on the other folds.
        const rng = new Random((SEED * 7919 + lang) >>> 0);
        const order = rng.shuffle(heldout.map((_, i) => i));
        const foldOf = new Map(order.map((i, rank) => [i, rank % FOLDS]));
        const cvFits: Record<string, unknown[]> = {};
        for (const [row, rank] of [
          ['fit_cv', 'accuracy'],
          ['fit_cv_loss', 'loss'],
        ] as const) {
          const cv: Scored[] = new Array(heldout.length);
          cvFits[row] = [];
          for (let fold = 0; fold < FOLDS; fold++) {
            const fitIdx = heldout.flatMap((_, i) => (foldOf.get(i) !== fold ? [i] : []));
            const evalIdx = heldout.flatMap((_, i) => (foldOf.get(i) === fold ? [i] : []));
            const outcome = await fitComposition(
              inference,
              {
                task,
                groups: [GROUP],
                examples: fitIdx.map((i) => ({ text: texts[i]!, label: labels[i]! })),
                budget: { evaluations: EVALUATIONS, seconds: 600 },
              },
              { seed: SEED + fold, rank },
            );
            const scored = await score(
              evalIdx.map((i) => texts[i]!),
              evalIdx.map((i) => labels[i]!),
              task,
              { adapters: { [GROUP]: outcome.weights[GROUP]! } },
            );
            evalIdx.forEach((i, j) => {
              cv[i] = scored[j]!;
            });
            cvFits[row].push(fitSummary(outcome, fitIdx.length));
          }
          rows[row] = cv;
        }

        // fit_train: TRAIN_FIT training sentences of the language, scored on all held-out ones.
        const train = rng.shuffle(of('train')).slice(0, TRAIN_FIT);
        const trainOutcome = await fitComposition(
          inference,
          {
            task,
            groups: [GROUP],
            examples: train.map((s) => ({ text: s.text, label: labelOf(s) })),
            budget: { evaluations: EVALUATIONS, seconds: 600 },
          },
          { seed: SEED },
        );
        rows.fit_train = await score(texts, labels, task, {
          adapters: { [GROUP]: trainOutcome.weights[GROUP]! },
        });

        for (const row of ROWS) {
          rows[row]!.forEach((s, i) => {
            const top1 = rows.top1![i]!.accuracy;
            if (s.accuracy > top1) againstTop1[row].better += 1;
            if (s.accuracy < top1) againstTop1[row].worse += 1;
          });
        }
        const means = Object.fromEntries(ROWS.map((row) => [row, meanOf(rows[row]!)])) as Record<
          Row,
          Scored
        >;
        perLanguage[language.id] = means;
        const line = {
          bench: 'compositions',
          task,
          language: language.id,
          heldout_sentences: heldout.length,
          accuracy: Object.fromEntries(ROWS.map((r) => [r, round3(means[r].accuracy)])),
          loss: Object.fromEntries(ROWS.map((r) => [r, round3(means[r].loss)])),
          mean_k: Object.fromEntries(ROWS.map((r) => [r, round3(means[r].meanK)])),
          top1_first_choice: means.top1.firstChoice,
          top2_second_weight: round3(means.top2.secondWeight),
          fit_cv: cvFits.fit_cv,
          fit_cv_loss: cvFits.fit_cv_loss,
          fit_train: fitSummary(trainOutcome, train.length),
          seconds: round3((performance.now() - started) / 1000),
        };
        process.stdout.write(`${JSON.stringify(line)}\n`);
        log(
          `[bench] ${task} ${language.id}: ${ROWS.map((r) => `${r} ${means[r].accuracy.toFixed(3)}`).join(', ')}`,
        );
      }
      const languages = Object.keys(perLanguage);
      const mean = (row: Row, field: 'accuracy' | 'loss') =>
        languages.reduce((s, l) => s + perLanguage[l]![row][field], 0) / languages.length;
      const summary = {
        bench: 'compositions',
        task,
        summary: 'mean over the nine languages (each language weighs the same)',
        accuracy: Object.fromEntries(ROWS.map((r) => [r, round3(mean(r, 'accuracy'))])),
        loss: Object.fromEntries(ROWS.map((r) => [r, round3(mean(r, 'loss'))])),
        heldout_sentences: heldoutSentences,
        against_top1_sentences: againstTop1,
        fit_cv_not_below_top1: languages.filter(
          (l) => perLanguage[l]!.fit_cv.accuracy >= perLanguage[l]!.top1.accuracy,
        ).length,
        fit_cv_loss_not_below_top1: languages.filter(
          (l) => perLanguage[l]!.fit_cv_loss.accuracy >= perLanguage[l]!.top1.accuracy,
        ).length,
        fit_train_not_below_top1: languages.filter(
          (l) => perLanguage[l]!.fit_train.accuracy >= perLanguage[l]!.top1.accuracy,
        ).length,
        settings: {
          folds: FOLDS,
          train_fit: TRAIN_FIT,
          evaluations: EVALUATIONS,
          top_p: TOP_P,
          top_p_k: TOP_P_K,
          seed: SEED,
        },
      };
      process.stdout.write(`${JSON.stringify(summary)}\n`);
      log(table(task, perLanguage, summary.accuracy));
    }
  } finally {
    await inference.close();
    await rm(root, { recursive: true, force: true });
  }
}

/** Per-sentence scores to their means; first choices counted. */
function meanOf(scored: readonly Scored[]): Scored {
  const n = scored.length;
  const firstChoice: Record<string, number> = {};
  for (const s of scored) {
    for (const [adapter, count] of Object.entries(s.firstChoice)) {
      firstChoice[adapter] = (firstChoice[adapter] ?? 0) + count;
    }
  }
  return {
    loss: scored.reduce((a, s) => a + s.loss, 0) / n,
    accuracy: scored.reduce((a, s) => a + s.accuracy, 0) / n,
    meanK: scored.reduce((a, s) => a + s.meanK, 0) / n,
    secondWeight: scored.reduce((a, s) => a + s.secondWeight, 0) / n,
    firstChoice,
  };
}

function fitSummary(
  outcome: Awaited<ReturnType<typeof fitComposition>>,
  examples: number,
): Record<string, unknown> {
  const weights = Object.entries(outcome.weights[GROUP] ?? {})
    .sort((a, b) => b[1] - a[1])
    .map(([adapter, w]) => `${adapter}:${w.toFixed(3)}`)
    .join(' ');
  return {
    examples,
    weights,
    before_accuracy: round3(outcome.before.accuracy),
    after_accuracy: round3(outcome.after.accuracy),
    before_loss: round3(outcome.before.loss),
    after_loss: round3(outcome.after.loss),
    evaluations: outcome.evaluations,
    stopped_by: outcome.stoppedBy,
  };
}

function table(
  task: string,
  perLanguage: Record<string, Record<Row, Scored>>,
  means: Record<string, number>,
): string {
  const header = `| ${task} | ${ROWS.join(' | ')} |`;
  const rule = `| --- | ${ROWS.map(() => '---').join(' | ')} |`;
  const lines = Object.entries(perLanguage).map(
    ([language, rows]) =>
      `| ${language} | ${ROWS.map((r) => rows[r].accuracy.toFixed(3)).join(' | ')} |`,
  );
  const mean = `| mean | ${ROWS.map((r) => means[r]!.toFixed(3)).join(' | ')} |`;
  return [header, rule, ...lines, mean].join('\n');
}

/**
 * An adapter that changes nothing: every weight 0, with the residual, so its output is its input.
 * Rank 1 is the least the format takes; the slot bank pads it with zeros like any smaller rank.
 */
async function writeIdentityAdapter(dir: string, hiddenSize: number): Promise<string> {
  const zeros = (shape: number[]) => ({
    shape,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
  });
  await writeAdapterFolder(dir, {
    id: NONE,
    group: GROUP,
    type: 'bottleneck',
    hiddenSize,
    rank: 1,
    activation: 'relu',
    residual: true,
    down: zeros([hiddenSize, 1]),
    downBias: zeros([1]),
    up: zeros([1, hiddenSize]),
    upBias: zeros([hiddenSize]),
  });
  return dir;
}

main().catch((error) => {
  log(error instanceof Error ? (error.stack ?? error.message) : String(error));
  process.exitCode = 1;
});
