/**
 * Messages between the engine host (main thread) and an engine worker thread. Large arrays travel
 * as transferables where one receiver owns them (batch inputs, outputs); slot contents go to every
 * worker and are copied. Only `engine/` uses these types.
 *
 * A worker handles messages strictly in arrival order. The host relies on it: a slot write posted
 * after a batch runs after that batch, so a batch always reads the slot contents it was routed on.
 */
import type { SlotAdapter, SlotGroup } from '../adapters/slot-writer.js';
import type { BankSpec } from '../onnx/pack-graph-contract.js';
import type { BankResidency, BankResidencySetting } from './bank-residency.js';

/**
 * ORT execution providers the engine can ask for. `cpu` ships in onnxruntime-node; `webgpu` is
 * bundled too (it needs a GPU adapter, over Vulkan on Linux); `cuda` needs the CUDA 12 + cuDNN 9
 * provider libraries beside libonnxruntime (`ONNXRUNTIME_NODE_INSTALL=cuda12` at install time).
 */
export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu';

export interface SessionSettings {
  readonly executionProvider: ExecutionProvider;
  /** GPU ordinal for `cuda` (ORT's Node binding takes no device choice for `webgpu`). */
  readonly deviceId: number;
  /** When the provider cannot start: run on `cpu` instead (true) or fail the worker (false). */
  readonly allowFallback: boolean;
  readonly intraOpThreads: number;
  /** Where the slot banks live ('auto': the provider's own, bank-residency.ts). */
  readonly bankResidency: BankResidencySetting;
}

/** The pack graph a worker runs, and its slot banks. */
export interface WorkerGraph {
  /** The pack graph: a file path (weights beside it as external data) or the model bytes. */
  readonly model: string | Uint8Array;
  /** An ONNX backbone run before the pack graph (export folders); the graph then takes `hidden`. */
  readonly externalBackbone: string | undefined;
  /** Every slot bank, all groups together. */
  readonly banks: readonly BankSpec[];
  readonly groupCount: number;
  readonly gatedGroups: readonly boolean[];
  readonly headCount: number;
  /** The pad token id, used for padding positions of input_ids. */
  readonly padTokenId: number;
}

/** `workerData` of a new engine worker. */
export interface WorkerInit {
  readonly graph: WorkerGraph;
  readonly session: SessionSettings;
  readonly allowFaultInjection: boolean;
}

/** Routing feeds of one group (pack-graph-contract.ts). */
export interface GroupFeedsMessage {
  readonly bias: Float32Array; // [B,S]
  readonly gateScale: Float32Array; // [B]
  readonly k: BigInt64Array; // [B]
  readonly kmax: number;
  readonly topP: Float32Array; // [B]
}

export interface RunRequest {
  readonly type: 'run';
  readonly id: number;
  readonly batchSize: number;
  readonly sequenceLength: number;
  readonly inputIds: BigInt64Array; // [B,T]
  readonly attentionMask: BigInt64Array; // [B,T]
  readonly groups: readonly GroupFeedsMessage[];
}

/** Put `adapter` into `slot` of `group` (undefined: clear the slot); ack with `ack` when set. */
export interface SlotWriteRequest {
  readonly type: 'write-slot';
  readonly group: SlotGroup;
  readonly slot: number;
  readonly adapter: SlotAdapter | undefined;
  readonly gateColumn: number | undefined;
  readonly ack: number | undefined;
}

export type HostMessage =
  | RunRequest
  | SlotWriteRequest
  | { readonly type: 'stop' }
  /** Fault injection for tests; ignored unless WorkerInit.allowFaultInjection. */
  | { readonly type: 'crash' }
  /** Fault injection for tests: block the thread for `ms` at the next batch or slot write. */
  | { readonly type: 'stall'; readonly ms: number };

export interface RunOutputs {
  readonly experts: BigInt64Array[]; // per group [B,kmax]
  readonly weights: Float32Array[]; // per group [B,kmax]
  readonly kUsed: BigInt64Array[]; // per group [B]
  /** Per group: [B] for gated groups, empty for the others. */
  readonly entropy: Float32Array[];
  readonly margin: Float32Array[];
  readonly embedding: Float32Array; // [B,d]
  readonly scores: Float32Array[]; // per head [B,L]
}

/** Where a batch's time went in the worker. */
export interface StageTimings {
  /** The external ONNX backbone's run (0 when the backbone is in the pack graph). */
  readonly backboneMs: number;
  /**
   * Bringing the slot banks' device side up to date before the run, after slot writes (a copy to
   * the device, or a new session; bank-residency.ts). 0 when nothing was written, and on cpu.
   */
  readonly bankSyncMs: number;
  /** The pack graph's run. */
  readonly graphMs: number;
}

export type WorkerMessage =
  | {
      readonly type: 'ready';
      /** The provider the sessions really run on. */
      readonly provider: ExecutionProvider;
      /** Where this worker keeps the slot banks. */
      readonly bankResidency: BankResidency;
      /** Set when the requested provider could not start and the worker fell back to cpu. */
      readonly fallbackReason?: string;
    }
  | { readonly type: 'init-failed'; readonly message: string }
  /** The requested provider cannot start (the same graphs load on cpu) and fallback is off. */
  | {
      readonly type: 'provider-failed';
      readonly provider: ExecutionProvider;
      readonly message: string;
    }
  | { readonly type: 'slot-written'; readonly ack: number }
  | { readonly type: 'slot-failed'; readonly ack: number | undefined; readonly message: string }
  | {
      readonly type: 'result';
      readonly id: number;
      readonly outputs: RunOutputs;
      readonly timings: StageTimings;
    }
  | { readonly type: 'run-failed'; readonly id: number; readonly message: string };
