#!/usr/bin/env bash
# Start the local Kubernetes on this machine (root): etcd (tmpfs), kube-apiserver,
# kube-controller-manager, kube-scheduler, a standalone containerd with a CNI bridge, and a kubelet
# registering node kt-node-1 that advertises nvidia.com/gpu: 2 with the labels of a 2x RTX 3060
# node; plus a default StorageClass `local-path` with a hostPath provisioner and cluster DNS
# (CoreDNS on the host at the `kube-dns` Service IP 198.18.128.10).
# Idempotent: only what is not running is started; on a healthy cluster this is a fast no-op.
# Addresses: apiserver https://198.18.1.1:6443 (node IP on lo), pods 198.18.0.0/24,
# services 198.18.128.0/24 (kubernetes = 198.18.128.1:443, DNAT to the apiserver), etcd 127.0.0.1.
set -euo pipefail
FTO_LOG_TAG=cluster-up
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/pki.sh"
[[ $(id -u) == 0 ]] || die "must run as root (it configures addresses, routes, iptables and runs a kubelet)"
lock_cluster

ETCD_DATA=/dev/shm/fto-etcd
CTRD_ROOT=/var/lib/fto-containerd
KUBELET_ROOT=/var/lib/fto-kubelet
VOLUMES=/var/lib/fto-volumes
GPU_LABELS="nvidia.com/gpu.product=NVIDIA-GeForce-RTX-3060,nvidia.com/gpu.memory=12288,nvidia.com/gpu.count=2"

print_env() {
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export PATH=$K8S_BIN:\$PATH   # kubectl v$K8S_VERSION (also linked as /usr/local/bin/kubectl if free)"
}

# node_state: "READY|GPUS" of the node, e.g. "True|2" (empty when it cannot be read).
node_state() {
  kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}|{.status.allocatable.nvidia\.com/gpu}' 2>/dev/null || true
}
node_ok() { [[ $(node_state) == "True|2" ]]; }

# healthy: every part runs with its current config and the node is Ready with its GPUs; when not,
# it says on stderr what is wrong (the first thing found).
healthy() {
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet provisioner coredns; do
    pid_alive "$c" || { echo "$c is not running" >&2; return 1; }
  done
  config_current kube-apiserver "$APISERVER_HASH" || { echo "kube-apiserver runs an older config" >&2; return 1; }
  # a kubelet started by an older cluster-up (before cluster DNS) is restarted with it
  grep -q "clusterDNS: \[$DNS_IP\]" "$FTO_STATE/kubelet.yaml" 2>/dev/null \
    || { echo "the kubelet runs without cluster DNS" >&2; return 1; }
  kc get --raw /readyz >/dev/null 2>&1 || { echo "kube-apiserver /readyz fails" >&2; return 1; }
  local state; state=$(node_state)
  [[ $state == "True|2" ]] || {
    echo "node $NODE_NAME is not Ready with nvidia.com/gpu: 2 allocatable (Ready|gpu: ${state:-unreadable})" >&2
    return 1
  }
}

# start NAME CMD...: run CMD detached (own session, output in $FTO_STATE/logs/NAME.log) unless
# the process recorded for NAME is alive. Returns 0 when it started something.
start() {
  local name=$1; shift
  if pid_alive "$name"; then return 1; fi
  log "starting $name (log: $FTO_STATE/logs/$name.log)"
  setsid "$@" >>"$FTO_STATE/logs/$name.log" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  echo $! >"$FTO_STATE/$name.pid"
}

# --- kube-apiserver's flags and audit policy ----------------------------------------------------
# The audit log records, at Metadata level, every request of the identity the integration tier
# runs the operator as (tests/integration/test_rbac_audit.py compares the (verb, resource) pairs it
# used with what the generated RBAC grants); nothing else is logged.
P="$FTO_STATE/pki"
AUDIT_DIR="$FTO_STATE/audit"
AUDIT_USER=system:serviceaccount:fto-audit:finetune-operator
AUDIT_POLICY="apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: [\"$AUDIT_USER\"]
  - level: None
