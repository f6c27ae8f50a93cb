#!/usr/bin/env bash
# Run a real Kueue (sigs.k8s.io/kueue $KUEUE_VERSION, built from the Go module proxy by
# hack/build-tools.sh) on this host against the local apiserver, for the tests that need it.
#   hack/kueue.sh up     CRDs, certificates, config, the process, webhook configurations (idempotent)
#   hack/kueue.sh down   webhook configurations removed first (nothing is gated any more), then the
#                        process stopped; CRDs and their objects stay
# Config: only the `pod` integration; pods are managed only in namespaces labelled
# finetune.dev/kueue=enabled (managedJobsNamespaceSelector, and the pod webhooks' namespaceSelector);
# leader election off; VisibilityOnDemand off (no aggregated API server). The webhook server binds
# 127.0.0.1:$KUEUE_WEBHOOK_PORT with a certificate for 127.0.0.1 from its own openssl CA; the
# apiserver calls it by URL (clientConfig.url), so no Service, DNS name or in-cluster pod is needed.
# State in $FTO_STATE/kueue/, log in $FTO_STATE/logs/kueue.log. Needs a running local cluster.
set -euo pipefail
FTO_LOG_TAG=kueue
source "$(dirname "$0")/lib/common.sh"

KUEUE_BIN="$FTO_CACHE/bin/kueue-v$KUEUE_VERSION/kueue"
KUEUE_WEBHOOK_PORT=${KUEUE_WEBHOOK_PORT:-19443}
KUEUE_HEALTH_PORT=${KUEUE_HEALTH_PORT:-18081}
NS_LABEL_KEY=finetune.dev/kueue
NS_LABEL_VALUE=enabled
D="$FTO_STATE/kueue"

module_dir() {
  GOFLAGS= GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/kueue@v$KUEUE_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

certs() {
  [[ -f $D/certs/tls.crt ]] && return
  mkdir -p "$D/certs"; chmod 700 "$D"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$D/ca.key" -out "$D/ca.crt" -days 3650 \
    -subj "/CN=fto-kueue-webhook-ca" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' >"$D/leaf.ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$D/certs/tls.key" -subj "/CN=127.0.0.1" \
    -out "$D/leaf.csr" 2>/dev/null
  openssl x509 -req -in "$D/leaf.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" -CAcreateserial \
    -days 825 -sha256 -extfile "$D/leaf.ext" -out "$D/certs/tls.crt" 2>/dev/null
  rm -f "$D/leaf.csr" "$D/leaf.ext"
}

config() {
  cat >"$D/config.yaml" <<YAML
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:$KUEUE_HEALTH_PORT
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: $KUEUE_WEBHOOK_PORT
  certDir: $D/certs
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
managedJobsNamespaceSelector:
  matchLabels:
    $NS_LABEL_KEY: $NS_LABEL_VALUE
integrations:
  frameworks:
  - pod
YAML
}

ready() { curl -fsS "http://127.0.0.1:$KUEUE_HEALTH_PORT/readyz" >/dev/null; }

up() {
  kc get --raw /readyz >/dev/null 2>&1 || die "the local cluster is not running (hack/cluster-up.sh)"
  "$FTO_ROOT/hack/build-tools.sh" kueue
  local src venv
  src=$(module_dir)
  venv=$("$FTO_ROOT/hack/setup-venv.sh")
  mkdir -p "$D" "$FTO_STATE/logs"
  certs
  # with internalCertManagement off, Kueue v0.17 reads its metrics server's certificate from this
  # fixed path (cmd/kueue/main.go) even when metrics are off, and exits if it is missing
  if [[ ! -e /etc/kueue/metrics/certs ]]; then
    mkdir -p /etc/kueue/metrics
    ln -s "$D/certs" /etc/kueue/metrics/certs
  fi
  config
  log "applying Kueue v$KUEUE_VERSION CRDs"
  kc apply --server-side --force-conflicts -f "$src/config/components/crd/bases" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$src/config/components/crd/bases" >/dev/null
  kc get namespace kueue-system >/dev/null 2>&1 || kc create namespace kueue-system >/dev/null
  if ! pid_alive kueue; then
    log "starting kueue (log: $FTO_STATE/logs/kueue.log)"
    setsid "$KUEUE_BIN" --config "$D/config.yaml" --kubeconfig "$KUBECONFIG_ADMIN" \
      --feature-gates=VisibilityOnDemand=false \
      >>"$FTO_STATE/logs/kueue.log" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
    echo $! >"$FTO_STATE/kueue.pid"
  fi
  wait_for 120 "kueue /readyz" ready || { tail -20 "$FTO_STATE/logs/kueue.log" >&2; exit 1; }
  "$venv/bin/python" "$FTO_ROOT/hack/lib/kueue-webhooks.py" \
    "$src/config/components/webhook/manifests.yaml" "https://127.0.0.1:$KUEUE_WEBHOOK_PORT" \
    "$D/ca.crt" "$NS_LABEL_KEY" "$NS_LABEL_VALUE" >"$D/webhooks.yaml"
  kc apply -f "$D/webhooks.yaml" >/dev/null
  log "kueue v$KUEUE_VERSION ready (pods managed in namespaces labelled $NS_LABEL_KEY=$NS_LABEL_VALUE)"
}

down() {
  kc delete mutatingwebhookconfiguration fto-kueue-mutating --ignore-not-found >/dev/null 2>&1 || true
  kc delete validatingwebhookconfiguration fto-kueue-validating --ignore-not-found >/dev/null 2>&1 || true
  if pid_alive kueue; then
    local pid; pid=$(cat "$FTO_STATE/kueue.pid")
    log "stopping kueue (pid $pid)"
    kill "$pid"
    wait_for 30 "kueue to exit" bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$FTO_STATE/kueue.pid"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: hack/kueue.sh up|down" >&2; exit 2 ;;
esac
