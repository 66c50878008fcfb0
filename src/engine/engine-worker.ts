/**
 * Engine worker thread: owns the ORT session of the pack graph (and of an external ONNX backbone,
 * for export folders), owns the slot banks, and runs batches. session.run() blocks this thread for
 * the whole forward pass, which is why it lives here and never on the HTTP thread (FIELD-NOTES).
 *
 * Slot banks are graph inputs backed by typed arrays this worker owns (pack-session.ts). On cpu
 * onnxruntime-node hands them to the session without copying them (FIELD-NOTES: a 1 GB input costs
 * 0.4 ms per run), so a slot write is a copy into the array and nothing else. On a GPU provider
 * the banks are kept on the device instead, and the first batch after a write brings them up to
 * date there (bank-residency.ts says how, per provider, and why).
 *
 * Messages are handled strictly one at a time, in arrival order: a slot write or a stop that
 * arrives while a batch runs waits for that batch to finish (the host's correctness relies on it).
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { slotWrites } from '../adapters/slot-writer.js';
import {
  GRAPH_INPUT_HIDDEN,
  GRAPH_INPUT_IDS,
  GRAPH_INPUT_MASK,
  GRAPH_OUTPUT_EMBEDDING,
  groupBiasName,
  groupEntropyName,
  groupExpertsName,
  groupGateScaleName,
  groupKmaxName,
  groupKName,
  groupKUsedName,
  groupMarginName,
  groupTopPName,
  groupWeightsName,
  headScoresName,
} from '../onnx/pack-graph-contract.js';
import { resolveBankResidency } from './bank-residency.js';
import { PackSession } from './pack-session.js';
import type {
  HostMessage,
  RunRequest,
  SessionSettings,
  SlotWriteRequest,
  WorkerInit,
  WorkerMessage,
} from './protocol.js';

const BACKBONE_OUTPUT = 'last_hidden_state';

const port = parentPort;
if (port === null) throw new Error('engine-worker.js must run as a worker thread');
const init = workerData as WorkerInit;
const graph = init.graph;
/** The pack graph's session and the slot banks it reads. */
let pack: PackSession | undefined;
let backbone: ort.InferenceSession | undefined;
let backboneTakesTokenTypes = false;
/** The pack graph reads input_ids (built backbone, or token_bag gates). */
let takesIds = false;
/** Fault injection: block the thread this long at the next batch or slot write. */
let stallNextRunMs = 0;

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

async function openSessions(): Promise<void> {
  if (graph.externalBackbone !== undefined) {
    backbone = await ort.InferenceSession.create(graph.externalBackbone, sessionOptions(active));
    for (const name of ['input_ids', 'attention_mask']) {
      if (!backbone.inputNames.includes(name)) {
        throw new Error(
          `backbone ${graph.externalBackbone} has no input '${name}' (inputs: ${backbone.inputNames.join(', ')}); ` +
            'export it with the Hugging Face feature-extraction contract',
        );
      }
    }
    if (!backbone.outputNames.includes(BACKBONE_OUTPUT)) {
      throw new Error(
        `backbone ${graph.externalBackbone} has no output '${BACKBONE_OUTPUT}' (outputs: ${backbone.outputNames.join(', ')})`,
      );
    }
    backboneTakesTokenTypes = backbone.inputNames.includes('token_type_ids');
  }
  pack = await PackSession.open({
    model: graph.model,
    banks: graph.banks,
    residency: resolveBankResidency(active.bankResidency, active.executionProvider),
    sessionOptions: sessionOptions(active),
  });
  takesIds = pack.inputNames.includes(GRAPH_INPUT_IDS);
}

async function releaseSessions(): Promise<void> {
  await pack?.release();
  await backbone?.release().catch(() => undefined);
  pack = undefined;
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
    post({ type: 'ready', provider: requested, bankResidency: pack!.residency });
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
      bankResidency: pack!.residency,
      fallbackReason: reason,
    });
  }
}

/** Report why this worker cannot start, and exit. */
function fail(message: WorkerMessage): never {
  post(message);
  process.exit(1);
}

function writeSlot(request: SlotWriteRequest): void {
  for (const write of slotWrites(
    request.group,
    request.slot,
    request.adapter,
    request.gateColumn,
  )) {
    pack!.writeRows(write.bank, write.row, write.data);
  }
}

