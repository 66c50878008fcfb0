/**
 * A plain-JS reference of the int8 encoder's arithmetic, written from onnxruntime's CPU kernels
 * (read with the search tool), independent of src/onnx/quantize.ts and src/onnx/bert.ts:
 *
 * - weights (offline): symmetric per output column, 7-bit: scale[n] = fp32(max_k |W[k,n]| / 64),
 *   q = clamp(round-half-even(W / scale), -64, 64) (onnxruntime quantize_dynamic with
 *   per_channel and reduce_range);
 * - activations (run time, per tensor): contrib_ops/cpu/quantization/dynamic_quantize_matmul.cc
 *   and DynamicQuantizeLinear: min = min(0, min x), max = max(0, max x), over the WHOLE tensor
 *   (every row of [N,K], padding rows included); scale = fp32((max - min) / 255), 1 when max = min;
 *   zp = round-half-even(clamp(0 - min / scale, 0, 255)); MLAS QuantizeLinear:
 *   q = round-half-even(clamp(fp32(x / scale), -zp, 255 - zp)) + zp;
 * - the GEMM (MLAS u8s8, exact int32 sums where pairs cannot saturate): acc[r,n] = sum_k
 *   (qa[r,k] - zp) * qw[k,n]; y = acc * fp32(a_scale * w_scale[n]) + bias[n] (the per-column
 *   scale-bias output processor).
 *
 * `referenceEncoder` runs a BERT encoder (absolute positions, token type 0 folded in, post-LN,
 * erf GELU) over a whole padded batch as our graph does: token-major [N,d] with padding rows
 * computed too (their keys masked out), so each projection's activation range is the batch's.
 * With `quantize: false` it is the float64 encoder, a check of the reference itself.
 */
import type { EncoderConfig, EncoderWeights } from '../../src/pack/encoder-types.js';
import { gelu } from './encoder-reference.js';

const f32 = Math.fround;
export const REF_WEIGHT_MAX = 64;

export function roundHalfEvenRef(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

export interface ActivationQuant {
  readonly scale: number;
  readonly zeroPoint: number;
  readonly values: Uint8Array;
}

/** uint8 per-tensor quantization of `x` as onnxruntime computes it at run time (header). */
export function quantizeActivations(x: ArrayLike<number>): ActivationQuant {
  let min = 0;
  let max = 0;
  for (let i = 0; i < x.length; i++) {
    const v = f32(x[i]!);
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const scale = max === min ? 1 : f32(f32(max - min) / 255);
  const zeroPoint = roundHalfEvenRef(Math.max(0, Math.min(255, f32(0 - f32(min / scale)))));
  const values = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const scaled = Math.max(-zeroPoint, Math.min(255 - zeroPoint, f32(f32(x[i]!) / scale)));
    values[i] = roundHalfEvenRef(scaled) + zeroPoint;
  }
  return { scale, zeroPoint, values };
}

export interface WeightQuant {
  readonly values: Int8Array; // [K,N]
  readonly scales: Float32Array; // [N]
}

/** Symmetric per-column 7-bit weights (header). */
export function quantizeWeights(w: Float32Array, K: number, N: number): WeightQuant {
  const scales = new Float32Array(N);
  for (let n = 0; n < N; n++) {
    let m = 0;
    for (let k = 0; k < K; k++) m = Math.max(m, Math.abs(w[k * N + n]!));
    scales[n] = m === 0 ? 1 : m / REF_WEIGHT_MAX;
  }
  const values = new Int8Array(K * N);
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const q = roundHalfEvenRef(w[k * N + n]! / scales[n]!);
      values[k * N + n] = Math.max(-REF_WEIGHT_MAX, Math.min(REF_WEIGHT_MAX, q));
    }
  }
  return { values, scales };
}

/**
 * x [R,K] @ W [K,N] + bias, the int8 way: activations quantized per tensor, int32 sums, one
 * rescale per column. Also returns each column's quantum (a_scale * w_scale[n]): one step of the
 * integer sum, the size of any off-by-one in the integer math.
 */
export function int8Linear(
  x: ArrayLike<number>,
  R: number,
  K: number,
  w: Float32Array,
  bias: Float32Array | undefined,
  N: number,
): { y: Float64Array; quantum: Float64Array } {
  const a = quantizeActivations(x);
  const q = quantizeWeights(w, K, N);
  const quantum = Float64Array.from(q.scales, (s) => f32(a.scale * s));
  const y = new Float64Array(R * N);
  for (let r = 0; r < R; r++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++)
        acc += (a.values[r * K + k]! - a.zeroPoint) * q.values[k * N + n]!;
      y[r * N + n] = acc * quantum[n]! + (bias ? bias[n]! : 0);
    }
  }
  return { y, quantum };
}

