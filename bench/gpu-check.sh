#!/usr/bin/env bash
# GPU check for a CUDA (or WebGPU) machine: the providers onnxruntime-node offers, the demo pack on
# the GPU without CPU fallback, its outputs against CPU within a tolerance, and throughput at batch
# 1, 32 and 128. Progress on stderr, one JSON line on stdout; exit 0 when the provider starts and
# the outputs agree.
#
#   bench/gpu-check.sh                         # cuda, device 0, the demo pack (built if missing)
#   bench/gpu-check.sh --provider webgpu
#   bench/gpu-check.sh --provider cpu --pack models/fixture   # the same path without a GPU
#   bench/gpu-check.sh --device 1 --tolerance 1e-4 --batches 1,32,128,512
#
# Runs from a checkout (builds first; install with ONNXRUNTIME_NODE_INSTALL=cuda12 for cuda) or in
# the moe-serve images (`docker run --gpus all moe-serve:cuda bench/gpu-check.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -f tsconfig.json ]]; then
  npm run --silent build
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader >&2 || true
else
  echo "nvidia-smi: not found (no NVIDIA driver visible here)" >&2
fi
# The CUDA provider loads these beside libonnxruntime; say which are there.
ort_bin=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
for lib in libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
  if [[ -f "$ort_bin/$lib" ]]; then echo "found $ort_bin/$lib" >&2; else echo "missing $ort_bin/$lib" >&2; fi
done

exec node dist/bench/gpu-check.js "$@"
