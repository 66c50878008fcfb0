/**
 * JSON request bodies, parsed off the HTTP thread when they are large.
 *
 * Decoding and parsing a 3 MB body (200 inputs x 15,000 characters) took ~20-25 ms of one
 * uninterrupted stretch on the HTTP thread here, and its 6 MB body string then costs garbage
 * collection there too: with such requests flowing, /health/live waited behind them (p99 72-124
 * ms against 24-39 ms for the same flow with 600-character inputs; test/http-hardening.test.ts).
 * So bodies above PARSE_OFF_THREAD_BYTES go to one worker thread, which decodes and parses them
 * and posts the value back; the HTTP thread only copies the parsed value in (structured clone),
 * its long strings as slices of one pooled string that the garbage collector's scavenges never
 * copy (json-body-worker.ts). Smaller bodies are parsed in place, where the hop would cost more
 * than it saves.
 *
 * Same rules as fastify's own JSON parser: an empty body and invalid JSON are its
 * FST_ERR_CTP_EMPTY_JSON_BODY / FST_ERR_CTP_INVALID_JSON_BODY (400 INPUT_MALFORMED_JSON through
 * the error handler), and so is a `__proto__` or `constructor.prototype` key.
 */
import { Worker } from 'node:worker_threads';
import { errorCodes, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { JsonReply, Span } from './json-body-worker.js';

/** Bodies larger than this are parsed in the worker. */
export const PARSE_OFF_THREAD_BYTES = 256 * 1024;

/** The one worker and the bodies it is parsing; started on first use, restarted if it dies. */
class JsonParserThread {
  private worker: Worker | undefined;
  private nextId = 0;
  private readonly pending = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (error: Error) => void }
  >();

  parse(body: Buffer): Promise<unknown> {
    const worker = this.started();
    const id = this.nextId++;
    // Transfer the body's memory when it owns it whole (Buffer.concat of a large body does),
    // else a copy: a pooled small Buffer shares its ArrayBuffer with others.
    const owned = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength;
    const bytes = owned ? new Uint8Array(body.buffer) : new Uint8Array(body);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, bytes }, [bytes.buffer as ArrayBuffer]);
    });
  }

  close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    return worker === undefined ? Promise.resolve() : worker.terminate().then(() => {});
  }

  private started(): Worker {
    if (this.worker !== undefined) return this.worker;
    const worker = new Worker(new URL('./json-body-worker.js', import.meta.url));
    worker.unref(); // an idle parser does not keep the process alive
    worker.on('message', (reply: JsonReply) => {
      const waiter = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if (waiter === undefined) return;
      if ('value' in reply) waiter.resolve(unpool(reply.value, reply.pool, reply.spans));
      else if (reply.error === 'empty') waiter.reject(new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY());
      else waiter.reject(new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY());
    });
    const fail = (error: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the JSON parser thread exited with code ${code}`)));
    this.worker = worker;
    return worker;
  }
}

/** A JSON parser for `app`'s content-type parsers: in place when small, else in the worker. */
export type JsonBodyParser = (request: FastifyRequest, body: Buffer) => Promise<unknown>;

/**
 * The parser (one worker per app, stopped when the app closes). Registered as the app's
 * application/json parser by `installJsonBodyParser`; the KServe plugin parses its JSON header
 * with the same function.
 */
export function jsonBodyParser(app: FastifyInstance): JsonBodyParser {
  const inPlace = app.getDefaultJsonParser('error', 'error');
  const thread = new JsonParserThread();
  app.addHook('onClose', () => thread.close());
  return (request, body) => {
    if (body.length > PARSE_OFF_THREAD_BYTES) return thread.parse(body);
    return new Promise((resolve, reject) => {
      inPlace(request, body.toString('utf8'), (error, value) =>
        error ? reject(error) : resolve(value),
      );
    });
  };
}

/** Make `parse` the app's application/json parser (every route that has no parser of its own). */
export function installJsonBodyParser(app: FastifyInstance, parse: JsonBodyParser): void {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser(
    'application/json',
    { parseAs: 'buffer' },
    async (request: FastifyRequest, body: Buffer | string) => parse(request, body as Buffer),
  );
}

/** Put the pooled long strings back into `value`, as slices of `pool` (they share its memory). */
function unpool(value: unknown, pool: string, spans: readonly Span[]): unknown {
  for (const [path, start, end] of spans) {
    let node = value as Record<string | number, unknown>;
    for (const key of path.slice(0, -1)) node = node[key] as Record<string | number, unknown>;
    node[path.at(-1)!] = pool.slice(start, end);
  }
  return value;
}
