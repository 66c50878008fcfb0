/**
 * Composition root of the API role: config -> model -> inference service -> app -> listen, and a
 * graceful shutdown on SIGTERM/SIGINT (stop accepting, answer what is in flight, stop the engine
 * workers by message, exit 0).
 */
import { buildApp } from './app.js';
import { loadConfig } from './config.js';
import { Model } from './inference/model.js';
import { EmbeddedInference } from './inference/service.js';
import { Metrics } from './metrics.js';
import { DEFAULT_PACK_DIR, ensurePack } from './tools/default-pack.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const packDir = await ensurePack(
    config.MODEL_DIR === DEFAULT_PACK_DIR ? undefined : config.MODEL_DIR,
    log,
  );
  const model = await Model.open({
    packDir,
    truncation: config.TRUNCATION,
    engine: {
      workers: config.ENGINE_WORKERS,
      ...(config.ENGINE_THREADS === undefined ? {} : { intraOpThreads: config.ENGINE_THREADS }),
      executionProvider: config.EXECUTION_PROVIDER,
    },
  });
  const metrics = new Metrics();
  const inference = new EmbeddedInference(model, metrics, {
    maxBatchItems: config.MAX_BATCH_ITEMS,
    maxBatchTokens: config.MAX_BATCH_TOKENS,
    maxQueueDelayMs: config.MAX_QUEUE_DELAY_MS,
    maxQueuedItems: config.MAX_QUEUED_ITEMS,
  });
  const app = await buildApp({
    inference,
    metrics,
    logger: { level: config.LOG_LEVEL },
    limits: {
      maxInputs: config.MAX_INPUTS,
      maxInputChars: config.MAX_INPUT_CHARS,
      requestTimeoutMs: config.REQUEST_TIMEOUT_MS,
      bodyLimitBytes: config.BODY_LIMIT_BYTES,
    },
    adminApiKey: config.ADMIN_API_KEY,
    adapterRoot: config.ADAPTER_ROOT,
    version: model.pack.manifest.version,
  });

  let stopping: Promise<void> | undefined;
  const shutdown = (signal: string) => {
    stopping ??= (async () => {
      app.log.info({ signal }, 'shutting down: no new requests, finishing those in flight');
      const timer = setTimeout(() => {
        app.log.error('shutdown timed out; exiting with requests still in flight');
        process.exit(1);
      }, config.SHUTDOWN_TIMEOUT_MS);
      timer.unref();
      await app.close(); // stops accepting; waits for in-flight requests
      await inference.close(); // drains the batcher, stops engine workers by message
      app.log.info('stopped');
      process.exit(0);
    })();
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));

  await app.listen({ port: config.PORT, host: config.HOST });
  app.log.info(
    {
      model: model.name,
      workers: model.engine.settings.workers,
      intraOpThreads: model.engine.settings.intraOpThreads,
      provider: model.engine.provider,
      adminRoutes: config.ADMIN_API_KEY === undefined ? 'disabled' : 'enabled',
    },
    `serving ${model.name}; API docs at /docs`,
  );
}

main().catch((error: unknown) => {
  process.stderr.write(
    `moe-serve failed to start: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(1);
});
