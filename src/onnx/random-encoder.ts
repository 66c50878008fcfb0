/**
 * A BERT-shaped encoder with seeded random weights (normal(0, initStd) matrices and embeddings,
 * zero biases, LayerNorm 1/0), for the demo pack, fixture packs, tests and benchmarks. Same
 * options, same weights: the random draws come in a fixed order (per layer query, key, value,
 * attention output, intermediate, output; then the word and position tables), the order of the
 * encoder builder this replaced, so the demo's frozen backbone is the same function as before.
 */
import type { EncoderConfig, EncoderWeights, LinearWeights } from '../pack/encoder-types.js';
import { Random } from '../util/random.js';
import { type EncoderBuildOptions, encoderModelBytes } from './bert.js';

export interface RandomEncoderOptions {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly layers: number;
  readonly heads: number;
  /** Feed-forward width. */
  readonly ffnSize: number;
  /** Rows of the position table: the longest input. */
  readonly maxLength: number;
  readonly seed: number;
  /** Default 1e-12 (BERT). */
  readonly layerNormEps?: number;
  /** Std of the normal init; default 0.02 (BERT). */
  readonly initStd?: number;
}

export function randomEncoder(options: RandomEncoderOptions): {
  config: EncoderConfig;
  weights: EncoderWeights;
} {
  const { vocabSize: V, hiddenSize: d, ffnSize: f, maxLength: P } = options;
  for (const key of [
    'vocabSize',
    'hiddenSize',
    'layers',
    'heads',
    'ffnSize',
    'maxLength',
  ] as const) {
    if (!Number.isInteger(options[key]) || options[key] < 1) {
      throw new Error(`encoder: ${key} must be a positive integer, got ${options[key]}`);
    }
  }
  if (d % options.heads !== 0) {
    throw new Error(`encoder: hiddenSize ${d} is not divisible by heads ${options.heads}`);
  }
  const std = options.initStd ?? 0.02;
  const rng = new Random(options.seed);
  const linear = (rows: number, cols: number): LinearWeights => ({
    weight: rng.normals(rows * cols, std),
    bias: new Float32Array(cols),
  });
  const norm = () => ({ gamma: new Float32Array(d).fill(1), beta: new Float32Array(d) });
  const layers = Array.from({ length: options.layers }, () => {
    const query = linear(d, d);
    const key = linear(d, d);
    const value = linear(d, d);
    const attentionOutput = linear(d, d);
    const intermediate = linear(d, f);
    const output = linear(f, d);
    return {
      query,
      key,
      value,
      attentionOutput,
      attentionLn: norm(),
      intermediate,
      output,
      outputLn: norm(),
    };
  });
  const wordEmbeddings = rng.normals(V * d, std);
  const positionEmbeddings = rng.normals(P * d, std);
  return {
    config: {
      family: 'bert',
      vocabSize: V,
      hiddenSize: d,
      layers: options.layers,
      heads: options.heads,
      intermediateSize: f,
      hiddenAct: 'gelu',
      layerNormEps: options.layerNormEps ?? 1e-12,
      maxPositions: P,
      padTokenId: 0,
      positions: 'absolute',
    },
    weights: { wordEmbeddings, positionEmbeddings, embeddingLn: norm(), layers },
  };
}

/** The random encoder's ONNX model bytes (weights inline; see encoderModelBytes). */
export function randomEncoderModel(
  options: RandomEncoderOptions,
  build: EncoderBuildOptions = {},
): Uint8Array {
  const { config, weights } = randomEncoder(options);
  return encoderModelBytes(config, weights, build);
}
