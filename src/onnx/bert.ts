/**
 * The BERT-family encoder (BERT, RoBERTa, XLM-R, DistilBERT) as an ONNX graph, built from an
 * `EncoderConfig` and `EncoderWeights` (src/pack/encoder-types.ts), with the Hugging Face
 * feature-extraction contract:
 *   input_ids          int64   [B,T]
 *   attention_mask     int64   [B,T]     1 = real token, 0 = padding
 *   last_hidden_state  float32 [B,T,d]
 * (no token_type_ids input: every token has type 0, and that row is folded into the position
 * table, as the contract says).
 *
 * The math, per item (post-LN, as transformers' modeling_bert / modeling_roberta / modeling_distilbert):
 *   x   = LN_emb(word[id_t] + pos[p_t] + type[0])        p_t = t (absolute), or for RoBERTa / XLM-R
 *                                                         padding_idx + (count of non-pad ids up to t)
 *                                                         at non-pad ids and padding_idx at pad ids
 *   per layer:  q,k,v = x Wq + bq, x Wk + bk, x Wv + bv
 *               ctx   = softmax(q k^T / sqrt(dh) + mask bias) v        per head, padded keys get 0 weight
 *               a     = LN_att(x + ctx Wo + bo)
 *               out   = LN_out(a + act(a W1 + b1) W2 + b2)
 *
 * Layout: token-major, on 2-D views [N,d] with N = B*T, so every projection is one Gemm and the
 * hooks (src/onnx/encoder-hooks.ts) see [N,width] tensors.
 *
 * What ORT's CPU provider runs fast, measured on this project's 2-core machine (d384, B=32, T=64,
 * ORT 1.30, medians of interleaved rounds; see bench/backbone.ts for the figures in place):
 * - Attention: emitted directly as com.microsoft.Attention (packed QKV weights, 2-D int32 mask)
 *   when no linear hook needs q, k and v apart; with linear hooks, one QKV Gemm split into q, k, v
 *   and com.microsoft.MultiHeadAttention. Both ran at the speed of the unfused pattern on CPU
 *   (within noise), and are the kernels GPU providers accelerate. ORT's own AttentionFusion only
 *   matches the PyTorch-export shape of the subgraph; emitting the op is not fragile.
 * - Feed-forward activation: com.microsoft.BiasGelu (gelu) / FastGelu (gelu_new, tanh form) on a
 *   bias-free MatMul, so the bias add rides in the activation; other activations after a Gemm.
 * - LayerNorm: Add + LayerNormalization on [N,d]. NOT SkipLayerNormalization: ORT fuses Add +
 *   LayerNormalization into it only on 3-D inputs, and its CPU kernel measured 5x (2 threads) to
 *   7x (1 thread) slower than Add + LayerNormalization on [2048,384]. The 2-D layout keeps it out.
 * All of it lands at 0.89 (d384 x 12) and 0.91 (d768 x 12) of ORT running the same MatMuls alone
 * at B=32, T=64 (npm run bench:backbone): the projections are the cost. At B=1 (64 tokens) the
 * per-kernel overhead shows: 0.62 at d384.
 *
 * Since the projections are the cost, `quantize: 'int8'` (EncoderQuantize) runs them as int8
 * GEMMs: 2.0-2.4x the float32 items/s at B=32, T=64 on d256 x 4 and d384 x 12 on a 2-core AVX-512
 * VNNI machine (npm run bench:int8), embeddings within cosine 0.9999 of float32 on random weights.
 */
import type {
  BackboneQuantize,
  EncoderActivation,
  EncoderConfig,
  EncoderWeights,
} from '../pack/encoder-types.js';
import type { EncoderHooks, HookContext } from './encoder-hooks.js';
import { attr, DEFAULT_OPSET, type ExternalDataOptions, GraphBuilder } from './graph.js';
import type { BuiltBackbone } from './pack-graph.js';
import { quantizeColumns } from './quantize.js';

/**
 * Version of the graph this file emits. Part of the backbone cache key (a built graph is reused
 * only when config, weights and this version are the same): bump it whenever the emitted graph
 * changes for the same inputs.
 */
export const BERT_BUILDER_VERSION = 1;

export const ENCODER_INPUT_IDS = 'input_ids';
export const ENCODER_INPUT_MASK = 'attention_mask';
export const ENCODER_OUTPUT = 'last_hidden_state';

