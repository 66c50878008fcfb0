# syntax=docker/dockerfile:1
#
# moe-serve images. Two runtime targets from one build:
#   cpu   (the default: the last stage)  node:20-bookworm-slim with onnxruntime-node's bundled
#         CPU provider.                   docker build -t moe-serve:cpu .
#   cuda  NVIDIA CUDA 12 + cuDNN 9 runtime, Node 20 copied in, onnxruntime-node's CUDA provider
#         libraries downloaded at build time (the build needs network access to NuGet).
#                                         docker build --target cuda -t moe-serve:cuda .
# Both run as the non-root user `node` (uid 1000) in /app and keep model packs on the volume
# /app/models: the API role (the default command) builds the demo pack there when it is missing.
# The queue worker role is the same image with the command `node dist/src/worker.js`.

ARG NODE_IMAGE=node:20-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# --- build: compile the TypeScript (dev dependencies; no GPU libraries needed to compile) -------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
# onnxruntime-node's postinstall would download CUDA libraries; compiling needs none of them.
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY bench ./bench
COPY test ./test
RUN npm run build

# --- production dependencies, CPU: the CPU provider ships inside the npm package -------------
FROM ${NODE_IMAGE} AS deps-cpu
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund

# --- production dependencies, CUDA: the postinstall fetches the CUDA 12 provider libraries ----
FROM ${NODE_IMAGE} AS deps-cuda
WORKDIR /app
# The environment variable wins over the .npmrc's `onnxruntime-node-install=skip`.
ENV ONNXRUNTIME_NODE_INSTALL=cuda12
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund \
  && test -f node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so

# --- cuda: docker run --gpus all moe-serve:cuda -----------------------------------------------
FROM ${CUDA_IMAGE} AS cuda
# Node 20 from the official image (its binary needs glibc >= 2.28; Ubuntu 22.04 has 2.35).
COPY --from=build /usr/local/bin/node /usr/local/bin/node
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin node \
  && mkdir -p /app/models /app/adapters && chown node:node /app/models /app/adapters
WORKDIR /app
# One engine worker to start with (each worker holds its own copy of the sessions in GPU memory);
# a starting point, not a measurement: bench/gpu-check.sh measures throughput by batch size.
# No CPU fallback unless PROVIDER_FALLBACK=true is set.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    EXECUTION_PROVIDER=cuda \
    ENGINE_WORKERS=1
COPY --from=deps-cuda /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bench/gpu-check.sh ./bench/gpu-check.sh
USER node
VOLUME ["/app/models", "/app/adapters"]
EXPOSE 8080
# The first start builds the demo pack (a minute or two), hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["node", "dist/src/tools/healthcheck.js"]
CMD ["node", "dist/src/main.js"]

# --- cpu (default) ------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS cpu
RUN mkdir -p /app/models /app/adapters && chown node:node /app/models /app/adapters
WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080
COPY --from=deps-cpu /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bench/gpu-check.sh ./bench/gpu-check.sh
USER node
VOLUME ["/app/models", "/app/adapters"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["node", "dist/src/tools/healthcheck.js"]
CMD ["node", "dist/src/main.js"]
