/**
 * Engine worker thread: owns the ORT sessions (the backbone, and one mixture session per live
 * mixture version) and runs batches. session.run() blocks this thread for the whole forward pass,
 * which is why it lives here and never on the HTTP thread (FIELD-NOTES: onnxruntime-node).
 *
 * Messages are handled strictly one at a time, in arrival order: a graph swap or a stop that
 * arrives while a batch runs waits for that batch to finish.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import {
  groupBiasName,
  groupExpertsName,
  groupKmaxName,
  groupKName,
  groupWeightsName,
  headScoresName,
  MIXTURE_INPUT_HIDDEN,
  MIXTURE_INPUT_IDS,
  MIXTURE_INPUT_MASK,
  MIXTURE_OUTPUT_EMBEDDING,
} from '../onnx/mixture-contract.js';
import type {
  HostMessage,
  MixtureGraph,
  RunRequest,
  SessionSettings,
  WorkerInit,
  WorkerMessage,
} from './protocol.js';

const BACKBONE_OUTPUT = 'last_hidden_state';

interface MixtureSession {
  readonly session: ort.InferenceSession;
  readonly groupCount: number;
  readonly headCount: number;
  /** The graph reads the token ids too (a group has a token_bag gate). */
  readonly takesIds: boolean;
}

const port = parentPort;
if (port === null) throw new Error('engine-worker.js must run as a worker thread');
const init = workerData as WorkerInit;
const mixtures = new Map<number, MixtureSession>();
let backbone: ort.InferenceSession | undefined;
let feedsTokenTypes = false;

function post(message: WorkerMessage, transfer: ArrayBuffer[] = []): void {
  port!.postMessage(message, transfer);
}

function sessionOptions(settings: SessionSettings): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [providerOption(settings)],
    intraOpNumThreads: settings.intraOpThreads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    // Idle intra-op threads must sleep, not spin: spinning pools took both cores between batches
    // and starved the HTTP thread (measured: engine CPU per item 10 -> 4 ms at batch 1).
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  };
}

/** The provider entry ORT takes: only `cuda` accepts a device id (webgpu rejects the option). */
function providerOption(settings: SessionSettings): ort.InferenceSession.ExecutionProviderConfig {
  return settings.executionProvider === 'cuda'
    ? { name: 'cuda', deviceId: settings.deviceId }
    : settings.executionProvider;
}

/** Settings of the sessions this worker runs (after a fallback: cpu, not what was asked for). */
let active: SessionSettings = init.session;

async function loadMixture(graph: MixtureGraph): Promise<void> {
  const session = await ort.InferenceSession.create(graph.bytes, sessionOptions(active));
  mixtures.set(graph.version, {
    session,
    groupCount: graph.groupCount,
    headCount: graph.headCount,
    takesIds: session.inputNames.includes(MIXTURE_INPUT_IDS),
  });
}

/** Create the backbone session and the initial mixture sessions on `active`'s provider. */
async function openSessions(): Promise<void> {
  backbone = await ort.InferenceSession.create(init.backbonePath, sessionOptions(active));
  for (const name of ['input_ids', 'attention_mask']) {
    if (!backbone.inputNames.includes(name)) {
      throw new Error(
        `backbone ${init.backbonePath} has no input '${name}' (inputs: ${backbone.inputNames.join(', ')}); ` +
          'export it with the Hugging Face feature-extraction contract',
      );
    }
  }
  if (!backbone.outputNames.includes(BACKBONE_OUTPUT)) {
    throw new Error(
      `backbone ${init.backbonePath} has no output '${BACKBONE_OUTPUT}' (outputs: ${backbone.outputNames.join(', ')})`,
    );
  }
  feedsTokenTypes = backbone.inputNames.includes('token_type_ids');
  for (const graph of init.mixtures) await loadMixture(graph);
}

async function releaseSessions(): Promise<void> {
  for (const mixture of mixtures.values()) await mixture.session.release().catch(() => undefined);
  mixtures.clear();
  await backbone?.release().catch(() => undefined);
  backbone = undefined;
}

/**
 * Open the sessions on the requested provider. ORT does not fall back by itself: with
 * `['cuda', 'cpu']` session creation throws when cuda cannot start (FIELD-NOTES). So when a GPU
 * provider fails, the same graphs are tried on cpu: if they fail there too the graphs are at fault
 * (init-failed); if they load, the provider is, and the worker either serves on cpu and says so
 * (`ready` with `fallbackReason`) or, with fallback off, reports `provider-failed` and exits.
 */
