/**
 * What onnxruntime-node offers on this machine (kept here: `engine/` is its only importer).
 * A provider listed is one the binding was built with, not one that will start: `cuda` is listed
 * on every linux x64 install, and session creation fails when its libraries or the GPU are
 * missing (FIELD-NOTES). Only creating a session tells.
 */
import * as ort from 'onnxruntime-node';

export interface ProviderListing {
  readonly name: string;
  /** Ships inside the npm package (cpu, webgpu); otherwise needs libraries installed beside it. */
  readonly bundled: boolean;
}

export function listProviders(): ProviderListing[] {
  return ort.listSupportedBackends().map(({ name, bundled }) => ({ name, bundled }));
}

/** Versions of the ORT packages in use (onnxruntime-common and the Node binding). */
export function runtimeVersions(): {
  readonly ort: string | undefined;
  readonly ortCommon: string;
} {
  return { ort: ort.env.versions.node, ortCommon: ort.env.versions.common };
}
