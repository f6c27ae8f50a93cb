#!/usr/bin/env bash
# llama.cpp for the GGUF export (finetune_trainer/export/gguf.py), from the llama.cpp vendored in
# the llama-cpp-python sdist on PyPI at one pinned version (hack/versions.sh
# LLAMA_CPP_PYTHON_VERSION), installed into DEST as
#   bin/llama-quantize       RUNPATH $ORIGIN/../lib: no LD_LIBRARY_PATH needed
#   lib/libllama*.so* lib/libggml*.so*  and lib/libgomp.so.1 (the compiler's OpenMP runtime,
#                            bundled as auditwheel does: a slim runtime image may lack libgomp1)
#   convert/convert_hf_to_gguf.py convert/conversion/ convert/gguf-py/  (the converter needs all
#                            three; it runs with the image's Python: torch, numpy, transformers,
#                            sentencepiece, and gguf-py's tqdm, pyyaml, requests)
# Modes:
#   build.sh sdist SDIST DEST       compile from a downloaded sdist (needs cmake and a C++ compiler);
#                                   what is already in DEST is kept (hack/build-llama-cpp.sh's cache)
#   build.sh build VERSION DEST     download the sdist with pip, then as above; installs cmake and
#                                   g++ with apt-get when missing (the trainer image's builder
#                                   stage, with network: the GPU image)
#   build.sh prebuilt VERSION DEST  copy ./prebuilt/, which hack/images.sh fills from
#                                   hack/build-llama-cpp.sh's cache (the offline local image)
#   build.sh none VERSION DEST      no llama.cpp (`make demo`'s image: it exports no GGUF, and a
#                                   cold demo skips a 10-20 min compile); a GGUF export of such an
#                                   image fails ExportFailed, naming the missing tool
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
log() { printf '[llama-cpp] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

compile() {  # SDIST DEST
  local sdist=$1 dest=$2 tmp
  tmp=$(mktemp -d)
  tar -xzf "$sdist" -C "$tmp" --strip-components=1
  log "compiling llama-quantize + shared libraries (cold: 10-20 min on $(nproc) cores)"
  cmake -S "$tmp/vendor/llama.cpp" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
    -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib' >"$tmp/cmake.log" 2>&1 || { tail -30 "$tmp/cmake.log" >&2; exit 1; }
  cmake --build "$tmp/build" --target llama-quantize -j "$(nproc)" >>"$tmp/cmake.log" 2>&1 ||
    { tail -30 "$tmp/cmake.log" >&2; exit 1; }
  mkdir -p "$dest/bin" "$dest/lib"
  cp "$tmp/build/bin/llama-quantize" "$dest/bin/"
  find "$tmp/build" -name '*.so*' \( -type f -o -type l \) -exec cp -P {} "$dest/lib/" \;
  rm -rf "$tmp"
}

converter() {  # SDIST DEST
  local sdist=$1 dest=$2
  log "extracting convert_hf_to_gguf.py, conversion/ and gguf-py from the sdist"
  rm -rf "$dest/convert"; mkdir -p "$dest/convert"
  tar -xzf "$sdist" -C "$dest/convert" --strip-components=3 --wildcards \
    '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
  touch "$dest/convert/.complete"
}

bundle_runtime() {  # DEST: libgomp.so.1 next to the libraries that need it
  local dest=$1 gomp
  [[ ! -e $dest/lib/libgomp.so.1 ]] || return 0
  gomp=$(ldd "$dest/lib/libggml-base.so" | awk '$1 == "libgomp.so.1" { print $3 }')
  [[ -z $gomp ]] || { cp -L "$gomp" "$dest/lib/libgomp.so.1"; log "bundled $gomp"; }
}

check() {  # DEST: the quantizer starts (its libraries resolve), the converter is complete
  local dest=$1
  if ldd "$dest/bin/llama-quantize" | grep -q 'not found'; then
    ldd "$dest/bin/llama-quantize" >&2; die "llama-quantize: a shared library is missing"
  fi
  "$dest/bin/llama-quantize" --help >/dev/null 2>&1 || [[ $? == 1 ]] || die "llama-quantize does not run"
  for f in convert/convert_hf_to_gguf.py convert/conversion/__init__.py convert/gguf-py/gguf/__init__.py; do
    [[ -f $dest/$f ]] || die "$dest/$f is missing"
  done
}

from_sdist() {  # SDIST DEST
  local sdist=$1 dest=$2
  [[ -x $dest/bin/llama-quantize ]] || compile "$sdist" "$dest"
  [[ -f $dest/convert/.complete ]] || converter "$sdist" "$dest"
  bundle_runtime "$dest"
  check "$dest"
}

mode=${1:-}; arg=${2:-}; dest=${3:-}
[[ -n $arg && -n $dest ]] || die "usage: build.sh sdist SDIST DEST | build VERSION DEST | prebuilt VERSION DEST | none VERSION DEST"
case $mode in
  sdist) from_sdist "$arg" "$dest" ;;
  build)
    if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
      command -v apt-get >/dev/null || die "cmake and a C++ compiler are needed (no apt-get to install them)"
      log "installing cmake and g++ (this builder stage only)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        cmake g++ make >/dev/null
    fi
    tmp=$(mktemp -d)
    log "downloading the llama-cpp-python $arg sdist"
    "${PYTHON:-python3}" -m pip download -q --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$arg" -d "$tmp"
    from_sdist "$tmp"/llama_cpp_python-*.tar.gz "$dest"
    rm -rf "$tmp" ;;
  prebuilt)
    have=$(cat "$HERE/prebuilt/VERSION" 2>/dev/null || true)
    [[ $have == "$arg" ]] || die "$HERE/prebuilt holds llama.cpp '${have:-nothing}', not $arg (hack/images.sh fills it; or build with LLAMA_CPP_SOURCE=build)"
    mkdir -p "$dest"
    cp -a "$HERE/prebuilt/bin" "$HERE/prebuilt/lib" "$HERE/prebuilt/convert" "$dest/"
    check "$dest" ;;
  none) mkdir -p "$dest"; log "no llama.cpp in this image: GGUF exports will fail" ;;
  *) die "unknown mode '$mode' (sdist, build, prebuilt, none)" ;;
esac
log "llama.cpp $mode ready in $dest"
