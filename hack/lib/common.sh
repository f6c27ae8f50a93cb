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
  [[ -f $f ]] && ! pid_gone "$(cat "$f")"
}

# config_current NAME HASH: NAME was started with the flags whose hash is HASH ($FTO_STATE/NAME.hash).
config_current() {
  [[ -f $FTO_STATE/$1.hash && $(cat "$FTO_STATE/$1.hash") == "$2" ]]
}

# pid_gone PID: the process has exited (a zombie not yet reaped counts as gone).
pid_gone() { ! kill -0 "$1" 2>/dev/null || [[ $(ps -o stat= -p "$1" 2>/dev/null) == Z* ]]; }

# stop_if_changed NAME HASH: stop the recorded NAME when it runs with other flags than HASH (or
# was started before hashes were recorded), so that the caller starts it again with the new ones.
stop_if_changed() {
  local name=$1 hash=$2 pid
  pid_alive "$name" || return 0
  config_current "$name" "$hash" && return 0
  pid=$(cat "$FTO_STATE/$name.pid")
  log "$name runs with other flags: restarting it (pid $pid)"
  kill "$pid"
  # kube-apiserver drains open requests for up to a minute after SIGTERM (seen: 60 s); its state
  # is in etcd, so after a short grace period it is killed
  wait_for 15 "$name to stop" pid_gone "$pid" || { kill -9 "$pid"; wait_for 10 "$name to die" pid_gone "$pid"; }
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
