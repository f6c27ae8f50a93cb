#!/usr/bin/env bash
# Stop the local cluster and remove its state (etcd data, PKI, kubelet dir, pod volumes, network
# setup). Images stay in containerd's store (/var/lib/fto-containerd) so the next cluster-up is
# quick; `hack/cluster-down.sh --purge` removes them as well.
set -euo pipefail
FTO_LOG_TAG=cluster-down
source "$(dirname "$0")/lib/common.sh"
[[ $(id -u) == 0 ]] || die "must run as root"
lock_cluster
PURGE=${1:-}

# stop NAME: SIGTERM the recorded process, SIGKILL after 10 s.
stop() {
  local name=$1 f="$FTO_STATE/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop kwok
stop coredns
stop provisioner
stop kubelet
if pid_alive containerd; then
  # Every pod container and sandbox: kill, delete (the shims exit and unmount their rootfs).
  for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_k8s tasks ls -q 2>/dev/null); do
    for _ in $(seq 1 50); do ctr_k8s tasks delete "$id" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" >/dev/null 2>&1 || true; done
fi
stop containerd
# shims of our containerd that outlived it (found by our socket in their arguments)
for pid in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io .*-address $CTRD_SOCK" || true); do
  kill -9 "$pid" 2>/dev/null || true
done
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd

# mounts left under our directories (projected tokens, rootfs), deepest first
# (the kubelet also bind-mounts its root directory onto itself)
for root in /var/lib/fto-kubelet "$FTO_STATE" /var/lib/fto-containerd; do
  findmnt -rn -o TARGET | grep -E "^$root(/|\$)" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
done
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$ns" 2>/dev/null || true; done
ip link delete fto-cni0 2>/dev/null || true
ip route del local "$SERVICE_IP/32" dev lo table local 2>/dev/null || true
ip route del local "$DNS_IP/32" dev lo table local 2>/dev/null || true
ip route del unreachable 198.18.0.0/15 2>/dev/null || true
ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
for chain in PREROUTING OUTPUT; do
  while iptables -t nat -D "$chain" -j FTO-SERVICES 2>/dev/null; do :; done
done
iptables -t nat -F FTO-SERVICES 2>/dev/null || true
iptables -t nat -X FTO-SERVICES 2>/dev/null || true
# chains the kubelet adds (its canaries and the localnet firewall)
for ipt in iptables ip6tables; do
  for chain in INPUT OUTPUT; do
    while $ipt -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
  done
  for table in filter nat mangle; do
    for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      $ipt -t "$table" -F "$chain" 2>/dev/null && $ipt -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
done

rm -rf /dev/shm/fto-etcd /var/lib/fto-kubelet /var/lib/fto-volumes "$FTO_STATE"
# containers' metadata goes, the image store stays unless purged
if [[ $PURGE == --purge ]]; then rm -rf /var/lib/fto-containerd; fi
log "cluster stopped and its state removed"
