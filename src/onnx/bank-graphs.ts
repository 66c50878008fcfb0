/**
 * Graphs that keep slot banks on a GPU (engine/bank-residency.ts says which provider uses which):
 *
 * - `uploadGraph(rank)`: one Identity, float32 [*] of any shape in, the same out. A session on
 *   the GPU provider created with `preferredOutputLocation: 'gpu-buffer'` runs it to copy a host
 *   bank to the device once; its output tensor stays on the device and is fed to the pack graph
 *   on every run instead of the host array.
 * - `BanksAsInitializers`: the pack graph with its bank inputs turned into initializers holding
 *   the banks' current bytes. A session made from it holds the banks where the provider keeps
 *   weights (on the device for cuda), at the price of a new session after every slot write.
 *
 * Only the graph side is here; sessions and tensors are the engine's (it alone imports ORT).
 */
import type { onnx as OnnxTypes } from 'onnx-proto';
import onnxProto from 'onnx-proto';
import { dataType, GraphBuilder } from './graph.js';
import { type BankSpec, rowSize } from './pack-graph-contract.js';

const { onnx } = onnxProto;

export const UPLOAD_INPUT = 'host';
export const UPLOAD_OUTPUT = 'device';

/** Identity over a float32 tensor of `rank` dimensions, all symbolic. */
export function uploadGraph(rank: number): Uint8Array {
  const g = new GraphBuilder();
  const dims = Array.from({ length: rank }, (_, i) => `d${i}`);
  g.input(UPLOAD_INPUT, 'float32', dims);
  g.node('Identity', [UPLOAD_INPUT], {}, { outputs: [UPLOAD_OUTPUT] });
  g.output(UPLOAD_OUTPUT, UPLOAD_OUTPUT, 'float32', dims);
  return g.toModel({ graphName: `upload_rank${rank}` });
}

/** A bank's host array, as the engine worker owns it. */
export interface HostBank {
  readonly spec: BankSpec;
  readonly data: Float32Array | BigInt64Array;
}

/**
 * The pack graph with banks as initializers. Decoded once; `encode()` serialises it with the bytes
 * the host arrays hold at that moment (the initializers' raw data are views of those arrays, so a
 * slot write needs no bookkeeping here). Weights the graph keeps as external data stay there: a
 * session made from these bytes must be told their folder (`externalDataFolder`).
 */
export class BanksAsInitializers {
  private readonly model: OnnxTypes.ModelProto;

  /**
   * @param model the pack graph's ModelProto bytes (from memory, or read from its file)
   * @param banks every bank the graph declares as an input
   */
  constructor(model: Uint8Array, banks: readonly HostBank[]) {
    this.model = onnx.ModelProto.decode(model);
    // Decoded messages are class instances: their repeated fields are arrays, never absent.
    const graph = this.model.graph as OnnxTypes.GraphProto | null | undefined;
    if (graph === null || graph === undefined) throw new Error('pack graph: no graph in the model');
    const names = new Set(banks.map((b) => b.spec.name));
    const declared = new Set(graph.input.map((i) => i.name));
    for (const name of names) {
      if (!declared.has(name)) throw new Error(`pack graph: no input '${name}' to make a bank of`);
    }
    graph.input = graph.input.filter((input) => !names.has(input.name ?? ''));
    for (const { spec, data } of banks) {
      if (data.length !== spec.rows * rowSize(spec))
        throw new Error(`bank '${spec.name}': ${data.length} values for its shape`);
      graph.initializer.push(
        onnx.TensorProto.create({
          name: spec.name,
          dims: [spec.rows, ...spec.rowShape],
          dataType: dataType(spec.dtype),
          // A view, not a copy: encode() reads what the array holds then.
          rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
        }),
      );
    }
  }

  /** The model bytes with the banks' current contents (one copy of every bank). */
  encode(): Uint8Array {
    return onnx.ModelProto.encode(this.model).finish();
  }
}
