/**
 * A complete, small model pack with seeded random weights, for tests and local runs: a BERT-like
 * ONNX backbone, a WordPiece tokenizer.json built from a small multilingual sample, a gated
 * `language` group (mixed ranks), a `task` group (ungated with a default adapter, or gated), and two
 * heads, one of which pins a task adapter. Same options and seed, same bytes.
 */

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomEncoderModel } from '../../src/onnx/random-encoder.js';
import { writeAdapterFolder } from '../../src/pack/import/moe-serve.js';
import {
  FORMAT_VERSION,
  MANIFEST_FILE,
  type Manifest,
  type ManifestGate,
  type ManifestGroup,
  PACK_FORMAT,
} from '../../src/pack/manifest.js';
import { writeSafetensors } from '../../src/pack/safetensors.js';
import type { Activation, BottleneckAdapter, Weight } from '../../src/pack/types.js';
import { buildWordPieceVocab, wordPieceTokenizerJson } from '../../src/pack/wordpiece.js';
import { Random } from '../../src/util/random.js';

/** Adapter folders in our own format (the production writer, re-exported for the tests). */
export { writeAdapterFolder };

export interface FixturePackOptions {
  /** Seed of every random weight (default 1). */
  seed?: number;
  /** Pack name in the manifest (default 'fixture'). */
  name?: string;
  /** Backbone width d (default 32). */
  hiddenSize?: number;
  /** Encoder layers (default 2). */
  layers?: number;
  /** Attention heads per layer (default 2); must divide hiddenSize. */
  heads?: number;
  /** Longest input in tokens (default 32). */
  maxLength?: number;
  /** Adapters in the `language` group (default 4). */
  languageAdapters?: number;
  /** Ranks of the language adapters, cycled (default [4, 8, 2, 8]). */
  ranks?: number[];
  /**
   * The language gate's type (default 'linear'). 'token_bag': over the tokenizer's ids, width 8,
   * FIXTURE_BIGRAM_BUCKETS hashed bigram rows, no hidden layer.
   */
  gate?: 'linear' | 'mlp' | 'token_bag';
  /** The task group's gate; null (default): routed by the request, default adapter 'topic'. */
  taskGate?: 'linear' | 'mlp' | null;
  /** Activation of every adapter (default 'gelu'). */
  activation?: Activation;
  /** default_k of the language group (default 1). */
  languageDefaultK?: number;
  /** Slots of the language group (default: the pack's default). */
  languageSlots?: number;
}

/** Bigram buckets of the fixture's token_bag gate (a prime, so that hashing spreads pairs). */
export const FIXTURE_BIGRAM_BUCKETS = 31;

/** Ids of the language adapters, in order; more than these are named lang8, lang9, ... */
export const FIXTURE_LANGUAGES = ['en', 'de', 'fr', 'ru', 'el', 'ar', 'zh', 'es'] as const;
export const FIXTURE_TASKS = ['topic', 'sentiment'] as const;
export const FIXTURE_HEADS = {
  topic: ['world', 'sports', 'business', 'science'],
  sentiment: ['negative', 'positive'],
} as const;

