/**
 * The mixture compiler: turns a MixtureSpec (adapter banks, gates, heads) into one ONNX graph with
 * the tensor contract of `mixture-contract.ts`. Read that file first; names below follow it.
 *
 * Per group, the adapters are stacked into banks and gathered per batch item by the routing ids
 * (the BGMV idea of Punica / S-LoRA), so one run mixes any adapters for any item and only the
 * Gather touches the bank: the cost hardly depends on the number E of adapters in the bank.
 *
 *   downT [E,R,d]  downBias [E,R]  up [E,R,d]  upBias [E,d]  residual [E]   (R = max rank; smaller
 *   ranks are zero-padded, and act(0) = 0 for every activation, so padding contributes exactly 0)
 *
 *   z   = hidden [B,T,d] @ downT[ids] seen as [B,d,K*R] + downBias[ids] [B,1,K*R]
 *   a   = act(z) * w (each expert's R-block scaled by its weight)          [B,T,K*R]
 *   out = a @ up[ids] arranged [B,K*R,d] + sum_k w_k upBias_k + (sum_k w_k residual_k) * hidden
 *
 * which equals sum_k w_k * (adapter_k(hidden) + residual_k * hidden) without a [B,K,T,d] tensor.
 *
 * The last group's output is only ever pooled, and pooling is linear: its pooled result is computed
 * as pool(a) @ up + ..., which skips the last up-projection over all T tokens (same math).
 *
 * Measured (2-core EPYC, 1 intra-op thread, one group, B=32 T=64 d=256 k=2, rank 16): E=2 0.46-0.61
 * ms, E=256 1.05-1.2x that. What still grows with E: the gate (d x E) and, once the bank outgrows
 * the CPU caches, reading the distinct gathered experts from memory (rank 64: ~1.4-1.6x).
 */
import type {
  Activation,
  BottleneckAdapter,
  Gate,
  MixtureGroup,
  MixtureSpec,
  Weight,
} from '../pack/types.js';
import { attr, DEFAULT_OPSET, GraphBuilder } from './graph.js';
import {
  groupBiasName,
  groupExpertsName,
  groupKmaxName,
  groupKName,
  groupWeightsName,
  headScoresName,
  MIXTURE_INPUT_HIDDEN,
  MIXTURE_INPUT_MASK,
  MIXTURE_OUTPUT_EMBEDDING,
} from './mixture-contract.js';

export interface CompileMixtureOptions {
  /** ONNX opset; default 20 (see graph.ts). Needs >= 13. */
  opset?: number;
  producer?: string;
  /**
   * Compute the last group's pooled output as pool(a) @ up instead of pooling the full hidden
   * state (equal math, less work). Default true; false exists to test the equivalence.
   */
  foldLastPool?: boolean;
}

/** Logit value given to TopK positions at or beyond an item's k, before the softmax. */
const BEYOND_K = -1e30;

function sameShape(w: Weight, expected: readonly number[], what: string): void {
  const ok =
    w.shape.length === expected.length &&
    w.shape.every((v, i) => v === expected[i]) &&
    w.data.length === expected.reduce((a, b) => a * b, 1);
  if (!ok) {
    throw new Error(
      `mixture: ${what} has shape [${w.shape.join(',')}] (${w.data.length} values), expected [${expected.join(',')}]`,
    );
  }
}

function checkAdapter(a: BottleneckAdapter, group: MixtureGroup, d: number): void {
  const what = `adapter "${a.id}" of group "${group.id}"`;
  if (a.hiddenSize !== d) {
    throw new Error(`mixture: ${what} has hiddenSize ${a.hiddenSize}, the backbone has ${d}`);
  }
  if (!Number.isInteger(a.rank) || a.rank < 1) {
    throw new Error(`mixture: ${what} has rank ${a.rank}, expected a positive integer`);
  }
  sameShape(a.down, [d, a.rank], `${what}: down`);
  sameShape(a.downBias, [a.rank], `${what}: downBias`);
  sameShape(a.up, [a.rank, d], `${what}: up`);
  sameShape(a.upBias, [d], `${what}: upBias`);
}

