#!/usr/bin/env bash
# Build llama.cpp's quantizer (llama-quantize) and shared libraries from the llama.cpp vendored in
# the llama-cpp-python sdist on PyPI (pip's own client, no binaries), and keep its GGUF converter
# (convert_hf_to_gguf.py + the gguf-py writer package of the same commit) next to them. Cached
# under $FTO_CACHE/llama.cpp-<version>; a warm cache builds nothing. Prints the directory:
#   bin/llama-quantize  lib/libllama.so lib/libggml*.so
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
  rm -rf "$DEST" "$DEST.tmp"; mkdir -p "$DEST.tmp/sdist" "$DEST.tmp/src"
  log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$DEST.tmp/sdist" >&2
  tar -xzf "$DEST.tmp"/sdist/*.tar.gz -C "$DEST.tmp/src" --strip-components=1
  src="$DEST.tmp/src/vendor/llama.cpp"
  log "compiling llama-quantize + shared libraries (cold: 10-20 min on $(nproc) cores)"
  cmake -S "$src" -B "$DEST.tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
    -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib' >"$DEST.tmp/cmake.log" 2>&1 || { tail -30 "$DEST.tmp/cmake.log" >&2; exit 1; }
  cmake --build "$DEST.tmp/build" --target llama-quantize -j "$(nproc)" >>"$DEST.tmp/cmake.log" 2>&1 ||
    { tail -30 "$DEST.tmp/cmake.log" >&2; exit 1; }
  mkdir -p "$DEST.tmp/bin" "$DEST.tmp/lib" "$DEST.tmp/convert"
  cp "$DEST.tmp/build/bin/llama-quantize" "$DEST.tmp/bin/"
  find "$DEST.tmp/build" -name '*.so*' \( -type f -o -type l \) -exec cp -P {} "$DEST.tmp/lib/" \;
  rm -rf "$DEST.tmp/build" "$DEST.tmp/src"
  "$DEST.tmp/bin/llama-quantize" --help >/dev/null 2>&1 || [[ $? == 1 ]]
  touch "$DEST.tmp/.complete"
  mv "$DEST.tmp" "$DEST"
  log "built in $((SECONDS - start)) s"
fi
if [[ ! -f $DEST/convert/.complete ]]; then  # the converter (a script, its package, gguf-py)
  log "extracting convert_hf_to_gguf.py, conversion/ and gguf-py from the sdist"
  rm -rf "$DEST/convert"; mkdir -p "$DEST/convert"
  tar -xzf "$DEST"/sdist/*.tar.gz -C "$DEST/convert" --strip-components=3 --wildcards \
    '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
  touch "$DEST/convert/.complete"
fi
flock -u 9
install_binding
echo "$DEST"