async function start(): Promise<void> {
  const requested = init.session.executionProvider;
  try {
    await openSessions();
    post({ type: 'ready', provider: requested, versions: [...mixtures.keys()] });
    return;
  } catch (error) {
    await releaseSessions();
    if (requested === 'cpu') fail({ type: 'init-failed', message: errorMessage(error) });
    // ORT's messages may span lines (source paths, driver warnings): one line for logs and health.
    const reason = errorMessage(error).replace(/\s+/g, ' ').trim().replace(/\.$/, '');
    active = { ...init.session, executionProvider: 'cpu' };
    try {
      await openSessions();
    } catch (cpuError) {
      fail({ type: 'init-failed', message: errorMessage(cpuError) });
    }
    if (!init.session.allowFallback) {
      await releaseSessions();
      fail({ type: 'provider-failed', provider: requested, message: reason });
    }
    post({
      type: 'ready',
      provider: 'cpu',
      versions: [...mixtures.keys()],
      fallbackReason: reason,
    });
  }
}

/** Report why this worker cannot start, and exit. */
function fail(message: WorkerMessage): never {
  post(message);
  process.exit(1);
}

async function run(request: RunRequest): Promise<void> {
  const mixture = mixtures.get(request.version);
  if (mixture === undefined) {
    post({
      type: 'run-failed',
      id: request.id,
      message: `mixture version ${request.version} is not loaded in this worker`,
    });
    return;
  }
  const dims = [request.batchSize, request.sequenceLength];
  const ids = new ort.Tensor('int64', request.inputIds, dims);
  const mask = new ort.Tensor('int64', request.attentionMask, dims);
  const backboneFeeds: Record<string, ort.Tensor> = { input_ids: ids, attention_mask: mask };
  if (feedsTokenTypes) {
    backboneFeeds.token_type_ids = new ort.Tensor(
      'int64',
      new BigInt64Array(request.inputIds.length),
      dims,
    );
  }
  const t0 = performance.now();
  const hidden = (await backbone!.run(backboneFeeds, [BACKBONE_OUTPUT]))[BACKBONE_OUTPUT]!; // [B,T,d]
  const t1 = performance.now();

  const feeds: Record<string, ort.Tensor> = {
    [MIXTURE_INPUT_HIDDEN]: hidden,
    [MIXTURE_INPUT_MASK]: mask,
  };
  if (mixture.takesIds) feeds[MIXTURE_INPUT_IDS] = ids;
  request.groups.forEach((group, i) => {
    const experts = group.bias.length / request.batchSize;
    feeds[groupBiasName(i)] = new ort.Tensor('float32', group.bias, [request.batchSize, experts]);
    feeds[groupKName(i)] = new ort.Tensor('int64', group.k, [request.batchSize]);
    feeds[groupKmaxName(i)] = new ort.Tensor('int64', BigInt64Array.of(BigInt(group.kmax)), [1]);
  });
  const out = await mixture.session.run(feeds);
  const t2 = performance.now();

  // Copies: small outputs, and a copy gives each its own buffer to transfer.
  const float = (name: string) => (out[name]!.data as Float32Array).slice();
  const int64 = (name: string) => (out[name]!.data as BigInt64Array).slice();
  const outputs = {
    experts: range(mixture.groupCount).map((i) => int64(groupExpertsName(i))),
    weights: range(mixture.groupCount).map((i) => float(groupWeightsName(i))),
    embedding: float(MIXTURE_OUTPUT_EMBEDDING),
    scores: range(mixture.headCount).map((j) => float(headScoresName(j))),
  };
  const transfer = [
    ...outputs.experts,
    ...outputs.weights,
    outputs.embedding,
    ...outputs.scores,
  ].map((a) => a.buffer as ArrayBuffer);
  post(
    {
      type: 'result',
      id: request.id,
      outputs,
      timings: { backboneMs: t1 - t0, mixtureMs: t2 - t1 },
    },
    transfer,
  );
}

async function handle(message: HostMessage): Promise<void> {
  switch (message.type) {
    case 'run':
      try {
        await run(message);
      } catch (error) {
        post({ type: 'run-failed', id: message.id, message: errorMessage(error) });
      }
      return;
    case 'load-mixture':
      try {
        await loadMixture(message.graph);
        post({ type: 'mixture-loaded', version: message.graph.version });
      } catch (error) {
        post({
          type: 'mixture-failed',
          version: message.graph.version,
          message: errorMessage(error),
        });
      }
      return;
    case 'release-mixture': {
      const mixture = mixtures.get(message.version);
      mixtures.delete(message.version);
      await mixture?.session.release();
      return;
    }
    case 'stop':
      for (const mixture of mixtures.values()) await mixture.session.release();
      await backbone?.release();
      process.exit(0);
      return;
    case 'crash':
      if (init.allowFaultInjection)
        throw new Error('fault injection: engine worker crash requested');
      return;
  }
}

// One message at a time, in order (see the header comment).
let queue: Promise<void> = start();
port.on('message', (message: HostMessage) => {
  queue = queue.then(() => handle(message));
});

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
