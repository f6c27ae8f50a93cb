#!/usr/bin/env bash
# Build the pinned Kubernetes, etcd, KWOK, Helm, CoreDNS and Kueue binaries from the Go module proxy
# into a cache outside the repo, keyed by version. A warm cache builds nothing.
#   hack/build-tools.sh [k8s] [etcd] [kwok] [helm] [kueue] [kstatus] [coredns]   (default: all)
set -euo pipefail
source "$(dirname "$0")/versions.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
BIN="$FTO_CACHE/bin"
mkdir -p "$BIN"

log() { printf '[build-tools] %s\n' "$*" >&2; }

build_k8s() {
  local out="$BIN/k8s-v$K8S_VERSION"
  if [[ -x $out/kubelet && -x $out/kube-apiserver && -x $out/kubectl ]] &&
     "$out/kube-apiserver" --version 2>/dev/null | grep "v$K8S_VERSION" >/dev/null; then
    log "kubernetes v$K8S_VERSION cached in $out"; return
  fi
  log "building kubernetes v$K8S_VERSION (cold: 15-30 min on 2 cores)"
  local mod="$FTO_CACHE/src/k8s-v$K8S_VERSION"
  mkdir -p "$mod" "$out"
  cd "$mod"
  if [[ ! -f go.mod ]]; then
    go mod init fto.local/k8sbins >/dev/null 2>&1
    go mod edit -go=1.26 -godebug=default=go1.25
    local upstream
    upstream=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    # k8s.io/kubernetes requires its staging modules at v0.0.0; map each to the matching release.
    local staging
    staging=$(awk '/^[[:space:]]*k8s.io\/[a-z0-9-]+ v0.0.0$/ {print $1}' "$upstream")
    local args=()
    for m in $staging; do args+=("-replace=$m=$m@v0.${K8S_VERSION#1.}"); done
    go mod edit "${args[@]}"
    for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
      go get -tool "k8s.io/kubernetes/cmd/$c@v$K8S_VERSION"
    done
  fi
  local minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  CGO_ENABLED=0 go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldf" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl
  cd "$ROOT"
}

build_etcd() {
  local out="$BIN/etcd-v$ETCD_VERSION"
  if [[ -x $out/etcd ]]; then log "etcd v$ETCD_VERSION cached"; return; fi
  log "building etcd v$ETCD_VERSION"
  local mod="$FTO_CACHE/src/etcd-v$ETCD_VERSION"
  mkdir -p "$mod" "$out"; cd "$mod"
  if [[ ! -f go.mod ]]; then
    go mod init fto.local/etcdbin >/dev/null 2>&1
    go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  fi
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  cd "$ROOT"
}

build_kwok() {
  local out="$BIN/kwok-v$KWOK_VERSION"
  if [[ -x $out/kwok && -d $out/stage ]]; then log "kwok v$KWOK_VERSION cached"; return; fi
  log "building kwok v$KWOK_VERSION"
  mkdir -p "$out"
  # the upstream Stage definitions travel with the module (standalone kwok needs them)
  local src; src=$(go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out/stage"; cp -r "$src/kustomize/stage" "$out/stage"; chmod -R u+w "$out/stage"
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
}

# go_install NAME VERSION PACKAGE: `go install PACKAGE@vVERSION` into $BIN/NAME-vVERSION/ unless
# the binary NAME is there already.
go_install() {
  local name=$1 version=$2 package=$3
  local out="$BIN/$name-v$version"
  if [[ -x $out/$name ]]; then log "$name v$version cached"; return; fi
  log "building $name v$version"
  mkdir -p "$out"
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "$package@v$version"
}

# Cluster DNS for the local cluster (Services and headless pod names, multi-node jobs).
build_coredns() {
  local out="$BIN/coredns-v$COREDNS_VERSION"
  if [[ -x $out/coredns ]]; then log "coredns v$COREDNS_VERSION cached"; return; fi
  log "building coredns v$COREDNS_VERSION (cold: ~15 min on 2 cores)"
  mkdir -p "$out"
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@v$COREDNS_VERSION"
}

build_helm() { go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm; }

# Kueue's manager for the kueue test tier (hack/kueue.sh runs it on the host; cold: ~10 min on 2
# cores); its CRDs and webhook manifests are read from the same module in the Go module cache.
build_kueue() { go_install kueue "$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue; }

# The cached binary is keyed by its sources too, so an edit of tools/kstatus rebuilds it
# (tests/unit/gitops/test_kstatus.py computes the same key).
kstatus_key() {
  cat "$ROOT/tools/kstatus/go.mod" "$ROOT/tools/kstatus/go.sum" "$ROOT/tools/kstatus/main.go" |
    sha256sum | cut -c1-12
}

build_kstatus() {
  local key out
  key=$(kstatus_key)
  out="$BIN/kstatus-check-$CLI_UTILS_VERSION-$key"
  if [[ -x $out/kstatus-check ]]; then log "kstatus-check cached"; return; fi
  log "building kstatus-check against sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"
  mkdir -p "$out"
  (cd "$ROOT/tools/kstatus" && CGO_ENABLED=0 go build -trimpath -o "$out/kstatus-check" .)
}

targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(etcd k8s kwok helm coredns kueue)
for t in "${targets[@]}"; do "build_$t"; done
