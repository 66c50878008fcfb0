/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written in plain JS:
 *
 *   [8 bytes]  N, the header length, unsigned 64-bit little-endian
 *   [N bytes]  JSON header: { "<tensor>": { "dtype": "F32", "shape": [..], "data_offsets": [b, e] },
 *                             "__metadata__": { "<key>": "<string>" } }   (metadata optional)
 *   [rest]     the data section; offsets are relative to its start, tensors are little-endian,
 *              row-major, and together cover the data section exactly (no holes, no overlap).
 *
 * Tensors are decoded into Float32Array. The pack's own files (adapters, gates, heads) must be F32;
 * Hugging Face checkpoints may also be F16 or BF16, which are widened to F32 exactly (every F16 and
 * BF16 value is a float32 value) when the caller allows them (`floatDtypes`). Any other dtype is
 * reported with the tensor's name. Every structural problem (short file, bad header length,
 * malformed JSON, offsets out of range, overlapping or leaving holes, size not matching shape x
 * dtype) is a PackError with code PACK_CORRUPT_FILE that names the file, never a crash or silently
 * wrong numbers.
 *
 * Two ways in: `decodeSafetensors` / `readSafetensors` decode a whole file held in memory (small
 * pack files); `SafetensorsFile.open` reads and checks only the header, then reads one tensor at a
 * time from disk (Hugging Face checkpoints of hundreds of MB: no second copy of the file in memory).
 */

