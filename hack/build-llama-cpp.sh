#!/usr/bin/env bash
# Build llama.cpp's quantizer (llama-quantize) and shared libraries from the llama.cpp vendored in
# the llama-cpp-python sdist on PyPI (pip's own client, no binaries), and keep its GGUF converter
# (convert_hf_to_gguf.py + the gguf-py writer package of the same commit) next to them; the
# compile itself is trainer-image/llama-cpp/build.sh, which the image's builder stage runs too.
# Cached under $FTO_CACHE/llama.cpp-<version>; a warm cache builds nothing. Prints the directory:
#   bin/llama-quantize  lib/libllama.so lib/libggml*.so lib/libgomp.so.1
#   convert/convert_hf_to_gguf.py convert/conversion/ convert/gguf-py/ (the converter needs all three)
#   sdist/llama_cpp_python-<version>.tar.gz  (pip installs the Python binding from it with
#   LLAMA_BUILD=OFF; LLAMA_CPP_LIB_PATH=<dir>/lib points it at these libraries)
# With --binding PYTHON it also installs the llama-cpp-python binding (pure Python, from the same
# sdist, LLAMA_BUILD=OFF: no second compile) into that interpreter's environment (the test venv).
# Cold: ~2 min download + 10-20 min compile on 2 cores. Used by the export tests and the trainer
# image's llama.cpp stage (hack/images.sh copies the result into the build context).
set -euo pipefail
source "$(dirname "$0")/versions.sh"
PY=${PYTHON:-python3}
BINDING_PY=""
if [[ ${1:-} == --binding ]]; then BINDING_PY=${2:?--binding needs a python}; fi
DEST="$FTO_CACHE/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
BUILD="$(dirname "$0")/../trainer-image/llama-cpp/build.sh"  # the compile, shared with the image
log() { printf '[build-llama-cpp] %s\n' "$*" >&2; }
install_binding() {
  [[ -n $BINDING_PY ]] || return 0
  if "$BINDING_PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("llama_cpp_python") != sys.argv[1])' \
      "$LLAMA_CPP_PYTHON_VERSION" 2>/dev/null; then return 0; fi
  log "installing the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION binding (LLAMA_BUILD=OFF) into $BINDING_PY"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF" "$BINDING_PY" -m pip install -q --no-deps "$DEST"/sdist/*.tar.gz >&2
}
mkdir -p "$FTO_CACHE"
exec 9>"$FTO_CACHE/llama.cpp.lock"
flock 9
if [[ ! -f $DEST/.complete ]]; then
  start=$SECONDS
  rm -rf "$DEST" "$DEST.tmp"; mkdir -p "$DEST.tmp/sdist"
  log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$DEST.tmp/sdist" >&2
  "$BUILD" sdist "$DEST.tmp"/sdist/*.tar.gz "$DEST.tmp"
  touch "$DEST.tmp/.complete"
  mv "$DEST.tmp" "$DEST"
  log "built in $((SECONDS - start)) s"
fi
# a cache from before the converter or the bundled OpenMP runtime: adds what is missing, no compile
"$BUILD" sdist "$DEST"/sdist/*.tar.gz "$DEST"
flock -u 9
install_binding
echo "$DEST"