function floatLinear(
  x: ArrayLike<number>,
  R: number,
  K: number,
  w: Float32Array,
  bias: Float32Array | undefined,
  N: number,
): Float64Array {
  const y = new Float64Array(R * N);
  for (let r = 0; r < R; r++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n]! : 0;
      for (let k = 0; k < K; k++) s += x[r * K + k]! * w[k * N + n]!;
      y[r * N + n] = s;
    }
  }
  return y;
}

function layerNorm(
  x: Float64Array,
  R: number,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
) {
  const out = new Float64Array(R * d);
  for (let r = 0; r < R; r++) {
    let mean = 0;
    for (let j = 0; j < d; j++) mean += x[r * d + j]!;
    mean /= d;
    let v = 0;
    for (let j = 0; j < d; j++) v += (x[r * d + j]! - mean) ** 2;
    const inv = 1 / Math.sqrt(v / d + eps);
    for (let j = 0; j < d; j++)
      out[r * d + j] = (x[r * d + j]! - mean) * inv * gamma[j]! + beta[j]!;
  }
  return out;
}

/**
 * last_hidden_state [B*T*d] of a BERT-family encoder with absolute positions (config.positions
 * 'absolute', hiddenAct 'gelu'), over the padded batch as the graph computes it (header).
 */
export function referenceEncoder(
  config: EncoderConfig,
  weights: EncoderWeights,
  ids: readonly (readonly number[])[],
  mask: readonly (readonly number[])[],
  quantize: boolean,
): Float64Array {
  if (config.positions !== 'absolute' || config.hiddenAct !== 'gelu') {
    throw new Error('int8 reference: absolute positions and gelu only');
  }
  const d = config.hiddenSize;
  const f = config.intermediateSize;
  const H = config.heads;
  const dh = d / H;
  const B = ids.length;
  const T = ids[0]!.length;
  const N = B * T;
  const linear = (
    x: Float64Array,
    K: number,
    w: { weight: Float32Array; bias: Float32Array },
    M: number,
  ) =>
    quantize
      ? int8Linear(x, N, K, w.weight, w.bias, M).y
      : floatLinear(x, N, K, w.weight, w.bias, M);
  let x = new Float64Array(N * d);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < d; j++) {
        x[(b * T + t) * d + j] =
          weights.wordEmbeddings[ids[b]![t]! * d + j]! +
          weights.positionEmbeddings[t * d + j]! +
          (weights.tokenType0?.[j] ?? 0);
      }
    }
  }
  x = layerNorm(x, N, d, weights.embeddingLn.gamma, weights.embeddingLn.beta, config.layerNormEps);
  for (const layer of weights.layers) {
    // q, k, v from one quantized tensor x (one DynamicQuantizeMatMul over [d,3d], per column).
    const q = linear(x, d, layer.query, d);
    const k = linear(x, d, layer.key, d);
    const v = linear(x, d, layer.value, d);
    const context = new Float64Array(N * d);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < T; i++) {
          const scores = new Float64Array(T);
          let max = -Infinity;
          for (let j = 0; j < T; j++) {
            if (mask[b]![j] === 0) {
              scores[j] = -Infinity;
              continue;
            }
            let s = 0;
            for (let c = 0; c < dh; c++)
              s += q[(b * T + i) * d + h * dh + c]! * k[(b * T + j) * d + h * dh + c]!;
            scores[j] = s / Math.sqrt(dh);
            max = Math.max(max, scores[j]!);
          }
          let sum = 0;
          for (let j = 0; j < T; j++) {
            scores[j] = Number.isFinite(scores[j]!) ? Math.exp(scores[j]! - max) : 0;
            sum += scores[j]!;
          }
          for (let c = 0; c < dh; c++) {
            let s = 0;
            for (let j = 0; j < T; j++) s += (scores[j]! / sum) * v[(b * T + j) * d + h * dh + c]!;
            context[(b * T + i) * d + h * dh + c] = s;
          }
        }
      }
    }
    const attn = linear(context, d, layer.attentionOutput, d);
    for (let i = 0; i < N * d; i++) attn[i] = attn[i]! + x[i]!;
    const a = layerNorm(
      attn,
      N,
      d,
      layer.attentionLn.gamma,
      layer.attentionLn.beta,
      config.layerNormEps,
    );
    const inner = linear(a, d, layer.intermediate, f);
    for (let i = 0; i < inner.length; i++) inner[i] = gelu(inner[i]!);
    const out = linear(inner, f, layer.output, d);
    for (let i = 0; i < N * d; i++) out[i] = out[i]! + a[i]!;
    x = layerNorm(out, N, d, layer.outputLn.gamma, layer.outputLn.beta, config.layerNormEps);
  }
  return x;
}
