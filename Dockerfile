# multilora on NVIDIA's TensorRT-LLM release image: the TensorRT-LLM shim (ffi/trtllm) built against the
# image's TensorRT-LLM, the single-file multilora binary, and scripts/build-engine.sh for building engines.
#
#   docker build -t multilora .
#   docker/run.sh <engine-dir> [lora-dir]
#
# Never built where it was written (no Docker engine, GPU or TensorRT-LLM there): see ffi/trtllm/README.md.
# The image tag pins TensorRT-LLM; the shim was checked against the executor headers of that API generation.
ARG TRTLLM_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:0.20.0

FROM ${TRTLLM_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# npm ci installs Bun (a devDependency) and builds the CPU engine library.
COPY package.json package-lock.json ./
COPY ffi ffi
RUN npm ci
COPY . .
# TRTLLM_ROOT without importing tensorrt_llm (which needs a GPU driver the build lacks). The plugin library's
# SONAME is libnvinfer_plugin_tensorrt_llm.so.10 while the wheel ships only the unversioned file: the shim
# opens it by path, executorWorker (multi-GPU engines) needs the versioned name, so it is linked here.
# scripts/check-trtllm-shim.sh fails the build on a C++11-ABI mismatch or a library ldd cannot resolve.
RUN TRTLLM_ROOT="$(python3 -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("tensorrt_llm").origin))')" \
 && ln -sf libnvinfer_plugin_tensorrt_llm.so "$TRTLLM_ROOT/libs/libnvinfer_plugin_tensorrt_llm.so.10" \
 && cmake -S ffi/trtllm -B build/trtllm -DWITH_TRTLLM=ON -DTRTLLM_ROOT="$TRTLLM_ROOT" -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build/trtllm -j"$(nproc)" \
 && scripts/check-trtllm-shim.sh build/libmultilora-trtllm.so "$TRTLLM_ROOT/libs/libtensorrt_llm.so" \
 && npm run build:binary

FROM ${TRTLLM_IMAGE}
COPY --from=build /src/dist/multilora /opt/multilora/bin/multilora
COPY --from=build /src/build/libmultilora-trtllm.so /opt/multilora/lib/libmultilora-trtllm.so
COPY scripts/build-engine.sh /opt/multilora/bin/build-engine.sh
COPY scripts/check-trtllm-shim.sh /opt/multilora/bin/check-trtllm-shim.sh
# The same link in the runtime stage (a fresh copy of the base image), then the same checks there.
RUN TRTLLM_ROOT="$(python3 -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("tensorrt_llm").origin))')" \
 && ln -sf libnvinfer_plugin_tensorrt_llm.so "$TRTLLM_ROOT/libs/libnvinfer_plugin_tensorrt_llm.so.10" \
 && /opt/multilora/bin/check-trtllm-shim.sh /opt/multilora/lib/libmultilora-trtllm.so "$TRTLLM_ROOT/libs/libtensorrt_llm.so" \
 && mkdir -p /models/engine /models/lora
ENV PATH=/opt/multilora/bin:$PATH \
    MULTILORA_TRTLLM_LIB=/opt/multilora/lib/libmultilora-trtllm.so \
    XDG_CACHE_HOME=/var/cache \
    PORT=3000
EXPOSE 3000
# `multilora serve` listens on $PORT; arguments after the image name are added to the command.
# On a new GPU, first: docker run --rm --gpus all -v ... --entrypoint multilora multilora check /models/engine /models/lora
ENTRYPOINT ["multilora", "serve", "/models/engine", "/models/lora", "--host", "0.0.0.0"]
