#!/usr/bin/env bash
# Builds a TensorRT-LLM engine with the LoRA plugin from a Hugging Face checkpoint, and extracts adapters
# for it: the whole "build, extract, serve" workflow's first two steps as one command. Runs where
# TensorRT-LLM is installed (e.g. inside the Docker image); --dry-run prints the commands anywhere.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/build-engine.sh --model <hf-dir> --output <engine-dir> [options]

Runs convert_checkpoint.py, then trtllm-build with the LoRA plugin, copies the tokenizer files into the
engine dir, and converts every --lora PEFT adapter with `multilora extract` into the LoRA dir.

Options (defaults in brackets):
  --model <dir>                 Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json)
  --output <dir>                the engine dir to write
  --dtype <t>                   bfloat16 | float16 [bfloat16]
  --tp-size <n>                 tensor-parallel GPUs [1]
  --pp-size <n>                 pipeline-parallel GPUs [1]
  --max-batch-size <n>          [8]
  --max-seq-len <n>             prompt + completion tokens [4096]
  --max-lora-rank <n>           largest adapter rank the engine accepts [64]
  --lora-target-modules "<m>"   TensorRT-LLM module names
                                [attn_q attn_k attn_v attn_dense mlp_h_to_4h mlp_4h_to_h mlp_gate]
  --lora <peft-dir>             a PEFT adapter to extract (repeatable; the first also guides trtllm-build)
  --lora-out <dir>              where extracted adapters go [<output>-lora]
  --convert-script <path>       convert_checkpoint.py [$TRTLLM_EXAMPLES/llama/convert_checkpoint.py,
                                TRTLLM_EXAMPLES defaulting to /app/tensorrt_llm/examples]
  --multilora <cmd>             the multilora command [multilora]
  --dry-run                     print the commands instead of running them
  -h, --help                    show this help
EOF
}

die() {
  echo "build-engine.sh: $*" >&2
  exit 2
}

model=""
output=""
dtype="bfloat16"
tp_size=1
pp_size=1
max_batch_size=8
max_seq_len=4096
max_lora_rank=64
target_modules="attn_q attn_k attn_v attn_dense mlp_h_to_4h mlp_4h_to_h mlp_gate"
loras=()
lora_out=""
convert_script="${TRTLLM_EXAMPLES:-/app/tensorrt_llm/examples}/llama/convert_checkpoint.py"
multilora="multilora"
dry_run=0

while (($# > 0)); do
  case "$1" in
    --model) model="${2:?--model needs a value}"; shift 2 ;;
    --output) output="${2:?--output needs a value}"; shift 2 ;;
    --dtype) dtype="${2:?--dtype needs a value}"; shift 2 ;;
    --tp-size) tp_size="${2:?--tp-size needs a value}"; shift 2 ;;
    --pp-size) pp_size="${2:?--pp-size needs a value}"; shift 2 ;;
    --max-batch-size) max_batch_size="${2:?--max-batch-size needs a value}"; shift 2 ;;
    --max-seq-len) max_seq_len="${2:?--max-seq-len needs a value}"; shift 2 ;;
    --max-lora-rank) max_lora_rank="${2:?--max-lora-rank needs a value}"; shift 2 ;;
    --lora-target-modules) target_modules="${2:?--lora-target-modules needs a value}"; shift 2 ;;
    --lora) loras+=("${2:?--lora needs a value}"); shift 2 ;;
    --lora-out) lora_out="${2:?--lora-out needs a value}"; shift 2 ;;
    --convert-script) convert_script="${2:?--convert-script needs a value}"; shift 2 ;;
    --multilora) multilora="${2:?--multilora needs a value}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ -n "$model" ]] || die "missing --model <hf-dir>"
[[ -n "$output" ]] || die "missing --output <engine-dir>"
[[ -f "$model/config.json" ]] || die "$model/config.json does not exist: --model takes a Hugging Face checkpoint dir"
case "$dtype" in bfloat16 | float16) ;; *) die "--dtype $dtype: expected bfloat16 or float16" ;; esac
for n in "$tp_size" "$pp_size" "$max_batch_size" "$max_seq_len" "$max_lora_rank"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "$n: expected a positive integer"
done
for lora in "${loras[@]}"; do
  [[ -f "$lora/adapter_config.json" ]] || die "$lora/adapter_config.json does not exist: --lora takes a PEFT adapter dir"
done
lora_out="${lora_out:-${output%/}-lora}"
read -r -a modules <<<"$target_modules"

# Runs a command, or prints it (shell-quoted) with --dry-run.
run() {
  if ((dry_run)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

checkpoint_dir="${output%/}-checkpoint"

run python3 "$convert_script" --model_dir "$model" --output_dir "$checkpoint_dir" --dtype "$dtype" \
  --tp_size "$tp_size" --pp_size "$pp_size"

build=(trtllm-build --checkpoint_dir "$checkpoint_dir" --output_dir "$output"
  --gemm_plugin "$dtype" --lora_plugin "$dtype" --use_paged_context_fmha enable
  --max_batch_size "$max_batch_size" --max_seq_len "$max_seq_len"
  --max_lora_rank "$max_lora_rank" --lora_target_modules "${modules[@]}")
if ((${#loras[@]} > 0)); then
  build+=(--lora_dir "${loras[0]}" --lora_ckpt_source hf)
fi
run "${build[@]}"

for file in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
  if [[ -f "$model/$file" ]]; then run cp "$model/$file" "$output/"; fi
done

run mkdir -p "$lora_out"
for lora in "${loras[@]}"; do
  run "$multilora" extract -i "$lora" -o "$lora_out/$(basename "${lora%/}").safetensors" -t "$dtype" --base "$output"
done

if ((!dry_run)); then
  rm -rf "$checkpoint_dir"
  echo "engine: $output; adapters: $lora_out"
  echo "serve:  multilora serve $output $lora_out"
fi
