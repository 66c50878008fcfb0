/**
 * An independent float64 reference of Hugging Face's BERT-family encoders, written from the
 * semantics of transformers' modeling_bert.py, modeling_roberta.py / modeling_xlm_roberta.py and
 * modeling_distilbert.py (eval mode: no dropout). It reads what a Hugging Face folder holds, not
 * our contract types: `config.json` as parsed JSON and the state dict by Hugging Face tensor names
 * in PyTorch layout (nn.Linear.weight [out,in]), with any name prefix. So it checks our reader
 * (names, transposes, token-type folding, position ids) and our graph builder together.
 *
 * API
 *   hfEncoderReference(config, tensors, batch, hooks?) -> Float64Array[]   last_hidden_state per item, [T*d]
 *     config   the parsed config.json (model_type bert | roberta | xlm-roberta | distilbert)
 *     tensors  name -> { shape, data } (Float32Array as stored, after any F16/BF16 rounding)
 *     batch    { ids: number[][] (every row length T), mask: number[][] (1 real, 0 padding),
 *                tokenTypes?: number[][] (default all 0) }
 *   pooledReference(hidden, mask, mode, normalize) -> Float64Array[]  sentence-transformers pooling
 *   erf(x), gelu(x)
 *
 * Hooks (all optional, per item, float64, rows = that item's T tokens, row-major), mirroring the
 * graph builder's EncoderHooks (src/onnx/encoder-hooks.ts) so that in-layer adapters (LoRA,
 * bottleneck) can be added to this reference the way they are added to the graph:
 *   embeddings(x [T,d], item)                                  -> the tensor layer 0 reads
 *   linear({ layer, module, input [T,in], output [T,out], inSize, outSize, item })
 *                                                              -> the module's output to use
 *       module is the canonical LinearModule name: query, key, value, attention_output,
 *       intermediate, output (DistilBERT's q_lin, k_lin, v_lin, out_lin, lin1, lin2 map to them);
 *       output is x W^T + b already
 *   block({ layer, block: 'attention' | 'ffn', hidden [T,d], residual [T,d], layerNorm, item })
 *                                                              -> the block's output
 *       hidden is the block's output projection before the residual add, residual the block's
 *       input, layerNorm(x) applies that block's own LayerNorm; default LN(hidden + residual)
 *   layerOutput(layer, x [T,d], item)                          -> the next layer's input
 */
import type { LayerBlock, LinearModule } from '../../src/pack/encoder-types.js';

export interface RefTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface RefBatch {
  readonly ids: readonly (readonly number[])[];
  readonly mask: readonly (readonly number[])[];
  readonly tokenTypes?: readonly (readonly number[])[];
}

export interface RefLinearSite {
  readonly layer: number;
  readonly module: LinearModule;
  readonly input: Float64Array;
  readonly output: Float64Array;
  readonly inSize: number;
  readonly outSize: number;
  readonly item: number;
}

export interface RefBlockSite {
  readonly layer: number;
  readonly block: LayerBlock;
  readonly hidden: Float64Array;
  readonly residual: Float64Array;
  readonly layerNorm: (x: Float64Array) => Float64Array;
  readonly item: number;
}

export interface ReferenceHooks {
  embeddings?(x: Float64Array, item: number): Float64Array;
  linear?(site: RefLinearSite): Float64Array;
  block?(site: RefBlockSite): Float64Array;
  layerOutput?(layer: number, x: Float64Array, item: number): Float64Array;
}

