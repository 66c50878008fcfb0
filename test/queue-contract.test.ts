/** The queue contract on its own: how failures and embeddings travel between the two roles. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MoeError } from '../src/errors.js';
import {
  decodeEmbedding,
  decodeFailure,
  encodeEmbedding,
  encodeFailure,
  isRetryable,
  jobOptions,
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

  it('job options: attempts, exponential backoff, results kept for the TTL', () => {
    const options = jobOptions(
      {
        redisUrl: 'redis://127.0.0.1:6379',
        name: 'q',
        prefix: 'p',
        attempts: 4,
        backoffMs: 50,
        resultTtlSeconds: 120,
      },
      'job-1',
    );
    assert.equal(options.jobId, 'job-1');
    assert.equal(options.attempts, 4);
    assert.deepEqual(options.backoff, { type: 'exponential', delay: 50 });
    assert.deepEqual(options.removeOnComplete, { age: 120 });
    assert.deepEqual(options.removeOnFail, { age: 120 });
  });
});