/** The activation every adapter of the group shares; throws naming two that differ. */
function groupActivation(group: MixtureGroup): Activation {
  const first = group.adapters[0]!;
  for (const a of group.adapters) {
    if (a.activation !== first.activation) {
      throw new Error(
        `mixture: group "${group.id}" mixes activations: adapter "${first.id}" uses ` +
          `${first.activation} and adapter "${a.id}" uses ${a.activation}; a group's adapters must share one`,
      );
    }
  }
  return first.activation;
}

interface Banks {
  rank: number; // R
  downT: Float32Array; // [E,R,d]: down transposed, see compileMixture
  downBias: Float32Array; // [E,R]
  up: Float32Array; // [E,R,d]
  upBias: Float32Array; // [E,d]
  residual: Float32Array; // [E]
}

function stackBanks(adapters: readonly BottleneckAdapter[], d: number): Banks {
  const E = adapters.length;
  const R = Math.max(...adapters.map((a) => a.rank));
  const banks: Banks = {
    rank: R,
    downT: new Float32Array(E * R * d),
    downBias: new Float32Array(E * R),
    up: new Float32Array(E * R * d),
    upBias: new Float32Array(E * d),
    residual: new Float32Array(E),
  };
  adapters.forEach((a, e) => {
    const r = a.rank;
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < r; j++) banks.downT[(e * R + j) * d + i] = a.down.data[i * r + j]!;
    }
    banks.downBias.set(a.downBias.data, e * R);
    banks.up.set(a.up.data, e * R * d); // rows r..R-1 stay zero
    banks.upBias.set(a.upBias.data, e * d);
    banks.residual[e] = a.residual ? 1 : 0;
  });
  return banks;
}

/**
 * Re-lays out the columns of a [rows, gateExperts.length] matrix (and its bias) into bank order:
 * column e scores bankIds[e]; bank adapters the gate does not know get zero columns (logit 0), and
 * gate columns for adapters not in the bank are dropped.
 */
function toBankColumns(
  weight: Weight,
  bias: Weight,
  gateExperts: readonly string[],
  bankIds: readonly string[],
): { weight: Float32Array; bias: Float32Array } {
  const rows = weight.shape[0]!;
  const cols = gateExperts.length;
  const E = bankIds.length;
  const out = new Float32Array(rows * E);
  const outBias = new Float32Array(E);
  bankIds.forEach((id, e) => {
    const j = gateExperts.indexOf(id);
    if (j < 0) return;
    for (let r = 0; r < rows; r++) out[r * E + e] = weight.data[r * cols + j]!;
    outBias[e] = bias.data[j]!;
  });
  return { weight: out, bias: outBias };
}

function checkGate(gate: Gate, group: MixtureGroup, d: number): void {
  const what = `gate of group "${group.id}"`;
  const Eg = gate.experts.length;
  if (gate.type === 'linear') {
    sameShape(gate.weight, [d, Eg], `${what}: weight`);
    sameShape(gate.bias, [Eg], `${what}: bias`);
  } else {
    const h = gate.hiddenWeight.shape[1] ?? 0;
    sameShape(gate.hiddenWeight, [d, h], `${what}: hiddenWeight`);
    sameShape(gate.hiddenBias, [h], `${what}: hiddenBias`);
    sameShape(gate.outWeight, [h, Eg], `${what}: outWeight`);
    sameShape(gate.outBias, [Eg], `${what}: outBias`);
  }
}

function activate(g: GraphBuilder, act: Activation, x: string, name: string): string {
  switch (act) {
    case 'relu':
      return g.op('Relu', [x], {}, name);
    case 'tanh':
      return g.op('Tanh', [x], {}, name);
    case 'gelu':
      return g.geluErf(x, name);
    case 'identity':
      return x;
  }
}

