/**
 * Admin routes (adapter load and unload) need the API key from ADMIN_API_KEY, sent as
 * `authorization: Bearer KEY` or `x-api-key: KEY`. With no key configured they are disabled (403),
 * never open. Keys are compared in constant time (over their SHA-256 digests, so the length of
 * the key leaks nothing either) and are never logged: fastify's request log holds no headers.
 *
 * Routes install the guard as their `onRequest` hook: the key is checked before the body is read
 * or validated, so a caller without the key learns nothing about the body rules (401, not 400)
 * and costs no parsing.
 *
 * The folders admin routes load adapters from must be inside ADAPTER_ROOT (`insideRoot`).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isAbsolute, relative, resolve } from 'node:path';
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

/** `path` resolved inside the adapter root; 403 ADAPTER_PATH_FORBIDDEN when it escapes. */
export function insideRoot(root: string, path: string, field = 'path'): string {
  const base = resolve(root);
  const folder = resolve(base, path);
  const rel = relative(base, folder);
  if (rel.startsWith('..') || isAbsolute(rel)) {
    throw new MoeError(
      'ADAPTER_PATH_FORBIDDEN',
      `path '${path}' is outside the adapter root '${root}' (ADAPTER_ROOT); put the adapter folder inside it.`,
      { field },
    );
  }
  return folder;
}
