/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written in plain JS:
 *
 *   [8 bytes]  N, the header length, unsigned 64-bit little-endian
 *   [N bytes]  JSON header: { "<tensor>": { "dtype": "F32", "shape": [..], "data_offsets": [b, e] },
 *                             "__metadata__": { "<key>": "<string>" } }   (metadata optional)
 *   [rest]     the data section; offsets are relative to its start, tensors are little-endian,
 *              row-major, and together cover the data section exactly (no holes, no overlap).
 *
 * Only F32 tensors are decoded (into Float32Array); any other dtype is reported with the tensor's
 * name. Every structural problem (short file, bad header length, malformed JSON, offsets out of
 * range, overlapping or leaving holes, size not matching shape x dtype) is a PackError with code
 * PACK_CORRUPT_FILE that names the file, never a crash or silently wrong numbers.
 */

import { readFile, writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { PackError } from './errors.js';
import type { Weight } from './types.js';

/** A decoded tensor. */
export interface SafeTensor extends Weight {
  readonly dtype: 'F32';
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface SafetensorsContents {
  /** Tensors in file (data offset) order. */
  readonly tensors: Map<string, SafeTensor>;
  /** The `__metadata__` string map; {} when absent. */
  readonly metadata: Record<string, string>;
}

/** Bytes per element of the dtypes the format defines (used to validate sizes of every tensor). */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};

/** The reference implementation refuses headers above 100 MB; so do we. */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = '__metadata__';
const LITTLE_ENDIAN_HOST = endianness() === 'LE';

interface RawEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

function corrupt(file: string, field: string, detail: string): PackError {
  return new PackError('PACK_CORRUPT_FILE', file, field, detail);
}

/** Decode a whole safetensors file held in memory. `file` names it in errors. */
export function decodeSafetensors(
  bytes: Uint8Array,
  file = '<safetensors bytes>',
): SafetensorsContents {
  if (bytes.byteLength < 8) {
    throw corrupt(
      file,
      '',
      `file is ${bytes.byteLength} bytes, shorter than the 8-byte header length: not a safetensors file, or truncated`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength < 2n || headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw corrupt(
      file,
      '',
      `header length ${headerLength} is not plausible (must be 2..${MAX_HEADER_BYTES}): not a safetensors file`,
    );
  }
  const headerBytes = Number(headerLength);
  if (8 + headerBytes > bytes.byteLength) {
    throw corrupt(
      file,
      '',
      `header length ${headerBytes} runs past the end of the ${bytes.byteLength}-byte file: truncated or not a safetensors file`,
    );
  }
  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(
      bytes.subarray(8, 8 + headerBytes),
    );
    header = JSON.parse(text);
  } catch (error) {
    throw corrupt(file, '', `header is not valid UTF-8 JSON (${(error as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw corrupt(file, '', 'header must be a JSON object of tensor entries');
  }

  const dataStart = 8 + headerBytes;
  const dataLength = bytes.byteLength - dataStart;
  const metadata: Record<string, string> = {};
  const entries: RawEntry[] = [];

  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw corrupt(file, METADATA_KEY, 'must be an object of string values');
      }
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        if (typeof item !== 'string') {
          throw corrupt(file, `${METADATA_KEY}.${key}`, 'metadata values must be strings');
        }
        metadata[key] = item;
      }
      continue;
    }
    entries.push(parseEntry(file, name, value));
  }

  // Offsets: each tensor's byte size matches its shape, all lie inside the data section, and
  // sorted by start they tile it exactly.
  for (const entry of entries) {
    const elements = entry.shape.reduce((a, b) => a * b, 1);
    const expected = elements * (DTYPE_BYTES[entry.dtype] ?? 0);
    if (entry.end - entry.begin !== expected) {
      throw corrupt(
        file,
        entry.name,
        `data_offsets [${entry.begin}, ${entry.end}] hold ${entry.end - entry.begin} bytes but ${entry.dtype} [${entry.shape.join(',')}] needs ${expected}`,
      );
    }
    if (entry.end > dataLength) {
      throw corrupt(
        file,
        entry.name,
        `data_offsets end at byte ${entry.end} of a ${dataLength}-byte data section: the file is truncated or the offsets are wrong`,
      );
    }
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous: RawEntry | undefined;
  for (const entry of sorted) {
    if (entry.begin < cursor) {
      throw corrupt(
        file,
        entry.name,
        `data_offsets [${entry.begin}, ${entry.end}] overlap tensor '${previous?.name}' [${previous?.begin}, ${previous?.end}]`,
      );
    }
    if (entry.begin > cursor) {
      throw corrupt(
        file,
        entry.name,
        `data section bytes ${cursor}..${entry.begin} belong to no tensor (holes are not allowed)`,
      );
    }
    cursor = entry.end;
    previous = entry;
  }
  if (cursor !== dataLength) {
    throw corrupt(
      file,
      '',
      `data section is ${dataLength} bytes but the tensors cover ${cursor}: trailing bytes or a wrong header`,
    );
  }

  const tensors = new Map<string, SafeTensor>();
  for (const entry of sorted) {
    if (entry.dtype !== 'F32') {
      throw new PackError(
        'PACK_UNSUPPORTED_DTYPE',
        file,
        entry.name,
        `dtype ${entry.dtype} is not supported; store this tensor as F32 (float32)`,
      );
    }
    const data = decodeF32(bytes, dataStart + entry.begin, (entry.end - entry.begin) / 4);
    tensors.set(entry.name, { dtype: 'F32', shape: entry.shape, data });
  }
  return { tensors, metadata };
}

function parseEntry(file: string, name: string, value: unknown): RawEntry {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw corrupt(file, name, 'header entry must be an object with dtype, shape and data_offsets');
  }
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) {
    throw corrupt(
      file,
      name,
      `unknown dtype ${JSON.stringify(dtype)} (expected one of ${Object.keys(DTYPE_BYTES).join(', ')})`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw corrupt(
      file,
      name,
      `shape ${JSON.stringify(shape)} must be an array of non-negative integers`,
    );
  }
  const [begin, end] = Array.isArray(offsets) && offsets.length === 2 ? offsets : [];
  if (!isCount(begin) || !isCount(end) || begin > end) {
    throw corrupt(
      file,
      name,
      `data_offsets ${JSON.stringify(offsets)} must be [begin, end] with 0 <= begin <= end`,
    );
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** Copy little-endian float32 values out of `bytes` (any alignment) into a fresh Float32Array. */
function decodeF32(bytes: Uint8Array, start: number, count: number): Float32Array {
  const out = new Float32Array(count);
  if (LITTLE_ENDIAN_HOST) {
    new Uint8Array(out.buffer).set(bytes.subarray(start, start + count * 4));
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset + start, count * 4);
    for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
  }
  return out;
}

/**
 * Read a safetensors file (a path) or bytes already in memory; returns its tensors by name.
 * Every tensor must be F32.
 */
export async function readSafetensors(
  source: string | Uint8Array,
): Promise<Map<string, SafeTensor>> {
  return (await readSafetensorsContents(source)).tensors;
}

/** Like readSafetensors, with the `__metadata__` map too. */
export async function readSafetensorsContents(
  source: string | Uint8Array,
): Promise<SafetensorsContents> {
  if (typeof source !== 'string') return decodeSafetensors(source);
  let bytes: Buffer;
  try {
    bytes = await readFile(source);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR') {
      throw new PackError('PACK_FILE_MISSING', source, '', 'file not found', { cause: error });
    }
    throw error;
  }
  return decodeSafetensors(bytes, source);
}

/** Encode float32 tensors (in the record's order) and optional string metadata. */
export function encodeSafetensors(
  tensors: Record<string, Weight>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header[METADATA_KEY] = { ...metadata };
  let offset = 0;
  for (const [name, tensor] of Object.entries(tensors)) {
    if (name === METADATA_KEY)
      throw new Error(`safetensors: '${METADATA_KEY}' is not a tensor name`);
    if (!tensor.shape.every(isCount)) {
      throw new Error(
        `safetensors: tensor '${name}' has an invalid shape ${JSON.stringify(tensor.shape)}`,
      );
    }
    const elements = tensor.shape.reduce((a, b) => a * b, 1);
    if (elements !== tensor.data.length) {
      throw new Error(
        `safetensors: tensor '${name}' has shape [${tensor.shape.join(',')}] (${elements} values) but ${tensor.data.length} values`,
      );
    }
    const size = elements * 4;
    header[name] = {
      dtype: 'F32',
      shape: [...tensor.shape],
      data_offsets: [offset, offset + size],
    };
    offset += size;
  }
  // Pad the header with spaces to a multiple of 8 so that the data section stays aligned.
  let json = JSON.stringify(header);
  const headerBytes = new TextEncoder().encode(json).byteLength;
  json += ' '.repeat((8 - ((8 + headerBytes) % 8)) % 8);
  const headerEncoded = new TextEncoder().encode(json);

  const out = new Uint8Array(8 + headerEncoded.byteLength + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerEncoded.byteLength), true);
  out.set(headerEncoded, 8);
  let position = 8 + headerEncoded.byteLength;
  for (const tensor of Object.values(tensors)) {
    if (LITTLE_ENDIAN_HOST) {
      out.set(
        new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength),
        position,
      );
    } else {
      for (let i = 0; i < tensor.data.length; i++)
        view.setFloat32(position + i * 4, tensor.data[i]!, true);
    }
    position += tensor.data.byteLength;
  }
  return out;
}

/** Write float32 tensors (and optional string metadata) to a safetensors file. */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, Weight>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFile(path, encodeSafetensors(tensors, metadata));
}
