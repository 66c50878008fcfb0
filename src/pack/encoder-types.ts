/**
 * In-memory form of a Transformer encoder backbone (the BERT family), as the Hugging Face folder
 * reader produces it and the ONNX encoder builder consumes it. Nothing here reads files or builds
 * graphs: this is the contract between `pack/` (reading) and `onnx/` (building).
 *
 * Layout conventions (so that no reader and no builder has to guess):
 * - Linear weights are in math layout, [in, out], applied as x @ W + b. PyTorch's nn.Linear stores
 *   [out, in]: the reader transposes. Biases are [out].
 * - Every tensor is float32, whatever the checkpoint's dtype (F16 and BF16 are widened on read);
 *   the graph stores float32 too, because onnxruntime's CPU provider runs float32 kernels.
 * - Single-sequence inputs only: every token has token type 0, so the token-type table collapses
 *   to its row 0, added to every token (`tokenType0`).
 */

/** Hugging Face `model_type` values this server builds graphs for. */
export const ENCODER_FAMILIES = ['bert', 'roberta', 'xlm-roberta', 'distilbert'] as const;
export type EncoderFamily = (typeof ENCODER_FAMILIES)[number];

/**
 * Hidden activations by their Hugging Face `hidden_act` names (transformers' ACT2FN):
 * gelu = exact erf form; gelu_new and gelu_pytorch_tanh = tanh approximation; quick_gelu =
 * x * sigmoid(1.702 x); silu (= swish) = x * sigmoid(x).
 */
export const ENCODER_ACTIVATIONS = [
  'gelu',
  'gelu_new',
  'gelu_pytorch_tanh',
  'quick_gelu',
  'relu',
  'silu',
  'swish',
  'tanh',
] as const;
export type EncoderActivation = (typeof ENCODER_ACTIVATIONS)[number];

/**
 * How position ids are made from input ids:
 * - 'absolute': 0..T-1 for every item (BERT, DistilBERT);
 * - 'after-padding': RoBERTa / XLM-R's create_position_ids_from_input_ids: a token that is not the
 *   padding id gets padTokenId + (its index among non-padding tokens, from 1); a padding token
 *   gets padTokenId. So the first real token sits at padTokenId + 1 (2 for RoBERTa).
 */
export type PositionScheme = 'absolute' | 'after-padding';

export interface EncoderConfig {
  readonly family: EncoderFamily;
  readonly vocabSize: number; // V: rows of the word embedding table
  readonly hiddenSize: number; // d
  readonly layers: number;
  readonly heads: number; // d % heads == 0
  readonly intermediateSize: number; // f, the feed-forward width
  readonly hiddenAct: EncoderActivation;
  readonly layerNormEps: number;
  /** Rows of the position table (max_position_embeddings). */
  readonly maxPositions: number;
  readonly padTokenId: number;
  readonly positions: PositionScheme;
}

/** A linear map x @ weight + bias. */
export interface LinearWeights {
  readonly weight: Float32Array; // [in,out]
  readonly bias: Float32Array; // [out]
}

export interface LayerNormWeights {
  readonly gamma: Float32Array; // [d]
  readonly beta: Float32Array; // [d]
}

/**
 * One encoder layer, post-LN (BERT, RoBERTa, XLM-R and DistilBERT all are):
 *   a   = attentionLn(x + attentionOutput(SelfAttention(query, key, value; x)))
 *   out = outputLn(a + output(act(intermediate(a))))
 */
export interface EncoderLayerWeights {
  readonly query: LinearWeights; // [d,d]
  readonly key: LinearWeights; // [d,d]
  readonly value: LinearWeights; // [d,d]
  readonly attentionOutput: LinearWeights; // [d,d]
  readonly attentionLn: LayerNormWeights;
  readonly intermediate: LinearWeights; // [d,f]
  readonly output: LinearWeights; // [f,d]
  readonly outputLn: LayerNormWeights;
}

export interface EncoderWeights {
  readonly wordEmbeddings: Float32Array; // [V,d]
  readonly positionEmbeddings: Float32Array; // [maxPositions,d]
  /** Row 0 of the token-type table, added to every token; absent when the model has none. */
  readonly tokenType0?: Float32Array; // [d]
  readonly embeddingLn: LayerNormWeights;
  readonly layers: readonly EncoderLayerWeights[];
}

/**
 * The linear modules of an encoder layer that adapters (LoRA) can target, by canonical name. The
 * names are BERT's module path tails; other families map theirs (RoBERTa: the same; DistilBERT:
 * q_lin, k_lin, v_lin, out_lin, lin1, lin2).
 */
export const LINEAR_MODULES = [
  'query',
  'key',
  'value',
  'attention_output',
  'intermediate',
  'output',
] as const;
export type LinearModule = (typeof LINEAR_MODULES)[number];

/**
 * How the builder makes a backbone's dense projections: 'none' (float32) or 'int8' (dynamic int8,
 * per-channel weights; src/onnx/bert.ts EncoderQuantize says exactly what). The manifest's
 * `backbone.quantize`.
 */
export const BACKBONE_QUANTIZE_MODES = ['none', 'int8'] as const;
export type BackboneQuantize = (typeof BACKBONE_QUANTIZE_MODES)[number];

/** The two blocks of a layer, each closed by a residual add and a LayerNorm. */
export type LayerBlock = 'attention' | 'ffn';
