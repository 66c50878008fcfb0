/**
 * The binary tensor data extension of KServe v2 / the Open Inference Protocol (Triton's
 * `binary_tensor_data`): a body is a JSON header of `Inference-Header-Content-Length` bytes, then
 * the raw data of every tensor whose `parameters.binary_data_size` is set, in tensor order.
 * Raw data is little-endian; a BYTES element is a 4-byte little-endian length, then its bytes.
 * https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
 *
 * Pure codec: Buffers in, Buffers out, MoeError INPUT_INVALID (naming the field) for bad input.
 */
import { MoeError } from '../errors.js';

/** The request and response header that says how long the JSON part is (lower case, as node has it). */
export const HEADER_LENGTH = 'inference-header-content-length';

/** Split a body into its JSON header and the binary data after it. */
export function splitBody(
  body: Buffer,
  headerLength: string | undefined,
): { header: Buffer; tail: Buffer } {
  if (headerLength === undefined) return { header: body, tail: body.subarray(body.length) };
  const length = /^\d+$/.test(headerLength.trim()) ? Number(headerLength) : Number.NaN;
  if (!Number.isSafeInteger(length) || length > body.length) {
    throw new MoeError(
      'INPUT_INVALID',
      `Inference-Header-Content-Length is '${headerLength}'; it must be the byte length of the JSON header, at most the body length ${body.length}.`,
      { field: HEADER_LENGTH },
    );
  }
  return { header: body.subarray(0, length), tail: body.subarray(length) };
}

/** Reads the binary data after the header, tensor by tensor, in order. */
export class BinaryReader {
  private offset = 0;

  constructor(private readonly tail: Buffer) {}

  /** The next `size` bytes, for the tensor named by `field`. */
  take(size: number, field: string): Buffer {
    if (!Number.isSafeInteger(size) || size < 0 || this.offset + size > this.tail.length) {
      throw new MoeError(
        'INPUT_INVALID',
        `${field}.parameters.binary_data_size is ${size}, but only ${this.tail.length - this.offset} bytes of binary data are left in the body.`,
        { field: `${field}.parameters.binary_data_size` },
      );
    }
    const chunk = this.tail.subarray(this.offset, this.offset + size);
    this.offset += size;
    return chunk;
  }

  /** Every byte must belong to a tensor: leftovers mean the sizes are wrong. */
  finish(): void {
    const left = this.tail.length - this.offset;
    if (left !== 0) {
      throw new MoeError(
        'INPUT_INVALID',
        `The body has ${left} bytes of binary data that no input's binary_data_size accounts for.`,
        { field: 'inputs' },
      );
    }
  }
}

/** BYTES elements: [u32 LE length][bytes] each. */
export function encodeBytes(values: readonly (string | Uint8Array)[]): Buffer {
  const parts: Buffer[] = [];
  for (const value of values) {
    const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

export function decodeBytes(data: Buffer, field: string): Buffer[] {
  const values: Buffer[] = [];
  let at = 0;
  while (at < data.length) {
    if (at + 4 > data.length) throw truncatedBytes(field, values.length);
    const length = data.readUInt32LE(at);
    at += 4;
    if (at + length > data.length) throw truncatedBytes(field, values.length);
    values.push(data.subarray(at, at + length));
    at += length;
  }
  return values;
}

function truncatedBytes(field: string, index: number): MoeError {
  return new MoeError(
    'INPUT_INVALID',
    `${field}: BYTES element ${index} runs past the end of its binary data; each element is a 4-byte little-endian length, then that many bytes.`,
    { field },
  );
}

/** FP32 elements, little-endian whatever the host's byte order. */
export function encodeFloat32(values: ArrayLike<number>): Buffer {
  const out = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i]!, i * 4);
  return out;
}

export function decodeFloat32(data: Buffer, field: string): Float32Array {
  if (data.length % 4 !== 0) {
    throw new MoeError('INPUT_INVALID', `${field}: FP32 data must be a multiple of 4 bytes.`, {
      field,
    });
  }
  const out = new Float32Array(data.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = data.readFloatLE(i * 4);
  return out;
}

/** A response body: the JSON header, then the blobs in output order. */
export function joinBody(
  header: unknown,
  blobs: readonly Buffer[],
): {
  body: Buffer;
  headerLength: number;
} {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  return { body: Buffer.concat([json, ...blobs]), headerLength: json.length };
}
