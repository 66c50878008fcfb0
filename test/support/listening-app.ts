/**
 * The real service for protocol tests: a fixture-pack model with real engine workers, the
 * embedded inference service and `buildApp`, listening on 127.0.0.1 with an ephemeral port so
 * that client libraries (openai, openapi-fetch) talk to it over real HTTP.
 */
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { type AppOptions, buildApp } from '../../src/app.js';
import { Model } from '../../src/inference/model.js';
import { EmbeddedInference, type EmbeddedOptions } from '../../src/inference/service.js';
import { Metrics } from '../../src/metrics.js';
import { FIXTURE_TEXTS } from './fixture-pack.js';

export interface ListeningApp {
  readonly app: FastifyInstance;
  readonly model: Model;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  close(): Promise<void>;
}

/** The app as main.ts wires it, over a freshly opened model; not listening yet. */
export interface TestService {
  readonly app: FastifyInstance;
  readonly model: Model;
  readonly inference: EmbeddedInference;
  readonly metrics: Metrics;
  close(): Promise<void>;
}

export interface TestServiceOptions {
  readonly packDir: string;
  readonly adapterRoot: string;
  readonly adminApiKey?: string | undefined;
  readonly limits?: Partial<AppOptions['limits']>;
  readonly batching?: Partial<EmbeddedOptions>;
  readonly logger?: AppOptions['logger'];
  readonly requestLog?: AppOptions['requestLog'];
  readonly allowFaultInjection?: boolean;
  /** Named compositions (default: the app's in-memory store). */
  readonly compositions?: AppOptions['compositions'];
  readonly fitLimits?: AppOptions['fitLimits'];
}

/** One engine worker with one thread, default batching, small request limits. */
export async function buildTestService(options: TestServiceOptions): Promise<TestService> {
  const model = await Model.open({
    packDir: options.packDir,
    engine: {
      workers: 1,
      intraOpThreads: 1,
      allowFaultInjection: options.allowFaultInjection ?? false,
    },
  });
  const metrics = new Metrics();
  const inference = new EmbeddedInference(model, metrics, {
    maxBatchItems: 32,
    maxBatchTokens: 8192,
    maxQueueDelayMs: 0,
    maxQueuedItems: 1024,
    ...options.batching,
  });
  const app = await buildApp({
    inference,
    metrics,
    limits: {
      maxInputs: 16,
      maxInputChars: 2000,
      maxRequestChars: 64_000,
      requestTimeoutMs: 30_000,
      bodyLimitBytes: 256 * 1024,
      ...options.limits,
    },
    adminApiKey: options.adminApiKey,
    adapterRoot: options.adapterRoot,
    ...(options.compositions === undefined ? {} : { compositions: options.compositions }),
    ...(options.fitLimits === undefined ? {} : { fitLimits: options.fitLimits }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
    ...(options.requestLog === undefined ? {} : { requestLog: options.requestLog }),
  });
  return {
    app,
    model,
    inference,
    metrics,
    async close() {
      await app.close();
      await inference.close();
    },
  };
}

export interface ListeningAppOptions extends TestServiceOptions {
  /** Called with the app before it listens (to add hooks). */
  readonly beforeListen?: (app: FastifyInstance) => void;
}

export async function startListeningApp(options: ListeningAppOptions): Promise<ListeningApp> {
  const service = await buildTestService(options);
  options.beforeListen?.(service.app);
  const url = await service.app.listen({ host: '127.0.0.1', port: 0 });
  return { app: service.app, model: service.model, url, close: () => service.close() };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export interface NativeResult {
  embedding: number[];
  routing: Record<string, { adapter: string; weight: number }[]>;
  outputs: Record<string, { label: string; score: number; scores: Record<string, number> }>;
  tokens: number;
}

/** POST /v1/infer returning embeddings and scores: its results, in input order. */
export async function nativeEmbeddings(
  url: string,
  body: Record<string, unknown>,
): Promise<NativeResult[]> {
  const response = await fetch(`${url}/v1/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, return: ['embedding', 'scores'] }),
  });
  if (response.status !== 200)
    throw new Error(`/v1/infer: ${response.status} ${await response.text()}`);
  return ((await response.json()) as { results: NativeResult[] }).results;
}

/**
 * Keep the engine saturated with direct batches (outside the batcher), so that whatever the HTTP
 * side submits stays queued in the batcher until `stop()`: 4 streams > 1 worker x pipeline depth 2.
 */
export async function keepEngineBusy(model: Model): Promise<{ stop(): Promise<void> }> {
  const items = await model.prepare({
    inputs: Array.from({ length: 32 }, (_, i) => FIXTURE_TEXTS[i % FIXTURE_TEXTS.length]!),
  });
  let stopped = false;
  const stream = async () => {
    while (!stopped) await model.engine.run(items);
  };
  const streams = [stream(), stream(), stream(), stream()];
  assert.equal(model.engine.freeCapacity, 0, 'the engine still has room');
  return {
    async stop() {
      stopped = true;
      await Promise.all(streams);
    },
  };
}

export async function until(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 15_000,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
