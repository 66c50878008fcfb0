import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { PackError, type PackErrorCode } from '../src/pack/errors.js';
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  readSafetensorsContents,
  SafetensorsFile,
  writeSafetensors,
} from '../src/pack/safetensors.js';

const dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
after(() => rm(dir, { recursive: true, force: true }));

/** A file built by hand: header JSON (unpadded) + data bytes. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), headerLength?: bigint) {
  const json = new TextEncoder().encode(
    typeof header === 'string' ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

function expectPackError(fn: () => unknown, code: PackErrorCode, field: string, pattern: RegExp) {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof PackError, `expected a PackError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.equal(error.file, 'x.safetensors');
    assert.equal(error.field, field);
    assert.match(error.message, /^x\.safetensors: /);
    assert.match(error.message, pattern);
    return true;
  });
}

describe('safetensors', () => {
  test('round trip with metadata, shapes and exact values', async () => {
    const tensors = {
      'down.weight': { shape: [2, 3], data: new Float32Array([1, -2, 3.5, 0, 1e-8, -7]) },
      'down.bias': { shape: [3], data: new Float32Array([0.25, 0.5, 0.75]) },
      scalar: { shape: [], data: new Float32Array([42]) },
      empty: { shape: [0, 4], data: new Float32Array(0) },
    };
    const path = join(dir, 'round.safetensors');
    await writeSafetensors(path, tensors, { author: 'test', note: 'ünïcode' });
    const contents = await readSafetensorsContents(path);
    assert.deepEqual(contents.metadata, { author: 'test', note: 'ünïcode' });
    assert.deepEqual([...contents.tensors.keys()], ['down.weight', 'down.bias', 'scalar', 'empty']);
    for (const [name, tensor] of Object.entries(tensors)) {
      const read = contents.tensors.get(name)!;
      assert.equal(read.dtype, 'F32');
      assert.deepEqual(read.shape, tensor.shape);
      assert.deepEqual(read.data, tensor.data);
    }
    const fromBytes = await readSafetensors(encodeSafetensors(tensors));
    assert.deepEqual(fromBytes.get('down.weight')!.data, tensors['down.weight'].data);
  });

  test('header is padded so the data section is 8-byte aligned', () => {
    const bytes = encodeSafetensors({ a: { shape: [1], data: new Float32Array([1]) } });
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal((8 + headerLength) % 8, 0);
  });

  test('reads tensors at unaligned offsets (written by other tools)', () => {
    // Header of odd length: the data section starts at an odd byte.
    const header = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
    let json = JSON.stringify(header);
    if ((8 + json.length) % 2 === 0) json += ' ';
    const decoded = decodeSafetensors(rawFile(json, f32Bytes([1.5, -2.5])), 'x.safetensors');
    assert.deepEqual([...decoded.tensors.get('a')!.data], [1.5, -2.5]);
  });

  test('write rejects a shape that does not match the data', () => {
    assert.throws(
      () => encodeSafetensors({ w: { shape: [2, 2], data: new Float32Array(3) } }),
      /tensor 'w' has shape \[2,2\] \(4 values\) but 3 values/,
    );
  });

  test('file shorter than the header length field', () => {
    expectPackError(
      () => decodeSafetensors(new Uint8Array(5), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '',
      /5 bytes, shorter than the 8-byte header length/,
    );
  });

  test('absurd header length (e.g. a text file)', () => {
    const bytes = new TextEncoder().encode('this is not a safetensors file at all');
    expectPackError(
      () => decodeSafetensors(bytes, 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '',
      /header length \d+ is not plausible/,
    );
  });

  test('header length past the end of the file (truncated header)', () => {
    const bytes = rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }).subarray(
      0,
      30,
    );
    expectPackError(
      () => decodeSafetensors(bytes, 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '',
      /runs past the end of the 30-byte file/,
    );
  });

  test('header that is not JSON, or not an object', () => {
    expectPackError(
      () => decodeSafetensors(rawFile('{"a": [1, 2'), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '',
      /header is not valid UTF-8 JSON/,
    );
    expectPackError(
      () => decodeSafetensors(rawFile('[1, 2, 3]'), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '',
      /must be a JSON object/,
    );
  });

  test('malformed entries name the tensor', () => {
    const cases: [unknown, RegExp][] = [
      [{ dtype: 'F32', shape: [1] }, /data_offsets undefined must be \[begin, end\]/],
      [
        { dtype: 'F32', shape: [1], data_offsets: [4, 0] },
        /must be \[begin, end\] with 0 <= begin <= end/,
      ],
      [
        { dtype: 'F32', shape: [-1], data_offsets: [0, 4] },
        /shape \[-1\] must be an array of non-negative/,
      ],
      [{ dtype: 'Q4', shape: [1], data_offsets: [0, 4] }, /unknown dtype "Q4"/],
    ];
    for (const [entry, pattern] of cases) {
      expectPackError(
        () => decodeSafetensors(rawFile({ w: entry }, new Uint8Array(4)), 'x.safetensors'),
        'PACK_CORRUPT_FILE',
        'w',
        pattern,
      );
    }
  });

  test('truncated data section', () => {
    const header = { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } };
    expectPackError(
      () => decodeSafetensors(rawFile(header, new Uint8Array(10)), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      'w',
      /end at byte 16 of a 10-byte data section: the file is truncated/,
    );
  });

  test('offsets that do not match shape x dtype', () => {
    const header = { w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } };
    expectPackError(
      () => decodeSafetensors(rawFile(header, new Uint8Array(8)), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      'w',
      /hold 8 bytes but F32 \[3\] needs 12/,
    );
  });

  test('overlapping offsets', () => {
    const header = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    expectPackError(
      () => decodeSafetensors(rawFile(header, new Uint8Array(12)), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      'b',
      /overlap tensor 'a'/,
    );
  });

  test('holes and trailing bytes', () => {
    const hole = { a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
    expectPackError(
      () => decodeSafetensors(rawFile(hole, new Uint8Array(8)), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      'a',
      /bytes 0\.\.4 belong to no tensor/,
    );
    const trailing = { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } };
    expectPackError(
      () => decodeSafetensors(rawFile(trailing, new Uint8Array(9)), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '',
      /data section is 9 bytes but the tensors cover 4/,
    );
  });

  test('bad __metadata__', () => {
    expectPackError(
      () => decodeSafetensors(rawFile({ __metadata__: { n: 3 } }), 'x.safetensors'),
      'PACK_CORRUPT_FILE',
      '__metadata__.n',
      /must be strings/,
    );
  });

  test('non-F32 dtype names the tensor', () => {
    const header = {
      a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
      half: { dtype: 'F16', shape: [2], data_offsets: [4, 8] },
    };
    expectPackError(
      () => decodeSafetensors(rawFile(header, new Uint8Array(8)), 'x.safetensors'),
      'PACK_UNSUPPORTED_DTYPE',
      'half',
      /dtype F16 is not supported; store this tensor as F32/,
    );
  });

  test('a truncated real file and a missing file, read from disk', async () => {
    const bytes = encodeSafetensors({ w: { shape: [8, 8], data: new Float32Array(64).fill(1) } });
    const path = join(dir, 'cut.safetensors');
    await writeFile(path, bytes.subarray(0, bytes.byteLength - 3));
    await assert.rejects(readSafetensors(path), (error: unknown) => {
      assert.ok(error instanceof PackError);
      assert.equal(error.code, 'PACK_CORRUPT_FILE');
      assert.equal(error.file, path);
      assert.equal(error.field, 'w');
      return true;
    });
    const missing = join(dir, 'nope.safetensors');
    await assert.rejects(readSafetensors(missing), (error: unknown) => {
      assert.ok(error instanceof PackError);
      assert.equal(error.code, 'PACK_FILE_MISSING');
      assert.equal(error.file, missing);
      return true;
    });
  });

  test('random corruption never crashes or returns garbage silently', () => {
    const good = encodeSafetensors({
      a: { shape: [3, 4], data: new Float32Array(12).fill(0.5) },
      b: { shape: [4], data: new Float32Array(4).fill(-1) },
    });
    let seed = 12345;
    const next = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed;
    };
    for (let trial = 0; trial < 500; trial++) {
      const bytes = good.slice();
      const headerEnd = 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true));
      // Flip a byte in the length field or the header (data bytes are opaque floats).
      const at = next() % headerEnd;
      bytes[at] = next() & 0xff;
      try {
        const decoded = decodeSafetensors(bytes, 'x.safetensors');
        // If it still decodes, the structure must be self-consistent.
        for (const tensor of decoded.tensors.values()) {
          assert.equal(
            tensor.data.length,
            tensor.shape.reduce((x, y) => x * y, 1),
          );
        }
      } catch (error) {
        assert.ok(error instanceof PackError, `trial ${trial}: ${String(error)}`);
      }
    }
  });
});

describe('safetensors F16 and BF16', () => {
  test('are widened to float32 exactly, with their dtype reported, when allowed', () => {
    // Values every format holds exactly, plus ones that must round (to nearest even).
    const values = [0, -0, 1, -2.5, 0.5, 65504, 2 ** -24, 3 * 2 ** -25, 1 / 3, 1e5, Number.NaN];
    const f16Expected = [0, -0, 1, -2.5, 0.5, 65504, 2 ** -24, 2 ** -23, 0.333251953125, Infinity];
    const bytes = encodeSafetensors({
      h: { shape: [values.length], data: Float32Array.from(values), dtype: 'F16' },
      b: { shape: [values.length], data: Float32Array.from(values), dtype: 'BF16' },
    });
    const tensors = decodeSafetensors(bytes, 'x.safetensors', {
      floatDtypes: ['F32', 'F16', 'BF16'],
    }).tensors;
    const h = tensors.get('h')!;
    assert.equal(h.dtype, 'F16');
    assert.deepEqual(Array.from(h.data.subarray(0, f16Expected.length)), f16Expected);
    assert.ok(Number.isNaN(h.data[values.length - 1]!));
    assert.ok(Object.is(h.data[1], -0));
    const b = tensors.get('b')!;
    assert.equal(b.dtype, 'BF16');
    // BF16 keeps 8 mantissa bits: 1/3 -> 0.333984375, 65504 -> 65536, 1e5 -> 99840.
    assert.deepEqual(Array.from(b.data.subarray(0, 10)), [
      0,
      -0,
      1,
      -2.5,
      0.5,
      65536,
      2 ** -24,
      3 * 2 ** -25,
      0.333984375,
      99840,
    ]);
    assert.ok(Number.isNaN(b.data[values.length - 1]!));
  });

  test('are refused (naming the tensor) where only F32 is allowed', () => {
    const bytes = encodeSafetensors({
      a: { shape: [1], data: Float32Array.of(1) },
      w: { shape: [2], data: Float32Array.of(1, 2), dtype: 'BF16' },
    });
    expectPackError(
      () => decodeSafetensors(bytes, 'x.safetensors'),
      'PACK_UNSUPPORTED_DTYPE',
      'w',
      /dtype BF16 is not supported; store this tensor as F32/,
    );
  });
});

describe('SafetensorsFile (header first, one tensor at a time)', () => {
  test('reads single tensors by name from disk, any dtype allowed', async () => {
    const path = join(dir, 'lazy.safetensors');
    const w = Float32Array.from({ length: 12 }, (_, i) => (i - 6) / 4);
    await writeSafetensors(path, {
      ids: { shape: [3], data: Float32Array.of(0, 1, 2) },
      w: { shape: [3, 4], data: w, dtype: 'F16' },
    });
    const file = await SafetensorsFile.open(path);
    assert.deepEqual([...file.entries.keys()], ['ids', 'w']);
    assert.deepEqual(file.entries.get('w')!.shape, [3, 4]);
    const read = await file.read('w', ['F32', 'F16']);
    assert.deepEqual(Array.from(read.data), Array.from(w)); // quarters are exact in F16
    await assert.rejects(file.read('w'), (error: unknown) => {
      assert.ok(error instanceof PackError);
      assert.equal(error.code, 'PACK_UNSUPPORTED_DTYPE');
      assert.equal(error.field, 'w');
      return true;
    });
    await assert.rejects(file.read('nope'), { code: 'PACK_MISSING_TENSOR' });
  });

  test('checks the header against the file size on open', async () => {
    const path = join(dir, 'lazy-truncated.safetensors');
    const bytes = encodeSafetensors({ w: { shape: [4], data: Float32Array.of(1, 2, 3, 4) } });
    await writeFile(path, bytes.subarray(0, bytes.byteLength - 4));
    await assert.rejects(SafetensorsFile.open(path), (error: unknown) => {
      assert.ok(error instanceof PackError);
      assert.equal(error.code, 'PACK_CORRUPT_FILE');
      assert.equal(error.file, path);
      assert.equal(error.field, 'w');
      assert.match(error.message, /truncated/);
      return true;
    });
    await assert.rejects(SafetensorsFile.open(join(dir, 'absent.safetensors')), {
      code: 'PACK_FILE_MISSING',
    });
  });
});