"
APISERVER_FLAGS=(
  --etcd-servers=http://127.0.0.1:2379 --bind-address="$NODE_IP" --secure-port=6443
  --advertise-address="$NODE_IP" --service-cluster-ip-range="$SERVICE_CIDR"
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key"
  --client-ca-file="$P/ca.crt"
  --service-account-issuer=https://kubernetes.default.svc.cluster.local
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key"
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true
  --kubelet-client-certificate="$P/apiserver-kubelet-client.crt"
  --kubelet-client-key="$P/apiserver-kubelet-client.key"
  --kubelet-preferred-address-types=InternalIP --profiling=false
  --max-requests-inflight=800 --max-mutating-requests-inflight=400
  --audit-policy-file="$FTO_STATE/audit-policy.yaml" --audit-log-path="$AUDIT_DIR/audit.log"
  --audit-log-format=json --audit-log-maxsize=50 --audit-log-maxbackup=2
)
# A running apiserver started with other flags or another policy is restarted (once, under the
# cluster lock) so a changed flag takes effect; one started with these is left alone.
APISERVER_HASH=$(printf '%s\n' "${APISERVER_FLAGS[@]}" "$AUDIT_POLICY" | sha256sum | cut -d' ' -f1)

t0=$SECONDS
if [[ -f $KUBECONFIG_ADMIN ]] && healthy; then
  log "cluster already running and healthy"
  print_env
  exit 0
fi

"$FTO_ROOT/hack/setup-host.sh"
"$FTO_ROOT/hack/build-tools.sh" etcd k8s coredns
mkdir -p "$FTO_STATE/logs" "$FTO_STATE/cni" "$FTO_STATE/containerd" "$VOLUMES"
[[ -e /usr/local/bin/kubectl ]] || ln -s "$K8S_BIN/kubectl" /usr/local/bin/kubectl

# --- network: node IP on lo, a fence around 198.18.0.0/15, the `kubernetes` Service ---------------
# `replace` adds or keeps: idempotent, no check-then-add. (The old `ip … | grep -q … || ip … add`
# raced under pipefail: grep -q exits at its match, ip gets SIGPIPE if it still writes lines after
# it, the pipeline fails, and the add answers "RTNETLINK answers: File exists", seen in CI's storm
# test.)
ip addr replace "$NODE_IP/32" dev lo
ip route replace unreachable 198.18.0.0/15
# Hosts (and hostNetwork pods) reach the service IP as a local address; pods on the bridge get
# there through their CNI route via 198.18.0.1. Either way the nat rule sends it to the apiserver.
ip route replace local "$SERVICE_IP/32" dev lo table local
ip route replace local "$DNS_IP/32" dev lo table local
iptables -t nat -N FTO-SERVICES 2>/dev/null || true
iptables -t nat -C FTO-SERVICES -d "$SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:6443" 2>/dev/null ||
  iptables -t nat -A FTO-SERVICES -d "$SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:6443"
for chain in PREROUTING OUTPUT; do
  iptables -t nat -C "$chain" -j FTO-SERVICES 2>/dev/null || iptables -t nat -I "$chain" -j FTO-SERVICES
done

pki_ensure

# --- control plane ------------------------------------------------------------------------------
mkdir -p "$ETCD_DATA"
start etcd etcd --name fto --data-dir "$ETCD_DATA" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster fto=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --quota-backend-bytes 2147483648 || true
wait_for 30 "etcd" curl -fsS http://127.0.0.1:2379/health

stop_if_changed kube-apiserver "$APISERVER_HASH"
printf '%s' "$AUDIT_POLICY" >"$FTO_STATE/audit-policy.yaml"
mkdir -p "$AUDIT_DIR"
if start kube-apiserver kube-apiserver "${APISERVER_FLAGS[@]}"; then
  echo "$APISERVER_HASH" >"$FTO_STATE/kube-apiserver.hash"
fi
wait_for 90 "kube-apiserver /readyz" kc get --raw /readyz

start kube-controller-manager kube-controller-manager --kubeconfig="$FTO_STATE/kcm.kubeconfig" \
  --authentication-kubeconfig="$FTO_STATE/kcm.kubeconfig" --authorization-kubeconfig="$FTO_STATE/kcm.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --kube-api-qps=200 --kube-api-burst=400 \
  --profiling=false || true
start kube-scheduler kube-scheduler --kubeconfig="$FTO_STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig="$FTO_STATE/scheduler.kubeconfig" --authorization-kubeconfig="$FTO_STATE/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false || true

