/**
 * The pack graph compiler: one ONNX graph per pack (read pack-graph-contract.ts first; tensor names
 * follow it). Built once from what the pack fixes (backbone, group structures, gates, heads); the
 * adapters themselves are never compiled in: they live in slot banks (slot-banks.ts), graph inputs
 * that the engine workers rewrite, so loading or unloading an adapter is a slot write.
 *
 * Data path, top to bottom:
 *   backbone embeddings                       (built backbone) or `hidden` (external backbone)
 *     -> routing of in-layer groups            gate over the pooled embedding output
 *     -> every layer, with the in-layer hooks  LoRA: y = W x + sum_k w_k * delta_k(x) at each
 *                                              targeted linear; bottleneck: at the end of each
 *                                              adapted block (AdapterHub placement flags)
 *   last hidden state [B,T,d]
 *     -> each top group in order               routing over the pooled state entering it, then
 *                                              hidden = sum_k w_k (adapter_k(hidden) + r_k hidden)
 *     -> pool -> embedding, heads
 *
 * Per-item mixing without a [B,K,T,d] tensor (the BGMV idea of Punica / S-LoRA): the K chosen
 * slots' weights are gathered per item from a bank ([B,K,R,in]), laid side by side ([B,K*R,in]),
 * and applied as two batched MatMuls; each expert's R columns are scaled by its mixing weight in
 * between. The cost hardly depends on how many slots the bank has: only the Gather touches it.
 */
import type { BottleneckPlacement } from '../pack/layer-adapter-types.js';
import type { Gate, GroupStructure, Head, Pooling } from '../pack/types.js';
import { type ActivationName, emitActivation } from './activations.js';
import type { BlockSite, EncoderHooks, HookContext, LinearSite } from './encoder-hooks.js';
import { attr, DEFAULT_OPSET, GraphBuilder, type ModelOptions } from './graph.js';
import {
  type BankSpec,
  bankName,
  GRAPH_INPUT_HIDDEN,
  GRAPH_INPUT_IDS,
  GRAPH_INPUT_MASK,
  GRAPH_OUTPUT_EMBEDDING,
  groupBiasName,
  groupEntropyName,
  groupExpertsName,
  groupGateScaleName,
  groupKmaxName,
  groupKName,
  groupKUsedName,
  groupMarginName,
  groupTopPName,
  groupWeightsName,
  headScoresName,
} from './pack-graph-contract.js';
import {
  type BackboneDims,
  bottleneckBlocks,
  GATE_SITE,
  groupBanks,
  TOP_SITE,
} from './slot-banks.js';
import { tokenBagLogits } from './token-bag.js';

/**
 * A backbone the compiler emits into the graph: `emit` adds the encoder's nodes, calling `hooks`
 * at every hook point, and returns its last hidden state [N,d] (N = B*T) and the [B,T] shape.
 */
export interface BuiltBackbone {
  readonly kind: 'built';
  readonly dims: BackboneDims;
  readonly layers: number;
  readonly emit: (
    g: GraphBuilder,
    inputs: { readonly inputIds: string; readonly attentionMask: string },
    hooks: EncoderHooks,
  ) => { readonly hidden: string; readonly tokensShape: string };
}

/** An ONNX backbone run as its own session before this graph: the graph takes its hidden states. */
export interface ExternalBackbone {
  readonly kind: 'external';
  readonly hiddenSize: number;
}

export interface GraphGroup {
  readonly id: string;
  readonly slots: number;
  readonly structure: GroupStructure;
  /** null: routed by the request only. Column j of the gate scores gate.experts[j]. */
  readonly gate: Gate | null;
}

export interface PackGraphSpec {
  readonly backbone: BuiltBackbone | ExternalBackbone;
  readonly pooling: Pooling;
  /** In order of composition. In-layer groups first route on the embedding output. */
  readonly groups: readonly GraphGroup[];
  readonly heads: readonly Head[];
  readonly opset?: number;
}

