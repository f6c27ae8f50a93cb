#!/usr/bin/env bash
# Images without a registry.
#   hack/images.sh base         Debian bookworm rootfs (debootstrap) -> localhost/debian:bookworm
#   hack/images.sh pause        static pause binary -> registry.k8s.io/pause:3.10
#   hack/images.sh python-base  base + /opt/venv with requirements/trainer.txt -> localhost/python-base:bookworm
#   hack/images.sh trainer|operator|standin   docker build of the project images, then load them
#                               into the local cluster's containerd (skipped when unchanged):
#     trainer   trainer-image/Dockerfile, context trainer-image/, BASE_IMAGE=localhost/python-base:bookworm,
#               LLAMA_CPP_SOURCE=prebuilt: hack/build-llama-cpp.sh's cached llama.cpp (compiled once
#               per version) copied into trainer-image/llama-cpp/prebuilt/ (git-ignored);
#               TRAINER_LLAMA_CPP=0: LLAMA_CPP_SOURCE=none, no llama.cpp (make demo's image)
#     operator  operator/Dockerfile, context the repo root, BASE_IMAGE=localhost/debian:bookworm
#     standin   tests/standin/Dockerfile, context tests/standin/, BASE_IMAGE=localhost/debian:bookworm
# Every result is cached under $FTO_CACHE/images, keyed by what it is built from.
set -euo pipefail
FTO_LOG_TAG=images
source "$(dirname "$0")/lib/common.sh"
mkdir -p "$FTO_IMAGES"
export DOCKER_BUILDKIT=0

BASE_IMAGE=localhost/debian:bookworm
PAUSE_IMAGE=registry.k8s.io/pause:3.10
PYBASE_IMAGE=localhost/python-base:bookworm
BASE_PKGS=python3,python3-venv,ca-certificates
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

docker_ready() { "$FTO_ROOT/hack/docker-up.sh"; }
# has_image IMG KEY: docker holds IMG with label fto.key=KEY
has_image() {
  [[ $(docker image inspect -f '{{index .Config.Labels "fto.key"}}' "$1" 2>/dev/null) == "$2" ]]
}
cluster_running() { [[ -S $CTRD_SOCK ]] && ctr_k8s version >/dev/null 2>&1; }

# load_tar TAR IMG KEY: import a docker-save tarball into the cluster's containerd unless IMG
# is already there with label fto.key=KEY.
load_tar() {
  local tar=$1 img=$2 key=$3
  if ctr_k8s images ls "name==$img" 2>/dev/null | grep "fto.key=$key" >/dev/null; then return; fi
  log "loading $img into the cluster's containerd"
  ctr_k8s images import --no-unpack=false - <"$tar" >/dev/null
  ctr_k8s images label "$img" "fto.key=$key" >/dev/null
}

base_key() { printf '%s|%s|%s|v1' "$DEBIAN_SUITE" "$BASE_PKGS" "minbase" | sha256sum | cut -c1-12; }