/** erf to ~1e-15: Taylor series for |x| < 3, continued fraction of erfc beyond. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    let sum = 0;
    let term = ax; // (-1)^n x^(2n+1) / n!
    for (let n = 0; n < 100; n++) {
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17) break;
      term *= (-ax * ax) / (n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...)))).
  let k = ax;
  for (let n = 60; n >= 1; n--) k = ax + n / 2 / k;
  return Math.sign(x) * (1 - Math.exp(-ax * ax) / Math.sqrt(Math.PI) / k);
}

/** transformers' "gelu": the exact erf form. */
export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/** transformers' ACT2FN by name. */
function act(name: string): (x: number) => number {
  const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
  switch (name) {
    case 'gelu':
      return gelu;
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
      return (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
    case 'quick_gelu':
      return (x) => x * sigmoid(1.702 * x);
    case 'relu':
      return (x) => Math.max(0, x);
    case 'silu':
    case 'swish':
      return (x) => x * sigmoid(x);
    case 'tanh':
      return Math.tanh;
    default:
      throw new Error(`reference: activation ${name} is not implemented`);
  }
}

/** Module names of one family, by canonical role. */
interface Names {
  word: string;
  position: string;
  tokenType: string | undefined;
  embLn: string;
  layer: (l: number) => string;
  linear: Record<LinearModule, string>;
  attentionLn: string;
  outputLn: string;
}

const BERT_NAMES: Names = {
  word: 'embeddings.word_embeddings',
  position: 'embeddings.position_embeddings',
  tokenType: 'embeddings.token_type_embeddings',
  embLn: 'embeddings.LayerNorm',
  layer: (l) => `encoder.layer.${l}.`,
  linear: {
    query: 'attention.self.query',
    key: 'attention.self.key',
    value: 'attention.self.value',
    attention_output: 'attention.output.dense',
    intermediate: 'intermediate.dense',
    output: 'output.dense',
  },
  attentionLn: 'attention.output.LayerNorm',
  outputLn: 'output.LayerNorm',
};

const DISTILBERT_NAMES: Names = {
  word: 'embeddings.word_embeddings',
  position: 'embeddings.position_embeddings',
  tokenType: undefined,
  embLn: 'embeddings.LayerNorm',
  layer: (l) => `transformer.layer.${l}.`,
  linear: {
    query: 'attention.q_lin',
    key: 'attention.k_lin',
    value: 'attention.v_lin',
    attention_output: 'attention.out_lin',
    intermediate: 'ffn.lin1',
    output: 'ffn.lin2',
  },
  attentionLn: 'sa_layer_norm',
  outputLn: 'output_layer_norm',
};

type Config = Readonly<Record<string, unknown>>;

/** last_hidden_state of every item, [T*d] row-major, float64. */
export function hfEncoderReference(
  config: Config,
  tensors: ReadonlyMap<string, RefTensor>,
  batch: RefBatch,
  hooks: ReferenceHooks = {},
): Float64Array[] {
  const type = String(config.model_type);
  const distil = type === 'distilbert';
  const names = distil ? DISTILBERT_NAMES : BERT_NAMES;
  const num = (key: string, fallback?: number) => {
    const value = config[key] ?? fallback;
    if (typeof value !== 'number') throw new Error(`reference: config.${key} missing`);
    return value;
  };
  const d = distil ? num('dim') : num('hidden_size');
  const layers = distil ? num('n_layers') : num('num_hidden_layers');
  const heads = distil ? num('n_heads') : num('num_attention_heads');
  const eps = distil ? 1e-12 : num('layer_norm_eps');
  const activation = act(String(distil ? config.activation : config.hidden_act));
  const pad = num('pad_token_id', 0);
  const afterPadding = type === 'roberta' || type === 'xlm-roberta';

  // The state dict may carry a prefix (bert., roberta., distilbert., ...): find it by the word table.
  const wordKey = [...tensors.keys()].find((k) => k.endsWith(`${names.word}.weight`));
  if (wordKey === undefined) throw new Error('reference: no word embeddings in the state dict');
  const prefix = wordKey.slice(0, wordKey.length - `${names.word}.weight`.length);
  const t = (name: string): Float32Array => {
    const tensor = tensors.get(prefix + name);
    if (!tensor) throw new Error(`reference: tensor ${prefix + name} missing`);
    return tensor.data;
  };

  const out: Float64Array[] = [];
  batch.ids.forEach((ids, item) => {
    const T = ids.length;
    const mask = batch.mask[item]!;
    const types = batch.tokenTypes?.[item] ?? ids.map(() => 0);
    // Position ids: BERT/DistilBERT 0..T-1; RoBERTa/XLM-R create_position_ids_from_input_ids.
    const positions: number[] = [];
    let seen = 0;
    for (let i = 0; i < T; i++) {
      if (!afterPadding) positions.push(i);
      else if (ids[i] === pad) positions.push(pad);
      else positions.push(pad + ++seen);
    }
    let x: Float64Array = new Float64Array(T * d);
    const word = t(`${names.word}.weight`);
    const position = t(`${names.position}.weight`);
    const tokenType = names.tokenType ? t(`${names.tokenType}.weight`) : undefined;
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < d; j++) {
        let v = word[ids[i]! * d + j]! + position[positions[i]! * d + j]!;
        if (tokenType) v += tokenType[types[i]! * d + j]!;
        x[i * d + j] = v;
      }
    }
    x = layerNorm(x, T, d, t(`${names.embLn}.weight`), t(`${names.embLn}.bias`), eps);
    if (hooks.embeddings) x = hooks.embeddings(x, item);

    for (let l = 0; l < layers; l++) {
      const base = names.layer(l);
      const dense = (
        module: LinearModule,
        input: Float64Array,
        inSize: number,
        outSize: number,
      ) => {
        const w = t(`${base}${names.linear[module]}.weight`); // [out,in]
        const b = t(`${base}${names.linear[module]}.bias`);
        const output = new Float64Array(T * outSize);
        for (let i = 0; i < T; i++) {
          for (let o = 0; o < outSize; o++) {
            let s = b[o]!;
            for (let k = 0; k < inSize; k++) s += input[i * inSize + k]! * w[o * inSize + k]!;
            output[i * outSize + o] = s;
          }
        }
        return hooks.linear
          ? hooks.linear({ layer: l, module, input, output, inSize, outSize, item })
          : output;
      };
      const close = (block: LayerBlock, hidden: Float64Array, residual: Float64Array) => {
        const ln = block === 'attention' ? names.attentionLn : names.outputLn;
        const norm = (v: Float64Array) =>
          layerNorm(v, T, d, t(`${base}${ln}.weight`), t(`${base}${ln}.bias`), eps);
        if (hooks.block) {
          return hooks.block({ layer: l, block, hidden, residual, layerNorm: norm, item });
        }
        const sum = new Float64Array(T * d);
        for (let i = 0; i < T * d; i++) sum[i] = hidden[i]! + residual[i]!;
        return norm(sum);
      };

      const q = dense('query', x, d, d);
      const k = dense('key', x, d, d);
      const v = dense('value', x, d, d);
      const context = attention(q, k, v, mask, T, d, heads);
      const a = close('attention', dense('attention_output', context, d, d), x);
      const f = (distil ? num('hidden_dim') : num('intermediate_size')) as number;
      const inner = dense('intermediate', a, d, f).map(activation);
      x = close('ffn', dense('output', inner, f, d), a);
      if (hooks.layerOutput) x = hooks.layerOutput(l, x, item);
    }
    out.push(x);
  });
  return out;
}