/** A small multilingual sample (written for this fixture) that the fixture tokenizer is built from. */
export const FIXTURE_TEXTS: readonly string[] = [
  'The weather is good today and the market is open.',
  'The team won the match, and the fans were happy.',
  'Scientists found a new star in the sky last night.',
  'I do not like this film; the story is bad.',
  'Das Wetter ist heute gut und der Markt ist offen.',
  'Die Mannschaft hat das Spiel gewonnen, und die Fans waren froh.',
  'Ich mag diesen Film nicht; die Geschichte ist schlecht.',
  "Le temps est beau aujourd'hui et le marché est ouvert.",
  "L'équipe a gagné le match, et les supporters étaient heureux.",
  "Je n'aime pas ce film ; l'histoire est mauvaise.",
  'Сегодня хорошая погода, и рынок открыт.',
  'Команда выиграла матч, и болельщики были рады.',
  'Мне не нравится этот фильм: история плохая.',
  'Ο καιρός είναι καλός σήμερα και η αγορά είναι ανοιχτή.',
  'Η ομάδα κέρδισε τον αγώνα και οι οπαδοί ήταν χαρούμενοι.',
  'Δεν μου αρέσει αυτή η ταινία· η ιστορία είναι κακή.',
  'الطقس جميل اليوم والسوق مفتوح.',
  'فاز الفريق بالمباراة وكان المشجعون سعداء.',
  'لا أحب هذا الفيلم، القصة سيئة.',
  '今天天气很好，市场开门了。',
  '球队赢了比赛，球迷们很高兴。',
  '我不喜欢这部电影，故事很差。',
  'El tiempo es bueno hoy y el mercado está abierto.',
  'El equipo ganó el partido y los aficionados estaban felices.',
  'No me gusta esta película; la historia es mala.',
  'Call 555-0123 at 10:30 (or 9:45)! Is it 100% "true"? Yes/no & more...',
];

/** A bottleneck adapter with seeded random weights (scaled so that it visibly changes h). */
export function randomAdapter(
  rng: Random,
  options: {
    id: string;
    group: string;
    hiddenSize: number;
    rank: number;
    activation?: Activation;
    residual?: boolean;
  },
): BottleneckAdapter {
  const d = options.hiddenSize;
  const r = options.rank;
  return {
    id: options.id,
    group: options.group,
    type: 'bottleneck',
    hiddenSize: d,
    rank: r,
    activation: options.activation ?? 'gelu',
    residual: options.residual ?? true,
    down: randomWeight(rng, [d, r], 1 / Math.sqrt(d)),
    downBias: randomWeight(rng, [r], 0.1),
    up: randomWeight(rng, [r, d], 0.5 / Math.sqrt(r)),
    upBias: randomWeight(rng, [d], 0.05),
  };
}

