/**
 * Trains a task head for an existing pack from labelled text, and writes the head file and the
 * manifest's task entry (`npm run pack -- add-head`, src/tools/pack.ts):
 *
 *   npm run --silent pack -- add-head --pack DIR --task ID --data DIR [--heldout 0.1] [--seed 1]
 *     [--epochs 300] [--lr 0.02] [--l2 0.01] [--pin GROUP:ADAPTER] [--replace] [--no-build]
 *
 * `--data` holds one folder per label, named by the label, with .txt files of one example per line
 * (blank lines skipped), as `npm run fit-gate` reads them; labels are the folder names in sorted
 * order (logit column i scores labels[i]). Every line is embedded by the pack as served (the
 * engine, `Model`): tokenized by its tokenizer (special tokens, truncation), routed as a request
 * for the task will be (`--pin` pins that adapter, k = 1; otherwise each group's gate or default
 * adapter), and pooled by the pack's pooling without the L2 normalisation, which is what a head
 * reads (models/README.md, "The forward pass"). A share of each label's lines (`--heldout`,
 * seeded shuffle) is kept out to measure the head; the rest trains a softmax regression on
 * standardised features with the project's trainer (src/demo/train.ts `trainLinearGate`: full
 * batch Adam, one step per epoch, L2 penalty), exported as the plain `x @ weight + bias` of the
 * pack format. The head goes to heads/<task>.safetensors (`weight` [d,L], `bias` [L], F32) and the
 * manifest gets `{ id, file, labels, pin?, metadata }` (replacing the entry of that id with
 * `--replace`, in its place). The pack is loaded again to check it; unless `--no-build`, the pack
 * graph (which holds the heads) is built now and the held-out lines are run through it with
 * `task`, so the summary also gives the served accuracy and how far the served scores are from
 * the float64 ones. On any failure the manifest and head file are put back as they were.
 *
 * A pack that normalises its embeddings needs a graph without the normalisation to read the head
 * input: it is built in a temporary folder, `<pack>/.cache/head-input-*`, deleted afterwards (for
 * a Hugging Face backbone, one graph build more than add-adapter's).
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { linearLogits, trainLinearGate } from '../demo/train.js';
import type { EngineOptions } from '../engine/engine.js';
import { type InferRequest, Model } from '../inference/model.js';
import { prepareEngineGraph } from '../inference/pack-graph-plan.js';
import { type LoadedPack, loadPack } from '../pack/load.js';
import { ID_PATTERN, MANIFEST_FILE, type Manifest } from '../pack/manifest.js';
import { writeSafetensors } from '../pack/safetensors.js';
import { Random } from '../util/random.js';
import { readTextLines } from './labelled-text.js';

export interface AddHeadOptions {
  /** The pack folder. */
  readonly pack: string;
  /** The task (head) id. */
  readonly task: string;
  /** One folder per label of .txt files, one example per line. */
  readonly data: string;
  /** Route the task's requests (and its training lines) through this adapter, k = 1. */
  readonly pin?: { readonly group: string; readonly adapter: string };
  /** Share of each label's lines kept out of training to measure the head. Default 0.1. */
  readonly heldout?: number;
  /** Seed of the held-out split. Default 1. */
  readonly seed?: number;
  /** Full-batch Adam steps, one pass over the training lines each. Default 300 (the demo's gate). */
  readonly epochs?: number;
  /** Adam's learning rate on standardised features. Default 0.02. */
  readonly lr?: number;
  /** L2 penalty on the standardised weights: more generalises better on few lines. Default 0.01. */
  readonly l2?: number;
  /** An existing task of that id is replaced (otherwise it is an error). Default false. */
  readonly replace?: boolean;
  /** Build the pack graph now and check the head through it. Default true. */
  readonly build?: boolean;
  /** Engine options for embedding and checking (tests: one worker). */
  readonly engine?: EngineOptions;
  readonly log?: (line: string) => void;
}