const MICROSOFT = 'com.microsoft';

export interface EmitEncoderOptions {
  /** int64 [B,T] input ids already in the graph. */
  readonly inputIds: string;
  /** int64 [B,T] attention mask already in the graph (1 = real token). */
  readonly attentionMask: string;
  /** Hook points (in-layer adapters, early gates); none: the plain, fastest encoder. */
  readonly hooks?: EncoderHooks;
  /** 'int8': dynamic int8 projections (EncoderQuantize); default 'none', float32 throughout. */
  readonly quantize?: EncoderQuantize;
}

/**
 * 'none': float32 throughout. 'int8': dynamic int8 quantization of every dense projection of
 * every layer (query/key/value, attention output, intermediate, output), as onnxruntime's
 * `quantize_dynamic(per_channel=True, reduce_range=True)` would make it of our float graph:
 * - weights: int8, symmetric, one scale per output column, 7-bit (src/onnx/quantize.ts says why);
 * - activations: quantized at run time to uint8 with one scale and zero point per tensor, i.e.
 *   per batch (the kernel's min/max spans every row of [N,in], padding rows included), so an
 *   item's output moves slightly with its batch mates (fp32 is exactly batch-invariant);
 * - kernels: com.microsoft.DynamicQuantizeMatMul for every projection (q, k and v as one [d,3d]
 *   product, then MultiHeadAttention, as with linear hooks), BiasGelu after the intermediate one.
 *   com.microsoft.QAttention (int8 q, k, v inside the attention kernel) measured the same within
 *   noise here (paired ratio 1.005-1.011 over 24-60 interleaved rounds at d256 x 4 and d384 x 12,
 *   B = 32), so one int8 path serves with and without hooks. The ONNX-standard pattern
 *   DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add is fused by ORT into the same
 *   DynamicQuantizeMatMul (bench/int8.ts --matmulinteger prints the ops it runs).
 * Embeddings, LayerNorm, softmax, GELU and everything the hooks add (adapters, gates, heads)
 * stay float32.
 */
export type EncoderQuantize = BackboneQuantize;

export interface EncoderOutputs {
  /** float32 [B,T,d]. */
  readonly lastHiddenState: string;
  /** float32 [N,d]: the same values, token-major. */
  readonly tokens: string;
  /** What the hooks were given (shape, mask and ids tensors), for nodes emitted after the encoder. */
  readonly context: HookContext;
}

/** Throws a plain Error naming the first thing about `config` / `weights` that does not fit. */
export function validateEncoder(config: EncoderConfig, weights: EncoderWeights): void {
  const { hiddenSize: d, intermediateSize: f, vocabSize: V, maxPositions: P } = config;
  for (const key of [
    'vocabSize',
    'hiddenSize',
    'layers',
    'heads',
    'intermediateSize',
    'maxPositions',
  ] as const) {
    if (!Number.isInteger(config[key]) || config[key] < 1) {
      throw new Error(`encoder: ${key} must be a positive integer, got ${config[key]}`);
    }
  }
  if (d % config.heads !== 0) {
    throw new Error(`encoder: hiddenSize ${d} is not divisible by heads ${config.heads}`);
  }
  if (weights.layers.length !== config.layers) {
    throw new Error(
      `encoder: config has ${config.layers} layers, weights ${weights.layers.length}`,
    );
  }
  const size = (what: string, a: ArrayLike<number>, n: number) => {
    if (a.length !== n) throw new Error(`encoder: ${what} has ${a.length} values, expected ${n}`);
  };
  size('wordEmbeddings', weights.wordEmbeddings, V * d);
  size('positionEmbeddings', weights.positionEmbeddings, P * d);
  if (weights.tokenType0) size('tokenType0', weights.tokenType0, d);
  size('embeddingLn.gamma', weights.embeddingLn.gamma, d);
  size('embeddingLn.beta', weights.embeddingLn.beta, d);
  weights.layers.forEach((layer, l) => {
    const linear = (
      name: string,
      w: { weight: Float32Array; bias: Float32Array },
      i: number,
      o: number,
    ) => {
      size(`layers[${l}].${name}.weight`, w.weight, i * o);
      size(`layers[${l}].${name}.bias`, w.bias, o);
    };
    linear('query', layer.query, d, d);
    linear('key', layer.key, d, d);
    linear('value', layer.value, d, d);
    linear('attentionOutput', layer.attentionOutput, d, d);
    linear('intermediate', layer.intermediate, d, f);
    linear('output', layer.output, f, d);
    for (const ln of ['attentionLn', 'outputLn'] as const) {
      size(`layers[${l}].${ln}.gamma`, layer[ln].gamma, d);
      size(`layers[${l}].${ln}.beta`, layer[ln].beta, d);
    }
  });
  if (config.positions === 'after-padding' && config.padTokenId + 1 >= P) {
    throw new Error(
      `encoder: padTokenId ${config.padTokenId} leaves no position rows of ${P} for 'after-padding' positions`,
    );
  }
}