/** Build the fixture pack in `dir` (created if needed); returns `dir`. */
export async function buildFixturePack(
  dir: string,
  options: FixturePackOptions = {},
): Promise<string> {
  const seed = options.seed ?? 1;
  const d = options.hiddenSize ?? 32;
  const maxLength = options.maxLength ?? 32;
  const languageCount = options.languageAdapters ?? 4;
  const ranks = options.ranks ?? [4, 8, 2, 8];
  const activation = options.activation ?? 'gelu';
  if (languageCount < 1) throw new Error('languageAdapters must be at least 1');
  if (ranks.length === 0 || !ranks.every((r) => Number.isInteger(r) && r >= 1)) {
    throw new Error('ranks must be positive integers');
  }
  const rng = new Random(seed);
  await mkdir(dir, { recursive: true });

  // Tokenizer and backbone: the encoder's vocabulary is the tokenizer's.
  const vocab = buildWordPieceVocab([...FIXTURE_TEXTS], { vocabSize: 1000, minFrequency: 1 });
  await writeJson(
    join(dir, 'tokenizer.json'),
    wordPieceTokenizerJson(vocab, { lowercase: true, maxLength }),
  );
  const backbone = randomEncoderModel({
    vocabSize: vocab.length,
    hiddenSize: d,
    layers: options.layers ?? 2,
    heads: options.heads ?? 2,
    ffnSize: 4 * d,
    maxLength,
    seed,
  });
  await writeFile(join(dir, 'backbone.onnx'), backbone);

  const languageIds = Array.from(
    { length: languageCount },
    (_, i) => FIXTURE_LANGUAGES[i] ?? `lang${i}`,
  );
  const groups: ManifestGroup[] = [];
  const groupSpecs = [
    {
      id: 'language',
      ids: languageIds,
      gate: options.gate ?? 'linear',
      defaultK: options.languageDefaultK ?? 1,
    },
    { id: 'task', ids: [...FIXTURE_TASKS], gate: options.taskGate ?? null, defaultK: 1 },
  ];
  for (const spec of groupSpecs) {
    const adapters = [];
    for (const [i, id] of spec.ids.entries()) {
      const rank = spec.id === 'language' ? ranks[i % ranks.length]! : 4;
      const path = `adapters/${spec.id}/${id}`;
      const adapter = randomAdapter(rng, { id, group: spec.id, hiddenSize: d, rank, activation });
      await writeAdapterFolder(join(dir, path), adapter);
      adapters.push({ id, path });
    }
    let gate: ManifestGate | null = null;
    if (spec.gate !== null) {
      gate = { type: spec.gate, file: `gates/${spec.id}.safetensors`, experts: [...spec.ids] };
      if (spec.gate === 'mlp') gate.activation = 'relu';
      if (spec.gate === 'token_bag') gate.bigram_buckets = FIXTURE_BIGRAM_BUCKETS;
      await mkdir(join(dir, 'gates'), { recursive: true });
      const tensors =
        spec.gate === 'token_bag'
          ? randomTokenBag(rng, vocab.length, spec.ids.length)
          : randomGate(rng, spec.gate, d, spec.ids.length);
      await writeSafetensors(join(dir, gate.file), tensors);
    }
    groups.push({
      id: spec.id,
      default_k: spec.defaultK,
      adapters,
      gate,
      ...(gate === null ? { default_adapter: spec.ids[0]! } : {}),
      ...(spec.id === 'language' && options.languageSlots !== undefined
        ? { slots: options.languageSlots }
        : {}),
    });
  }

  await mkdir(join(dir, 'heads'), { recursive: true });
  const heads: Manifest['heads'] = [];
  for (const [id, labels] of Object.entries(FIXTURE_HEADS)) {
    const file = `heads/${id}.safetensors`;
    await writeSafetensors(join(dir, file), {
      weight: randomWeight(rng, [d, labels.length], 1 / Math.sqrt(d)),
      bias: randomWeight(rng, [labels.length], 0.1),
    });
    heads.push({
      id,
      file,
      labels: [...labels],
      ...(id === 'topic' ? { pin: { group: 'task', adapter: 'topic' } } : {}),
    });
  }

  const manifest: Manifest = {
    format: PACK_FORMAT,
    format_version: FORMAT_VERSION,
    name: options.name ?? 'fixture',
    version: '1.0.0',
    description: `Test fixture: random weights (seed ${seed}), not a trained model.`,
    backbone: { file: 'backbone.onnx', hidden_size: d, max_length: maxLength },
    tokenizer: { type: 'huggingface', file: 'tokenizer.json' },
    groups,
    heads,
  };
  await writeJson(join(dir, MANIFEST_FILE), manifest);
  return dir;
}

function randomGate(
  rng: Random,
  type: 'linear' | 'mlp',
  d: number,
  experts: number,
): Record<string, Weight> {
  if (type === 'linear') {
    return {
      weight: randomWeight(rng, [d, experts], 2 / Math.sqrt(d)),
      bias: randomWeight(rng, [experts], 0.1),
    };
  }
  const h = Math.max(4, d >> 1);
  return {
    'hidden.weight': randomWeight(rng, [d, h], 1 / Math.sqrt(d)),
    'hidden.bias': randomWeight(rng, [h], 0.1),
    'out.weight': randomWeight(rng, [h, experts], 2 / Math.sqrt(h)),
    'out.bias': randomWeight(rng, [experts], 0.1),
  };
}

function randomTokenBag(rng: Random, vocabSize: number, experts: number): Record<string, Weight> {
  const w = 8;
  return {
    'embedding.weight': randomWeight(rng, [vocabSize + FIXTURE_BIGRAM_BUCKETS, w], 1),
    'out.weight': randomWeight(rng, [w, experts], 2 / Math.sqrt(w)),
    'out.bias': randomWeight(rng, [experts], 0.1),
  };
}

function randomWeight(rng: Random, shape: number[], std: number): Weight {
  return {
    shape,
    data: rng.normals(
      shape.reduce((a, b) => a * b, 1),
      std,
    ),
  };
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}