/** Fault injection (tests): a wedged native call, as far as the host can tell. */
function stallIfAsked(): void {
  if (stallNextRunMs <= 0) return;
  const until = Date.now() + stallNextRunMs;
  stallNextRunMs = 0;
  while (Date.now() < until) {
    /* busy: the thread answers nothing meanwhile */
  }
}

async function run(request: RunRequest): Promise<void> {
  const B = request.batchSize;
  const dims = [B, request.sequenceLength];
  const mask = new ort.Tensor('int64', request.attentionMask, dims);
  const feeds: Record<string, ort.Tensor> = { [GRAPH_INPUT_MASK]: mask };
  const t0 = performance.now();
  if (backbone !== undefined) {
    const backboneFeeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', request.inputIds, dims),
      attention_mask: mask,
    };
    if (backboneTakesTokenTypes) {
      backboneFeeds.token_type_ids = new ort.Tensor(
        'int64',
        new BigInt64Array(request.inputIds.length),
        dims,
      );
    }
    feeds[GRAPH_INPUT_HIDDEN] = (await backbone.run(backboneFeeds, [BACKBONE_OUTPUT]))[
      BACKBONE_OUTPUT
    ]!; // [B,T,d]
  }
  // The built backbone reads the ids, and so do token_bag gates over an external backbone.
  if (takesIds) feeds[GRAPH_INPUT_IDS] = new ort.Tensor('int64', request.inputIds, dims);
  const t1 = performance.now();
  request.groups.forEach((group, i) => {
    const slots = group.bias.length / B;
    feeds[groupBiasName(i)] = new ort.Tensor('float32', group.bias, [B, slots]);
    feeds[groupGateScaleName(i)] = new ort.Tensor('float32', group.gateScale, [B]);
    feeds[groupKName(i)] = new ort.Tensor('int64', group.k, [B]);
    feeds[groupKmaxName(i)] = new ort.Tensor('int64', BigInt64Array.of(BigInt(group.kmax)), [1]);
    feeds[groupTopPName(i)] = new ort.Tensor('float32', group.topP, [B]);
  });
  const { outputs: out, bankSyncMs } = await pack!.run(feeds);
  const t2 = performance.now();

  // Copies: small outputs, and a copy gives each its own buffer to transfer.
  const float = (name: string) => (out[name]!.data as Float32Array).slice();
  const int64 = (name: string) => (out[name]!.data as BigInt64Array).slice();
  const groups = range(graph.groupCount);
  const outputs = {
    experts: groups.map((i) => int64(groupExpertsName(i))),
    weights: groups.map((i) => float(groupWeightsName(i))),
    kUsed: groups.map((i) => int64(groupKUsedName(i))),
    entropy: groups.map((i) =>
      graph.gatedGroups[i] ? float(groupEntropyName(i)) : new Float32Array(0),
    ),
    margin: groups.map((i) =>
      graph.gatedGroups[i] ? float(groupMarginName(i)) : new Float32Array(0),
    ),
    embedding: float(GRAPH_OUTPUT_EMBEDDING),
    scores: range(graph.headCount).map((j) => float(headScoresName(j))),
  };
  const transfer = [
    ...outputs.experts,
    ...outputs.weights,
    ...outputs.kUsed,
    ...outputs.entropy,
    ...outputs.margin,
    outputs.embedding,
    ...outputs.scores,
  ].map((a) => a.buffer as ArrayBuffer);
  post(
    {
      type: 'result',
      id: request.id,
      outputs,
      timings: { backboneMs: t1 - t0, bankSyncMs, graphMs: t2 - t1 - bankSyncMs },
    },
    transfer,
  );
}

async function handle(message: HostMessage): Promise<void> {
  if (message.type === 'run' || message.type === 'write-slot') stallIfAsked();
  switch (message.type) {
    case 'run':
      try {
        await run(message);
      } catch (error) {
        post({ type: 'run-failed', id: message.id, message: errorMessage(error) });
      }
      return;
    case 'write-slot':
      try {
        writeSlot(message);
        if (message.ack !== undefined) post({ type: 'slot-written', ack: message.ack });
      } catch (error) {
        post({ type: 'slot-failed', ack: message.ack, message: errorMessage(error) });
      }
      return;
    case 'stop':
      await releaseSessions();
      process.exit(0);
      return;
    case 'crash':
      if (init.allowFaultInjection)
        throw new Error('fault injection: engine worker crash requested');
      return;
    case 'stall':
      if (init.allowFaultInjection) stallNextRunMs = message.ms;
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
