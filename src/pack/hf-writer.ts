/**
 * Writes a BERT encoder as a Hugging Face model folder, as `save_pretrained` would (config.json
 * and model.safetensors with BertModel's tensor names, PyTorch layout), so that a model built by
 * our own code (the demo's random backbone) goes through exactly the path users' models take:
 * the Hugging Face reader, the graph builder with hook points, the graph cache.
 *
 * Our EncoderWeights keep math layout ([in,out]) and only row 0 of the token-type table; the
 * folder gets nn.Linear's [out,in] and a two-row table (row 1 zero), as BERT's config has
 * type_vocab_size 2.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { EncoderConfig, EncoderWeights, LinearWeights } from './encoder-types.js';
import { type TensorToWrite, writeSafetensors } from './safetensors.js';

export const HF_CONFIG_FILE = 'config.json';
export const HF_SAFETENSORS_FILE = 'model.safetensors';

/** Write `config` and `weights` (family 'bert' only) into `dir`. */
export async function writeBertFolder(
  dir: string,
  config: EncoderConfig,
  weights: EncoderWeights,
): Promise<void> {
  if (config.family !== 'bert' || config.positions !== 'absolute') {
    throw new Error(`writeBertFolder writes BERT models, not ${config.family}`);
  }
  const d = config.hiddenSize;
  const tensors: Record<string, TensorToWrite> = {};
  const put = (name: string, data: Float32Array, shape: number[]) => {
    tensors[name] = { dtype: 'F32', shape, data };
  };
  /** nn.Linear: weight [out,in] (the transpose of math layout), bias [out]. */
  const linear = (name: string, w: LinearWeights, inSize: number, outSize: number) => {
    const t = new Float32Array(inSize * outSize);
    for (let i = 0; i < inSize; i++) {
      for (let o = 0; o < outSize; o++) t[o * inSize + i] = w.weight[i * outSize + o]!;
    }
    put(`${name}.weight`, t, [outSize, inSize]);
    put(`${name}.bias`, w.bias, [outSize]);
  };
  const norm = (name: string, ln: { gamma: Float32Array; beta: Float32Array }) => {
    put(`${name}.weight`, ln.gamma, [d]);
    put(`${name}.bias`, ln.beta, [d]);
  };
  put('embeddings.word_embeddings.weight', weights.wordEmbeddings, [config.vocabSize, d]);
  put('embeddings.position_embeddings.weight', weights.positionEmbeddings, [
    config.maxPositions,
    d,
  ]);
  const types = new Float32Array(2 * d);
  if (weights.tokenType0 !== undefined) types.set(weights.tokenType0);
  put('embeddings.token_type_embeddings.weight', types, [2, d]);
  norm('embeddings.LayerNorm', weights.embeddingLn);
  const f = config.intermediateSize;
  weights.layers.forEach((layer, l) => {
    const p = `encoder.layer.${l}`;
    linear(`${p}.attention.self.query`, layer.query, d, d);
    linear(`${p}.attention.self.key`, layer.key, d, d);
    linear(`${p}.attention.self.value`, layer.value, d, d);
    linear(`${p}.attention.output.dense`, layer.attentionOutput, d, d);
    norm(`${p}.attention.output.LayerNorm`, layer.attentionLn);
    linear(`${p}.intermediate.dense`, layer.intermediate, d, f);
    linear(`${p}.output.dense`, layer.output, f, d);
    norm(`${p}.output.LayerNorm`, layer.outputLn);
  });
  await mkdir(dir, { recursive: true });
  await writeSafetensors(join(dir, HF_SAFETENSORS_FILE), tensors, { format: 'pt' });
  const json = {
    architectures: ['BertModel'],
    attention_probs_dropout_prob: 0.1,
    hidden_act: config.hiddenAct,
    hidden_dropout_prob: 0.1,
    hidden_size: d,
    initializer_range: 0.02,
    intermediate_size: f,
    layer_norm_eps: config.layerNormEps,
    max_position_embeddings: config.maxPositions,
    model_type: 'bert',
    num_attention_heads: config.heads,
    num_hidden_layers: config.layers,
    pad_token_id: config.padTokenId,
    position_embedding_type: 'absolute',
    torch_dtype: 'float32',
    type_vocab_size: 2,
    vocab_size: config.vocabSize,
  };
  await writeFile(join(dir, HF_CONFIG_FILE), `${JSON.stringify(json, null, 2)}\n`);
}
