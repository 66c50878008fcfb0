/**
 * A thin, readable ONNX graph builder over the protobufjs classes of `onnx-proto`.
 *
 * Tensors are referred to by name (strings). `node()` appends a node and returns the names of its
 * outputs, generated unique unless given. Initializers hold the weights; small constants are
 * initializers too (ORT folds both the same way). `toModel()` returns the serialized ModelProto,
 * the bytes that `ort.InferenceSession.create(bytes)` takes.
 *
 * Default opset 20 with IR version 9: LayerNormalization needs opset >= 17 and the `Gelu` op
 * opset >= 20, which needs IR 9. onnx-proto describes IR 8, but `irVersion` is a plain int and
 * ORT 1.30 loads IR 9 / opset 20 models written with it (measured). Since opset 13, the axes of
 * Unsqueeze, Squeeze and ReduceSum are an int64 input, not an attribute; since opset 18 the same
 * holds for ReduceMean/ReduceMax/...; the helpers below take care of that.
 */

import { open, rename, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import type { onnx as OnnxTypes } from 'onnx-proto';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export const DEFAULT_OPSET = 20;
export const DEFAULT_IR_VERSION = 9;

export type ElemType = 'float32' | 'int64' | 'int32' | 'int8' | 'uint8' | 'bool';
/** A fixed size, or a symbolic dimension name such as 'batch'. */
export type Dim = number | string;

const DATA_TYPE: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  int8: onnx.TensorProto.DataType.INT8,
  uint8: onnx.TensorProto.DataType.UINT8,
  bool: onnx.TensorProto.DataType.BOOL,
};

/** ONNX TensorProto.DataType code of an element type (for Cast's `to` attribute). */
export function dataType(elemType: ElemType): number {
  return DATA_TYPE[elemType];
}

/** Initializer data; Int8Array / Uint8Array hold quantized weights and zero points. */
export type TensorData = Float32Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;

/** A typed attribute value; build one with `attr.int(...)`, `attr.float(...)`, etc. */
export type Attr =
  | { readonly kind: 'int'; readonly value: number }
  | { readonly kind: 'float'; readonly value: number }
  | { readonly kind: 'ints'; readonly value: readonly number[] }
  | { readonly kind: 'floats'; readonly value: readonly number[] }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'tensor'; readonly value: { data: TensorData; dims: readonly number[] } };

export const attr = {
  int: (value: number): Attr => ({ kind: 'int', value }),
  float: (value: number): Attr => ({ kind: 'float', value }),
  ints: (value: readonly number[]): Attr => ({ kind: 'ints', value }),
  floats: (value: readonly number[]): Attr => ({ kind: 'floats', value }),
  string: (value: string): Attr => ({ kind: 'string', value }),
  tensor: (data: TensorData, dims: readonly number[]): Attr => ({
    kind: 'tensor',
    value: { data, dims },
  }),
};

export type Attrs = Readonly<Record<string, Attr>>;

function elemTypeOf(data: TensorData): ElemType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int8Array) return 'int8';
  if (data instanceof Uint8Array) return 'uint8';
  return 'int32';
}

function tensorProto(
  name: string,
  data: TensorData,
  dims: readonly number[],
): OnnxTypes.ITensorProto {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new Error(
      `tensor ${name}: shape [${dims.join(',')}] needs ${count} values, got ${data.length}`,
    );
  }
  // Raw little-endian bytes: compact and fast to encode, also for large weights.
  const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { name, dims: [...dims], dataType: DATA_TYPE[elemTypeOf(data)], rawData: raw };
}

function attributeProto(name: string, a: Attr): OnnxTypes.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'int':
      return { name, type: T.INT, i: a.value };
    case 'float':
      return { name, type: T.FLOAT, f: a.value };
    case 'ints':
      return { name, type: T.INTS, ints: [...a.value] };
    case 'floats':
      return { name, type: T.FLOATS, floats: [...a.value] };
    case 'string':
      return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
    case 'tensor':
      return { name, type: T.TENSOR, t: tensorProto(name, a.value.data, a.value.dims) };
  }
}

function valueInfo(
  name: string,
  elemType: ElemType,
  dims: readonly Dim[],
): OnnxTypes.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: DATA_TYPE[elemType],
        shape: {
          dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })),
        },
      },
    },
  };
}