export interface CompiledPackGraph {
  /** The graph built; serialise it with packGraphBytes, or writeModel for external data. */
  readonly graph: GraphBuilder;
  readonly model: ModelOptions;
  /** Per group, its slot banks (graph inputs the engine allocates and feeds). */
  readonly banks: readonly (readonly BankSpec[])[];
  /** Which input carries the tokens: input_ids (built backbone) or hidden (external). */
  readonly tokensInput: typeof GRAPH_INPUT_IDS | typeof GRAPH_INPUT_HIDDEN;
}

/** Logit given to TopK positions at or beyond an item's k, before the softmax. */
const BEYOND_K = -1e30;
/** Additive value that drops padding tokens out of max pooling. */
const MAX_POOL_PAD = -1e9;

/** Per group: its routing, as graph tensors, once computed. */
interface Routing {
  readonly experts: string; // [B,K] int64 slot indices
  readonly weights: string; // [B,K]
  /** Per-column weights for K blocks of `width` columns: [B,1,K*width]. */
  readonly columnWeights: (width: number) => string;
}

export function compilePackGraph(spec: PackGraphSpec): CompiledPackGraph {
  const opset = spec.opset ?? DEFAULT_OPSET;
  const g = new GraphBuilder();
  const backbone = spec.backbone;
  const d = backbone.kind === 'built' ? backbone.dims.hiddenSize : backbone.hiddenSize;
  const dims: BackboneDims =
    backbone.kind === 'built' ? backbone.dims : { hiddenSize: d, intermediateSize: 0 };
  validateSpec(spec, d);

  const mask = g.input(GRAPH_INPUT_MASK, 'int64', ['batch', 'sequence']);
  // Token ids: the built backbone's input, and what token_bag gates read (also over an external
  // backbone, whose hidden states then come in beside them).
  const readsIds =
    backbone.kind === 'built' || spec.groups.some((group) => group.gate?.type === 'token_bag');
  const inputIds = readsIds ? g.input(GRAPH_INPUT_IDS, 'int64', ['batch', 'sequence']) : undefined;
  const banks = spec.groups.map((group, i) =>
    groupBanks(i, group.structure, group.slots, group.gate !== null, dims),
  );
  const bank = new Map<string, string>();
  for (const spec of banks.flat()) {
    bank.set(spec.name, g.input(spec.name, spec.dtype, [spec.rows, ...spec.rowShape]));
  }
  const bankInput = (i: number, site: string, part: string): string => {
    const name = bank.get(bankName(i, site, part));
    if (name === undefined) throw new Error(`pack graph: no bank ${bankName(i, site, part)}`);
    return name;
  };

  // ---- pooling: one batched MatMul for masked mean; cls and max as the pack says.
  const maskF = g.cast(mask, 'float32', 'mask_float'); // [B,T]
  const tokenCount = g.reduceSum(maskF, [1], true, 'token_count'); // [B,1]
  const meanRow = g.unsqueeze(
    g.div(maskF, g.max(tokenCount, g.constFloat(1), 'token_count_min1'), 'mean_weights'),
    [1],
    'mean_row',
  ); // [B,1,T]
  const pool = (h3: string, mode: Pooling['mode'], name: string): string => {
    switch (mode) {
      case 'mean':
        return g.reshape(g.matMul(meanRow, h3, `${name}_matmul`), [-1, d], name); // [B,d]
      case 'cls':
        return g.op('Gather', [h3, g.constInt64(0)], { axis: attr.int(1) }, name); // [B,d]
      case 'max': {
        const padBias = g.unsqueeze(
          g.mul(
            g.sub(g.constFloat(1), maskF, `${name}_pad`),
            g.constFloat(MAX_POOL_PAD),
            `${name}_pad_bias`,
          ),
          [2],
          `${name}_pad_bias_3d`,
        ); // [B,T,1]
        return g.op(
          'ReduceMax',
          [g.add(h3, padBias, `${name}_masked`), g.constInt64([1])],
          { keepdims: attr.int(0) },
          name,
        ); // [B,d]
      }
    }
  };

  // ---- routing of one group, from its gate input (pooled [B,d]) or the request alone.
  const routings: (Routing | undefined)[] = spec.groups.map(() => undefined);
  const route = (i: number, pooled: string | undefined): Routing => {
    const group = spec.groups[i]!;
    const p = `g${i}`;
    const S = group.slots;
    const bias = g.input(groupBiasName(i), 'float32', ['batch', S]); // [B,S]
    const gateScale = g.input(groupGateScaleName(i), 'float32', ['batch']); // [B]
    const k = g.input(groupKName(i), 'int64', ['batch']); // [B]
    const kmax = g.input(groupKmaxName(i), 'int64', [1]); // [1]
    const topP = g.input(groupTopPName(i), 'float32', ['batch']); // [B]

    let scores = bias; // [B,S]
    if (group.gate !== null) {
      const logits =
        group.gate.type === 'token_bag'
          ? tokenBagLogits(
              g,
              group.gate,
              { inputIds: inputIds!, attentionMask: mask },
              { prefix: `${p}.gate` },
            )
          : gateLogits(g, group.gate, requirePooled(pooled, group.id), d, p); // [B,E]
      const E = group.gate.experts.length;
      // Per slot: the logit of the gate column its adapter has, 0 for adapters the gate lacks.
      const withNone = g.op(
        'Pad',
        [logits, g.constInt64([0, 0, 0, 1]), g.constFloat(0)],
        {},
        `${p}_gate_with_none`,
      ); // [B,E+1]: column E is the 0 logit of adapters the gate does not know
      const perSlot = g.gather(withNone, bankInput(i, GATE_SITE, 'index'), 1, `${p}_gate_per_slot`); // [B,S]
      const scaled = g.mul(
        perSlot,
        g.unsqueeze(gateScale, [1], `${p}_gate_scale_col`),
        `${p}_gate_scaled`,
      );
      scores = g.add(scaled, bias, `${p}_scores`);
      // Gate health: entropy and top-1 margin of the gate's own distribution over its experts.
      const probs = g.softmax(logits, -1, `${p}_gate_probs`); // [B,E]
      const logProbs = g.op('LogSoftmax', [logits], { axis: attr.int(-1) }, `${p}_gate_log_probs`);
      g.op(
        'Neg',
        [g.reduceSum(g.mul(probs, logProbs, `${p}_gate_plogp`), [1], false, `${p}_gate_sum_plogp`)],
        {},
        `${p}_entropy`,
        groupEntropyName(i),
      ); // [B]
      if (E >= 2) {
        const [top2] = g.node(
          'TopK',
          [probs, g.constInt64([2])],
          { axis: attr.int(-1) },
          {
            outputs: 2,
            name: `${p}_gate_top2`,
          },
        ) as [string, string];
        const first = g.op(
          'Gather',
          [top2, g.constInt64(0)],
          { axis: attr.int(1) },
          `${p}_gate_p1`,
        );
        const second = g.op(
          'Gather',
          [top2, g.constInt64(1)],
          { axis: attr.int(1) },
          `${p}_gate_p2`,
        );
        g.op('Sub', [first, second], {}, `${p}_margin`, groupMarginName(i)); // [B]
      } else {
        g.op(
          'ReduceMax',
          [probs, g.constInt64([1])],
          { keepdims: attr.int(0) },
          `${p}_margin`,
          groupMarginName(i),
        );
      }
    }

    const [topValues, experts] = g.node(
      'TopK',
      [scores, kmax],
      { axis: attr.int(-1), largest: attr.int(1), sorted: attr.int(1) },
      { outputs: [`${p}_top_values`, groupExpertsName(i)], name: `${p}_topk` },
    ) as [string, string]; // [B,K] each, K = kmax
    // Top-p: the chosen slots' probabilities under the full softmax, accumulated best first.
    const chosenProbs = g.op(
      'GatherElements',
      [g.softmax(scores, -1, `${p}_route_probs`), experts],
      { axis: attr.int(1) },
      `${p}_chosen_probs`,
    ); // [B,K]
    const cumulative = g.op('CumSum', [chosenProbs, g.constInt64(1)], {}, `${p}_cumulative`); // [B,K]
    const belowP = g.reduceSum(
      g.cast(
        g.op('Less', [cumulative, g.unsqueeze(topP, [1], `${p}_top_p_col`)], {}, `${p}_below_p`),
        'int64',
        `${p}_below_p_count_in`,
      ),
      [1],
      false,
      `${p}_below_p_count`,
    ); // [B]
    const kUsed = g.op(
      'Min',
      [k, g.add(belowP, g.constInt64(1), `${p}_top_p_k`)],
      {},
      `${p}_k_used`,
      groupKUsedName(i),
    ); // [B]
    const positions = g.op(
      'Range',
      [g.constInt64(0), g.squeeze(kmax, [0], `${p}_kmax_scalar`), g.constInt64(1)],
      {},
      `${p}_positions`,
    ); // [K]
    const withinK = g.op(
      'Less',
      [g.unsqueeze(positions, [0], `${p}_positions_row`), g.unsqueeze(kUsed, [1], `${p}_k_col`)],
      {},
      `${p}_within_k`,
    ); // [B,K] bool
    const kept = g.op(
      'Where',
      [withinK, topValues, g.constFloat(BEYOND_K)],
      {},
      `${p}_kept_logits`,
    );
    const weights = g.op(
      'Where',
      [withinK, g.softmax(kept, -1, `${p}_softmax`), g.constFloat(0)],
      {},
      `${p}_weights`,
      groupWeightsName(i),
    ); // [B,K], exactly 0 beyond k_used
    const widthCache = new Map<number, string>();
    const routing: Routing = {
      experts,
      weights,
      columnWeights: (width) => {
        let columns = widthCache.get(width);
        if (columns === undefined) {
          columns = g.reshape(
            g.mul(
              g.unsqueeze(weights, [2], `${p}_weights_col_${width}`),
              g.constFloat(new Array(width).fill(1), [width]),
              `${p}_weights_rep_${width}`,
            ), // [B,K,width]
            [0, 1, -1],
            `${p}_column_weights_${width}`,
          ); // [B,1,K*width]
          widthCache.set(width, columns);
        }
        return columns;
      },
    };
    routings[i] = routing;
    return routing;
  };

  // ---- in-layer groups: per-layer slot ids, and the hooks the backbone calls.
  const inLayer = spec.groups
    .map((group, i) => ({ group, i }))
    .filter(({ group }) => group.structure.kind !== 'top');
  /** Slot ids offset to layer position `pos` of group i's banks: experts + pos*S. */
  const layerIdsCache = new Map<string, string>();
  const layerIds = (i: number, pos: number): string => {
    const key = `${i}:${pos}`;
    let ids = layerIdsCache.get(key);
    if (ids === undefined) {
      const experts = routings[i]!.experts;
      ids =
        pos === 0
          ? experts
          : g.add(experts, g.constInt64(pos * spec.groups[i]!.slots), `g${i}_l${pos}_ids`);
      layerIdsCache.set(key, ids);
    }
    return ids;
  };
  /** [N,w] -> [B,T,w] for the batch at hand. */
  const perItem = (ctx: HookContext, x: string, width: number, name: string): string =>
    g.op(
      'Reshape',
      [
        x,
        g.op(
          'Concat',
          [ctx.tokensShape, g.constInt64([width])],
          { axis: attr.int(0) },
          `${name}_shape`,
        ),
      ],
      {},
      name,
    );

  const hooks: EncoderHooks = {
    embeddings(x, ctx) {
      const gatedInLayer = inLayer.filter(
        ({ group }) => group.gate !== null && group.gate.type !== 'token_bag',
      );
      const pooled =
        gatedInLayer.length > 0
          ? pool(perItem(ctx, x, d, 'embeddings_3d'), spec.pooling.mode, 'embeddings_pooled')
          : undefined;
      for (const { i } of inLayer) route(i, pooled);
      return x;
    },
    linear(site: LinearSite, ctx) {
      let out = site.output;
      inLayer.forEach(({ group, i }) => {
        const s = group.structure;
        if (s.kind !== 'lora' || !s.modules.includes(site.module)) return;
        const pos = s.layers.indexOf(site.layer);
        if (pos < 0) return;
        out = loraDelta(i, pos, s.rank, site, out, ctx);
      });
      return out;
    },
    block(site: BlockSite, ctx) {
      const groups = inLayer.filter(({ group }) => {
        const s = group.structure;
        return (
          s.kind === 'bottleneck-layers' &&
          bottleneckBlocks(s).includes(site.block) &&
          s.layers.includes(site.layer)
        );
      });
      if (groups.length === 0)
        return site.layerNorm(
          g.add(site.hidden, site.residual, `l${site.layer}_${site.block}_residual`),
        );
      return bottleneckBlock(groups, site, ctx);
    },
  };

  /** output [N,out] + sum_k w_k * scaling_k * B_k(A_k x) for group i at layer position pos. */
  function loraDelta(
    i: number,
    pos: number,
    R: number,
    site: LinearSite,
    output: string,
    ctx: HookContext,
  ): string {
    const p = `g${i}_l${site.layer}_${site.module}`;
    const ids = layerIds(i, pos);
    const x3 = perItem(ctx, site.input, site.inSize, `${p}_x`); // [B,T,in]
    const a = g.reshape(
      g.gather(bankInput(i, site.module, 'lora_a'), ids, 0, `${p}_a_gather`), // [B,K,R,in]
      [0, -1, site.inSize],
      `${p}_a`,
    ); // [B,K*R,in]
    const z = g.mul(
      g.matMul(x3, g.transpose(a, [0, 2, 1], `${p}_a_t`), `${p}_down`), // [B,T,K*R]
      routings[i]!.columnWeights(R),
      `${p}_weighted`,
    );
    const b = g.reshape(
      g.gather(bankInput(i, site.module, 'lora_b'), ids, 0, `${p}_b_gather`), // [B,K,R,out]
      [0, -1, site.outSize],
      `${p}_b`,
    ); // [B,K*R,out]
    const delta = g.reshape(g.matMul(z, b, `${p}_up`), [-1, site.outSize], `${p}_delta`); // [N,out]
    return g.add(output, delta, `${p}_out`);
  }

  /**
   * The end of a block with bottleneck groups, in order (AdapterHub's Stack generalised to mixed
   * groups): each group's pre_forward on the running state, its mixed adapters, then the last
   * group's post_forward. See BottleneckPlacement for the flags.
   */
  function bottleneckBlock(
    groups: readonly { group: GraphGroup; i: number }[],
    site: BlockSite,
    ctx: HookContext,
  ): string {
    let hidden = site.hidden; // [N,d]
    let placement: BottleneckPlacement | undefined;
    for (const { group, i } of groups) {
      const s = group.structure as Extract<GroupStructure, { kind: 'bottleneck-layers' }>;
      placement = s.placement;
      const p = `g${i}_l${site.layer}_${site.block}`;
      // pre_forward
      let residual = hidden;
      let h = hidden;
      if (placement.originalLnBefore) {
        h = g.add(hidden, site.residual, `${p}_pre_sum`);
        if (placement.residualBeforeLn === 'post_add') residual = h;
        h = site.layerNorm(h, `${p}_pre_ln`);
      }
      if (placement.residualBeforeLn === false) residual = h;
      // The adapter's own LayerNorm: normalisation here, its affine folded into the down bank.
      if (placement.lnBefore) {
        h = g.layerNorm(
          h,
          g.constFloat(new Array(d).fill(1), [d]),
          g.constFloat(new Array(d).fill(0), [d]),
          1e-5,
          `${p}_ln_before`,
        );
      }
      const ids = layerIds(i, s.layers.indexOf(site.layer));
      const m = s.size;
      const x3 = perItem(ctx, h, d, `${p}_x`); // [B,T,d]
      const downT = g.reshape(
        g.gather(bankInput(i, site.block, 'down_t'), ids, 0, `${p}_down_gather`),
        [0, -1, d],
        `${p}_down_t`,
      ); // [B,K*m,d]
      const downBias = g.reshape(
        g.gather(bankInput(i, site.block, 'down_bias'), ids, 0, `${p}_down_bias_gather`),
        [0, 1, -1],
        `${p}_down_bias`,
      ); // [B,1,K*m]
      const z = g.add(
        g.matMul(x3, g.transpose(downT, [0, 2, 1], `${p}_down`), `${p}_down_matmul`),
        downBias,
        `${p}_z`,
      ); // [B,T,K*m]
      const a = g.mul(
        emitActivation(g, placement.activation as ActivationName, z, `${p}_act`),
        routings[i]!.columnWeights(m),
        `${p}_weighted`,
      );
      const up = g.reshape(
        g.gather(bankInput(i, site.block, 'up'), ids, 0, `${p}_up_gather`),
        [0, -1, d],
        `${p}_up`,
      ); // [B,K*m,d]
      const upBias = g.matMul(
        g.unsqueeze(routings[i]!.weights, [1], `${p}_weights_row`), // [B,1,K]
        g.gather(bankInput(i, site.block, 'up_bias'), ids, 0, `${p}_up_bias_gather`), // [B,K,d]
        `${p}_up_bias_mix`,
      ); // [B,1,d]
      const upOut = g.reshape(
        g.add(g.matMul(a, up, `${p}_up_matmul`), upBias, `${p}_up_out`),
        [-1, d],
        `${p}_up_2d`,
      ); // [N,d]
      hidden = g.add(upOut, residual, `${p}_out`);
    }
    // post_forward of the last group
    const last = `l${site.layer}_${site.block}_post`;
    if (placement!.originalLnAfter)
      return site.layerNorm(g.add(hidden, site.residual, `${last}_sum`), `${last}_ln`);
    return hidden;
  }

  // ---- the backbone.
  let hidden3: string; // [B,T,d]
  let tokensInput: CompiledPackGraph['tokensInput'];
  if (backbone.kind === 'built') {
    tokensInput = GRAPH_INPUT_IDS;
    const out = backbone.emit(g, { inputIds: inputIds!, attentionMask: mask }, hooks);
    hidden3 = g.op(
      'Reshape',
      [
        out.hidden,
        g.op('Concat', [out.tokensShape, g.constInt64([d])], { axis: attr.int(0) }, 'hidden_shape'),
      ],
      {},
      'last_hidden_state',
    );
  } else {
    tokensInput = GRAPH_INPUT_HIDDEN;
    hidden3 = g.input(GRAPH_INPUT_HIDDEN, 'float32', ['batch', 'sequence', d]);
  }

  // ---- top-of-backbone groups, in order.
  spec.groups.forEach((group, i) => {
    const s = group.structure;
    if (s.kind !== 'top') return;
    const p = `g${i}`;
    const pooled =
      group.gate === null || group.gate.type === 'token_bag'
        ? undefined
        : pool(hidden3, spec.pooling.mode, `${p}_pooled`);
    const routing = route(i, pooled);
    const R = s.rank;
    const ids = routing.experts;
    const downT = g.reshape(
      g.gather(bankInput(i, TOP_SITE, 'down_t'), ids, 0, `${p}_down_gather`),
      [0, -1, d],
      `${p}_down_t`,
    ); // [B,K*R,d]
    const downBias = g.reshape(
      g.gather(bankInput(i, TOP_SITE, 'down_bias'), ids, 0, `${p}_down_bias_gather`),
      [0, 1, -1],
      `${p}_down_bias`,
    ); // [B,1,K*R]
    // The transposed bank rows need no copy to become [B,K*R,d]; ORT fuses the Transpose into
    // the MatMul (FusedMatMul transB).
    const z = g.add(
      g.matMul(hidden3, g.transpose(downT, [0, 2, 1], `${p}_down`), `${p}_down_matmul`),
      downBias,
      `${p}_z`,
    ); // [B,T,K*R]
    const a = g.mul(
      emitActivation(g, s.activation, z, `${p}_act`),
      routing.columnWeights(R),
      `${p}_weighted`,
    ); // [B,T,K*R]
    const up = g.reshape(
      g.gather(bankInput(i, TOP_SITE, 'up'), ids, 0, `${p}_up_gather`),
      [0, -1, d],
      `${p}_up`,
    ); // [B,K*R,d]
    const upBiasMix = g.matMul(
      g.unsqueeze(routing.weights, [1], `${p}_weights_row`), // [B,1,K]
      g.gather(bankInput(i, TOP_SITE, 'up_bias'), ids, 0, `${p}_up_bias_gather`), // [B,K,d]
      `${p}_up_bias_mix`,
    ); // [B,1,d]
    const residualMix = g.unsqueeze(
      g.reduceSum(
        g.mul(
          routing.weights,
          g.gather(bankInput(i, TOP_SITE, 'residual'), ids, 0, `${p}_residual_gather`),
          `${p}_residual_weighted`,
        ),
        [1],
        true,
        `${p}_residual_mix`,
      ), // [B,1]
      [2],
      `${p}_residual_mix_3d`,
    ); // [B,1,1]
    const out = g.add(g.matMul(a, up, `${p}_up_matmul`), upBiasMix, `${p}_adapter_out`); // [B,T,d]
    hidden3 = g.add(out, g.mul(residualMix, hidden3, `${p}_residual`), `${p}_hidden`); // [B,T,d]
  });

  // ---- outputs over the final state.
  const pooledFinal = pool(hidden3, spec.pooling.mode, 'pooled'); // [B,d]
  if (spec.pooling.normalize) {
    const norm = g.op(
      'Sqrt',
      [g.reduceSum(g.mul(pooledFinal, pooledFinal, 'pooled_sq'), [1], true, 'pooled_sq_sum')],
      {},
      'pooled_norm',
    ); // [B,1]
    g.op(
      'Div',
      [pooledFinal, g.max(norm, g.constFloat(1e-12), 'pooled_norm_clamped')],
      {},
      'embedding',
      GRAPH_OUTPUT_EMBEDDING,
    );
  } else {
    g.op('Identity', [pooledFinal], {}, 'embedding', GRAPH_OUTPUT_EMBEDDING);
  }
  const pooledBy = new Map<string, string>([[spec.pooling.mode, pooledFinal]]);
  spec.heads.forEach((head, j) => {
    const L = head.labels.length;
    // A head with its own pooling (imported classifiers read the first token) pools again.
    const mode = head.pooling ?? spec.pooling.mode;
    let x = pooledBy.get(mode);
    if (x === undefined) {
      x = pool(hidden3, mode, `pooled_${mode}`);
      pooledBy.set(mode, x);
    }
    let width = d;
    if (head.hidden !== undefined) {
      const h = head.hidden.bias.data.length;
      x = emitActivation(
        g,
        head.hidden.activation,
        g.op(
          'Gemm',
          [
            x,
            g.initializer(`h${j}.hidden.weight`, head.hidden.weight.data, [d, h]),
            g.initializer(`h${j}.hidden.bias`, head.hidden.bias.data, [h]),
          ],
          {},
          `h${j}_hidden`,
        ),
        `h${j}_hidden_act`,
      ); // [B,h]
      width = h;
    }
    const logits = g.op(
      'Gemm',
      [
        x,
        g.initializer(`h${j}.weight`, head.weight.data, [width, L]),
        g.initializer(`h${j}.bias`, head.bias.data, [L]),
      ],
      {},
      `h${j}_logits`,
    ); // [B,L]
    g.op('Softmax', [logits], { axis: attr.int(-1) }, `h${j}_softmax`, headScoresName(j)); // [B,L]
  });

  // Graph outputs, in contract order.
  spec.groups.forEach((group, i) => {
    g.output(groupExpertsName(i), groupExpertsName(i), 'int64', ['batch', groupKmaxName(i)]);
    g.output(groupWeightsName(i), groupWeightsName(i), 'float32', ['batch', groupKmaxName(i)]);
    g.output(groupKUsedName(i), groupKUsedName(i), 'int64', ['batch']);
    if (group.gate !== null) {
      g.output(groupEntropyName(i), groupEntropyName(i), 'float32', ['batch']);
      g.output(groupMarginName(i), groupMarginName(i), 'float32', ['batch']);
    }
  });
  g.output(GRAPH_OUTPUT_EMBEDDING, GRAPH_OUTPUT_EMBEDDING, 'float32', ['batch', d]);
  spec.heads.forEach((head, j) => {
    g.output(headScoresName(j), headScoresName(j), 'float32', ['batch', head.labels.length]);
  });

  return {
    graph: g,
    model: {
      opset,
      producer: 'moe-serve pack graph',
      graphName: 'pack',
      docString: `pack graph d=${d} groups=[${spec.groups.map((x) => `${x.id}:${x.structure.kind}x${x.slots}`).join(',')}] heads=[${spec.heads.map((h) => h.id).join(',')}]`,
    },
    banks,
    tokensInput,
  };
}