export interface AddHeadResult {
  readonly task: string;
  /** The head file, relative to the pack. */
  readonly file: string;
  readonly labels: readonly string[];
  readonly pin: { readonly group: string; readonly adapter: string } | null;
  readonly examples: Readonly<Record<string, { train: number; heldout: number }>>;
  /** Top-1 on the held-out lines, float64 over the written float32 weights (null: none held out). */
  readonly heldoutAccuracy: number | null;
  /** Top-1 on the training lines. */
  readonly trainAccuracy: number;
  /** 1 / labels: what guessing gets. */
  readonly chance: number;
  readonly trainingLoss: number;
  /**
   * The held-out lines served by the rebuilt pack with `task` (null with --no-build or no lines
   * held out): its accuracy, and the largest difference between its scores and the float64 ones.
   */
  readonly served: { readonly heldoutAccuracy: number; readonly maxScoreDifference: number } | null;
  readonly settings: Readonly<Record<string, number>>;
}

/** One labelled line. */
interface Line {
  readonly text: string;
  readonly label: number;
}

/** Lines per embedding call: bounds one engine batch. */
const EMBED_BATCH = 32;

/**
 * The labelled lines of `dir`: one folder per label (sorted by name), each with .txt files (sorted)
 * of one example per line. Errors name the folder to fix.
 */
export async function readLabelledFolders(
  dir: string,
): Promise<{ labels: string[]; texts: string[][] }> {
  if (!(await stat(dir).catch(() => undefined))?.isDirectory()) {
    throw new Error(`--data ${dir} is not a folder; it holds one folder per label of .txt files`);
  }
  const entries = await readdir(dir, { withFileTypes: true });
  const loose = entries.filter((e) => e.isFile() && e.name.endsWith('.txt')).map((e) => e.name);
  if (loose.length > 0) {
    throw new Error(
      `${dir}: ${loose.join(', ')} must sit in a folder named by its label (${join(dir, '<label>', loose[0]!)}); --data holds one folder per label`,
    );
  }
  const labels = entries
    .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
    .map((e) => e.name)
    .sort();
  if (labels.length < 2) {
    throw new Error(
      `${dir}: a head needs at least 2 labels, one folder each, found ${labels.length}${labels.length === 1 ? ` (${labels[0]})` : ''}`,
    );
  }
  const texts: string[][] = [];
  for (const label of labels) {
    const folder = join(dir, label);
    const { files, lines } = await readTextLines(folder);
    if (lines.length === 0) {
      throw new Error(
        `${folder}: no examples for label '${label}' (${files === 0 ? 'no .txt files' : 'only blank lines'}); every label folder needs .txt files, one example per line`,
      );
    }
    texts.push(lines);
  }
  return { labels, texts };
}

/** Parses `GROUP:ADAPTER`. */
export function parsePin(text: string): { group: string; adapter: string } {
  const parts = text.split(':');
  if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
    throw new Error(`--pin takes GROUP:ADAPTER, got '${text}'`);
  }
  return { group: parts[0]!, adapter: parts[1]! };
}

/** The pin checked against the pack's groups: errors list what there is. */
function checkPin(pack: LoadedPack, pin: { group: string; adapter: string }): void {
  const group = pack.groups.find((g) => g.id === pin.group);
  if (group === undefined) {
    throw new Error(
      `--pin ${pin.group}:${pin.adapter}: pack ${pack.dir} has no group '${pin.group}' (groups: ${pack.groups.map((g) => g.id).join(', ') || 'none'})`,
    );
  }
  if (!group.adapters.some((a) => a.id === pin.adapter)) {
    throw new Error(
      `--pin ${pin.group}:${pin.adapter}: '${pin.adapter}' is not an adapter of group '${group.id}' (${group.adapters.map((a) => a.id).join(', ')})`,
    );
  }
}

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

function softmax(logits: Float64Array): Float64Array {
  const max = Math.max(...logits);
  const out = logits.map((x) => Math.exp(x - max));
  const sum = out.reduce((a, b) => a + b, 0);
  return out.map((x) => x / sum);
}

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;

/**
 * The head input of every line: the pack served with its embedding not normalised. A pack that
 * normalises needs another graph for that, built in a temporary folder of the pack's .cache (its
 * graph cache keeps the served graph only); otherwise the served graph is the one, cached as usual.
 */
