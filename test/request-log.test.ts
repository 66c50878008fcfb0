/**
 * REQUEST_LOG: which requests the log records. 'all' is fastify's request log (a line when a
 * request arrives, one when it is answered); 'errors' keeps one line per answer with a status >=
 * 400; 'off' none (failures are still logged by the error handler). Checked on the real app with
 * a fixture pack, reading the JSON log lines it writes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { buildFixturePack } from './support/fixture-pack.js';
import { buildTestService } from './support/listening-app.js';

interface LogLine {
  msg?: string;
  reqId?: string;
  req?: { method?: string; url?: string };
  res?: { statusCode?: number };
}

const root = await mkdtemp(join(tmpdir(), 'request-log-test-'));
let packDir: string;
before(async () => {
  packDir = await buildFixturePack(join(root, 'pack'), { seed: 3 });
});
after(() => rm(root, { recursive: true, force: true }));

/** The log lines of one good request and two failing ones, under `requestLog`. */
async function linesOf(requestLog: 'all' | 'errors' | 'off'): Promise<LogLine[]> {
  const lines: LogLine[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  const service = await buildTestService({
    packDir,
    adapterRoot: root,
    logger: { level: 'info', stream },
    requestLog,
  });
  try {
    const ok = await service.app.inject({
      method: 'POST',
      url: '/v1/infer',
      payload: { inputs: ['hello world'] },
    });
    assert.equal(ok.statusCode, 200, ok.body);
    const bad = await service.app.inject({
      method: 'POST',
      url: '/v1/infer',
      payload: { inputs: 'not a list' },
    });
    assert.equal(bad.statusCode, 400, bad.body);
    const missing = await service.app.inject({ method: 'GET', url: '/v1/nothing' });
    assert.equal(missing.statusCode, 404);
  } finally {
    await service.close();
  }
  return lines.filter((l) => l.msg === 'incoming request' || l.msg === 'request completed');
}

describe('REQUEST_LOG', () => {
  test("'all': a line on arrival and one on answer for every request", async () => {
    const lines = await linesOf('all');
    assert.equal(lines.filter((l) => l.msg === 'incoming request').length, 3);
    assert.deepEqual(
      lines.filter((l) => l.msg === 'request completed').map((l) => l.res?.statusCode),
      [200, 400, 404],
    );
  });

  test("'errors': one line per answer with a status >= 400, with method, url and status", async () => {
    const lines = await linesOf('errors');
    assert.deepEqual(
      lines.map((l) => [l.msg, l.req?.method, l.req?.url, l.res?.statusCode]),
      [
        ['request completed', 'POST', '/v1/infer', 400],
        ['request completed', 'GET', '/v1/nothing', 404],
      ],
    );
    assert.ok(lines.every((l) => typeof l.reqId === 'string'));
  });

  test("'off': no request lines", async () => {
    assert.deepEqual(await linesOf('off'), []);
  });
});
