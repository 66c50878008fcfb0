/** The queue contract on its own: how failures and embeddings travel between the two roles. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MoeError } from '../src/errors.js';
import {
  CONTRACT_VERSION,
  decodeEmbedding,
  decodeFailure,
  encodeEmbedding,
  encodeFailure,
  isRetryable,
  JOB_NAMES,
  jobOptions,
  parseReply,
  queueKeys,
  replyFields,
} from '../src/transport/contract.js';

describe('queue contract', () => {
  it('a failure keeps its catalogue code, message and details', () => {
    const error = new MoeError('ROUTING_UNKNOWN_ADAPTER', "Adapter 'xx' is not loaded.", {
      group: 'language',
      choices: ['en', 'de'],
    });
    const back = decodeFailure(encodeFailure(error));
    assert.equal(back.code, 'ROUTING_UNKNOWN_ADAPTER');
    assert.equal(back.status, 422);
    assert.equal(back.message, error.message);
    assert.deepEqual(back.details, error.details);
  });

  it("BullMQ's own reasons map to catalogue codes", () => {
    assert.equal(
      decodeFailure('job stalled more than allowable limit').code,
      'ENGINE_WORKER_CRASHED',
    );
    assert.equal(decodeFailure('something else').code, 'INTERNAL');
    assert.equal(decodeFailure(undefined).code, 'INTERNAL');
    assert.equal(decodeFailure('moe-error:{not json').code, 'INTERNAL');
  });

  it('engine errors are retried; request errors and deadlines are not', () => {
    assert.ok(isRetryable(new MoeError('ENGINE_WORKER_CRASHED', 'x')));
    assert.ok(isRetryable(new MoeError('ENGINE_FAILED', 'x')));
    // A worker behind on the adapter registry: another attempt (maybe elsewhere) may succeed.
    assert.ok(isRetryable(new MoeError('ADAPTERS_SYNCING', 'x')));
    assert.ok(!isRetryable(new MoeError('REQUEST_TIMEOUT', 'x')));
    assert.ok(!isRetryable(new MoeError('ROUTING_INVALID_K', 'x')));
    assert.ok(!isRetryable(new MoeError('INPUT_EMPTY', 'x')));
  });

  it('embeddings travel exactly, as base64 of little-endian float32', () => {
    const embedding = new Float32Array([0, -0.5, 1 / 3, 1e-38, -3.4e38, Math.PI]);
    const text = encodeEmbedding(embedding);
    assert.equal(typeof text, 'string');
    assert.equal(Buffer.from(text, 'base64').length, embedding.length * 4);
    assert.deepEqual(decodeEmbedding(text), embedding);
    // A view into a larger buffer encodes only its own bytes.
    const view = new Float32Array(new Float32Array([9, 1, 2, 9]).buffer, 4, 2);
    assert.deepEqual(decodeEmbedding(encodeEmbedding(view)), new Float32Array([1, 2]));
  });

  it('job options: attempts, exponential backoff; only durable jobs keep their result', () => {
    const settings = {
      redisUrl: 'redis://127.0.0.1:6379',
      name: 'q',
      prefix: 'p',
      attempts: 4,
      backoffMs: 50,
      resultTtlSeconds: 120,
    };
    const sync = jobOptions(settings, 'job-1', JOB_NAMES.request);
    assert.equal(sync.jobId, 'job-1');
    assert.equal(sync.attempts, 4);
    assert.deepEqual(sync.backoff, { type: 'exponential', delay: 50 });
    // Answered through the reply stream: nothing stays in Redis.
    assert.equal(sync.removeOnComplete, true);
    assert.equal(sync.removeOnFail, true);
    const durable = jobOptions(settings, 'job-2', JOB_NAMES.durable);
    assert.deepEqual(durable.removeOnComplete, { age: 120 });
    assert.deepEqual(durable.removeOnFail, { age: 120 });
  });

  it('replies travel as flat stream fields and come back the same', () => {
    const result = {
      v: CONTRACT_VERSION,
      results: [{ routing: {}, outputs: {}, embedding: encodeEmbedding(new Float32Array([1])) }],
      timings: { queueMs: 1, forwardMs: 2, waitMs: 4 },
    } as const;
    assert.deepEqual(parseReply(replyFields({ job: 'a', result })), { job: 'a', result });
    const failure = encodeFailure(new MoeError('REQUEST_TIMEOUT', 'late'));
    assert.deepEqual(parseReply(replyFields({ job: 'b', failure })), { job: 'b', failure });
    assert.equal(parseReply(['x', 'y']), undefined);
    // A result that does not parse still answers its request, with INTERNAL.
    const broken = parseReply(['j', 'c', 'r', '{']);
    assert.ok(broken !== undefined && 'failure' in broken);
    assert.equal(decodeFailure(broken.failure).code, 'INTERNAL');
  });

  it('the Redis keys of one queue live under its prefix and name', () => {
    const keys = queueKeys({ prefix: 'p', name: 'q' });
    assert.equal(keys.replies('host:1:ab'), 'p:q:replies:host:1:ab');
    assert.equal(keys.registry, 'p:q:registry');
    assert.equal(keys.registryWorker('w'), 'p:q:registry:worker:w');
    for (const key of [keys.registryChanged, keys.registryLock, keys.registryWorkers]) {
      assert.ok(key.startsWith('p:q:registry'));
    }
  });
});
