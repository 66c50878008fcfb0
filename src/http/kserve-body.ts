/**
 * Body parsing of the KServe v2 routes (fastify content-type parsers are encapsulated, so these
 * apply to the KServe plugin only): JSON as usual; the binary tensor data extension (a JSON
 * header of Inference-Header-Content-Length bytes, then tensor data) under
 * application/octet-stream or application/json; and bodies with no content-type at all (what
 * tritonclient sends), read the same way. An empty body is an empty JSON object, since
 * tritonclient posts the repository index with none. Other content types stay a 415. The JSON
 * part is parsed by the app's parser (json-body.ts: large ones off the HTTP thread).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { MoeError } from '../errors.js';
import type { JsonBodyParser } from './json-body.js';
import { HEADER_LENGTH, splitBody } from './kserve-binary.js';

/** The binary data after the JSON header of each request that had some. */
export type BinaryTails = WeakMap<FastifyRequest, Buffer>;

export function installKServeBodyParsers(
  app: FastifyInstance,
  parseJson: JsonBodyParser,
): BinaryTails {
  const tails: BinaryTails = new WeakMap();
  const parse = (request: FastifyRequest, raw: Buffer): Promise<unknown> => {
    const length = request.headers[HEADER_LENGTH];
    const { header, tail } = splitBody(raw, Array.isArray(length) ? length[0] : length);
    if (tail.length > 0) tails.set(request, tail);
    if (header.length === 0) return Promise.resolve({});
    return parseJson(request, header);
  };
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser(
    ['application/json', 'application/octet-stream'],
    { parseAs: 'buffer' },
    async (request: FastifyRequest, body: Buffer | string) => parse(request, body as Buffer),
  );
  app.addContentTypeParser(
    '*',
    { parseAs: 'buffer' },
    async (request: FastifyRequest, body: Buffer | string) => {
      const type = request.headers['content-type'];
      if (type !== undefined) {
        throw new MoeError(
          'INPUT_UNSUPPORTED_MEDIA_TYPE',
          `content-type '${type}' is not accepted here; send application/json, or application/octet-stream with Inference-Header-Content-Length.`,
        );
      }
      return parse(request, body as Buffer);
    },
  );
  app.addHook('preValidation', async (request) => {
    if (request.body === undefined && request.method === 'POST') request.body = {};
  });
  return tails;
}
