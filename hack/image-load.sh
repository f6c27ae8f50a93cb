#!/usr/bin/env bash
# Put locally built docker images on the local cluster's node (its containerd, namespace k8s.io).
#   hack/image-load.sh localhost/finetune-trainer:dev [more images...]
# Name images localhost/<name>:<tag> and use imagePullPolicy IfNotPresent or Never.
set -euo pipefail
FTO_LOG_TAG=image-load
source "$(dirname "$0")/lib/common.sh"
(($#)) || die "usage: hack/image-load.sh IMAGE [IMAGE...]"
ctr_k8s version >/dev/null 2>&1 || die "the local cluster's containerd does not answer at $CTRD_SOCK (make cluster-up)"
for img in "$@"; do
  [[ -n $img ]] || die "empty image name (make image-load IMG=localhost/x:tag)"
  docker image inspect "$img" >/dev/null 2>&1 || die "docker has no image $img"
  log "loading $img"
  docker save "$img" | ctr_k8s images import - >/dev/null
  key=$(docker image inspect -f '{{index .Config.Labels "fto.key"}}' "$img")
  [[ -z $key ]] || ctr_k8s images label "$img" "fto.key=$key" >/dev/null
done
