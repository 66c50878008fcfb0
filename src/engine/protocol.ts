/**
 * Messages between the engine host (main thread) and an engine worker thread. Large arrays travel
 * as transferables: ownership moves, nothing is copied. Only `engine/` uses these types.
 */

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
}

/** `workerData` of a new engine worker. */
export interface WorkerInit {
  readonly backbonePath: string;
  readonly session: SessionSettings;
  /** Mixture graphs to load before answering `ready` (the live versions when it was spawned). */
  readonly mixtures: readonly MixtureGraph[];
  readonly allowFaultInjection: boolean;
}

export interface MixtureGraph {
  readonly version: number;
  readonly bytes: Uint8Array;
  readonly groupCount: number;
  readonly headCount: number;
}

export interface RunRequest {
  readonly type: 'run';
  readonly id: number;
  readonly version: number;
  readonly batchSize: number;
  readonly sequenceLength: number;
  readonly inputIds: BigInt64Array; // [B,T]
  readonly attentionMask: BigInt64Array; // [B,T]
  readonly groups: readonly { bias: Float32Array; k: BigInt64Array; kmax: number }[];
}

export type HostMessage =
  | RunRequest
  | { readonly type: 'load-mixture'; readonly graph: MixtureGraph }
  | { readonly type: 'release-mixture'; readonly version: number }
  | { readonly type: 'stop' }
  /** Fault injection for tests; ignored unless WorkerInit.allowFaultInjection. */
  | { readonly type: 'crash' };

export interface RunOutputs {
  readonly experts: BigInt64Array[]; // per group [B,kmax]
  readonly weights: Float32Array[]; // per group [B,kmax]
  readonly embedding: Float32Array; // [B,d]
  readonly scores: Float32Array[]; // per head [B,L]
}

export interface StageTimings {
  readonly backboneMs: number;
  readonly mixtureMs: number;
}

export type WorkerMessage =
  | {
      readonly type: 'ready';
      /** The provider the sessions really run on. */
      readonly provider: ExecutionProvider;
      readonly versions: number[];
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
  | { readonly type: 'mixture-loaded'; readonly version: number }
  | { readonly type: 'mixture-failed'; readonly version: number; readonly message: string }
  | {
      readonly type: 'result';
      readonly id: number;
      readonly outputs: RunOutputs;
      readonly timings: StageTimings;
    }
  | { readonly type: 'run-failed'; readonly id: number; readonly message: string };
