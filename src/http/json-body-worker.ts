/**
 * The worker thread of json-body.ts: UTF-8 decoding and JSON parsing of large request bodies, off
 * the HTTP thread. Messages in: `{ id, bytes }` (the body, transferred); out: `{ id, value, pool,
 * spans }`, or `{ id, error: 'empty' | 'invalid' }` for an empty body or one that is not JSON (or
 * carries a `__proto__` / `constructor.prototype` key: refused as fastify's own parser refuses it).
 *
 * Long strings (LONG_STRING characters or more, e.g. the texts of a 3 MB request) do not travel
 * one by one: they are taken out of `value` (left as '') and sent as one string, `pool`, with
 * each one's place in `value` and its span in `pool`. The HTTP thread puts slices of `pool` back
 * (see json-body.ts), and those share `pool`'s memory, which is one large object outside the young
 * generation: the garbage collector's scavenges never copy the texts. Copying 6 MB of live texts
 * per big request made scavenges of 40-90 ms on the HTTP thread.
 */
import { parentPort } from 'node:worker_threads';
import secureJsonParse from 'secure-json-parse';

/** Strings at least this long are pooled. */
export const LONG_STRING = 1024;

export interface JsonRequest {
  readonly id: number;
  readonly bytes: Uint8Array;
}

/** Where a pooled string goes: the keys from `value` down, and its span [start, end) in `pool`. */
export type Span = readonly [path: readonly (string | number)[], start: number, end: number];

export type JsonReply =
  | {
      readonly id: number;
      readonly value: unknown;
      readonly pool: string;
      readonly spans: readonly Span[];
    }
  | { readonly id: number; readonly error: 'empty' | 'invalid' };

const decoder = new TextDecoder('utf-8');

/** Take the long strings out of `value` (in place), in order; their spans in the joined pool. */
export function poolLongStrings(value: unknown): { pool: string; spans: Span[] } {
  const strings: string[] = [];
  const spans: Span[] = [];
  let at = 0;
  // Iterative, so that deeply nested JSON cannot overflow the stack here.
  const stack: { node: Record<string | number, unknown>; path: (string | number)[] }[] = [];
  if (typeof value === 'object' && value !== null) {
    stack.push({ node: value as Record<string, unknown>, path: [] });
  }
  while (stack.length > 0) {
    const { node, path } = stack.pop()!;
    const keys: (string | number)[] = Array.isArray(node)
      ? node.map((_, i) => i)
      : Object.keys(node);
    for (const key of keys) {
      const child = node[key];
      if (typeof child === 'string' && child.length >= LONG_STRING) {
        strings.push(child);
        spans.push([[...path, key], at, at + child.length]);
        at += child.length;
        node[key] = '';
      } else if (typeof child === 'object' && child !== null) {
        stack.push({ node: child as Record<string, unknown>, path: [...path, key] });
      }
    }
  }
  return { pool: strings.join(''), spans };
}

parentPort?.on('message', ({ id, bytes }: JsonRequest) => {
  let reply: JsonReply;
  if (bytes.length === 0) {
    reply = { id, error: 'empty' };
  } else {
    let value: unknown;
    try {
      value = secureJsonParse.parse(decoder.decode(bytes), undefined, {
        protoAction: 'error',
        constructorAction: 'error',
      });
    } catch {
      value = invalid;
    }
    reply = value === invalid ? { id, error: 'invalid' } : { id, value, ...poolLongStrings(value) };
  }
  parentPort!.postMessage(reply);
});

const invalid = Symbol('invalid');