/**
 * Emits the encoder into `g` over existing `inputIds` / `attentionMask` tensors, calling every
 * hook as src/onnx/encoder-hooks.ts says, and returns the last hidden state.
 */
export function emitEncoder(
  g: GraphBuilder,
  config: EncoderConfig,
  weights: EncoderWeights,
  options: EmitEncoderOptions,
): EncoderOutputs {
  validateEncoder(config, weights);
  const { hiddenSize: d, heads: H, intermediateSize: f } = config;
  const hooks = options.hooks ?? {};
  const ids = options.inputIds;
  const mask = options.attentionMask;
  const eps = config.layerNormEps;

  const idsShape = g.op('Shape', [ids], {}, 'ids_shape'); // [2] = [B,T]
  const outShape = g.op(
    'Concat',
    [idsShape, g.constInt64([d])],
    { axis: attr.int(0) },
    'hidden_shape',
  ); // [3] = [B,T,d]
  const ctx: HookContext = { g, tokensShape: idsShape, attentionMask: mask, inputIds: ids };

  // ---- embeddings: word + position (+ type row 0, folded into the position table) -> LN.
  const wordTable = g.initializer('embeddings.word', weights.wordEmbeddings, [config.vocabSize, d]);
  const posTable = g.initializer('embeddings.position', positionTable(config, weights), [
    config.maxPositions,
    d,
  ]);
  const words = g.gather(wordTable, ids, 0, 'embeddings_word'); // [B,T,d]
  let positions: string;
  if (config.positions === 'absolute') {
    const seqLen = g.op('Slice', [idsShape, g.constInt64([1]), g.constInt64([2])], {}, 'seq_len'); // [1]
    positions = g.op(
      'Slice',
      [posTable, g.constInt64([0]), seqLen, g.constInt64([0])],
      {},
      'embeddings_position',
    ); // [T,d], broadcast over B
  } else {
    // RoBERTa / XLM-R: from the ids, not the mask, exactly as transformers'
    // create_position_ids_from_input_ids: non-pad ids count from padding_idx + 1, pad ids sit at
    // padding_idx (a pad id inside the text gets padding_idx too).
    const pad = g.constInt64(config.padTokenId);
    const real = g.cast(
      g.op('Not', [g.op('Equal', [ids, pad], {}, 'ids_is_pad')], {}, 'ids_not_pad'),
      'int64',
      'ids_real',
    ); // [B,T] 0/1
    const counted = g.op('CumSum', [real, g.constInt64(1)], {}, 'ids_real_cumsum'); // [B,T]
    const positionIds = g.add(g.mul(counted, real, 'position_offsets'), pad, 'position_ids'); // [B,T]
    positions = g.gather(posTable, positionIds, 0, 'embeddings_position'); // [B,T,d]
  }
  const embedded = g.reshape(
    g.add(words, positions, 'embeddings_sum'),
    [-1, d],
    'embeddings_tokens',
  ); // [N,d]
  let x = g.layerNorm(
    embedded,
    g.initializer('embeddings.ln.gamma', weights.embeddingLn.gamma, [d]),
    g.initializer('embeddings.ln.beta', weights.embeddingLn.beta, [d]),
    eps,
    'embeddings_ln',
  ); // [N,d]
  if (hooks.embeddings) x = hooks.embeddings(x, ctx);

  const mask32 = g.cast(mask, 'int32', 'attention_mask_int32'); // [B,T], what the attention ops take
  const to3d = (t: string, name: string) => g.op('Reshape', [t, outShape], {}, name); // [N,d] -> [B,T,d]
  const int8 = options.quantize === 'int8';
  const gemm = (
    input: string,
    weight: Float32Array,
    bias: Float32Array | undefined,
    rows: number,
    cols: number,
    name: string,
  ) => emitProjection(g, input, { weight, bias, rows, cols }, name, options.quantize); // [N,cols]

  weights.layers.forEach((layer, l) => {
    const p = `layer${l}`;
    // ---- self-attention -> context [N,d]
    let context: string;
    const qkv = fuseQkv(layer, d);
    if (hooks.linear || int8) {
      // One projection for q, k and v (int8: one quantization of x), split for the hooks.
      const fused = gemm(x, qkv.weight, qkv.bias, d, 3 * d, `${p}.attention.qkv`); // [N,3d]
      const parts = g.node(
        'Split',
        [fused, g.constInt64([d, d, d])],
        { axis: attr.int(1) },
        { outputs: 3, name: `${p}_qkv_split` },
      ); // [N,d] each
      const [q, k, v] = (['query', 'key', 'value'] as const).map((module, i) =>
        hooks.linear
          ? hooks.linear(
              { layer: l, module, input: x, output: parts[i]!, inSize: d, outSize: d },
              ctx,
            )
          : parts[i]!,
      ) as [string, string, string];
      const attended = g.node(
        'MultiHeadAttention',
        [to3d(q, `${p}_query_3d`), to3d(k, `${p}_key_3d`), to3d(v, `${p}_value_3d`), '', mask32],
        { num_heads: attr.int(H) },
        { domain: MICROSOFT, name: `${p}_attention` },
      )[0]!; // [B,T,d]
      context = g.reshape(attended, [-1, d], `${p}_context`);
    } else {
      const attended = g.node(
        'Attention',
        [
          to3d(x, `${p}_attention_input`),
          g.initializer(`${p}.attention.qkv.weight`, qkv.weight, [d, 3 * d]),
          g.initializer(`${p}.attention.qkv.bias`, qkv.bias, [3 * d]),
          mask32,
        ],
        { num_heads: attr.int(H) },
        { domain: MICROSOFT, name: `${p}_attention` },
      )[0]!; // [B,T,d]
      context = g.reshape(attended, [-1, d], `${p}_context`);
    }
    const attentionOut = linearSite(
      l,
      'attention_output',
      context,
      gemm(
        context,
        layer.attentionOutput.weight,
        layer.attentionOutput.bias,
        d,
        d,
        `${p}.attention.output`,
      ),
      d,
      d,
    ); // [N,d]
    const a = closeBlock(l, 'attention', attentionOut, x, layer.attentionLn); // [N,d]

    // ---- feed-forward -> [N,d]
    let activated: string; // [N,f]
    const fusedBias = !hooks.linear && fusedBiasActivation(config.hiddenAct);
    if (fusedBias) {
      const projected = gemm(a, layer.intermediate.weight, undefined, d, f, `${p}.intermediate`); // [N,f], bias added by the activation op
      activated = g.node(
        fusedBias,
        [projected, g.initializer(`${p}.intermediate.bias`, layer.intermediate.bias, [f])],
        {},
        { domain: MICROSOFT, name: `${p}_activation` },
      )[0]!;
    } else {
      const inner = linearSite(
        l,
        'intermediate',
        a,
        gemm(a, layer.intermediate.weight, layer.intermediate.bias, d, f, `${p}.intermediate`),
        d,
        f,
      );
      activated = activation(g, config.hiddenAct, inner, `${p}_activation`);
    }
    const ffnOut = linearSite(
      l,
      'output',
      activated,
      gemm(activated, layer.output.weight, layer.output.bias, f, d, `${p}.output`),
      f,
      d,
    ); // [N,d]
    x = closeBlock(l, 'ffn', ffnOut, a, layer.outputLn);
    if (hooks.layerOutput) x = hooks.layerOutput(l, x, ctx);
  });

  const lastHiddenState = g.op('Reshape', [x, outShape], {}, 'last_hidden_state_reshape'); // [B,T,d]
  return { lastHiddenState, tokens: x, context: ctx };

  function linearSite(
    layer: number,
    module: 'attention_output' | 'intermediate' | 'output',
    input: string,
    output: string,
    inSize: number,
    outSize: number,
  ): string {
    return hooks.linear
      ? hooks.linear({ layer, module, input, output, inSize, outSize }, ctx)
      : output;
  }

  /** LN(hidden + residual), or what the block hook makes of it. */
  function closeBlock(
    layer: number,
    block: 'attention' | 'ffn',
    hidden: string,
    residual: string,
    ln: { gamma: Float32Array; beta: Float32Array },
  ): string {
    const name = `layer${layer}.${block}.ln`;
    let params: [string, string] | undefined; // created once, shared by every call
    const layerNorm = (t: string, nodeName?: string) => {
      params ??= [
        g.initializer(`${name}.gamma`, ln.gamma, [d]),
        g.initializer(`${name}.beta`, ln.beta, [d]),
      ];
      return g.layerNorm(t, params[0], params[1], eps, nodeName ?? name.replace(/\./g, '_'));
    };
    if (hooks.block) return hooks.block({ layer, block, hidden, residual, layerNorm }, ctx);
    return layerNorm(g.add(residual, hidden, `layer${layer}_${block}_residual`));
  }
}

