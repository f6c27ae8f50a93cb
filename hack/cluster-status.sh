#!/usr/bin/env bash
# Show which local-cluster processes run, the apiserver's health and the nodes.
# Exit 0 when the apiserver is ready and kt-node-1 is Ready, 1 otherwise.
set -uo pipefail
FTO_LOG_TAG=cluster-status
source "$(dirname "$0")/lib/common.sh"
rc=0
for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet provisioner coredns kwok; do
  if pid_alive "$c"; then printf '  %-24s running (pid %s)\n' "$c" "$(cat "$FTO_STATE/$c.pid")"
  elif [[ $c == kwok ]]; then printf '  %-24s not running (optional: hack/kwok-nodes.sh N)\n' "$c"
  else printf '  %-24s NOT RUNNING (log: %s)\n' "$c" "$FTO_STATE/logs/$c.log"; rc=1; fi
done
if [[ -f $KUBECONFIG_ADMIN ]] && kc get --raw /readyz >/dev/null 2>&1; then
  echo "  apiserver                $API_SERVER ready"
  kc get nodes -o custom-columns='NODE:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPU:.status.allocatable.nvidia\.com/gpu,IP:.status.addresses[?(@.type=="InternalIP")].address,VERSION:.status.nodeInfo.kubeletVersion' |
    sed 's/^/  /'
  [[ $(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] || rc=1
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
else
  echo "  apiserver                not reachable"; rc=1
fi
exit $rc
