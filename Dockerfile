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
RUN TRTLLM_ROOT="$(python3 -c 'import os, tensorrt_llm; print(os.path.dirname(tensorrt_llm.__file__))')" \
 && cmake -S ffi/trtllm -B build/trtllm -DWITH_TRTLLM=ON -DTRTLLM_ROOT="$TRTLLM_ROOT" -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build/trtllm -j"$(nproc)" \
 && npm run build:binary

FROM ${TRTLLM_IMAGE}
COPY --from=build /src/dist/multilora /opt/multilora/bin/multilora
COPY --from=build /src/build/libmultilora-trtllm.so /opt/multilora/lib/libmultilora-trtllm.so
COPY scripts/build-engine.sh /opt/multilora/bin/build-engine.sh
RUN mkdir -p /models/engine /models/lora
ENV PATH=/opt/multilora/bin:$PATH \
    MULTILORA_TRTLLM_LIB=/opt/multilora/lib/libmultilora-trtllm.so \
    XDG_CACHE_HOME=/var/cache \
    PORT=3000
EXPOSE 3000
# `multilora serve` listens on $PORT; arguments after the image name are added to the command.
ENTRYPOINT ["multilora", "serve", "/models/engine", "/models/lora"]