export interface NodeOptions {
  /** Output names: a count (names generated) or explicit names. Default: 1 generated. */
  outputs?: number | readonly string[];
  /** Node name (also the prefix of generated output names). Default: the op type. */
  name?: string;
  /** Operator domain, '' (ai.onnx) unless given. */
  domain?: string;
}

export interface ModelOptions {
  opset?: number;
  irVersion?: number;
  producer?: string;
  graphName?: string;
  docString?: string;
}

export interface ExternalDataOptions {
  /** The data file's name, beside the model. Default: the model file's name + '.data'. */
  dataFile?: string;
  /** Initializers of at least this many bytes go to the data file; smaller stay inline. Default 1024. */
  threshold?: number;
}

/**
 * Offsets in the data file are multiples of this: onnxruntime memory-maps external data whose
 * offset is page aligned instead of reading it into a buffer.
 */
const EXTERNAL_DATA_ALIGNMENT = 4096;

export class GraphBuilder {
  private readonly nodes: OnnxTypes.INodeProto[] = [];
  private readonly initializers: OnnxTypes.ITensorProto[] = [];
  private readonly inputs: OnnxTypes.IValueInfoProto[] = [];
  private readonly outputs: OnnxTypes.IValueInfoProto[] = [];
  private readonly used = new Set<string>();
  private readonly nodeNames = new Set<string>();
  private readonly counters = new Map<string, number>();
  private readonly constCache = new Map<string, string>();
  private readonly domains = new Map<string, number>();

  /** A fresh tensor name starting with `prefix`, unique in this graph. */
  uniqueName(prefix: string): string {
    return this.uniqueIn(this.used, prefix);
  }

