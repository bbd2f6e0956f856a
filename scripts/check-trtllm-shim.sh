#!/usr/bin/env bash
# Checks a built libmultilora-trtllm.so against the TensorRT-LLM it was built for, so that a bad build fails
# the image build instead of the first request:
#   - the C++11 std::string ABI: libtensorrt_llm.so's symbols and the shim's references must agree
#     (`nm -DC ... | grep __cxx11`);
#   - every shared library the shim needs resolves (`ldd`, no "not found").
# Usage: scripts/check-trtllm-shim.sh <libmultilora-trtllm.so> <libtensorrt_llm.so>
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 <libmultilora-trtllm.so> <libtensorrt_llm.so>" >&2
  exit 2
fi
shim="$1"
trtllm="$2"
for f in "$shim" "$trtllm"; do
  [[ -f "$f" ]] || { echo "check-trtllm-shim.sh: $f does not exist" >&2; exit 2; }
done

uses_cxx11() { # 1 when the library's dynamic symbols (defined or referenced) carry the C++11 string ABI
  local count # grep -c reads all of nm's output (grep -q would stop early and fail the pipe with SIGPIPE)
  count="$(nm -DC "$1" | grep -c __cxx11 || true)"
  if ((count > 0)); then echo 1; else echo 0; fi
}
lib_abi="$(uses_cxx11 "$trtllm")"
shim_abi="$(uses_cxx11 "$shim")"
if [[ "$lib_abi" != "$shim_abi" ]]; then
  echo "check-trtllm-shim.sh: C++ ABI mismatch: $trtllm has _GLIBCXX_USE_CXX11_ABI=$lib_abi," \
    "$shim was built with $shim_abi (configure without -DUSE_CXX11_ABI to follow the library)" >&2
  exit 1
fi

deps="$(ldd "$shim" 2>&1)" || { echo "check-trtllm-shim.sh: ldd $shim failed: $deps" >&2; exit 1; }
missing="$(grep 'not found' <<<"$deps" || true)"
if [[ -n "$missing" ]]; then
  echo "check-trtllm-shim.sh: $shim needs libraries that do not resolve:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "check-trtllm-shim.sh: $shim: _GLIBCXX_USE_CXX11_ABI=$shim_abi as $trtllm; every library resolves"