async function embedLines(
  pack: LoadedPack,
  lines: readonly Line[],
  routing: Pick<InferRequest, 'adapters'>,
  options: Pick<AddHeadOptions, 'engine' | 'log'>,
): Promise<Float64Array[]> {
  let cacheDir: string | undefined;
  if (pack.pooling.normalize) {
    await mkdir(join(pack.dir, '.cache'), { recursive: true });
    cacheDir = await mkdtemp(join(pack.dir, '.cache', 'head-input-'));
  }
  try {
    const model = await Model.open({
      packDir: pack.dir,
      headInput: true,
      ...(cacheDir === undefined ? {} : { backboneCacheDir: cacheDir }),
      ...(options.engine === undefined ? {} : { engine: options.engine }),
      ...(options.log === undefined ? {} : { log: options.log }),
    });
    try {
      const out: Float64Array[] = [];
      for (let start = 0; start < lines.length; start += EMBED_BATCH) {
        const batch = lines.slice(start, start + EMBED_BATCH);
        const results = await model.infer({ inputs: batch.map((l) => l.text), ...routing });
        for (const r of results) out.push(Float64Array.from(r.embedding));
      }
      return out;
    } finally {
      await model.close();
    }
  } finally {
    if (cacheDir !== undefined) await rm(cacheDir, { recursive: true, force: true });
  }
}

export async function addHead(options: AddHeadOptions): Promise<AddHeadResult> {
  const log = options.log ?? (() => {});
  const settings = {
    heldout: options.heldout ?? 0.1,
    seed: options.seed ?? 1,
    epochs: options.epochs ?? 300,
    lr: options.lr ?? 0.02,
    l2: options.l2 ?? 0.01,
  };
  if (!new RegExp(ID_PATTERN).test(options.task)) {
    throw new Error(`--task '${options.task}' must match ${ID_PATTERN}`);
  }
  if (!(settings.heldout >= 0 && settings.heldout < 1)) {
    throw new Error(`--heldout must be in [0, 1), got ${settings.heldout}`);
  }
  if (!Number.isInteger(settings.epochs) || settings.epochs < 1) {
    throw new Error(`--epochs must be a positive integer, got ${settings.epochs}`);
  }
  if (!(settings.lr > 0) || !(settings.l2 >= 0)) {
    throw new Error(`--lr must be > 0 and --l2 >= 0, got ${settings.lr} and ${settings.l2}`);
  }
  const manifestPath = join(options.pack, MANIFEST_FILE);
  const pack = await loadPack(options.pack);
  const listed = pack.manifest.heads.findIndex((h) => h.id === options.task);
  if (listed >= 0 && options.replace !== true) {
    throw new Error(
      `${manifestPath}: /heads/${listed}: task '${options.task}' exists; pass --replace to train it again, or choose another --task`,
    );
  }
  if (listed < 0 && pack.heads.some((h) => h.id === options.task)) {
    throw new Error(
      `${manifestPath}: task '${options.task}' is the head saved with adapter '${options.task}' (modules_to_save); choose another --task`,
    );
  }
  if (options.pin !== undefined) checkPin(pack, options.pin);
  const { labels, texts } = await readLabelledFolders(options.data);

  // Seeded held-out split per label, as fit-gate makes it (at least one training line per label).
  const rng = new Random(settings.seed);
  const train: Line[] = [];
  const heldout: Line[] = [];
  const examples: Record<string, { train: number; heldout: number }> = {};
  texts.forEach((lines, label) => {
    const order = rng.shuffle(lines.map((_, i) => i));
    const kept = Math.min(Math.round(lines.length * settings.heldout), lines.length - 1);
    for (const i of order.slice(0, kept)) heldout.push({ text: lines[i]!, label });
    for (const i of order.slice(kept)) train.push({ text: lines[i]!, label });
    examples[labels[label]!] = { train: lines.length - kept, heldout: kept };
  });
  log(
    `add-head: ${labels.length} labels, ${train.length} training and ${heldout.length} held-out lines; embedding them with ${pack.dir}${options.pin ? ` pinned to ${options.pin.group}:${options.pin.adapter}` : ''}`,
  );
  const routing = options.pin ? { adapters: { [options.pin.group]: options.pin.adapter } } : {};
  const features = await embedLines(pack, [...train, ...heldout], routing, options);
  const trainX = features.slice(0, train.length);
  const heldoutX = features.slice(train.length);

  log(`add-head: training ${settings.epochs} epochs (full batch)`);
  const fit = trainLinearGate(
    trainX,
    train.map((l) => l.label),
    labels.length,
    { steps: settings.epochs, lr: settings.lr, l2: settings.l2 },
  );
  const logits = (x: Float64Array) => linearLogits(x, fit.weight, fit.bias);
  const accuracy = (xs: readonly Float64Array[], lines: readonly Line[]) =>
    xs.filter((x, i) => argmax(logits(x)) === lines[i]!.label).length / Math.max(xs.length, 1);
  const heldoutAccuracy = heldout.length === 0 ? null : round4(accuracy(heldoutX, heldout));
  const trainAccuracy = round4(accuracy(trainX, train));
  const chance = round4(1 / labels.length);

  // Write the head file and the manifest entry; load the pack again; put both back on failure.
  const file = `heads/${options.task}.safetensors`;
  const target = join(options.pack, file);
  const originalManifest = await readFile(manifestPath, 'utf8');
  const originalHead = await readFile(target).catch(() => undefined);
  const manifest = JSON.parse(originalManifest) as Manifest;
  const entry: Manifest['heads'][number] = {
    id: options.task,
    file,
    labels: [...labels],
    ...(options.pin ? { pin: { group: options.pin.group, adapter: options.pin.adapter } } : {}),
    metadata: {
      trained_by: 'npm run pack -- add-head',
      data: options.data,
      examples,
      heldout_accuracy: heldoutAccuracy,
      train_accuracy: trainAccuracy,
      chance,
      settings,
    },
  };
  if (listed >= 0) {
    const old = manifest.heads[listed]!;
    if (old.file !== file) log(`add-head: the replaced head's file ${old.file} is left in place`);
    manifest.heads[listed] = entry;
  } else {
    manifest.heads.push(entry);
  }
  const d = pack.hiddenSize;
  let served: AddHeadResult['served'] = null;
  try {
    await mkdir(dirname(target), { recursive: true });
    await writeSafetensors(target, {
      weight: { shape: [d, labels.length], data: fit.weight },
      bias: { shape: [labels.length], data: fit.bias },
    });
    await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    const reloaded = await loadPack(options.pack);
    if (options.build !== false && heldout.length > 0) {
      served = await checkServed(options, labels, heldout, heldoutX, fit);
    } else if (options.build !== false && reloaded.backbone.kind === 'huggingface') {
      await prepareEngineGraph(reloaded, { log });
    }
  } catch (error) {
    await writeFile(manifestPath, originalManifest);
    if (originalHead === undefined) await rm(target, { force: true });
    else await writeFile(target, originalHead);
    throw error;
  }
  return {
    task: options.task,
    file,
    labels,
    pin: options.pin ?? null,
    examples,
    heldoutAccuracy,
    trainAccuracy,
    chance,
    trainingLoss: round4(fit.loss),
    served,
    settings,
  };
}

