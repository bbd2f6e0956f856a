#!/usr/bin/env bash
# Runs the multilora image on an engine dir (and a LoRA dir) from this machine, as llgtrt's docker/run.sh:
# the dirs are mounted at /models/engine and /models/lora, the server listens on $PORT [3000].
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: docker/run.sh <engine-dir> [lora-dir] [serve options...]

  engine-dir   a trtllm-build output (scripts/build-engine.sh makes one)
  lora-dir     adapters (.safetensors from `multilora extract`, or PEFT folders) [an empty dir]
  Environment: PORT [3000], MULTILORA_IMAGE [multilora:latest], GPUS (docker --gpus) [all]
USAGE
}

if (($# < 1)) || [[ "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit $(($# < 1 ? 2 : 0))
fi
engine="$(realpath "$1")"
shift
[[ -f "$engine/config.json" ]] || { echo "docker/run.sh: $engine/config.json does not exist" >&2; exit 2; }
lora=""
if (($# > 0)) && [[ "$1" != -* ]]; then
  lora="$(realpath "$1")"
  shift
fi
mounts=(-v "$engine:/models/engine:ro")
if [[ -n "$lora" ]]; then
  mounts+=(-v "$lora:/models/lora")
fi
port="${PORT:-3000}"

exec docker run --rm -it --gpus "${GPUS:-all}" --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
  -e PORT="$port" -p "$port:$port" "${mounts[@]}" "${MULTILORA_IMAGE:-multilora:latest}" "$@"