/** The compiled graph as model bytes, every weight inline (graphs without a large backbone). */
export function packGraphBytes(compiled: CompiledPackGraph): Uint8Array {
  return compiled.graph.toModel(compiled.model);
}

function requirePooled(pooled: string | undefined, group: string): string {
  if (pooled === undefined) throw new Error(`pack graph: group ${group} has no gate input`);
  return pooled;
}

/** Gate logits [B,E] over `pooled` [B,d], columns in gate.experts order. */
function gateLogits(
  g: GraphBuilder,
  gate: Exclude<Gate, { type: 'token_bag' }>,
  pooled: string,
  d: number,
  p: string,
): string {
  const E = gate.experts.length;
  if (gate.type === 'linear') {
    return g.op(
      'Gemm',
      [
        pooled,
        g.initializer(`${p}.gate.weight`, gate.weight.data, [d, E]),
        g.initializer(`${p}.gate.bias`, gate.bias.data, [E]),
      ],
      {},
      `${p}_gate_logits`,
    );
  }
  const h = gate.hiddenWeight.shape[1]!;
  const hidden = emitActivation(
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
  return g.op(
    'Gemm',
    [
      hidden,
      g.initializer(`${p}.gate.out.weight`, gate.outWeight.data, [h, E]),
      g.initializer(`${p}.gate.out.bias`, gate.outBias.data, [E]),
    ],
    {},
    `${p}_gate_logits`,
  );
}

function validateSpec(spec: PackGraphSpec, d: number): void {
  const ids = new Set<string>();
  spec.groups.forEach((group) => {
    if (ids.has(group.id)) throw new Error(`pack graph: group id ${group.id} appears twice`);
    ids.add(group.id);
    if (!Number.isInteger(group.slots) || group.slots < 1) {
      throw new Error(`pack graph: group ${group.id} needs at least one slot, has ${group.slots}`);
    }
    const s = group.structure;
    if (s.kind !== 'top' && spec.backbone.kind !== 'built') {
      throw new Error(
        `pack graph: group ${group.id} puts adapters inside the backbone's layers, which only a backbone built from weights (a Hugging Face folder) can host`,
      );
    }
    if (s.kind !== 'top' && spec.backbone.kind === 'built') {
      for (const layer of s.layers) {
        if (!Number.isInteger(layer) || layer < 0 || layer >= spec.backbone.layers) {
          throw new Error(
            `pack graph: group ${group.id} adapts layer ${layer}; the backbone has ${spec.backbone.layers}`,
          );
        }
      }
    }
  });
  // In-layer groups route before the first layer, so they must come before any top group.
  const firstTop = spec.groups.findIndex((group) => group.structure.kind === 'top');
  const lastInLayer = spec.groups.findLastIndex((group) => group.structure.kind !== 'top');
  if (firstTop >= 0 && lastInLayer > firstTop) {
    throw new Error(
      'pack graph: groups inside the layers must be listed before top-of-backbone groups',
    );
  }
  for (const head of spec.heads) {
    const L = head.labels.length;
    const width = head.hidden === undefined ? d : head.hidden.bias.data.length;
    if (head.weight.data.length !== width * L || head.bias.data.length !== L) {
      throw new Error(`pack graph: head ${head.id} must be [${width},${L}] + [${L}]`);
    }
    if (head.hidden !== undefined && head.hidden.weight.data.length !== d * width) {
      throw new Error(`pack graph: head ${head.id}'s hidden layer must be [${d},${width}]`);
    }
  }
}
