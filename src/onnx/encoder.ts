/**
 * A BERT-like encoder backbone with seeded random weights, built as an ONNX graph with the
 * Hugging Face feature-extraction contract:
 *   input_ids       int64   [batch, sequence]
 *   attention_mask  int64   [batch, sequence]   1 = real token, 0 = padding
 *   last_hidden_state float32 [batch, sequence, hidden]
 *
 * Architecture (post-LN, like BERT): word + learned position embeddings, LayerNorm, then per layer
 *   a = LayerNorm(x + SelfAttention(x, mask)),  x' = LayerNorm(a + W2 gelu(W1 a + b1) + b2).
 * Padding keys get an additive -1e4 before the softmax, which underflows to an exact 0 weight in
 * float32, so real tokens see the same states whatever the padding (right padding: positions
 * 0..T-1 are the same with and without it).
 *
 * Built for ORT's optimizer: one fused QKV MatMul per layer, broadcast MatMuls over [B,H,T,dh],
 * LayerNormalization ops, and the erf-GELU pattern that ORT fuses into BiasGelu at level `all`.
 */
import { Random } from '../util/random.js';
import { attr, DEFAULT_OPSET, GraphBuilder } from './graph.js';

export interface EncoderOptions {
  vocabSize: number;
  hiddenSize: number;
  layers: number;
  heads: number;
  ffnSize: number;
  /** Position embeddings: the longest sequence the model accepts. */
  maxLength: number;
  seed: number;
  /** LayerNorm epsilon; default 1e-12 (BERT). */
  layerNormEps?: number;
  /** Std of the normal weight init; default 0.02 (BERT). */
  initStd?: number;
}

/** A linear map applied as x @ weight + bias; weight [in,out] row-major. */
export interface Linear {
  weight: Float32Array;
  bias: Float32Array;
}

export interface EncoderLayerWeights {
  query: Linear; // [d,d]
  key: Linear; // [d,d]
  value: Linear; // [d,d]
  attnOut: Linear; // [d,d]
  attnLnGamma: Float32Array; // [d]
  attnLnBeta: Float32Array; // [d]
  ffnIn: Linear; // [d,f]
  ffnOut: Linear; // [f,d]
  ffnLnGamma: Float32Array; // [d]
  ffnLnBeta: Float32Array; // [d]
}

export interface EncoderWeights {
  wordEmbeddings: Float32Array; // [V,d]
  positionEmbeddings: Float32Array; // [P,d]
  embLnGamma: Float32Array; // [d]
  embLnBeta: Float32Array; // [d]
  layers: EncoderLayerWeights[];
}

export const ENCODER_INPUT_IDS = 'input_ids';
export const ENCODER_INPUT_MASK = 'attention_mask';
export const ENCODER_OUTPUT = 'last_hidden_state';

/** Additive attention bias for padding keys. */
const MASK_NEGATIVE = -1e4;

function validate(o: EncoderOptions): void {
  for (const key of [
    'vocabSize',
    'hiddenSize',
    'layers',
    'heads',
    'ffnSize',
    'maxLength',
  ] as const) {
    if (!Number.isInteger(o[key]) || o[key] < 1) {
      throw new Error(`encoder: ${key} must be a positive integer, got ${o[key]}`);
    }
  }
  if (o.hiddenSize % o.heads !== 0) {
    throw new Error(`encoder: hiddenSize ${o.hiddenSize} is not divisible by heads ${o.heads}`);
  }
}

/** Seeded random weights: normal(0, 0.02) matrices and embeddings, zero biases, LayerNorm 1/0. */
export function randomEncoderWeights(options: EncoderOptions): EncoderWeights {
  validate(options);
  const { vocabSize: V, hiddenSize: d, ffnSize: f, maxLength: P } = options;
  const std = options.initStd ?? 0.02;
  const rng = new Random(options.seed);
  const linear = (rows: number, cols: number): Linear => ({
    weight: rng.normals(rows * cols, std),
    bias: new Float32Array(cols),
  });
  const ones = () => new Float32Array(d).fill(1);
  const layers: EncoderLayerWeights[] = [];
  for (let l = 0; l < options.layers; l++) {
    layers.push({
      query: linear(d, d),
      key: linear(d, d),
      value: linear(d, d),
      attnOut: linear(d, d),
      attnLnGamma: ones(),
      attnLnBeta: new Float32Array(d),
      ffnIn: linear(d, f),
      ffnOut: linear(f, d),
      ffnLnGamma: ones(),
      ffnLnBeta: new Float32Array(d),
    });
  }
  return {
    wordEmbeddings: rng.normals(V * d, std),
    positionEmbeddings: rng.normals(P * d, std),
    embLnGamma: ones(),
    embLnBeta: new Float32Array(d),
    layers,
  };
}