/**
 * Serves the pack with its new head (building its graph) and runs the held-out lines with `task`:
 * the accuracy, and the largest gap between the served scores and softmax(x W + b) in float64.
 */
async function checkServed(
  options: AddHeadOptions,
  labels: readonly string[],
  lines: readonly Line[],
  xs: readonly Float64Array[],
  head: { weight: Float32Array; bias: Float32Array },
): Promise<NonNullable<AddHeadResult['served']>> {
  const model = await Model.open({
    packDir: options.pack,
    ...(options.engine === undefined ? {} : { engine: options.engine }),
    ...(options.log === undefined ? {} : { log: options.log }),
  });
  try {
    let correct = 0;
    let gap = 0;
    for (let start = 0; start < lines.length; start += EMBED_BATCH) {
      const batch = lines.slice(start, start + EMBED_BATCH);
      const results = await model.infer({ inputs: batch.map((l) => l.text), task: options.task });
      results.forEach((result, i) => {
        const output = result.outputs[options.task]!;
        const want = softmax(linearLogits(xs[start + i]!, head.weight, head.bias));
        if (output.label === labels[batch[i]!.label]) correct++;
        labels.forEach((label, c) => {
          gap = Math.max(gap, Math.abs(output.scores[label]! - want[c]!));
        });
      });
    }
    return {
      heldoutAccuracy: round4(correct / lines.length),
      maxScoreDifference: Number(gap.toExponential(2)),
    };
  } finally {
    await model.close();
  }
}
