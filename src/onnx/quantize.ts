/**
 * int8 weights for the encoder's dense projections: symmetric, per output channel (per column of
 * a math-layout [in,out] weight), as onnxruntime's `quantize_dynamic(per_channel=True)` makes
 * them for its com.microsoft.DynamicQuantizeMatMul kernel.
 *
 *   scale[n] = max_k |W[k,n]| / Q            (1 for an all-zero column)
 *   q[k,n]   = clamp(roundHalfEven(W[k,n] / scale[n]), -Q, Q)       int8
 *   W[k,n]  ~= q[k,n] * scale[n]
 *
 * Q = INT8_WEIGHT_MAX = 64, i.e. 7-bit weights (ORT's `reduce_range`), and not 127: on x86 CPUs
 * without VNNI (AVX2 only, e.g. Zen 3, Skylake), MLAS's u8s8 GEMM multiplies with vpmaddubsw,
 * which adds two u8 x s8 products into an int16 with saturation. Activations are uint8 (up to
 * 255), so pairs saturate once |q| > 64 (255 * 64 * 2 = 32640 <= 32767 < 255 * 65 * 2). With
 * |q| <= 64 the integer sums are exact on every CPU, so a pack gives the same answers on a VNNI
 * machine (vpdpbusd, no pair saturation: measured here) and an AVX2 one. The bit lost is cheap:
 * the activations' 8 bits (one scale per batch tensor) dominate the error (README, int8).
 *
 * The activations are quantized by the kernel at run time (see src/onnx/bert.ts, EncoderQuantize).
 */

/** Largest |q| of a quantized weight: 7-bit symmetric, exact in MLAS's u8s8 kernels (header). */
export const INT8_WEIGHT_MAX = 64;

export interface QuantizedColumns {
  /** int8 [rows, cols], same layout as the float weight. */
  readonly values: Int8Array;
  /** float32 [cols]: the dequantization scale of each column. */
  readonly scales: Float32Array;
}

/** Round to nearest, ties to even (as ORT's quantizers and the C library's default mode). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // ties toward +infinity
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Quantizes a math-layout weight [rows, cols] per column (see the header). */
export function quantizeColumns(
  weight: Float32Array,
  rows: number,
  cols: number,
  max: number = INT8_WEIGHT_MAX,
): QuantizedColumns {
  if (weight.length !== rows * cols) {
    throw new Error(`quantize: weight has ${weight.length} values, expected ${rows} x ${cols}`);
  }
  const scales = new Float32Array(cols);
  for (let k = 0; k < rows; k++) {
    const row = k * cols;
    for (let n = 0; n < cols; n++) {
      const a = Math.abs(weight[row + n]!);
      if (a > scales[n]!) scales[n] = a;
    }
  }
  for (let n = 0; n < cols; n++) {
    if (!Number.isFinite(scales[n]!)) {
      throw new Error(`quantize: column ${n} holds a value that is not finite`);
    }
    scales[n] = scales[n]! > 0 ? Math.fround(scales[n]! / max) : 1;
  }
  const values = new Int8Array(rows * cols);
  for (let k = 0; k < rows; k++) {
    const row = k * cols;
    for (let n = 0; n < cols; n++) {
      const q = roundHalfEven(weight[row + n]! / scales[n]!);
      values[row + n] = Math.min(max, Math.max(-max, q));
    }
  }
  return { values, scales };
}
