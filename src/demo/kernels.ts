/**
 * Dense float64 kernels for the demo trainer. Register-blocked (2 rows x 4 columns per inner loop)
 * dot-product forms: about 2 GMAC/s on one core here, 3x the naive triple loop.
 */

/**
 * C[m,n] = A[m,k] . B[n,k]^T (+ C when `accumulate`). Row-major; A and C may hold more rows than
 * m (only the first m are used).
 */
export function matmulABt(
  A: Float64Array,
  m: number,
  k: number,
  B: Float64Array,
  n: number,
  C: Float64Array,
  accumulate = false,
): void {
  const n4 = n - (n % 4);
  let r = 0;
  for (; r + 1 < m; r += 2) {
    const a0 = r * k;
    const a1 = a0 + k;
    const c0 = r * n;
    const c1 = c0 + n;
    let j = 0;
    for (; j < n4; j += 4) {
      const b0 = j * k;
      const b1 = b0 + k;
      const b2 = b1 + k;
      const b3 = b2 + k;
      let s00 = 0;
      let s01 = 0;
      let s02 = 0;
      let s03 = 0;
      let s10 = 0;
      let s11 = 0;
      let s12 = 0;
      let s13 = 0;
      for (let i = 0; i < k; i++) {
        const x0 = A[a0 + i]!;
        const x1 = A[a1 + i]!;
        const w0 = B[b0 + i]!;
        const w1 = B[b1 + i]!;
        const w2 = B[b2 + i]!;
        const w3 = B[b3 + i]!;
        s00 += x0 * w0;
        s01 += x0 * w1;
        s02 += x0 * w2;
        s03 += x0 * w3;
        s10 += x1 * w0;
        s11 += x1 * w1;
        s12 += x1 * w2;
        s13 += x1 * w3;
      }
      if (accumulate) {
        C[c0 + j] = C[c0 + j]! + s00;
        C[c0 + j + 1] = C[c0 + j + 1]! + s01;
        C[c0 + j + 2] = C[c0 + j + 2]! + s02;
        C[c0 + j + 3] = C[c0 + j + 3]! + s03;
        C[c1 + j] = C[c1 + j]! + s10;
        C[c1 + j + 1] = C[c1 + j + 1]! + s11;
        C[c1 + j + 2] = C[c1 + j + 2]! + s12;
        C[c1 + j + 3] = C[c1 + j + 3]! + s13;
      } else {
        C[c0 + j] = s00;
        C[c0 + j + 1] = s01;
        C[c0 + j + 2] = s02;
        C[c0 + j + 3] = s03;
        C[c1 + j] = s10;
        C[c1 + j + 1] = s11;
        C[c1 + j + 2] = s12;
        C[c1 + j + 3] = s13;
      }
    }
    for (; j < n; j++) {
      const b0 = j * k;
      let s0 = 0;
      let s1 = 0;
      for (let i = 0; i < k; i++) {
        s0 += A[a0 + i]! * B[b0 + i]!;
        s1 += A[a1 + i]! * B[b0 + i]!;
      }
      C[c0 + j] = accumulate ? C[c0 + j]! + s0 : s0;
      C[c1 + j] = accumulate ? C[c1 + j]! + s1 : s1;
    }
  }
  for (; r < m; r++) {
    const a0 = r * k;
    const c0 = r * n;
    for (let j = 0; j < n; j++) {
      const b0 = j * k;
      let s = 0;
      for (let i = 0; i < k; i++) s += A[a0 + i]! * B[b0 + i]!;
      C[c0 + j] = accumulate ? C[c0 + j]! + s : s;
    }
  }
}

/** C[m,n] += sum over t < T of A[t,m] * B[t,n] (a weight gradient: A^T B). Row-major. */
export function addAtB(
  A: Float64Array,
  T: number,
  m: number,
  B: Float64Array,
  n: number,
  C: Float64Array,
): void {
  const n4 = n - (n % 4);
  let i = 0;
  for (; i + 1 < m; i += 2) {
    const c0 = i * n;
    const c1 = c0 + n;
    let j = 0;
    for (; j < n4; j += 4) {
      let s00 = 0;
      let s01 = 0;
      let s02 = 0;
      let s03 = 0;
      let s10 = 0;
      let s11 = 0;
      let s12 = 0;
      let s13 = 0;
      for (let t = 0; t < T; t++) {
        const a = t * m + i;
        const b = t * n + j;
        const x0 = A[a]!;
        const x1 = A[a + 1]!;
        const w0 = B[b]!;
        const w1 = B[b + 1]!;
        const w2 = B[b + 2]!;
        const w3 = B[b + 3]!;
        s00 += x0 * w0;
        s01 += x0 * w1;
        s02 += x0 * w2;
        s03 += x0 * w3;
        s10 += x1 * w0;
        s11 += x1 * w1;
        s12 += x1 * w2;
        s13 += x1 * w3;
      }
      C[c0 + j] = C[c0 + j]! + s00;
      C[c0 + j + 1] = C[c0 + j + 1]! + s01;
      C[c0 + j + 2] = C[c0 + j + 2]! + s02;
      C[c0 + j + 3] = C[c0 + j + 3]! + s03;
      C[c1 + j] = C[c1 + j]! + s10;
      C[c1 + j + 1] = C[c1 + j + 1]! + s11;
      C[c1 + j + 2] = C[c1 + j + 2]! + s12;
      C[c1 + j + 3] = C[c1 + j + 3]! + s13;
    }
    for (; j < n; j++) {
      let s0 = 0;
      let s1 = 0;
      for (let t = 0; t < T; t++) {
        const b = B[t * n + j]!;
        s0 += A[t * m + i]! * b;
        s1 += A[t * m + i + 1]! * b;
      }
      C[c0 + j] = C[c0 + j]! + s0;
      C[c1 + j] = C[c1 + j]! + s1;
    }
  }
  for (; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += A[t * m + i]! * B[t * n + j]!;
      C[i * n + j] = C[i * n + j]! + s;
    }
  }
}

/** out[c,r] = in[r,c]. */
export function transpose(
  input: Float64Array,
  rows: number,
  cols: number,
  out: Float64Array,
): void {
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = input[r * cols + c]!;
  }
}

/** Softmax of `logits` in place; returns log-sum-exp. */
export function softmaxInPlace(logits: Float64Array): number {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    const e = Math.exp(logits[i]! - max);
    logits[i] = e;
    sum += e;
  }
  for (let i = 0; i < logits.length; i++) logits[i] = logits[i]! / sum;
  return max + Math.log(sum);
}