# --- node: containerd + CNI + kubelet -------------------------------------------------------------
# The CNI config must exist before containerd starts (a config moved in later was not picked up).
cat >"$FTO_STATE/cni/10-fto-bridge.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "fto-pods",
  "plugins": [{
    "type": "bridge", "bridge": "fto-cni0", "isGateway": true, "isDefaultGateway": false,
    "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$FTO_STATE/cni-ipam",
      "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
      "routes": [{"dst": "$SERVICE_CIDR", "gw": "$POD_GW"}, {"dst": "$NODE_IP/32", "gw": "$POD_GW"}]
    }
  }]
}
JSON
cat >"$FTO_STATE/containerd/config.toml" <<TOML
version = 2
root = "$CTRD_ROOT"
state = "$FTO_STATE/containerd/state"
oom_score = 0
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = "$FTO_STATE/containerd/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # the VM's root lacks CAP_SYS_RESOURCE: negative oom_score_adj for sandboxes would fail
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$FTO_STATE/cni"
TOML
start containerd containerd --config "$FTO_STATE/containerd/config.toml" || true
wait_for 30 "containerd" ctr_k8s version
"$FTO_ROOT/hack/images.sh" pause base

# A kubelet running with an older config (no clusterDNS) is restarted; its pods keep running.
if pid_alive kubelet && ! grep -q "clusterDNS: \[$DNS_IP\]" "$FTO_STATE/kubelet.yaml" 2>/dev/null; then
  log "restarting the kubelet for cluster DNS"
  kill "$(cat "$FTO_STATE/kubelet.pid")"
  wait_for 30 "the old kubelet to exit" bash -c "! kill -0 $(cat "$FTO_STATE/kubelet.pid") 2>/dev/null"
fi
cat >"$FTO_STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false            # the VM runs cgroup v1; 1.35 refuses it unless told
cgroupDriver: cgroupfs         # containerd 1.6 cannot report its driver (no RuntimeConfig RPC)
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
oomScoreAdj: 0                 # no CAP_SYS_RESOURCE for -999
imageGCHighThresholdPercent: 100   # the local pause/base images can never be pulled again
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: ""
maxPods: 110
YAML
if start kubelet kubelet --config="$FTO_STATE/kubelet.yaml" --kubeconfig="$FTO_STATE/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$KUBELET_ROOT" \
    --node-labels="$GPU_LABELS" --v=1; then
  kubelet_started=1
fi

wait_for 90 "node $NODE_NAME to register" kc get node "$NODE_NAME"
kc label node "$NODE_NAME" --overwrite ${GPU_LABELS//,/ } >/dev/null
wait_for 120 "node $NODE_NAME Ready" kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
# No device plugin: advertise the GPUs by patching capacity. The kubelet copies capacity into
# allocatable and keeps it while it runs; a kubelet (re)start may zero it, so patch again then.
if [[ -n ${kubelet_started:-} ]] || ! node_ok; then
  gpu_patch() {
    kc patch node "$NODE_NAME" --subresource=status --type=json \
      -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"2"}]' >/dev/null && node_ok
  }
  wait_for 60 "nvidia.com/gpu: 2 allocatable on $NODE_NAME" gpu_patch
fi

# --- storage: default StorageClass local-path + hostPath provisioner -------------------------------
kc apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: fto.local/hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
YAML
start provisioner python3 "$FTO_ROOT/hack/lib/hostpath-provisioner.py" \
  --server "$API_SERVER" --pki "$P" --root "$VOLUMES" --node "$NODE_NAME" || true

# --- cluster DNS: CoreDNS on the host, bound to the kube-dns Service IP (pods route the service
# range via the bridge gateway to the host). The Service reserves the IP in the allocator, as on a
# real cluster; it has no endpoints (no kube-proxy here). Only cluster.local is served: nothing
# is forwarded off the machine, other names are refused at once.
kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $DNS_IP
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
YAML
cat >"$FTO_STATE/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $DNS_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_ADMIN
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
COREFILE
start coredns "$COREDNS_BIN/coredns" -conf "$FTO_STATE/Corefile" || true
wait_for 30 "cluster DNS on $DNS_IP" python3 "$FTO_ROOT/hack/lib/dnsprobe.py" "$DNS_IP" kubernetes.default.svc.cluster.local

wait_for 30 "the default ServiceAccount" kc -n default get serviceaccount default
# Once more, with time: after an apiserver restart the node controller can mark the node Ready=Unknown
# (no heartbeat seen while the apiserver was down) just after the wait above passed; the kubelet
# reports Ready again within its status period (10 s).
if ! wait_for 60 "the cluster to be healthy" healthy; then
  why=$(healthy 2>&1 || true)
  die "cluster did not become healthy (${why:-it is now}); see $FTO_ROOT/hack/cluster-status.sh and $FTO_STATE/logs"
fi
log "cluster up in $((SECONDS - t0))s"
print_env