/** A dense projection's weights: weight [rows,cols] (math layout), optional bias [cols]. */
export interface Projection {
  readonly weight: Float32Array;
  readonly bias?: Float32Array | undefined;
  readonly rows: number;
  readonly cols: number;
}

/**
 * input [N,rows] @ weight [rows,cols] (+ bias) -> [N,cols], as the encoder emits every projection
 * outside the fused attention op. float32: Gemm (MatMul without a bias). int8:
 * com.microsoft.DynamicQuantizeMatMul(input, int8 weight, per-column scales, -, bias), which
 * quantizes `input` to uint8 with one scale and zero point for the whole tensor (its min and max
 * over every row, padding rows included), multiplies in MLAS's u8s8 GEMM (exact int32 sums, see
 * src/onnx/quantize.ts) and writes acc * (input scale * column scale) + bias. Initializers are
 * named `<name>.weight` / `.bias` (float32) or `<name>.weight_int8` / `.weight_scale` / `.bias`.
 */
export function emitProjection(
  g: GraphBuilder,
  input: string,
  projection: Projection,
  name: string,
  quantize: EncoderQuantize = 'none',
): string {
  const { weight, bias, rows, cols } = projection;
  const nodeName = name.replace(/\./g, '_');
  if (quantize === 'int8') {
    const q = quantizeColumns(weight, rows, cols);
    const inputs = [
      input,
      g.initializer(`${name}.weight_int8`, q.values, [rows, cols]),
      g.initializer(`${name}.weight_scale`, q.scales, [cols]),
    ];
    // b_zero_point omitted: symmetric weights, zero point 0. bias is input 4.
    if (bias) inputs.push('', g.initializer(`${name}.bias`, bias, [cols]));
    return g.node('DynamicQuantizeMatMul', inputs, {}, { domain: MICROSOFT, name: nodeName })[0]!;
  }
  const w = g.initializer(`${name}.weight`, weight, [rows, cols]);
  if (!bias) return g.matMul(input, w, nodeName);
  return g.op('Gemm', [input, w, g.initializer(`${name}.bias`, bias, [cols])], {}, nodeName);
}