/**
 * Softmax attention per head: scores q.k / sqrt(dh) plus the extended mask, which in transformers
 * is (1 - mask) * float32 min (DistilBERT: masked_fill with float32 min): a padded key's weight
 * is exactly 0, so it is left out of the sum here. Padded query rows attend the real keys.
 */
function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  mask: readonly number[],
  T: number,
  d: number,
  heads: number,
): Float64Array {
  const dh = d / heads;
  const context = new Float64Array(T * d);
  const keys = mask.map((m, j) => (m !== 0 ? j : -1)).filter((j) => j >= 0);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < T; i++) {
      const scores = keys.map((j) => {
        let s = 0;
        for (let c = 0; c < dh; c++) s += q[i * d + h * dh + c]! * k[j * d + h * dh + c]!;
        return s / Math.sqrt(dh);
      });
      const m = Math.max(...scores);
      const exps = scores.map((s) => Math.exp(s - m));
      const total = exps.reduce((a, e) => a + e, 0);
      keys.forEach((j, n) => {
        const p = exps[n]! / total;
        for (let c = 0; c < dh; c++) context[i * d + h * dh + c]! += p * v[j * d + h * dh + c]!;
      });
    }
  }
  return context;
}

function layerNorm(
  x: Float64Array,
  n: number,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
): Float64Array {
  const out = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    let mean = 0;
    for (let j = 0; j < d; j++) mean += x[i * d + j]!;
    mean /= d;
    let variance = 0;
    for (let j = 0; j < d; j++) variance += (x[i * d + j]! - mean) ** 2;
    variance /= d;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let j = 0; j < d; j++)
      out[i * d + j] = (x[i * d + j]! - mean) * inv * gamma[j]! + beta[j]!;
  }
  return out;
}

/**
 * sentence-transformers' Pooling (+ Normalize) over each item's [T*d] states: 'mean' (masked,
 * sum / max(count, 1e-9)), 'cls' (row 0), 'max' (padding set to -1e9 first).
 */
export function pooledReference(
  hidden: readonly Float64Array[],
  mask: readonly (readonly number[])[],
  d: number,
  mode: 'mean' | 'cls' | 'max',
  normalize: boolean,
): Float64Array[] {
  return hidden.map((h, item) => {
    const m = mask[item]!;
    const T = m.length;
    const out = new Float64Array(d);
    if (mode === 'cls') {
      out.set(h.subarray(0, d));
    } else if (mode === 'max') {
      out.fill(Number.NEGATIVE_INFINITY);
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < d; j++) out[j] = Math.max(out[j]!, m[i] ? h[i * d + j]! : -1e9);
      }
    } else {
      let count = 0;
      for (let i = 0; i < T; i++) {
        if (!m[i]) continue;
        count++;
        for (let j = 0; j < d; j++) out[j]! += h[i * d + j]!;
      }
      for (let j = 0; j < d; j++) out[j] = out[j]! / Math.max(count, 1e-9);
    }
    if (normalize) {
      const norm = Math.sqrt(out.reduce((s, v) => s + v * v, 0));
      for (let j = 0; j < d; j++) out[j] = out[j]! / Math.max(norm, 1e-12);
    }
    return out;
  });
}
