/**
 * The binary tensor data codec against bytes written out by hand from the extension's definition
 * (little-endian; BYTES elements are a u32 length and the bytes).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MoeError } from '../src/errors.js';
import {
  BinaryReader,
  decodeBytes,
  decodeFloat32,
  encodeBytes,
  encodeFloat32,
  joinBody,
  splitBody,
} from '../src/http/kserve-binary.js';

function invalid(fn: () => unknown, field: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof MoeError);
    assert.equal(error.code, 'INPUT_INVALID');
    assert.match(String(error.details?.field), field);
    return true;
  });
}

describe('kserve binary codec', () => {
  it('encodes BYTES as u32 little-endian length + bytes, UTF-8, and decodes them back', () => {
    const encoded = encodeBytes(['ab', '', 'é']);
    assert.deepEqual([...encoded], [2, 0, 0, 0, 0x61, 0x62, 0, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0xa9]);
    assert.deepEqual(
      decodeBytes(encoded, 'x').map((b) => b.toString('utf8')),
      ['ab', '', 'é'],
    );
    assert.deepEqual(decodeBytes(Buffer.alloc(0), 'x'), []);
  });

  it('rejects BYTES data whose lengths run past the end', () => {
    invalid(() => decodeBytes(Buffer.from([5, 0, 0, 0, 0x61]), 'inputs[0]'), /^inputs\[0\]$/);
    invalid(() => decodeBytes(Buffer.from([1, 0]), 'inputs[0]'), /^inputs\[0\]$/);
  });

  it('encodes FP32 little-endian and decodes it back exactly', () => {
    const encoded = encodeFloat32([1, -2.5, 0.1]);
    assert.deepEqual([...encoded.subarray(0, 8)], [0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0]);
    const decoded = decodeFloat32(encoded, 'x');
    assert.deepEqual([...decoded], [1, -2.5, Math.fround(0.1)]);
    invalid(() => decodeFloat32(Buffer.alloc(5), 'out'), /^out$/);
  });

  it('splits a body at Inference-Header-Content-Length and rejects a bad length', () => {
    const body = Buffer.concat([Buffer.from('{"a":1}'), Buffer.from([9, 8, 7])]);
    const { header, tail } = splitBody(body, '7');
    assert.equal(header.toString(), '{"a":1}');
    assert.deepEqual([...tail], [9, 8, 7]);
    const whole = splitBody(body, undefined);
    assert.equal(whole.header.length, body.length);
    assert.equal(whole.tail.length, 0);
    invalid(() => splitBody(body, '11'), /inference-header-content-length/);
    invalid(() => splitBody(body, '-1'), /inference-header-content-length/);
    invalid(() => splitBody(body, 'x'), /inference-header-content-length/);
  });

  it('reads tensors in order and insists every byte is accounted for', () => {
    const reader = new BinaryReader(Buffer.from([1, 2, 3, 4, 5]));
    assert.deepEqual([...reader.take(2, 'inputs[0]')], [1, 2]);
    assert.deepEqual([...reader.take(3, 'inputs[1]')], [3, 4, 5]);
    reader.finish();
    const short = new BinaryReader(Buffer.from([1, 2]));
    invalid(() => short.take(3, 'inputs[0]'), /^inputs\[0\]\.parameters\.binary_data_size$/);
    const long = new BinaryReader(Buffer.from([1, 2]));
    long.take(1, 'inputs[0]');
    invalid(() => long.finish(), /^inputs$/);
  });

  it('joins a response: JSON header first, its byte length returned, then the blobs', () => {
    const { body, headerLength } = joinBody({ name: 'ü' }, [Buffer.from([1]), Buffer.from([2, 3])]);
    assert.equal(headerLength, Buffer.byteLength('{"name":"ü"}'));
    assert.deepEqual(JSON.parse(body.subarray(0, headerLength).toString('utf8')), { name: 'ü' });
    assert.deepEqual([...body.subarray(headerLength)], [1, 2, 3]);
  });
});