/** How the encoder is built, beyond its config and weights. Part of a built graph's cache key. */
export interface EncoderBuildOptions {
  /** Default 'none' (float32). 'int8': see EncoderQuantize. */
  readonly quantize?: EncoderQuantize;
}

/**
 * The encoder as a backbone the pack graph compiler emits into its own graph (pack-graph.ts,
 * `BuiltBackbone`): one graph, one run per batch, with the in-layer groups' hooks inside.
 */
export function bertBackbone(
  config: EncoderConfig,
  weights: EncoderWeights,
  build: EncoderBuildOptions = {},
): BuiltBackbone {
  validateEncoder(config, weights);
  return {
    kind: 'built',
    dims: { hiddenSize: config.hiddenSize, intermediateSize: config.intermediateSize },
    layers: config.layers,
    emit: (g, inputs, hooks) => {
      const out = emitEncoder(g, config, weights, { ...inputs, hooks, ...build });
      return { hidden: out.tokens, tokensShape: out.context.tokensShape };
    },
  };
}

/** The whole backbone graph: inputs, `emitEncoder`, output `last_hidden_state`. */
export function encoderGraph(
  config: EncoderConfig,
  weights: EncoderWeights,
  hooks?: EncoderHooks,
  build: EncoderBuildOptions = {},
): GraphBuilder {
  const g = new GraphBuilder();
  const inputIds = g.input(ENCODER_INPUT_IDS, 'int64', ['batch', 'sequence']);
  const attentionMask = g.input(ENCODER_INPUT_MASK, 'int64', ['batch', 'sequence']);
  const { lastHiddenState } = emitEncoder(g, config, weights, {
    inputIds,
    attentionMask,
    ...(hooks ? { hooks } : {}),
    ...build,
  });
  g.output(lastHiddenState, ENCODER_OUTPUT, 'float32', ['batch', 'sequence', config.hiddenSize]);
  return g;
}