build_base() {
  local key; key=$(base_key)
  local rootfs="$FTO_IMAGES/debian-$DEBIAN_SUITE-$key.rootfs.tar"
  local saved="$FTO_IMAGES/debian-$DEBIAN_SUITE-$key.docker.tar"
  if [[ ! -f $rootfs ]]; then
    log "debootstrap $DEBIAN_SUITE (minbase + $BASE_PKGS); takes a few minutes"
    local tmp; tmp=$(mktemp -d /var/tmp/fto-debootstrap.XXXX)
    debootstrap --variant=minbase --include="$BASE_PKGS" "$DEBIAN_SUITE" "$tmp/root" "$MIRROR" \
      >"$FTO_IMAGES/debootstrap.log" 2>&1 || { tail -20 "$FTO_IMAGES/debootstrap.log" >&2; rm -rf "$tmp"; exit 1; }
    rm -rf "$tmp"/root/var/cache/apt/archives/*.deb "$tmp"/root/var/lib/apt/lists/*
    tar -C "$tmp/root" --numeric-owner -cf "$rootfs.tmp" .
    mv "$rootfs.tmp" "$rootfs"
    rm -rf "$tmp"
  fi
  if [[ ! -f $saved ]]; then
    docker_ready
    if ! has_image "$BASE_IMAGE" "$key"; then
      docker import -c "LABEL fto.key=$key" -c 'CMD ["/bin/bash"]' \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        "$rootfs" "$BASE_IMAGE" >/dev/null
    fi
    docker save "$BASE_IMAGE" -o "$saved.tmp" && mv "$saved.tmp" "$saved"
  elif docker info >/dev/null 2>&1 && ! has_image "$BASE_IMAGE" "$key"; then
    docker load -i "$saved" >/dev/null
  fi
  if cluster_running; then load_tar "$saved" "$BASE_IMAGE" "$key"; fi
  log "$BASE_IMAGE ready (key $key)"
}

pause_key() { sha256sum "$FTO_ROOT/hack/pause/pause.c" | cut -c1-12; }

build_pause() {
  local key; key=$(pause_key)
  local saved="$FTO_IMAGES/pause-3.10-$key.docker.tar"
  if [[ ! -f $saved ]]; then
    docker_ready
    local tmp; tmp=$(mktemp -d)
    gcc -Os -static -o "$tmp/pause" "$FTO_ROOT/hack/pause/pause.c"
    strip "$tmp/pause"
    tar -C "$tmp" -c pause | docker import -c "LABEL fto.key=$key" -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
    docker save "$PAUSE_IMAGE" -o "$saved.tmp" && mv "$saved.tmp" "$saved"
    rm -rf "$tmp"
  fi
  if cluster_running; then load_tar "$saved" "$PAUSE_IMAGE" "$key"; fi
  log "$PAUSE_IMAGE ready (key $key)"
}

build_python_base() {
  build_base
  local key
  key=$( { base_key; cat "$FTO_ROOT/requirements/trainer.txt"; echo v1; } | sha256sum | cut -c1-12)
  local saved="$FTO_IMAGES/python-base-$key.docker.tar"
  docker_ready
  if has_image "$PYBASE_IMAGE" "$key"; then :
  elif [[ -f $saved ]]; then docker load -i "$saved" >/dev/null
  else
    log "building $PYBASE_IMAGE (pip install of requirements/trainer.txt from PyPI; torch is large)"
    local ctx; ctx=$(mktemp -d)
    cp "$FTO_ROOT/requirements/trainer.txt" "$ctx/requirements.txt"
    # The build reaches PyPI through the host network; the host's CA bundle travels in for
    # that one step (machines behind a TLS-inspecting egress need it) and is removed after.
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY requirements.txt host-ca.crt /tmp/
RUN python3 -m venv /opt/venv \\
 && PIP_CERT=/tmp/host-ca.crt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    /opt/venv/bin/pip install -q -r /tmp/requirements.txt \\
 && rm -f /tmp/requirements.txt /tmp/host-ca.crt
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL fto.key=$key
DOCKERFILE
    docker build -q --network host -t "$PYBASE_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
    docker save "$PYBASE_IMAGE" -o "$saved.tmp" && mv "$saved.tmp" "$saved"
  fi
  log "$PYBASE_IMAGE ready (key $key)"
}

# build_app NAME DOCKERFILE CONTEXT BASE IMAGE SOURCES...: docker build DOCKERFILE in CONTEXT with
# --build-arg BASE_IMAGE=BASE and --network none, then load IMAGE into the node. The key hashes the
# Dockerfile, the SOURCES (tracked and untracked, not ignored), the base image's id and $EXTRA_KEY
# (inputs that are git-ignored, e.g. the operator's wheel set), so an unchanged image is neither
# rebuilt nor reloaded. $BUILD_ARGS (space-separated NAME=VALUE) become more --build-args.
build_app() {
  local name=$1 dockerfile=$2 context=$3 base=$4 image=$5; shift 5
  if [[ ! -f $FTO_ROOT/$dockerfile ]]; then
    log "skipping $name: $dockerfile does not exist yet"; return
  fi
  case $base in
    "$PYBASE_IMAGE") build_python_base ;;
    "$BASE_IMAGE") build_base ;;
  esac
  local base_id; base_id=$(docker image inspect -f '{{.Id}}' "$base")
  local key
  key=$(cd "$FTO_ROOT" && { echo "$base_id"; echo "${EXTRA_KEY:-}"; git ls-files -co --exclude-standard -- "$dockerfile" "$@" |
        sort | xargs -r sha256sum; } | sha256sum | cut -c1-12)
  if ! has_image "$image" "$key"; then
    log "building $image from $dockerfile (context $context, BASE_IMAGE=$base)"
    local args=() a
    for a in ${BUILD_ARGS:-}; do args+=(--build-arg "$a"); done
    (cd "$FTO_ROOT" && docker build -q --network none -f "$dockerfile" "${args[@]}" \
      --build-arg "BASE_IMAGE=$base" --label "fto.key=$key" -t "$image" "$context") >/dev/null
  fi
  if cluster_running; then
    if ! ctr_k8s images ls "name==$image" 2>/dev/null | grep "fto.key=$key" >/dev/null; then
      log "loading $image into the cluster's containerd"
      docker save "$image" | ctr_k8s images import - >/dev/null
      ctr_k8s images label "$image" "fto.key=$key" >/dev/null
    fi
  else
    log "cluster not running: $image built, load it later with hack/image-load.sh $image"
  fi
  log "$image ready (key $key)"
}

TRAINER_IMAGE=${TRAINER_IMAGE:-localhost/finetune-trainer:dev}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-localhost/finetune-operator:dev}
STANDIN_IMAGE=${STANDIN_IMAGE:-localhost/finetune-standin:dev}

(($#)) || set -- base pause
for what in "$@"; do
  case $what in
    base) build_base ;;
    pause) build_pause ;;
    python-base) build_python_base ;;
    trainer)
      if [[ ${TRAINER_LLAMA_CPP:-1} == 0 ]]; then  # make demo: no GGUF export, no compile
        EXTRA_KEY="llama.cpp=none" \
        BUILD_ARGS="LLAMA_CPP_SOURCE=none LLAMA_CPP_PYTHON_VERSION=$LLAMA_CPP_PYTHON_VERSION" \
          build_app trainer trainer-image/Dockerfile trainer-image "$PYBASE_IMAGE" "$TRAINER_IMAGE" \
          trainer-image requirements/trainer.txt
        continue
      fi
      # llama.cpp for the GGUF export: built once per version on the host (offline build here);
      # the version joins the image's key, the copy in the context is git-ignored
      llama=$("$FTO_ROOT/hack/build-llama-cpp.sh")
      prebuilt=$FTO_ROOT/trainer-image/llama-cpp/prebuilt
      rm -rf "$prebuilt"; mkdir -p "$prebuilt"
      cp -a "$llama/bin" "$llama/lib" "$llama/convert" "$prebuilt/"
      echo "$LLAMA_CPP_PYTHON_VERSION" >"$prebuilt/VERSION"
      EXTRA_KEY="llama.cpp=$LLAMA_CPP_PYTHON_VERSION" \
      BUILD_ARGS="LLAMA_CPP_SOURCE=prebuilt LLAMA_CPP_PYTHON_VERSION=$LLAMA_CPP_PYTHON_VERSION" \
        build_app trainer trainer-image/Dockerfile trainer-image "$PYBASE_IMAGE" "$TRAINER_IMAGE" \
        trainer-image requirements/trainer.txt ;;
    operator)
      # its dependencies come as pre-downloaded wheels (build/operator-wheels/current, git-ignored;
      # keyed by the pins in requirements/, which are part of this image's key)
      [[ ! -x $FTO_ROOT/hack/operator-wheels.sh || ! -f $FTO_ROOT/operator/Dockerfile ]] ||
        "$FTO_ROOT/hack/operator-wheels.sh" >/dev/null
      # on the plain Debian base: the operator needs no torch, and a small image loads in seconds
      # the wheel set is git-ignored: its key (build/operator-wheels/current/.key) joins the image's
      EXTRA_KEY="wheels=$(cat "$FTO_ROOT/build/operator-wheels/current/.key" 2>/dev/null)" \
        build_app operator operator/Dockerfile . "$BASE_IMAGE" "$OPERATOR_IMAGE" \
        operator requirements ;;
    standin)
      build_app standin tests/standin/Dockerfile tests/standin "$BASE_IMAGE" "$STANDIN_IMAGE" tests/standin ;;
    *) die "unknown image '$what' (base pause python-base trainer operator standin)" ;;
  esac
done
