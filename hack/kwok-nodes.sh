#!/usr/bin/env bash
# Start KWOK against the local cluster (if not running) and make sure N simulated GPU nodes
# kwok-gpu-0..N-1 exist, each with nvidia.com/gpu: 2, the GPU labels of the real node and the
# taint finetune.dev/simulated=true:NoSchedule (pods must tolerate it to land there).
#   hack/kwok-nodes.sh N        (default 10)
# Pods on these nodes go Running at once with a fake IP from 198.18.16.0/20; Job-owned pods
# complete at once; nothing actually runs.
set -euo pipefail
FTO_LOG_TAG=kwok
source "$(dirname "$0")/lib/common.sh"
N=${1:-10}
[[ $N =~ ^[0-9]+$ ]] || die "usage: hack/kwok-nodes.sh N"
lock_cluster
kc get --raw /readyz >/dev/null 2>&1 || die "the local cluster is not running (make cluster-up)"
"$FTO_ROOT/hack/build-tools.sh" kwok

if ! pid_alive kwok; then
  cfg="$FTO_STATE/kwok.yaml"
  # Only Stages in the config file: a KwokConfiguration document there replaces the defaults of
  # options it leaves out with zero (kwok then fails: "node leases parallelism must be > 0").
  {
    for s in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      cat "$KWOK_BIN/stage/$s"; echo "---"
    done
  } >"$cfg"
  mkdir -p "$FTO_STATE/logs"
  log "starting kwok (log: $FTO_STATE/logs/kwok.log)"
  setsid kwok --kubeconfig="$KUBECONFIG_ADMIN" --config="$cfg" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= --manage-single-node= \
    --node-lease-duration-seconds=40 --cidr="$KWOK_CIDR" --node-ip= \
    --server-address=127.0.0.1:10247 >>"$FTO_STATE/logs/kwok.log" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  echo $! >"$FTO_STATE/kwok.pid"
fi

manifest=""
for ((i = 0; i < N; i++)); do
  manifest+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-gpu-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: \"0\"}
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-gpu-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/simulated: \"\"
    nvidia.com/gpu.product: NVIDIA-GeForce-RTX-3060
    nvidia.com/gpu.memory: \"12288\"
    nvidia.com/gpu.count: \"2\"
spec:
  taints:
  - {key: finetune.dev/simulated, value: \"true\", effect: NoSchedule}
status:
  capacity: {cpu: \"16\", memory: 64Gi, pods: \"110\", nvidia.com/gpu: \"2\"}
  allocatable: {cpu: \"16\", memory: 64Gi, pods: \"110\", nvidia.com/gpu: \"2\"}
"
done
# create only the missing ones (status is accepted on create, not on apply of an existing node)
existing=$(kc get nodes -l type=kwok -o name | sed 's|node/||')
todo=$(printf '%s' "$manifest" | python3 -c '
import sys
have = set(sys.argv[1].split())
docs = [d for d in sys.stdin.read().split("---\n") if d.strip()]
print("---\n".join(d for d in docs if d.split("name: ", 1)[1].split("\n", 1)[0] not in have))
' "$existing")
if [[ -n ${todo//[[:space:]]/} ]]; then printf '%s' "$todo" | kc create -f - >/dev/null; fi

ready() {
  local n
  n=$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)
  ((n >= N))
}
wait_for 60 "$N kwok nodes Ready" ready
log "$N simulated GPU nodes Ready (taint finetune.dev/simulated=true:NoSchedule)"