/** Concatenates the columns of [d,d] q/k/v weights into one [d,3d] weight (and their biases). */
function fuseQkv(layer: EncoderLayerWeights, d: number): Linear {
  const weight = new Float32Array(d * 3 * d);
  const parts = [layer.query, layer.key, layer.value];
  for (let i = 0; i < d; i++) {
    for (let p = 0; p < 3; p++) {
      weight.set(parts[p]!.weight.subarray(i * d, (i + 1) * d), i * 3 * d + p * d);
    }
  }
  const bias = new Float32Array(3 * d);
  parts.forEach((part, p) => {
    bias.set(part.bias, p * d);
  });
  return { weight, bias };
}

/** Builds the encoder graph from given weights; returns the model bytes. */
export function buildEncoderFromWeights(options: EncoderOptions, w: EncoderWeights): Uint8Array {
  validate(options);
  const { vocabSize: V, hiddenSize: d, heads: H, ffnSize: f, maxLength: P } = options;
  const dh = d / H;
  const eps = options.layerNormEps ?? 1e-12;
  const g = new GraphBuilder();

  const ids = g.input(ENCODER_INPUT_IDS, 'int64', ['batch', 'sequence']);
  const mask = g.input(ENCODER_INPUT_MASK, 'int64', ['batch', 'sequence']);

  // Embeddings: word [B,T,d] + position [T,d] (the first T rows of the table).
  const wordTable = g.initializer('embeddings.word', w.wordEmbeddings, [V, d]);
  const posTable = g.initializer('embeddings.position', w.positionEmbeddings, [P, d]);
  const words = g.gather(wordTable, ids, 0, 'embeddings_word_gather'); // [B,T,d]
  const idsShape = g.op('Shape', [ids], {}, 'ids_shape'); // [2]
  const seqLen = g.op('Slice', [idsShape, g.constInt64([1]), g.constInt64([2])], {}, 'seq_len'); // [1]
  const positions = g.op(
    'Slice',
    [posTable, g.constInt64([0]), seqLen, g.constInt64([0])],
    {},
    'embeddings_position_slice',
  ); // [T,d]
  const embSum = g.add(words, positions, 'embeddings_sum'); // [B,T,d]
  // Token-wise parts run on a 2-D [B*T,d] view, so every projection is one Gemm with its bias
  // (measured faster than MatMul + Add on [B,T,d]); attention reshapes to heads and back.
  let x = g.layerNorm(
    g.reshape(embSum, [-1, d], 'embeddings_tokens'),
    g.initializer('embeddings.ln.gamma', w.embLnGamma, [d]),
    g.initializer('embeddings.ln.beta', w.embLnBeta, [d]),
    eps,
    'embeddings_ln',
  ); // [N,d], N = B*T

  // Additive key mask: (1 - mask) * -1e4, shaped [B,1,1,T] to broadcast over heads and queries.
  const maskF = g.cast(mask, 'float32', 'mask_float'); // [B,T]
  const inverted = g.sub(g.constFloat(1), maskF, 'mask_inverted'); // [B,T]
  const maskBias = g.unsqueeze(
    g.mul(inverted, g.constFloat(MASK_NEGATIVE), 'mask_scaled'),
    [1, 2],
    'mask_bias',
  ); // [B,1,1,T]
  const scale = g.constFloat(1 / Math.sqrt(dh));
  // Runtime shapes: [-1,T,3H,dh] for the heads view, [B,T,d] for the output.
  const headsShape = g.op(
    'Concat',
    [g.constInt64([-1]), seqLen, g.constInt64([3 * H, dh])],
    { axis: attr.int(0) },
    'qkv_heads_shape',
  );
  const outShape = g.op(
    'Concat',
    [idsShape, g.constInt64([d])],
    { axis: attr.int(0) },
    'output_shape',
  );

  /** x [N,in] @ weight [in,out] + bias [out] as one Gemm. */
  const dense = (input: string, l: Linear, rows: number, cols: number, name: string): string =>
    g.op(
      'Gemm',
      [
        input,
        g.initializer(`${name}.weight`, l.weight, [rows, cols]),
        g.initializer(`${name}.bias`, l.bias, [cols]),
      ],
      {},
      name.replace(/\./g, '_'),
    );

  w.layers.forEach((layer, l) => {
    const p = `layer${l}`;
    // Self-attention. One Gemm for q, k and v: [N,d] @ [d,3d] -> [N,3d].
    const qkv = dense(x, fuseQkv(layer, d), d, 3 * d, `${p}.attn.qkv`); // [N,3d]
    const heads = g.transpose(
      g.op('Reshape', [qkv, headsShape], {}, `${p}_qkv_split_heads`), // [B,T,3H,dh]
      [0, 2, 1, 3],
      `${p}_qkv_heads`,
    ); // [B,3H,T,dh]
    const [q, k, v] = g.node(
      'Split',
      [heads, g.constInt64([H, H, H])],
      { axis: attr.int(1) },
      {
        outputs: 3,
        name: `${p}_qkv_split`,
      },
    ) as [string, string, string]; // [B,H,T,dh] each
    const kT = g.transpose(k, [0, 1, 3, 2], `${p}_key_t`); // [B,H,dh,T]
    const scores = g.mul(g.matMul(q, kT, `${p}_scores_matmul`), scale, `${p}_scores_scaled`); // [B,H,T,T]
    const probs = g.softmax(g.add(scores, maskBias, `${p}_scores_masked`), -1, `${p}_attn_probs`); // [B,H,T,T]
    const context = g.reshape(
      g.transpose(g.matMul(probs, v, `${p}_context_heads`), [0, 2, 1, 3], `${p}_context_t`), // [B,T,H,dh]
      [-1, d],
      `${p}_context`,
    ); // [N,d]
    const attnOut = dense(context, layer.attnOut, d, d, `${p}.attn.out`); // [N,d]
    const a = g.layerNorm(
      g.add(x, attnOut, `${p}_attn_residual`),
      g.initializer(`${p}.attn.ln.gamma`, layer.attnLnGamma, [d]),
      g.initializer(`${p}.attn.ln.beta`, layer.attnLnBeta, [d]),
      eps,
      `${p}_attn_ln`,
    ); // [N,d]

    // Feed-forward: gelu(a @ W1 + b1) @ W2 + b2.
    const inner = dense(a, layer.ffnIn, d, f, `${p}.ffn.in`); // [N,f]
    const act = g.geluErf(inner, `${p}_ffn_gelu`); // [N,f]
    const ffnOut = dense(act, layer.ffnOut, f, d, `${p}.ffn.out`); // [N,d]
    x = g.layerNorm(
      g.add(a, ffnOut, `${p}_ffn_residual`),
      g.initializer(`${p}.ffn.ln.gamma`, layer.ffnLnGamma, [d]),
      g.initializer(`${p}.ffn.ln.beta`, layer.ffnLnBeta, [d]),
      eps,
      `${p}_ffn_ln`,
    ); // [N,d]
  });

  const hiddenOut = g.op('Reshape', [x, outShape], {}, 'last_hidden_state_reshape', ENCODER_OUTPUT); // [B,T,d]
  g.output(hiddenOut, ENCODER_OUTPUT, 'float32', ['batch', 'sequence', d]);
  return g.toModel({
    opset: DEFAULT_OPSET,
    producer: 'moe-serve encoder',
    graphName: 'encoder',
    docString: `BERT-like encoder d=${d} layers=${options.layers} heads=${H} ffn=${f} vocab=${V} seed=${options.seed}`,
  });
}

/** Builds a seeded random encoder and returns its model bytes and weights. */
export function buildEncoderWithWeights(options: EncoderOptions): {
  model: Uint8Array;
  weights: EncoderWeights;
} {
  const weights = randomEncoderWeights(options);
  return { model: buildEncoderFromWeights(options, weights), weights };
}

/** Builds a seeded random encoder; returns the ONNX model bytes. */
export function buildEncoder(options: EncoderOptions): Uint8Array {
  return buildEncoderWithWeights(options).model;
}
