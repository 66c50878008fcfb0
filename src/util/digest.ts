/**
 * Content digests of in-memory values (configs with typed arrays inside): sha256 over the JSON
 * shape with every typed array replaced by its position, then the arrays' bytes in that order.
 * Same content, same digest, whatever the arrays' buffers; used for cache keys and for telling a
 * reloaded adapter from a changed one.
 */
import { createHash, type Hash } from 'node:crypto';

type Typed = Float32Array | BigInt64Array | Int32Array | Uint8Array;

/** Feed `value` into `hash` (see the header). */
export function hashValue(hash: Hash, value: unknown): Hash {
  const arrays: Typed[] = [];
  hash.update(
    JSON.stringify(value, (_key, item) => {
      if (ArrayBuffer.isView(item) && !(item instanceof DataView)) {
        arrays.push(item as Typed);
        return `#${arrays.length - 1}:${(item as Typed).constructor.name}`;
      }
      return item;
    }),
  );
  for (const data of arrays)
    hash.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return hash;
}

/** sha256 hex of `value`'s content. */
export function contentDigest(value: unknown): string {
  return hashValue(createHash('sha256'), value).digest('hex');
}