import { type FileHandle, open, readFile, writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { PackError } from './errors.js';
import type { Weight } from './types.js';

/** A decoded tensor (always float32 in memory; `dtype` is what the file stored). */
export interface SafeTensor extends Weight {
  readonly dtype: FloatDtype;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface SafetensorsContents {
  /** Tensors in file (data offset) order. */
  readonly tensors: Map<string, SafeTensor>;
  /** The `__metadata__` string map; {} when absent. */
  readonly metadata: Record<string, string>;
}

/** The float dtypes this reader decodes. F16 and BF16 are widened to float32 exactly. */
export type FloatDtype = 'F32' | 'F16' | 'BF16';

export interface DecodeOptions {
  /** Dtypes accepted; a tensor of any other is PACK_UNSUPPORTED_DTYPE. Default: F32 only. */
  readonly floatDtypes?: readonly FloatDtype[];
}

/** One tensor's header entry: where its bytes are, relative to the data section. */
export interface TensorEntry {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
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
const F32_ONLY: readonly FloatDtype[] = ['F32'];

function corrupt(file: string, field: string, detail: string): PackError {
  return new PackError('PACK_CORRUPT_FILE', file, field, detail);
}

/** The header length from the first 8 bytes, checked against the file size. */
function headerLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8) {
    throw corrupt(
      file,
      '',
      `file is ${fileSize} bytes, shorter than the 8-byte header length: not a safetensors file, or truncated`,
    );
  }
  const length = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (length < 2n || length > BigInt(MAX_HEADER_BYTES)) {
    throw corrupt(
      file,
      '',
      `header length ${length} is not plausible (must be 2..${MAX_HEADER_BYTES}): not a safetensors file`,
    );
  }
  const n = Number(length);
  if (8 + n > fileSize) {
    throw corrupt(
      file,
      '',
      `header length ${n} runs past the end of the ${fileSize}-byte file: truncated or not a safetensors file`,
    );
  }
  return n;
}

/**
 * Parse and check a header against the size of its data section: every entry well formed, sizes
 * matching shape x dtype, and the entries tiling the data section exactly. Returns the entries in
 * data offset order.
 */
function parseHeader(
  headerBytes: Uint8Array,
  dataLength: number,
  file: string,
): { entries: TensorEntry[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (error) {
    throw corrupt(file, '', `header is not valid UTF-8 JSON (${(error as Error).message})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw corrupt(file, '', 'header must be a JSON object of tensor entries');
  }
  const metadata: Record<string, string> = {};
  const entries: TensorEntry[] = [];
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
  let previous: TensorEntry | undefined;
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
  return { entries: sorted, metadata };
}

/** The dtype of `entry` if `allowed` lists it; else PACK_UNSUPPORTED_DTYPE naming the tensor. */
function acceptedDtype(
  entry: TensorEntry,
  allowed: readonly FloatDtype[],
  file: string,
): FloatDtype {
  if ((allowed as readonly string[]).includes(entry.dtype)) return entry.dtype as FloatDtype;
  throw new PackError(
    'PACK_UNSUPPORTED_DTYPE',
    file,
    entry.name,
    allowed.length === 1
      ? `dtype ${entry.dtype} is not supported; store this tensor as F32 (float32)`
      : `dtype ${entry.dtype} is not supported; tensors must be ${allowed.join(', ')} (convert the checkpoint to float32 or float16)`,
  );
}

/** Decode a whole safetensors file held in memory. `file` names it in errors. */
export function decodeSafetensors(
  bytes: Uint8Array,
  file = '<safetensors bytes>',
  options: DecodeOptions = {},
): SafetensorsContents {
  const length = headerLength(bytes, bytes.byteLength, file);
  const dataStart = 8 + length;
  const { entries, metadata } = parseHeader(
    bytes.subarray(8, dataStart),
    bytes.byteLength - dataStart,
    file,
  );
  const allowed = options.floatDtypes ?? F32_ONLY;
  const tensors = new Map<string, SafeTensor>();
  for (const entry of entries) {
    const dtype = acceptedDtype(entry, allowed, file);
    const data = widen(dtype, bytes.subarray(dataStart + entry.begin, dataStart + entry.end));
    tensors.set(entry.name, { dtype, shape: entry.shape, data });
  }
  return { tensors, metadata };
}

function parseEntry(file: string, name: string, value: unknown): TensorEntry {
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

/** Little-endian F32 / F16 / BF16 bytes (any alignment) -> a fresh Float32Array. */
function widen(dtype: FloatDtype, bytes: Uint8Array): Float32Array {
  if (dtype === 'F32') {
    const out = new Float32Array(bytes.byteLength / 4);
    if (LITTLE_ENDIAN_HOST) {
      new Uint8Array(out.buffer).set(bytes);
    } else {
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
    }
    return out;
  }
  const count = bytes.byteLength / 2;
  const halves = new Uint16Array(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < count; i++) halves[i] = view.getUint16(i * 2, true);
  return dtype === 'BF16' ? bf16ToF32(halves) : f16ToF32(halves);
}

/** BF16 is the top half of a float32: shift it back into place. */
function bf16ToF32(halves: Uint16Array): Float32Array {
  const out = new Float32Array(halves.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) bits[i] = halves[i]! << 16;
  return out;
}

let f16Table: Float32Array | undefined;

/** IEEE 754 binary16 -> float32, through a 65536-entry table built once (256 KB). */
function f16ToF32(halves: Uint16Array): Float32Array {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exponent = (h >> 10) & 0x1f;
      const mantissa = h & 0x3ff;
      f16Table[h] =
        exponent === 0
          ? sign * mantissa * 2 ** -24 // subnormal (and zero)
          : exponent === 31
            ? mantissa === 0
              ? sign * Number.POSITIVE_INFINITY
              : Number.NaN
            : sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
    }
  }
  const table = f16Table;
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]!]!;
  return out;
}

/**
 * Read a safetensors file (a path) or bytes already in memory; returns its tensors by name.
 * Every tensor must be F32 unless `options.floatDtypes` allows more.
 */
export async function readSafetensors(
  source: string | Uint8Array,
  options: DecodeOptions = {},
): Promise<Map<string, SafeTensor>> {
  return (await readSafetensorsContents(source, options)).tensors;
}

/** Like readSafetensors, with the `__metadata__` map too. */
export async function readSafetensorsContents(
  source: string | Uint8Array,
  options: DecodeOptions = {},
): Promise<SafetensorsContents> {
  if (typeof source !== 'string') return decodeSafetensors(source, undefined, options);
  let bytes: Buffer;
  try {
    bytes = await readFile(source);
  } catch (error) {
    throw missingOr(error, source);
  }
  return decodeSafetensors(bytes, source, options);
}

function missingOr(error: unknown, file: string): unknown {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR') {
    return new PackError('PACK_FILE_MISSING', file, '', 'file not found', { cause: error });
  }
  return error;
}

/**
 * A safetensors file on disk, opened for reading one tensor at a time: `open` reads and checks
 * the header only (structure, sizes, tiling against the file size), `read` reads one tensor's
 * bytes and decodes them. Dtypes are checked at `read`, so tensors that are never read (buffers
 * such as `position_ids`, heads the server ignores) may have any dtype.
 */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    /** Tensor entries by name, in data offset order. */
    readonly entries: ReadonlyMap<string, TensorEntry>,
    readonly metadata: Readonly<Record<string, string>>,
    private readonly dataStart: number,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      throw missingOr(error, path);
    }
    try {
      const { size } = await handle.stat();
      const prefix = new Uint8Array(8);
      await handle.read(prefix, 0, Math.min(8, size), 0);
      const length = headerLength(prefix, size, path);
      const headerBytes = new Uint8Array(length);
      await handle.read(headerBytes, 0, length, 8);
      const { entries, metadata } = parseHeader(headerBytes, size - 8 - length, path);
      return new SafetensorsFile(
        path,
        new Map(entries.map((entry) => [entry.name, entry])),
        metadata,
        8 + length,
      );
    } finally {
      await handle.close();
    }
  }

  /** The tensor `name` as float32; its dtype must be one of `floatDtypes` (default F32 only). */
  async read(name: string, floatDtypes: readonly FloatDtype[] = F32_ONLY): Promise<SafeTensor> {
    const entry = this.entries.get(name);
    if (entry === undefined) {
      throw new PackError('PACK_MISSING_TENSOR', this.path, name, 'tensor not found');
    }
    const dtype = acceptedDtype(entry, floatDtypes, this.path);
    const bytes = new Uint8Array(entry.end - entry.begin);
    const handle = await open(this.path, 'r');
    try {
      const { bytesRead } = await handle.read(
        bytes,
        0,
        bytes.byteLength,
        this.dataStart + entry.begin,
      );
      if (bytesRead !== bytes.byteLength) {
        throw corrupt(this.path, name, 'the file ended early: it changed while being read');
      }
    } finally {
      await handle.close();
    }
    return { dtype, shape: entry.shape, data: widen(dtype, bytes) };
  }
}

/** A tensor to write: float32 values, stored as `dtype` (default F32; F16/BF16 round to nearest even). */
export interface TensorToWrite extends Weight {
  readonly dtype?: FloatDtype;
}

/** Encode tensors (in the record's order) and optional string metadata. */
export function encodeSafetensors(
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header[METADATA_KEY] = { ...metadata };
  let offset = 0;
  const payloads: Uint8Array[] = [];
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
    const dtype = tensor.dtype ?? 'F32';
    const payload = narrow(dtype, tensor.data);
    header[name] = {
      dtype,
      shape: [...tensor.shape],
      data_offsets: [offset, offset + payload.byteLength],
    };
    payloads.push(payload);
    offset += payload.byteLength;
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
  for (const payload of payloads) {
    out.set(payload, position);
    position += payload.byteLength;
  }
  return out;
}

/** float32 values -> little-endian bytes of `dtype`. */
function narrow(dtype: FloatDtype, data: Float32Array): Uint8Array {
  if (dtype === 'F32') {
    if (LITTLE_ENDIAN_HOST) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const out = new Uint8Array(data.length * 4);
    const view = new DataView(out.buffer);
    for (let i = 0; i < data.length; i++) view.setFloat32(i * 4, data[i]!, true);
    return out;
  }
  const out = new Uint8Array(data.length * 2);
  const view = new DataView(out.buffer);
  const bits = new Uint32Array(Float32Array.from(data).buffer);
  for (let i = 0; i < data.length; i++) {
    view.setUint16(i * 2, dtype === 'BF16' ? bf16Bits(bits[i]!) : f16Bits(bits[i]!), true);
  }
  return out;
}

/** float32 bits -> bfloat16 bits, round to nearest even (NaN stays NaN). */
function bf16Bits(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return (f >>> 16) | 0x40;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

/** float32 bits -> binary16 bits, round to nearest even; overflow to infinity. */
function f16Bits(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const exponent = (f >>> 23) & 0xff;
  const mantissa = f & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mantissa | 0x800000; // implicit 1
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let h = m >>> shift;
    if (rest > half || (rest === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // may carry into the exponent: correct
  return sign | h;
}

/** Write tensors (and optional string metadata) to a safetensors file. */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFile(path, encodeSafetensors(tensors, metadata));
}
