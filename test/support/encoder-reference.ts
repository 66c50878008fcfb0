/**
 * Plain-JS reference of the BERT-like encoder (float64 accumulation), for checking the ONNX graph.
 */
import type { EncoderOptions, EncoderWeights, Linear } from '../../src/onnx/encoder.js';

/** x [n,in] @ W [in,out] + b -> [n,out]. */
function linear(x: Float64Array, n: number, inSize: number, l: Linear, outSize: number) {
  const out = new Float64Array(n * outSize);
  for (let i = 0; i < n; i++) {
    for (let o = 0; o < outSize; o++) {
      let s = l.bias[o]!;
      for (let j = 0; j < inSize; j++) s += x[i * inSize + j]! * l.weight[j * outSize + o]!;
      out[i * outSize + o] = s;
    }
  }
  return out;
}

function layerNorm(
  x: Float64Array,
  n: number,
  d: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
) {
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

export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/**
 * last_hidden_state [B,T,d] for ids/mask [B,T] (row-major). Padding keys are masked out of the
 * attention (weight exactly 0); padded query rows are computed like the graph does.
 */
export function encoderReference(
  options: EncoderOptions,
  w: EncoderWeights,
  ids: readonly number[],
  mask: readonly number[],
  batch: number,
  seq: number,
): Float64Array {
  const { hiddenSize: d, heads: H, ffnSize: f } = options;
  const dh = d / H;
  const eps = options.layerNormEps ?? 1e-12;
  const out = new Float64Array(batch * seq * d);
  for (let b = 0; b < batch; b++) {
    let x = new Float64Array(seq * d);
    for (let t = 0; t < seq; t++) {
      const id = ids[b * seq + t]!;
      for (let j = 0; j < d; j++) {
        x[t * d + j] = w.wordEmbeddings[id * d + j]! + w.positionEmbeddings[t * d + j]!;
      }
    }
    x = layerNorm(x, seq, d, w.embLnGamma, w.embLnBeta, eps);
    const real = (t: number) => mask[b * seq + t] !== 0;
    for (const layer of w.layers) {
      const q = linear(x, seq, d, layer.query, d);
      const k = linear(x, seq, d, layer.key, d);
      const v = linear(x, seq, d, layer.value, d);
      const context = new Float64Array(seq * d);
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < seq; i++) {
          const scores: number[] = [];
          for (let j = 0; j < seq; j++) {
            if (!real(j)) continue;
            let s = 0;
            for (let c = 0; c < dh; c++) s += q[i * d + h * dh + c]! * k[j * d + h * dh + c]!;
            scores.push(s / Math.sqrt(dh));
          }
          const m = Math.max(...scores);
          const exps = scores.map((s) => Math.exp(s - m));
          const total = exps.reduce((a, e) => a + e, 0);
          let n = 0;
          for (let j = 0; j < seq; j++) {
            if (!real(j)) continue;
            const p = exps[n++]! / total;
            for (let c = 0; c < dh; c++) context[i * d + h * dh + c]! += p * v[j * d + h * dh + c]!;
          }
        }
      }
      const attn = linear(context, seq, d, layer.attnOut, d);
      for (let i = 0; i < seq * d; i++) attn[i]! += x[i]!;
      const a = layerNorm(attn, seq, d, layer.attnLnGamma, layer.attnLnBeta, eps);
      const inner = linear(a, seq, d, layer.ffnIn, f).map(gelu);
      const ffn = linear(inner, seq, f, layer.ffnOut, d);
      for (let i = 0; i < seq * d; i++) ffn[i]! += a[i]!;
      x = layerNorm(ffn, seq, d, layer.ffnLnGamma, layer.ffnLnBeta, eps);
    }
    out.set(x, b * seq * d);
  }
  return out;
}
