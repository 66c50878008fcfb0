import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { attr, DEFAULT_IR_VERSION, DEFAULT_OPSET, GraphBuilder } from '../src/onnx/graph.js';
import { Random } from '../src/util/random.js';

const { onnx } = onnxProto;

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-5): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(Math.abs(actual[i]! - expected[i]!) <= tol, `[${i}] ${actual[i]} vs ${expected[i]}`);
  }
}

describe('GraphBuilder', () => {
  test('softmax(x @ W + b) with a symbolic batch dim matches plain JS', async () => {
    const rng = new Random(1);
    const [n, m] = [4, 3];
    const w = rng.normals(n * m);
    const bias = rng.normals(m);
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', ['batch', n]);
    const logits = g.add(g.matMul(x, g.initializer('w', w, [n, m])), g.initializer('b', bias, [m]));
    g.node('Softmax', [logits], { axis: attr.int(-1) }, { outputs: ['y'] });
    g.output('y', 'y', 'float32', ['batch', m]);
    const session = await ort.InferenceSession.create(g.toModel());

    for (const batch of [1, 5]) {
      const input = rng.normals(batch * n);
      const out = await session.run({ x: new ort.Tensor('float32', input, [batch, n]) });
      const expected: number[] = [];
      for (let b = 0; b < batch; b++) {
        const z = Array.from({ length: m }, (_, j) => {
          let s = bias[j]!;
          for (let i = 0; i < n; i++) s += input[b * n + i]! * w[i * m + j]!;
          return s;
        });
        const mx = Math.max(...z);
        const e = z.map((v) => Math.exp(v - mx));
        const total = e.reduce((a, v) => a + v, 0);
        expected.push(...e.map((v) => v / total));
      }
      assert.deepEqual(out.y!.dims, [batch, m]);
      close(out.y!.data as Float32Array, expected);
    }
    await session.release();
  });

  test('typed attributes of every kind load and run (INT, FLOAT, INTS, FLOATS, STRING, TENSOR)', async () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [2, 3]);
    // TENSOR and FLOATS: Constant nodes.
    const c = g.op('Constant', [], { value: attr.tensor(Float32Array.of(1, 2, 3), [3]) });
    const f = g.op('Constant', [], { value_floats: attr.floats([0.5, 0.5, 0.5]) });
    // INTS: Transpose perm; FLOAT: LayerNormalization epsilon; STRING: Gelu approximate.
    const sum = g.mul(g.add(x, c), f); // [2,3]
    const t = g.transpose(sum, [1, 0]); // [3,2]
    const ln = g.layerNorm(t, g.constFloat([1, 1]), g.constFloat([0, 0]), 1e-5);
    const gelu = g.op('Gelu', [ln], { approximate: attr.string('tanh') });
    // INT: Cast to int64, then ReduceSum with int64 axes input.
    const asInt = g.cast(g.transpose(sum, [1, 0]), 'int64');
    g.output(gelu, 'gelu', 'float32', [3, 2]);
    g.output(g.reduceSum(asInt, [1], false), 'int_sum', 'int64', [3]);

    const bytes = g.toModel();
    const model = onnx.ModelProto.decode(bytes);
    assert.equal(Number(model.irVersion), DEFAULT_IR_VERSION);
    assert.equal(Number(model.opsetImport[0]!.version), DEFAULT_OPSET);
    for (const node of model.graph?.node ?? []) {
      for (const a of node.attribute ?? [])
        assert.ok(a.type !== 0, `${node.opType}.${a.name} has no type`);
    }

    const session = await ort.InferenceSession.create(bytes);
    const input = Float32Array.of(0, 1, 2, 3, 4, 5);
    const out = await session.run({ x: new ort.Tensor('float32', input, [2, 3]) });
    // sum = (x + [1,2,3]) * 0.5 = [[0.5,1.5,2.5],[2,3,4]]; transposed rows: [0.5,2],[1.5,3],[2.5,4].
    // LayerNorm of each pair [a,b] is [-1,1] (up to eps); tanh-GELU(-1,1) ~ [-0.158808, 0.841192].
    close(
      out.gelu!.data as Float32Array,
      [-0.158808, 0.841192, -0.158808, 0.841192, -0.158808, 0.841192],
      1e-4,
    );
    // Cast truncates toward zero: [0+2, 1+3, 2+4] = [2, 4, 6].
    assert.deepEqual(Array.from(out.int_sum!.data as BigInt64Array, Number), [2, 4, 6]);
    await session.release();
  });

  test('unsqueeze / squeeze / reshape / gather / int64 initializers', async () => {
    const g = new GraphBuilder();
    const table = g.initializer('table', Float32Array.of(10, 11, 20, 21, 30, 31), [3, 2]);
    const idx = g.input('idx', 'int64', ['n']);
    const rows = g.gather(table, idx); // [n,2]
    const u = g.unsqueeze(rows, [0]); // [1,n,2]
    const back = g.squeeze(u, [0]); // [n,2]
    const flat = g.reshape(back, [-1]); // [2n]
    const offset = g.initializer('offset', BigInt64Array.of(1n), [1]);
    g.output(flat, 'flat', 'float32', ['m']);
    g.output(g.add(idx, offset), 'idx_plus_one', 'int64', ['n']);
    const session = await ort.InferenceSession.create(g.toModel());
    const out = await session.run({ idx: new ort.Tensor('int64', BigInt64Array.of(2n, 0n), [2]) });
    assert.deepEqual(Array.from(out.flat!.data as Float32Array), [30, 31, 10, 11]);
    assert.deepEqual(Array.from(out.idx_plus_one!.data as BigInt64Array), [3n, 1n]);
    await session.release();
  });

  test('generates unique names and rejects reused ones', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [1]);
    const a = g.add(x, x, 'sum');
    const b = g.add(x, x, 'sum');
    assert.notEqual(a, b);
    assert.equal(g.uniqueName('x') === 'x', false);
    assert.throws(() => g.input('x', 'float32', [1]), /already used/);
    assert.throws(() => g.node('Identity', [x], {}, { outputs: [a] }), /already used/);
    // Constants are shared by value.
    assert.equal(g.constFloat(1), g.constFloat(1));
    assert.notEqual(g.constFloat(1), g.constFloat([1]));
  });

  test('rejects initializers whose data does not fill the shape', () => {
    const g = new GraphBuilder();
    assert.throws(() => g.initializer('w', new Float32Array(5), [2, 3]), /needs 6 values, got 5/);
  });

  test('writeModel puts large weights in a data file beside the model; ORT loads it from the path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'graph-external-'));
    try {
      const rng = new Random(4);
      const [n, m] = [64, 48]; // 12 KB of weights: external; the bias (192 B) stays inline
      const w = rng.normals(n * m);
      const bias = rng.normals(m);
      const g = new GraphBuilder();
      const x = g.input('x', 'float32', ['batch', n]);
      g.node(
        'Gemm',
        [x, g.initializer('w', w, [n, m]), g.initializer('b', bias, [m])],
        {},
        {
          outputs: ['y'],
        },
      );
      g.output('y', 'y', 'float32', ['batch', m]);
      const path = join(dir, 'model.onnx');
      const { dataPath } = await g.writeModel(path);
      assert.equal(dataPath, join(dir, 'model.onnx.data'));
      assert.deepEqual((await readdir(dir)).sort(), ['model.onnx', 'model.onnx.data']);
      const model = onnx.ModelProto.decode(await readFile(path));
      const external = model.graph!.initializer!.filter(
        (t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL,
      );
      assert.deepEqual(
        external.map((t) => t.name),
        ['w'],
      );
      assert.equal((await stat(path)).size < 1024, true, 'the weights are not in the protobuf');
      assert.equal((await stat(dataPath)).size, n * m * 4);

      const session = await ort.InferenceSession.create(path);
      const input = rng.normals(2 * n);
      const out = (await session.run({ x: new ort.Tensor('float32', input, [2, n]) })).y!;
      const expected: number[] = [];
      for (let b = 0; b < 2; b++) {
        for (let j = 0; j < m; j++) {
          let sum = bias[j]!;
          for (let i = 0; i < n; i++) sum += input[b * n + i]! * w[i * m + j]!;
          expected.push(sum);
        }
      }
      close(out.data as Float32Array, expected, 1e-4);
      await session.release();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
