/**
 * The baseline of `bench/http.ts`: a minimal HTTP server that runs ONE forward pass per request
 * (tokenize, then `engine.run` with a batch of one item, awaited), with no batcher. Concurrent
 * requests still run side by side on the engine's workers, as a naive server on the same engine
 * would; what it lacks is batching across requests. Plain node:http (no schema validation, no
 * metrics), so its HTTP path is cheaper than the real app's: the comparison favours it.
 *
 *   MODEL_DIR=models/demo ENGINE_WORKERS=1 ENGINE_THREADS=2 node dist/bench/naive-server.js
 *
 * Listens on 127.0.0.1, port 0; prints `{"port":N}` on stdout once listening. POST /v1/infer with
 * `{"inputs": ["text"]}` answers the routing and each task's label and score. SIGTERM stops it.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Model } from '../src/inference/model.js';

const MAX_BODY_BYTES = 1 << 20;

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('body too large'));
        request.destroy();
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

function send(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  response.end(text);
}

async function main(): Promise<void> {
  const packDir = process.env.MODEL_DIR;
  if (packDir === undefined) throw new Error('MODEL_DIR is required');
  const threads = process.env.ENGINE_THREADS;
  const model = await Model.open({
    packDir,
    engine: {
      workers: Number(process.env.ENGINE_WORKERS ?? '1'),
      ...(threads === undefined ? {} : { intraOpThreads: Number(threads) }),
    },
  });

  const server = createServer((request, response) => {
    if (request.method !== 'POST' || request.url !== '/v1/infer') {
      send(response, 404, { error: 'not found' });
      return;
    }
    readBody(request)
      .then(async (raw) => {
        const body = JSON.parse(raw) as { inputs?: unknown };
        const inputs = body.inputs;
        if (!Array.isArray(inputs) || inputs.length !== 1 || typeof inputs[0] !== 'string') {
          send(response, 400, { error: 'send {"inputs": ["one text"]}' });
          return;
        }
        // One item, one forward pass: the request waits for its own batch of one.
        const [result] = await model.infer({ inputs: [inputs[0]] });
        send(response, 200, {
          model: model.name,
          results: [
            {
              routing: result!.routing,
              outputs: Object.fromEntries(
                Object.entries(result!.outputs).map(([task, out]) => [
                  task,
                  { label: out.label, score: out.score },
                ]),
              ),
              tokens: result!.tokens,
              truncated: result!.truncated,
            },
          ],
        });
      })
      .catch((error: unknown) => {
        if (!response.headersSent) {
          send(response, 500, { error: error instanceof Error ? error.message : String(error) });
        }
      });
  });
  server.keepAliveTimeout = 60_000;

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close();
    server.closeIdleConnections();
    model.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`${JSON.stringify({ port })}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(
    `naive-server failed: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(1);
});
