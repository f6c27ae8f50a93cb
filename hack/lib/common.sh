# Shared settings of the local-cluster scripts. Sourced, not executed.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../versions.sh"
FTO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FTO_STATE=${FTO_STATE:-/run/fto-cluster}            # PKI, configs, logs, pids, kubeconfigs
FTO_IMAGES=${FTO_IMAGES:-$FTO_CACHE/images}          # cached image tarballs
K8S_BIN="$FTO_CACHE/bin/k8s-v$K8S_VERSION"
ETCD_BIN="$FTO_CACHE/bin/etcd-v$ETCD_VERSION"
KWOK_BIN="$FTO_CACHE/bin/kwok-v$KWOK_VERSION"
CTRD_SOCK="$FTO_STATE/containerd/containerd.sock"
NODE_NAME=kt-node-1
NODE_IP=198.18.1.1              # on lo; the apiserver and the kubelet bind here
POD_CIDR=198.18.0.0/24          # CNI bridge fto-cni0, gateway 198.18.0.1
POD_GW=198.18.0.1
SERVICE_CIDR=198.18.128.0/24
SERVICE_IP=198.18.128.1         # the `kubernetes` Service: DNAT 443 -> $NODE_IP:6443
DNS_IP=198.18.128.10            # the `kube-dns` Service: CoreDNS on the host binds it (on lo)
COREDNS_BIN="$FTO_CACHE/bin/coredns-v$COREDNS_VERSION"
KWOK_CIDR=198.18.16.0/20
API_SERVER="https://$NODE_IP:6443"
export KUBECONFIG_ADMIN="$FTO_STATE/admin.kubeconfig"
export PATH="$K8S_BIN:$ETCD_BIN:$KWOK_BIN:$PATH"

log() { printf '[%s] %s\n' "${FTO_LOG_TAG:-fto}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_k8s() { ctr -a "$CTRD_SOCK" -n k8s.io "$@"; }

# pid_alive NAME: the process recorded in $FTO_STATE/NAME.pid runs.
pid_alive() {
  local f="$FTO_STATE/$1.pid"
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.3
  done
}

# lock_cluster: serialize cluster-up/cluster-down/kwok-nodes (pytest sessions may race). The lock
# is fd 9; every long-running process these scripts start closes fds 3-9 (`3>&- ... 9>&-`) so it
# inherits neither this lock nor one its caller holds (flock(1) keeps its lock on fd 3).
lock_cluster() {
  local lock=${FTO_LOCK:-${FTO_STATE%/}.lock}
  exec 9>"$lock"
  flock -w 900 9 || die "another cluster script holds $lock"
}
