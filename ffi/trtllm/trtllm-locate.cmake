# Finds TensorRT-LLM's headers and libraries under TRTLLM_ROOT and settles the build's version risks; the
# rest of ffi/trtllm/CMakeLists.txt needs CUDA, this part does not, so tests/engine/trtllm-cmake.test.ts
# runs it on a fake TRTLLM_ROOT. Sets TRTLLM_INCLUDE_DIR, TRTLLM_LIB, TRTLLM_PLUGIN_LIB, TRTLLM_LIB_DIR,
# TENSORRT_INCLUDE_DIR (may be NOTFOUND) and TRTLLM_CXX11_ABI (ON/OFF).
#
# Layouts: the pip wheel (site-packages/tensorrt_llm) ships libs/ (its setup.py package_data) and, in
# recent releases, include/; a source build has cpp/include and lib/. Searched in that order.

if(NOT TRTLLM_ROOT)
  message(FATAL_ERROR "multilora: set -DTRTLLM_ROOT=<site-packages/tensorrt_llm, with libs/libtensorrt_llm.so>")
endif()

find_path(TRTLLM_INCLUDE_DIR tensorrt_llm/executor/executor.h
  PATHS "${TRTLLM_ROOT}/include" "${TRTLLM_ROOT}/cpp/include" NO_DEFAULT_PATH)
if(NOT TRTLLM_INCLUDE_DIR)
  message(FATAL_ERROR "multilora: tensorrt_llm/executor/executor.h is not under ${TRTLLM_ROOT}/include or "
    "${TRTLLM_ROOT}/cpp/include; set -DTRTLLM_INCLUDE_DIR=<dir> (a TensorRT-LLM checkout's cpp/include of the "
    "installed version)")
endif()

find_library(TRTLLM_LIB tensorrt_llm PATHS "${TRTLLM_ROOT}/libs" "${TRTLLM_ROOT}/lib" NO_DEFAULT_PATH)
if(NOT TRTLLM_LIB)
  message(FATAL_ERROR "multilora: libtensorrt_llm.so is not in ${TRTLLM_ROOT}/libs (the wheel) or ${TRTLLM_ROOT}/lib")
endif()
get_filename_component(TRTLLM_LIB_DIR "${TRTLLM_LIB}" DIRECTORY)

# Not linked (its SONAME has a version suffix the wheel's file lacks): the shim opens it by this path.
find_library(TRTLLM_PLUGIN_LIB nvinfer_plugin_tensorrt_llm PATHS "${TRTLLM_LIB_DIR}" NO_DEFAULT_PATH)
if(NOT TRTLLM_PLUGIN_LIB)
  message(FATAL_ERROR "multilora: libnvinfer_plugin_tensorrt_llm.so is not in ${TRTLLM_LIB_DIR}")
endif()

# TensorRT's headers (the image keeps them in /usr/local/tensorrt/include); the executor headers the shim
# includes do not need them at the pinned version, a later one might.
find_path(TENSORRT_INCLUDE_DIR NvInferRuntime.h
  HINTS "$ENV{TENSORRT_ROOT}/include" /usr/local/tensorrt/include /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu)
if(NOT TENSORRT_INCLUDE_DIR)
  message(WARNING "multilora: NvInferRuntime.h not found (set -DTENSORRT_INCLUDE_DIR=<TensorRT>/include if the build needs it)")
endif()

# The std::string ABI must match libtensorrt_llm.so's: a mismatch links but fails to load (undefined
# symbols). Read from the library's own symbols when nm is there; an explicit -DUSE_CXX11_ABI that
# disagrees is an error.
find_program(NM_TOOL nm)
set(TRTLLM_CXX11_ABI "")
if(NM_TOOL)
  execute_process(COMMAND "${NM_TOOL}" -DC "${TRTLLM_LIB}" OUTPUT_VARIABLE _symbols ERROR_QUIET RESULT_VARIABLE _nm_status)
  if(_nm_status EQUAL 0)
    string(FIND "${_symbols}" "__cxx11" _at)
    if(_at GREATER -1)
      set(TRTLLM_CXX11_ABI ON)
    else()
      set(TRTLLM_CXX11_ABI OFF)
    endif()
  endif()
endif()
if(DEFINED USE_CXX11_ABI AND NOT TRTLLM_CXX11_ABI STREQUAL "")
  if((USE_CXX11_ABI AND NOT TRTLLM_CXX11_ABI) OR (NOT USE_CXX11_ABI AND TRTLLM_CXX11_ABI))
    message(FATAL_ERROR "multilora: -DUSE_CXX11_ABI=${USE_CXX11_ABI}, but ${TRTLLM_LIB} was built with "
      "_GLIBCXX_USE_CXX11_ABI=${TRTLLM_CXX11_ABI}; drop the flag to follow the library")
  endif()
endif()
if(TRTLLM_CXX11_ABI STREQUAL "")
  if(DEFINED USE_CXX11_ABI)
    set(TRTLLM_CXX11_ABI ${USE_CXX11_ABI})
  else()
    set(TRTLLM_CXX11_ABI ON)
    message(WARNING "multilora: could not read ${TRTLLM_LIB}'s symbols (nm); assuming the C++11 ABI")
  endif()
endif()

message(STATUS "multilora: TensorRT-LLM headers ${TRTLLM_INCLUDE_DIR}")
message(STATUS "multilora: TensorRT-LLM libraries ${TRTLLM_LIB_DIR} (RPATH)")
message(STATUS "multilora: plugin library ${TRTLLM_PLUGIN_LIB}")
message(STATUS "multilora: _GLIBCXX_USE_CXX11_ABI=${TRTLLM_CXX11_ABI}")