/** Compiles the mixture graph of `spec`; returns the ONNX model bytes. */
export function compileMixture(spec: MixtureSpec, options: CompileMixtureOptions = {}): Uint8Array {
  const d = spec.hiddenSize;
  if (!Number.isInteger(d) || d < 1) throw new Error(`mixture: hiddenSize ${d} is not valid`);
  const opset = options.opset ?? DEFAULT_OPSET;
  if (opset < 13) throw new Error(`mixture: opset ${opset} is too old, need >= 13`);
  const foldLastPool = options.foldLastPool ?? true;
  const g = new GraphBuilder();

  const hiddenIn = g.input(MIXTURE_INPUT_HIDDEN, 'float32', ['batch', 'sequence', d]);
  const maskIn = g.input(MIXTURE_INPUT_MASK, 'int64', ['batch', 'sequence']);

  // Pooling, the pack's mode for gates, heads and the embedding alike (sentence-transformers'):
  // mean: one batched MatMul, poolRow [B,1,T] @ h [B,T,w] with poolRow = mask / max(sum(mask), 1)
  //       (items without real tokens pool to 0); cls: the first token; max: masked max, padding
  //       at -1e9 first. Mean and cls are linear in h, which the last-group fold below relies on.
  const pooling = spec.pooling ?? { mode: 'mean', normalize: true };
  const maskF = g.cast(maskIn, 'float32', 'mask_float'); // [B,T]
  const tokenCount = g.reduceSum(maskF, [1], true, 'token_count'); // [B,1]
  const poolRow = g.unsqueeze(
    g.div(maskF, g.max(tokenCount, g.constFloat(1), 'token_count_min1'), 'pool_weights'),
    [1],
    'pool_row',
  ); // [B,1,T]
  const poolTokens = (h: string, name: string): string => {
    if (pooling.mode === 'mean') return g.matMul(poolRow, h, `${name}_matmul`);
    if (pooling.mode === 'cls') {
      const [zero, one] = [g.constInt64([0]), g.constInt64([1])];
      return g.op('Slice', [h, zero, one, one], {}, `${name}_first`);
    }
    const real = g.unsqueeze(g.cast(maskIn, 'bool', `${name}_mask_bool`), [2], `${name}_mask_3d`); // [B,T,1]
    const masked = g.op('Where', [real, h, g.constFloat(-1e9)], {}, `${name}_masked`);
    return g.op('ReduceMax', [masked, g.constInt64([1])], { keepdims: attr.int(1) }, `${name}_max`);
  }; // [B,1,w]
  const pool = (h: string, name: string): string => g.reshape(poolTokens(h, name), [-1, d], name); // [B,d]

  let hidden = hiddenIn; // [B,T,d]
  let pooled = pool(hidden, 'pooled_input'); // [B,d]

  spec.groups.forEach((group, i) => {
    const p = `g${i}`;
    const E = group.adapters.length;
    if (E === 0) throw new Error(`mixture: group "${group.id}" has no adapters`);
    const ids = group.adapters.map((a) => a.id);
    const dup = ids.find((id, n) => ids.indexOf(id) !== n);
    if (dup !== undefined)
      throw new Error(`mixture: group "${group.id}" lists adapter "${dup}" twice`);
    for (const a of group.adapters) checkAdapter(a, group, d);
    const act = groupActivation(group);

    const bias = g.input(groupBiasName(i), 'float32', ['batch', E]); // [B,E]
    const k = g.input(groupKName(i), 'int64', ['batch']); // [B]
    const kmax = g.input(groupKmaxName(i), 'int64', [1]); // [1]

    // ---- routing: gate logits in bank order, + bias, top-kmax, softmax over each item's first k.
    let scores: string; // [B,E]
    if (group.gate === null) {
      scores = bias; // ungated: gate logits are all 0
    } else {
      const gate = group.gate;
      checkGate(gate, group, d);
      let logits: string;
      if (gate.type === 'linear') {
        const lw = toBankColumns(gate.weight, gate.bias, gate.experts, ids);
        logits = g.op(
          'Gemm',
          [
            pooled,
            g.initializer(`${p}.gate.weight`, lw.weight, [d, E]),
            g.initializer(`${p}.gate.bias`, lw.bias, [E]),
          ],
          {},
          `${p}_gate_logits`,
        ); // [B,E]
      } else {
        const h = gate.hiddenWeight.shape[1]!;
        const gateHidden = activate(
          g,
          gate.activation,
          g.op(
            'Gemm',
            [
              pooled,
              g.initializer(`${p}.gate.hidden.weight`, gate.hiddenWeight.data, [d, h]),
              g.initializer(`${p}.gate.hidden.bias`, gate.hiddenBias.data, [h]),
            ],
            {},
            `${p}_gate_hidden`,
          ),
          `${p}_gate_act`,
        ); // [B,h]
        const ow = toBankColumns(gate.outWeight, gate.outBias, gate.experts, ids);
        logits = g.op(
          'Gemm',
          [
            gateHidden,
            g.initializer(`${p}.gate.out.weight`, ow.weight, [h, E]),
            g.initializer(`${p}.gate.out.bias`, ow.bias, [E]),
          ],
          {},
          `${p}_gate_logits`,
        ); // [B,E]
      }
      scores = g.add(logits, bias, `${p}_scores`); // [B,E]
    }
    const [topValues, experts] = g.node(
      'TopK',
      [scores, kmax],
      { axis: attr.int(-1), largest: attr.int(1), sorted: attr.int(1) },
      { outputs: [`${p}_top_values`, groupExpertsName(i)], name: `${p}_topk` },
    ) as [string, string]; // [B,K] each, K = kmax
    const positions = g.op(
      'Range',
      [g.constInt64(0), g.squeeze(kmax, [0], `${p}_kmax_scalar`), g.constInt64(1)],
      {},
      `${p}_positions`,
    ); // [K]
    const withinK = g.op(
      'Less',
      [g.unsqueeze(positions, [0], `${p}_positions_row`), g.unsqueeze(k, [1], `${p}_k_col`)],
      {},
      `${p}_within_k`,
    ); // [B,K] bool
    const kept = g.op(
      'Where',
      [withinK, topValues, g.constFloat(BEYOND_K)],
      {},
      `${p}_kept_logits`,
    ); // [B,K]
    const weights = g.op(
      'Where',
      [withinK, g.softmax(kept, -1, `${p}_softmax`), g.constFloat(0)],
      {},
      `${p}_weights`,
      groupWeightsName(i),
    ); // [B,K], exactly 0 beyond k

    // ---- banked adapters, gathered per item.
    const banks = stackBanks(group.adapters, d);
    const R = banks.rank;
    const downBankT = g.initializer(`${p}.bank.down_t`, banks.downT, [E, R, d]);
    const downBiasBank = g.initializer(`${p}.bank.down_bias`, banks.downBias, [E, R]);
    const upBank = g.initializer(`${p}.bank.up`, banks.up, [E, R, d]);
    const upBiasBank = g.initializer(`${p}.bank.up_bias`, banks.upBias, [E, d]);
    const residualBank = g.initializer(`${p}.bank.residual`, banks.residual, [E]);

    // The down bank is stored transposed, [E,R,d], so the gathered rows need no copy to become
    // [B,K*R,d]; the Transpose into the MatMul is fused by ORT (FusedMatMul transB), where a
    // [B,K,d,R] -> [B,d,K*R] arrangement would copy the gathered weights once more.
    const downT = g.reshape(
      g.gather(downBankT, experts, 0, `${p}_down_gather`),
      [0, -1, d],
      `${p}_down_t`,
    ); // [B,K*R,d]
    const down = g.transpose(downT, [0, 2, 1], `${p}_down`); // [B,d,K*R]
    const downBias = g.reshape(
      g.gather(downBiasBank, experts, 0, `${p}_down_bias_gather`),
      [0, 1, -1],
      `${p}_down_bias`,
    ); // [B,1,K*R]
    const z = g.add(g.matMul(hidden, down, `${p}_down_matmul`), downBias, `${p}_z`); // [B,T,K*R]
    const columnWeights = g.reshape(
      g.mul(
        g.unsqueeze(weights, [2], `${p}_weights_col`),
        g.constFloat(new Array(R).fill(1), [R]),
        `${p}_weights_rep`,
      ), // [B,K,R]
      [0, 1, -1],
      `${p}_column_weights`,
    ); // [B,1,K*R]
    const a = g.mul(activate(g, act, z, `${p}_act`), columnWeights, `${p}_weighted`); // [B,T,K*R]
    const up = g.reshape(g.gather(upBank, experts, 0, `${p}_up_gather`), [0, -1, d], `${p}_up`); // [B,K*R,d]
    const upBiasMix = g.matMul(
      g.unsqueeze(weights, [1], `${p}_weights_row`), // [B,1,K]
      g.gather(upBiasBank, experts, 0, `${p}_up_bias_gather`), // [B,K,d]
      `${p}_up_bias_mix`,
    ); // [B,1,d]
    const residualMix = g.reduceSum(
      g.mul(
        weights,
        g.gather(residualBank, experts, 0, `${p}_residual_gather`),
        `${p}_residual_weighted`,
      ),
      [1],
      true,
      `${p}_residual_mix`,
    ); // [B,1]

    const last = i === spec.groups.length - 1;
    if (last && foldLastPool && pooling.mode !== 'max') {
      // pool(a @ up + upBiasMix + residualMix * hidden) = pool(a) @ up + upBiasMix + residualMix * pool(hidden)
      const pooledA = poolTokens(a, `${p}_pooled_act`); // [B,1,K*R]
      const pooledUp = g.reshape(
        g.matMul(pooledA, up, `${p}_pooled_up`),
        [-1, d],
        `${p}_pooled_up_2d`,
      ); // [B,d]
      const hasTokens = g.op('Min', [tokenCount, g.constFloat(1)], {}, 'has_tokens'); // [B,1] 1 or 0
      const pooledBias = g.mul(
        g.reshape(upBiasMix, [-1, d], `${p}_up_bias_2d`),
        hasTokens,
        `${p}_pooled_up_bias`,
      ); // [B,d]
      const pooledResidual = g.mul(residualMix, pooled, `${p}_pooled_residual`); // [B,d]
      pooled = g.add(g.add(pooledUp, pooledBias, `${p}_pooled_sum`), pooledResidual, `${p}_pooled`); // [B,d]
    } else {
      const out = g.add(g.matMul(a, up, `${p}_up_matmul`), upBiasMix, `${p}_adapter_out`); // [B,T,d]
      const residual = g.mul(
        g.unsqueeze(residualMix, [2], `${p}_residual_mix_3d`),
        hidden,
        `${p}_residual`,
      ); // [B,T,d]
      hidden = g.add(out, residual, `${p}_hidden`); // [B,T,d]
      pooled = pool(hidden, `${p}_pooled`); // [B,d]
    }
  });

  // ---- outputs over the final pooled state.
  const norm = g.op(
    'Sqrt',
    [g.reduceSum(g.mul(pooled, pooled, 'pooled_sq'), [1], true, 'pooled_sq_sum')],
    {},
    'pooled_norm',
  ); // [B,1]
  if (pooling.normalize) {
    g.op(
      'Div',
      [pooled, g.max(norm, g.constFloat(1e-12), 'pooled_norm_clamped')],
      {},
      'embedding',
      MIXTURE_OUTPUT_EMBEDDING,
    ); // [B,d]
  } else {
    g.op('Identity', [pooled], {}, 'embedding', MIXTURE_OUTPUT_EMBEDDING); // [B,d]
  }

  spec.heads.forEach((head, j) => {
    const L = head.labels.length;
    sameShape(head.weight, [d, L], `head "${head.id}": weight`);
    sameShape(head.bias, [L], `head "${head.id}": bias`);
    const logits = g.op(
      'Gemm',
      [
        pooled,
        g.initializer(`h${j}.weight`, head.weight.data, [d, L]),
        g.initializer(`h${j}.bias`, head.bias.data, [L]),
      ],
      {},
      `h${j}_logits`,
    ); // [B,L]
    g.op('Softmax', [logits], { axis: attr.int(-1) }, `h${j}_softmax`, headScoresName(j)); // [B,L]
  });

  // Graph outputs, in contract order.
  spec.groups.forEach((_, i) => {
    g.output(groupExpertsName(i), groupExpertsName(i), 'int64', ['batch', groupKmaxName(i)]);
    g.output(groupWeightsName(i), groupWeightsName(i), 'float32', ['batch', groupKmaxName(i)]);
  });
  g.output(MIXTURE_OUTPUT_EMBEDDING, MIXTURE_OUTPUT_EMBEDDING, 'float32', ['batch', d]);
  spec.heads.forEach((head, j) => {
    g.output(headScoresName(j), headScoresName(j), 'float32', ['batch', head.labels.length]);
  });

  return g.toModel({
    opset,
    producer: options.producer ?? 'moe-serve mixture',
    graphName: 'mixture',
    docString: `mixture d=${d} groups=[${spec.groups.map((x) => `${x.id}:${x.adapters.length}`).join(',')}] heads=[${spec.heads.map((h) => h.id).join(',')}]`,
  });
}
