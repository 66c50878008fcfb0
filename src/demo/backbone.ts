/**
 * Runs the frozen backbone over a corpus at build time.
 *
 * This is a build tool, not the serving path: the trainer needs the full [T,d] states of every
 * token (its adapters act per token), which the engine deliberately never copies back. It is the
 * only importer of onnxruntime-node outside src/engine/.
 *
 * Sentences are sorted by length and batched so that padding stays small; right padding with
 * attention_mask 0 leaves the real tokens' states unchanged (the encoder masks padded keys), so
 * only the first `length` rows of each sentence are kept.
 */
import * as ort from 'onnxruntime-node';

export interface BackboneBatching {
  /** Most padded tokens per batch (default 4096). */
  readonly batchTokens?: number;
  /** Most sentences per batch (default 64). */
  readonly batchSize?: number;
}

export class BackboneRunner {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly hiddenSize: number,
    private readonly batching: BackboneBatching,
  ) {}

  /** An ORT session (CPU, `threads` intra-op threads) over the ONNX bytes or file. */
  static async create(
    model: Uint8Array | string,
    hiddenSize: number,
    threads = 2,
    batching: BackboneBatching = {},
  ): Promise<BackboneRunner> {
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: ['cpu'],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    };
    const session =
      typeof model === 'string'
        ? await ort.InferenceSession.create(model, options)
        : await ort.InferenceSession.create(model, options);
    return new BackboneRunner(session, hiddenSize, batching);
  }

  /** last_hidden_state of each sentence: [ids[i].length, d], real tokens only. */
  async states(ids: readonly Int32Array[]): Promise<Float32Array[]> {
    const out: Float32Array[] = new Array(ids.length);
    await this.run(ids, (i, rows) => {
      out[i] = rows.slice();
    });
    return out;
  }

  /** The masked mean of each sentence's last_hidden_state: [d] each, float64. */
  async pooled(ids: readonly Int32Array[]): Promise<Float64Array[]> {
    const d = this.hiddenSize;
    const out: Float64Array[] = new Array(ids.length);
    await this.run(ids, (i, rows) => {
      const length = rows.length / d;
      const mean = new Float64Array(d);
      for (let t = 0; t < length; t++) {
        for (let j = 0; j < d; j++) mean[j] = mean[j]! + rows[t * d + j]!;
      }
      for (let j = 0; j < d; j++) mean[j] = mean[j]! / length;
      out[i] = mean;
    });
    return out;
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  private async run(
    ids: readonly Int32Array[],
    take: (index: number, rows: Float32Array) => void,
  ): Promise<void> {
    const d = this.hiddenSize;
    const order = ids.map((_, i) => i).sort((a, b) => ids[a]!.length - ids[b]!.length || a - b);
    const maxTokens = this.batching.batchTokens ?? 4096;
    const maxItems = this.batching.batchSize ?? 64;
    const withTypes = this.session.inputNames.includes('token_type_ids');
    let start = 0;
    while (start < order.length) {
      let end = start + 1;
      while (end < order.length && end - start < maxItems) {
        if ((end - start + 1) * ids[order[end]!]!.length > maxTokens) break;
        end++;
      }
      const batch = order.slice(start, end);
      const T = Math.max(...batch.map((i) => ids[i]!.length));
      const B = batch.length;
      const inputIds = new BigInt64Array(B * T);
      const mask = new BigInt64Array(B * T);
      batch.forEach((i, b) => {
        const row = ids[i]!;
        for (let t = 0; t < row.length; t++) {
          inputIds[b * T + t] = BigInt(row[t]!);
          mask[b * T + t] = 1n;
        }
      });
      const feeds: Record<string, ort.Tensor> = {
        input_ids: new ort.Tensor('int64', inputIds, [B, T]),
        attention_mask: new ort.Tensor('int64', mask, [B, T]),
      };
      if (withTypes)
        feeds.token_type_ids = new ort.Tensor('int64', new BigInt64Array(B * T), [B, T]);
      const result = await this.session.run(feeds, ['last_hidden_state']);
      const hidden = result.last_hidden_state!;
      if (hidden.dims[2] !== d) {
        throw new Error(`backbone: last_hidden_state width ${hidden.dims[2]}, expected ${d}`);
      }
      const data = hidden.data as Float32Array;
      batch.forEach((i, b) => {
        take(i, data.subarray(b * T * d, (b * T + ids[i]!.length) * d));
      });
      hidden.dispose();
      start = end;
    }
  }
}
