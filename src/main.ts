/**
 * Composition root of the API role: config -> model -> inference service -> app -> listen, and a
 * graceful shutdown on SIGTERM/SIGINT (stop accepting, answer what is in flight, stop the engine
 * workers by message, exit 0).
 */
import { join } from 'node:path';
import { buildApp } from './app.js';
import { type FitJobStates, FitJobs, MemoryFitJobStates } from './compositions/fit-jobs.js';
import { type CompositionStore, FileCompositionStore } from './compositions/store.js';
import { type Config, loadConfig, modelOptions } from './config.js';
import { fallbackWarning } from './engine/engine.js';
import { Model, ModelFrontend } from './inference/model.js';
import { EmbeddedInference, type Inference, type JobQueue } from './inference/service.js';
import { Metrics } from './metrics.js';
import { DEFAULT_PACK_DIR, ensurePack } from './tools/default-pack.js';
import { RedisCompositionStore } from './transport/composition-store-redis.js';
import { queueKeys, queueSettings } from './transport/contract.js';
import { RedisFitJobStates } from './transport/fit-job-state-redis.js';
import { QueueInference } from './transport/queue-client.js';
import { jsonLogger } from './util/log.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const packDir = await ensurePack(
    config.MODEL_DIR === DEFAULT_PACK_DIR ? undefined : config.MODEL_DIR,
    log,
  );
  const metrics = new Metrics();
  const { model, inference, jobs, compositions, fitStates } =
    config.QUEUE === 'redis'
      ? await openQueueMode(config, packDir, metrics)
      : await openEmbedded(config, packDir, metrics);
  await compositions.start();
  const fits = new FitJobs({
    inference,
    store: compositions,
    states: fitStates,
    maxRunning: config.FIT_MAX_RUNNING,
  });
  const app = await buildApp({
    inference,
    jobs,
    compositions,
    fits,
    fitLimits: {
      maxExamples: config.FIT_MAX_EXAMPLES,
      maxEvaluations: config.FIT_MAX_EVALUATIONS,
      maxSeconds: config.FIT_MAX_SECONDS,
    },
    metrics,
    logger: { level: config.LOG_LEVEL },
    requestLog: config.REQUEST_LOG,
    limits: {
      maxInputs: config.MAX_INPUTS,
      maxInputChars: config.MAX_INPUT_CHARS,
      maxRequestChars: config.MAX_REQUEST_CHARS,
      requestTimeoutMs: config.REQUEST_TIMEOUT_MS,
      bodyLimitBytes: config.BODY_LIMIT_BYTES,
    },
    adminApiKey: config.ADMIN_API_KEY,
    adapterRoot: config.ADAPTER_ROOT,
    version: model.pack.manifest.version,
  });

  const provider = model instanceof Model ? model.engine.providerStatus : undefined;
  const warning = provider === undefined ? undefined : fallbackWarning(provider);
  if (provider !== undefined && warning !== undefined) {
    // Once per process: every engine worker fell back for the same reason.
    app.log.warn(
      {
        provider: provider.provider,
        requested: provider.requested,
        reason: provider.fallbackReason,
      },
      warning,
    );
  }

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return; // SIGTERM then SIGINT: one shutdown
    stopping = true;
    void (async () => {
      app.log.info({ signal }, 'shutting down: no new requests, finishing those in flight');
      const timer = setTimeout(() => {
        app.log.error('shutdown timed out; exiting with requests still in flight');
        process.exit(1);
      }, config.SHUTDOWN_TIMEOUT_MS);
      timer.unref();
      // Stop accepting (requests on open connections get 503 DRAINING from then on) and answer
      // every request already taken. The service stays open meanwhile: a request that arrived
      // before the signal may still be reading its body or tokenizing, and must not meet a
      // closed service. Keep-alive connections that go idle (their answer sent) or never sent a
      // request would hold the close open until they time out: close them as they go idle.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 100);
      sweep.unref();
      await app.close(); // running composition fits end here (cancelled)
      clearInterval(sweep);
      await inference.close(); // embedded: drains the batcher, stops engine workers; queue: closes Redis links
      await compositions.close();
      await fitStates.close();
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
      queue: config.QUEUE,
      ...(model instanceof Model
        ? {
            workers: model.engine.settings.workers,
            intraOpThreads: model.engine.settings.intraOpThreads,
            provider: model.engine.provider,
          }
        : {}),
      adminRoutes: config.ADMIN_API_KEY === undefined ? 'disabled' : 'enabled',
    },
    `serving ${model.name}; API docs at /docs`,
  );
}

interface Served {
  readonly model: ModelFrontend;
  readonly inference: Inference;
  readonly jobs: JobQueue | undefined;
  /** Named compositions: a file beside the pack (embedded) or Redis (queue); not started yet. */
  readonly compositions: CompositionStore;
  readonly fitStates: FitJobStates;
}

/** Embedded mode: pack, tokenizer, batcher and engine in this process. */
async function openEmbedded(config: Config, packDir: string, metrics: Metrics): Promise<Served> {
  const model = await Model.open(modelOptions(config, packDir));
  const inference = new EmbeddedInference(model, metrics, {
    maxBatchItems: config.MAX_BATCH_ITEMS,
    maxBatchTokens: config.MAX_BATCH_TOKENS,
    maxQueueDelayMs: config.MAX_QUEUE_DELAY_MS,
    maxQueuedItems: config.MAX_QUEUED_ITEMS,
  });
  const stateDir = config.STATE_DIR ?? join(packDir, '.state');
  return {
    model,
    inference,
    jobs: undefined,
    compositions: FileCompositionStore.inFolder(stateDir, model.name),
    fitStates: new MemoryFitJobStates(config.JOB_RESULT_TTL_SECONDS * 1000),
  };
}

/** Queue mode: tokenize here (no engine), run on workers (`npm run worker`) over Redis. */
async function openQueueMode(config: Config, packDir: string, metrics: Metrics): Promise<Served> {
  const model = await ModelFrontend.open({ packDir, truncation: config.TRUNCATION });
  const inference = new QueueInference(model, metrics, {
    settings: queueSettings(config),
    addTimeoutMs: config.QUEUE_ADD_TIMEOUT_MS,
    maxQueuedItems: config.MAX_QUEUED_ITEMS,
    jobTimeoutMs: config.JOB_TIMEOUT_MS,
    adapterRoot: config.ADAPTER_ROOT,
    syncTimeoutMs: config.ADAPTER_SYNC_TIMEOUT_MS,
    log: jsonLogger(config.LOG_LEVEL),
  });
  await inference.start(); // the adapter registry as Redis has it (when Redis is reachable)
  const settings = queueSettings(config);
  const keys = queueKeys(settings);
  return {
    model,
    inference,
    jobs: inference,
    compositions: new RedisCompositionStore({
      redisUrl: settings.redisUrl,
      keys,
      log: jsonLogger(config.LOG_LEVEL),
    }),
    fitStates: new RedisFitJobStates(settings.redisUrl, keys, config.JOB_RESULT_TTL_SECONDS),
  };
}

main().catch((error: unknown) => {
  process.stderr.write(
    `moe-serve failed to start: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(1);
});