function modelOptions(config: EncoderConfig, build: EncoderBuildOptions) {
  const quantize = build.quantize ?? 'none';
  return {
    opset: DEFAULT_OPSET,
    producer: `moe-serve bert builder v${BERT_BUILDER_VERSION}`,
    graphName: 'encoder',
    docString: `${config.family} encoder d=${config.hiddenSize} layers=${config.layers} heads=${config.heads} ffn=${config.intermediateSize} vocab=${config.vocabSize} act=${config.hiddenAct}${quantize === 'none' ? '' : ` quantize=${quantize}`}`,
  };
}

/** Model bytes with every weight inline: for small encoders (tests, the demo). Under 2 GB only. */
export function encoderModelBytes(
  config: EncoderConfig,
  weights: EncoderWeights,
  build: EncoderBuildOptions = {},
): Uint8Array {
  return encoderGraph(config, weights, undefined, build).toModel(modelOptions(config, build));
}

/** Writes the model to `path` with its weights as external data beside it (see GraphBuilder.writeModel). */
export function writeEncoderModel(
  path: string,
  config: EncoderConfig,
  weights: EncoderWeights,
  options: ExternalDataOptions & EncoderBuildOptions & { hooks?: EncoderHooks } = {},
): Promise<{ modelPath: string; dataPath: string }> {
  const { hooks, quantize, ...external } = options;
  const build = quantize === undefined ? {} : { quantize };
  return encoderGraph(config, weights, hooks, build).writeModel(path, {
    ...modelOptions(config, build),
    ...external,
  });
}

/** The position table with token type 0 added to every row: [maxPositions,d]. */
function positionTable(config: EncoderConfig, weights: EncoderWeights): Float32Array {
  const type0 = weights.tokenType0;
  if (type0 === undefined) return weights.positionEmbeddings;
  const d = config.hiddenSize;
  const out = Float32Array.from(weights.positionEmbeddings);
  for (let i = 0; i < out.length; i++) out[i]! += type0[i % d]!;
  return out;
}

/** q, k, v [d,d] weights side by side as one [d,3d] weight, and their biases as [3d]. */
function fuseQkv(
  layer: EncoderWeights['layers'][number],
  d: number,
): { weight: Float32Array; bias: Float32Array } {
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

/** The com.microsoft op that adds a bias and applies `act` in one kernel, if there is one. */
function fusedBiasActivation(act: EncoderActivation): 'BiasGelu' | 'FastGelu' | undefined {
  if (act === 'gelu') return 'BiasGelu';
  if (act === 'gelu_new' || act === 'gelu_pytorch_tanh') return 'FastGelu';
  return undefined;
}

/** act(x) for transformers' ACT2FN names (see EncoderActivation). */
export function activation(
  g: GraphBuilder,
  act: EncoderActivation,
  x: string,
  name: string,
): string {
  switch (act) {
    case 'gelu':
      return g.op('Gelu', [x], {}, name);
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
      return g.op('Gelu', [x], { approximate: attr.string('tanh') }, name);
    case 'quick_gelu':
      return g.mul(
        x,
        g.op('Sigmoid', [g.mul(x, g.constFloat(1.702), `${name}_scaled`)], {}, `${name}_sigmoid`),
        name,
      );
    case 'relu':
      return g.op('Relu', [x], {}, name);
    case 'silu':
    case 'swish':
      return g.mul(x, g.op('Sigmoid', [x], {}, `${name}_sigmoid`), name);
    case 'tanh':
      return g.op('Tanh', [x], {}, name);
  }
}
