/**
 * Composition root of the queue worker role (`npm run worker`): config -> model (pack, tokenizer,
 * engine) -> the embedded service (batcher, metrics) -> a BullMQ worker on the queue that API
 * nodes in queue mode (QUEUE=redis) fill. Optionally an HTTP server with /metrics and
 * /health/ready (WORKER_METRICS_PORT).
 *
 * SIGTERM/SIGINT: stop taking jobs, finish the jobs held, stop the engine threads by message,
 * exit 0. A worker killed outright (SIGKILL, a lost machine) loses nothing: its jobs' locks
 * expire and other workers take them again.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadConfig, modelOptions } from './config.js';
import { fallbackWarning } from './engine/engine.js';
import { readinessBody } from './http/ops-routes.js';
import { Model } from './inference/model.js';
import { EmbeddedInference } from './inference/service.js';
import { Metrics } from './metrics.js';
import { DEFAULT_PACK_DIR, ensurePack } from './tools/default-pack.js';
import { queueSettings } from './transport/contract.js';
import { QueueWorker } from './transport/queue-worker.js';
import { jsonLogger } from './util/log.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const log = jsonLogger(config.LOG_LEVEL);
  const packDir = await ensurePack(
    config.MODEL_DIR === DEFAULT_PACK_DIR ? undefined : config.MODEL_DIR,
    (line) => log('info', line),
  );
  const model = await Model.open(modelOptions(config, packDir));
  const provider = model.engine.providerStatus;
  const warning = fallbackWarning(provider);
  if (warning !== undefined) {
    log('warn', warning, {
      provider: provider.provider,
      requested: provider.requested,
      reason: provider.fallbackReason,
    });
  }
  const metrics = new Metrics();
  const service = new EmbeddedInference(model, metrics, {
    maxBatchItems: config.MAX_BATCH_ITEMS,
    maxBatchTokens: config.MAX_BATCH_TOKENS,
    maxQueueDelayMs: config.MAX_QUEUE_DELAY_MS,
    // Admission is by job count (WORKER_CONCURRENCY jobs held at once), not by items here.
    maxQueuedItems: Number.MAX_SAFE_INTEGER,
  });
  const worker = new QueueWorker(model, service, metrics, {
    settings: queueSettings(config),
    concurrency: config.WORKER_CONCURRENCY,
    batchItems: config.MAX_BATCH_ITEMS,
    lockMs: config.JOB_LOCK_MS,
    adapterRoot: config.ADAPTER_ROOT,
    syncTimeoutMs: config.ADAPTER_SYNC_TIMEOUT_MS,
    log,
  });
  await worker.start(); // applies the adapter registry as Redis has it, then takes jobs
  const server =
    config.WORKER_METRICS_PORT === undefined
      ? undefined
      : await serveOps(worker, metrics, config.HOST, config.WORKER_METRICS_PORT);
  if (server !== undefined) {
    const { port } = server.address() as AddressInfo;
    log('info', `worker metrics at http://${config.HOST}:${port}/metrics`, { port });
  }

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    void (async () => {
      log('info', 'shutting down: no new jobs, finishing those held', { signal });
      const timer = setTimeout(() => {
        log(
          'error',
          'shutdown timed out; exiting with jobs held (their locks expire, others take them)',
        );
        process.exit(1);
      }, config.SHUTDOWN_TIMEOUT_MS);
      timer.unref();
      await worker.close();
      server?.close();
      log('info', 'stopped');
      process.exit(0);
    })();
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  log('info', `worker serving ${model.name}`, {
    model: model.name,
    workers: model.engine.settings.workers,
    intraOpThreads: model.engine.settings.intraOpThreads,
    provider: model.engine.provider,
  });
}

/** /metrics, /health/live and /health/ready of the worker role, on node:http (no Fastify). */
function serveOps(
  worker: QueueWorker,
  metrics: Metrics,
  host: string,
  port: number,
): Promise<Server> {
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET') {
      response.writeHead(405).end();
    } else if (path === '/metrics') {
      metrics.text().then(
        (text) => response.writeHead(200, { 'content-type': metrics.contentType }).end(text),
        () => response.writeHead(500).end(),
      );
    } else if (path === '/health/live') {
      response.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
    } else if (path === '/health/ready') {
      const readiness = worker.readiness();
      response
        .writeHead(readiness.ready ? 200 : 503, { 'content-type': 'application/json' })
        .end(JSON.stringify(readinessBody(readiness)));
    } else {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

main().catch((error: unknown) => {
  process.stderr.write(
    `moe-serve worker failed to start: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(1);
});