  // Node names and tensor names are separate namespaces in ONNX: a node's output may share its name.
  private uniqueIn(taken: Set<string>, prefix: string): string {
    let name = prefix;
    let n = this.counters.get(prefix) ?? 0;
    while (taken.has(name)) name = `${prefix}_${++n}`;
    this.counters.set(prefix, n);
    taken.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.used.has(name)) throw new Error(`graph: tensor name "${name}" is already used`);
    this.used.add(name);
    return name;
  }

  /** Declares a graph input; returns its name. */
  input(name: string, elemType: ElemType, dims: readonly Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), elemType, dims));
    return name;
  }

  /**
   * Declares `tensor` as the graph output `name`. When the tensor has another name, an Identity
   * node copies it (prefer producing the output under its final name with `outputs: [name]`).
   */
  output(tensor: string, name: string, elemType: ElemType, dims: readonly Dim[]): string {
    if (tensor !== name) this.node('Identity', [tensor], {}, { outputs: [name], name });
    this.outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /** Adds a weight; the name is made unique from `name`. */
  initializer(name: string, data: TensorData, dims: readonly number[]): string {
    const unique = this.uniqueName(name);
    this.initializers.push(tensorProto(unique, data, dims));
    return unique;
  }

  /** A float32 constant (deduplicated by value and shape). Scalar when `dims` is []. */
  constFloat(values: number | readonly number[], dims?: readonly number[]): string {
    const list = typeof values === 'number' ? [values] : values;
    const shape = dims ?? (typeof values === 'number' ? [] : [list.length]);
    return this.cachedConst('f', Float32Array.from(list), shape);
  }

  /** An int64 constant (deduplicated by value and shape). Scalar when `dims` is []. */
  constInt64(values: number | readonly number[], dims?: readonly number[]): string {
    const list = typeof values === 'number' ? [values] : values;
    const shape = dims ?? (typeof values === 'number' ? [] : [list.length]);
    return this.cachedConst(
      'i',
      BigInt64Array.from(list, (v) => BigInt(v)),
      shape,
    );
  }

  private cachedConst(tag: string, data: Float32Array | BigInt64Array, dims: readonly number[]) {
    const key = `${tag}:${dims.join(',')}:${Array.from(data as ArrayLike<number | bigint>).join(',')}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.initializer(tag === 'f' ? 'const_f' : 'const_i64', data, dims);
    this.constCache.set(key, name);
    return name;
  }

  /** Appends a node; returns its output names. An empty input name means "omitted optional". */
  node(
    opType: string,
    inputs: readonly string[],
    attrs: Attrs = {},
    options: NodeOptions = {},
  ): string[] {
    const nodeName = this.uniqueIn(this.nodeNames, options.name ?? opType);
    const spec = options.outputs ?? 1;
    const outs =
      typeof spec === 'number'
        ? Array.from({ length: spec }, (_, i) =>
            this.uniqueName(spec === 1 ? nodeName : `${nodeName}_out${i}`),
          )
        : spec.map((n) => this.claim(n));
    const domain = options.domain ?? '';
    if (domain !== '' && !this.domains.has(domain)) this.domains.set(domain, 1);
    this.nodes.push({
      name: nodeName,
      opType,
      domain,
      input: [...inputs],
      output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => attributeProto(k, v)),
    });
    return outs;
  }

  /** `node()` for single-output ops: returns the one output name. */
  op(
    opType: string,
    inputs: readonly string[],
    attrs: Attrs = {},
    name?: string,
    output?: string,
  ): string {
    return this.node(opType, inputs, attrs, { name, outputs: output ? [output] : 1 })[0]!;
  }

  // ---- helpers for frequent ops ----------------------------------------------------------------

  matMul(a: string, b: string, name?: string): string {
    return this.op('MatMul', [a, b], {}, name ?? 'MatMul');
  }
  add(a: string, b: string, name?: string): string {
    return this.op('Add', [a, b], {}, name ?? 'Add');
  }
  sub(a: string, b: string, name?: string): string {
    return this.op('Sub', [a, b], {}, name ?? 'Sub');
  }
  mul(a: string, b: string, name?: string): string {
    return this.op('Mul', [a, b], {}, name ?? 'Mul');
  }
  div(a: string, b: string, name?: string): string {
    return this.op('Div', [a, b], {}, name ?? 'Div');
  }
  max(a: string, b: string, name?: string): string {
    return this.op('Max', [a, b], {}, name ?? 'Max');
  }
  cast(x: string, to: ElemType, name?: string): string {
    return this.op('Cast', [x], { to: attr.int(DATA_TYPE[to]) }, name ?? 'Cast');
  }
  unsqueeze(x: string, axes: readonly number[], name?: string): string {
    return this.op('Unsqueeze', [x, this.constInt64(axes)], {}, name ?? 'Unsqueeze');
  }
  squeeze(x: string, axes: readonly number[], name?: string): string {
    return this.op('Squeeze', [x, this.constInt64(axes)], {}, name ?? 'Squeeze');
  }
  /** Reshape to a constant shape (0 copies the input dim, -1 infers one dim). */
  reshape(x: string, shape: readonly number[], name?: string): string {
    return this.op('Reshape', [x, this.constInt64(shape)], {}, name ?? 'Reshape');
  }
  transpose(x: string, perm: readonly number[], name?: string): string {
    return this.op('Transpose', [x], { perm: attr.ints(perm) }, name ?? 'Transpose');
  }
  gather(data: string, indices: string, axis = 0, name?: string): string {
    return this.op('Gather', [data, indices], { axis: attr.int(axis) }, name ?? 'Gather');
  }
  reduceSum(x: string, axes: readonly number[], keepDims: boolean, name?: string): string {
    const attrs = { keepdims: attr.int(keepDims ? 1 : 0) };
    return this.op('ReduceSum', [x, this.constInt64(axes)], attrs, name ?? 'ReduceSum');
  }
  /** ReduceMean; axes are an input from opset 18 and an attribute before. */
  reduceMean(x: string, axes: readonly number[], keepDims: boolean, opset: number, name?: string) {
    const keep = attr.int(keepDims ? 1 : 0);
    return opset >= 18
      ? this.op('ReduceMean', [x, this.constInt64(axes)], { keepdims: keep }, name ?? 'ReduceMean')
      : this.op('ReduceMean', [x], { axes: attr.ints(axes), keepdims: keep }, name ?? 'ReduceMean');
  }
  softmax(x: string, axis = -1, name?: string): string {
    return this.op('Softmax', [x], { axis: attr.int(axis) }, name ?? 'Softmax');
  }
  layerNorm(x: string, gamma: string, beta: string, epsilon: number, name?: string): string {
    const attrs = { axis: attr.int(-1), epsilon: attr.float(epsilon) };
    return this.op('LayerNormalization', [x, gamma, beta], attrs, name ?? 'LayerNorm');
  }
  /**
   * Exact (erf) GELU written as x * 0.5 * (1 + erf(x / sqrt 2)): the pattern of PyTorch exports,
   * which ORT fuses into Gelu (and, after an Add, BiasGelu) at optimization level `extended`+.
   */
  geluErf(x: string, name = 'Gelu'): string {
    const scaled = this.div(x, this.constFloat(Math.SQRT2), `${name}_div`);
    const erf = this.op('Erf', [scaled], {}, `${name}_erf`);
    const onePlus = this.add(erf, this.constFloat(1), `${name}_add`);
    const prod = this.mul(x, onePlus, `${name}_mul`);
    return this.mul(prod, this.constFloat(0.5), `${name}_half`);
  }

  // ---- serialization ---------------------------------------------------------------------------

  /** The GraphProto built so far. */
  toGraph(name = 'graph'): OnnxTypes.IGraphProto {
    return {
      name,
      node: this.nodes,
      initializer: this.initializers,
      input: this.inputs,
      output: this.outputs,
    };
  }

  /** Serializes the model: ModelProto bytes, every weight inline. */
  toModel(options: ModelOptions = {}): Uint8Array {
    return this.encode(this.toGraph(options.graphName), options);
  }

  /**
   * Writes the model to `path` with its large initializers in a separate data file beside it
   * (ONNX external data: `location`, `offset`, `length` relative to the model's folder), so that
   * models past protobuf's 2 GB limit can be written, and onnxruntime maps the weights instead of
   * parsing them out of the protobuf. A session must then be created from the path, not bytes.
   * Both files are written under temporary names and renamed into place: a reader sees the old
   * files or the new ones, never half of them. Returns the data file's path.
   */
  async writeModel(
    path: string,
    options: ModelOptions & ExternalDataOptions = {},
  ): Promise<{ modelPath: string; dataPath: string }> {
    const dataFile = options.dataFile ?? `${basename(path)}.data`;
    const dataPath = path.slice(0, path.length - basename(path).length) + dataFile;
    const threshold = options.threshold ?? 1024;
    const temp = `.${process.pid}.tmp`;
    const handle = await open(dataPath + temp, 'w');
    const initializer: OnnxTypes.ITensorProto[] = [];
    try {
      let offset = 0;
      for (const tensor of this.initializers) {
        const raw = tensor.rawData as Uint8Array;
        if (raw.byteLength < threshold) {
          initializer.push(tensor);
          continue;
        }
        offset = Math.ceil(offset / EXTERNAL_DATA_ALIGNMENT) * EXTERNAL_DATA_ALIGNMENT;
        await handle.write(raw, 0, raw.byteLength, offset);
        initializer.push({
          name: tensor.name,
          dims: tensor.dims,
          dataType: tensor.dataType,
          dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
          externalData: [
            { key: 'location', value: dataFile },
            { key: 'offset', value: String(offset) },
            { key: 'length', value: String(raw.byteLength) },
          ],
        });
        offset += raw.byteLength;
      }
    } finally {
      await handle.close();
    }
    const bytes = this.encode({ ...this.toGraph(options.graphName), initializer }, options);
    const model = await open(path + temp, 'w');
    try {
      await model.writeFile(bytes);
    } finally {
      await model.close();
    }
    try {
      await rename(dataPath + temp, dataPath);
      await rename(path + temp, path);
    } catch (error) {
      await rm(dataPath + temp, { force: true });
      await rm(path + temp, { force: true });
      throw error;
    }
    return { modelPath: path, dataPath };
  }

  private encode(graph: OnnxTypes.IGraphProto, options: ModelOptions): Uint8Array {
    const opset = options.opset ?? DEFAULT_OPSET;
    const opsetImport: OnnxTypes.IOperatorSetIdProto[] = [{ domain: '', version: opset }];
    for (const [domain, version] of this.domains) opsetImport.push({ domain, version });
    const model = onnx.ModelProto.create({
      irVersion: options.irVersion ?? DEFAULT_IR_VERSION,
      producerName: options.producer ?? 'moe-serve',
      producerVersion: '0.1.0',
      docString: options.docString ?? '',
      opsetImport,
      graph,
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
