/**
 * Admin routes (adapter load and unload) need the API key from ADMIN_API_KEY, sent as
 * `authorization: Bearer KEY` or `x-api-key: KEY`. With no key configured they are disabled (403),
 * never open. Keys are compared in constant time (over their SHA-256 digests, so the length of
 * the key leaks nothing either) and are never logged: fastify's request log holds no headers.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { MoeError } from '../errors.js';

export function adminGuard(apiKey: string | undefined): (request: FastifyRequest) => Promise<void> {
  const expected = apiKey === undefined ? undefined : digest(apiKey);
  return async (request) => {
    if (expected === undefined) {
      throw new MoeError(
        'ADMIN_DISABLED',
        'Admin routes are disabled on this server: set ADMIN_API_KEY to enable them.',
      );
    }
    const presented = presentedKey(request);
    if (presented === undefined || !timingSafeEqual(digest(presented), expected)) {
      throw new MoeError(
        'ADMIN_UNAUTHORIZED',
        presented === undefined
          ? 'This route needs the admin API key: send `authorization: Bearer KEY` or `x-api-key: KEY`.'
          : 'The admin API key is wrong.',
      );
    }
  };
}

function presentedKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header === 'string' && header.toLowerCase().startsWith('bearer '))
    return header.slice(7).trim();
  const key = request.headers['x-api-key'];
  return typeof key === 'string' && key.length > 0 ? key : undefined;
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}
