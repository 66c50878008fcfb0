/**
 * Where the slot banks live on each execution provider: the one home of that choice.
 *
 * Slot banks are graph inputs that each engine worker owns as typed arrays and rewrites when an
 * adapter is loaded (onnx/pack-graph-contract.ts). On cpu, onnxruntime-node hands a typed-array
 * input to the session without a copy (FIELD-NOTES: a 1 GB input costs 0.4 ms a run), so banks
 * cost nothing per run. On a GPU provider, ORT copies every input that is not already on the
 * device to it, in every run (onnxruntime/core/framework/utils.cc, CopyInputsAcrossDevices):
 * feeding the host arrays would move every bank over PCIe for every batch.
 *
 * What onnxruntime-node 1.30 offers to keep an input on the device (microsoft/onnxruntime
 * js/node/src, checked against the strings of the shipped linux x64 onnxruntime_binding.node,
 * and by running it here where a cpu session can tell):
 * - A feed is either a 'cpu' tensor (a typed array) or a 'gpu-buffer' tensor; anything else is
 *   refused. `Tensor.fromPinnedBuffer` ('cpu-pinned') fails with "Tensor.location must be
 *   'gpu-buffer' for IO binding." (tensor_helper.cc, NapiValueToOrtValue; run here).
 * - A 'gpu-buffer' feed must be a tensor the binding returned itself: its `gpuBuffer` is an N-API
 *   External holding an OrtValue ("Tensor.gpuBuffer must be an external object." otherwise; run
 *   here), wrapped with the memory info "WebGPU_Buf" (inference_session_wrap.cc, Run). So device
 *   tensors exist for WebGPU only. No CUDA device pointer can be passed in, and JS has no way to
 *   make one.
 * - Such tensors come out of a session created with `preferredOutputLocation: 'gpu-buffer'`: the
 *   binding then runs through Ort::IoBinding and binds its outputs to WebGPU memory
 *   (inference_session_wrap.cc; session_options_helper.cc, ParsePreferredOutputLocations). On a
 *   cpu session the option is accepted and the outputs come back on the cpu (run here). Reading a
 *   device tensor back (`download`) is not implemented in the binding; nothing here needs it.
 * - The cuda provider takes `deviceId` and nothing else from Node 1.30: the binary holds no other
 *   cuda option name (a newer session_options_helper.cc reads gpuMemLimit, enableCudaGraph, ...).
 *   No IO binding and no device memory for cuda: a host feed is copied in every run.
 * - `enableGraphCapture` is typed in onnxruntime-common for the web WebGPU backend only; the Node
 *   binding does not read it.
 * - Initializers: the binding has no AddInitializer / AddExternalInitializers. Its `externalData`
 *   option (AddExternalInitializersFromFilesInMemory) wants every external initializer in its
 *   table ("External file: model.onnx.data not found from the table user provided", run here),
 *   so it cannot add banks beside a graph whose backbone weights are in model.onnx.data. What
 *   works: the banks as inline initializers of the model bytes, with the config entry
 *   `session.model_external_initializers_file_folder_path` naming the folder of the graph's own
 *   external data (onnxruntime_session_options_config_keys.h; run here). A session keeps its own
 *   copy of initializers (a host write after creation does not reach it: run here on cpu), so a
 *   slot change needs a new session.
 * - WebGPU kernels take float32, float16, int32 and uint32 (providers/webgpu/
 *   webgpu_supported_types.h): int64 banks (the gate index, S values) stay host inputs there.
 *
 * The choice, per provider:
 * - cpu    'host': the arrays are the inputs; a slot write is a copy into them, nothing else.
 * - webgpu 'device': every float32 bank is copied to the device once by a one-Identity session
 *          (onnx/bank-graphs.ts) and fed from there on every run; a slot write marks the banks it
 *          touched, and the next batch first copies those again (the whole bank: a device tensor
 *          cannot be written in part from JS).
 * - cuda   'initializers': the fallback the issue names for a provider with no device tensors.
 *          The session is made from the pack graph with the banks as initializers, so they sit
 *          on the device with the weights; a slot write marks the session stale, and the next
 *          batch first makes a new one (graph optimisation and every weight to the device again).
 *          Writes between two batches cost one rebuild together.
 * `bench/gpu-check` measures what a bank costs per run and what a slot write costs in each mode.
 */
import type { ExecutionProvider } from './protocol.js';

export type BankResidency = 'host' | 'device' | 'initializers';

/** 'auto': the provider's own (below); the others force a mode, for tests and bench/gpu-check. */
export type BankResidencySetting = BankResidency | 'auto';

export function bankResidencyFor(provider: ExecutionProvider): BankResidency {
  switch (provider) {
    case 'cpu':
      return 'host';
    case 'webgpu':
      return 'device';
    case 'cuda':
      return 'initializers';
  }
}

/** The mode a worker runs its banks in, on the provider its sessions really run on. */
export function resolveBankResidency(
  setting: BankResidencySetting,
  provider: ExecutionProvider,
): BankResidency {
  return setting === 'auto' ? bankResidencyFor(provider) : setting;
}
