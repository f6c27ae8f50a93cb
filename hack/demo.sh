#!/usr/bin/env bash
# `make demo`: fine-tune a tiny llama on CPU with the operator, end to end, and show it live.
#   1. the cluster: $KUBECONFIG if it answers, else the local one (hack/cluster-up.sh, root)
#   2. the trainer and operator images, built and loaded into the node (cached by content)
#   3. the operator, installed with the Helm chart into finetune-system, watching finetune-demo
#   4. the claim "models" seeded with a tiny model + a synthetic dataset (manifests/samples/demo/)
#   5. the FineTuneJob "demo" (re-created on every run), followed with `kubectl finetune watch`
#   6. status.output: where the adapter is, and the tuned model's generations from status
# Re-running is safe: the job is deleted and applied again. Prints the wall time at the end.
# DEMO_NAMESPACE / DEMO_OPERATOR_NAMESPACE override the namespaces. Quiet by default: the output
# of the cluster start and the image builds (Go module downloads, docker build) goes to
# $DEMO_LOG (default /tmp/fto-demo.log), whose tail is shown if a step fails; DEMO_VERBOSE=1
# shows it as it happens.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source hack/versions.sh
T0=$SECONDS
NS=${DEMO_NAMESPACE:-finetune-demo}
OPNS=${DEMO_OPERATOR_NAMESPACE:-finetune-system}
RELEASE=finetune-operator
LOCAL_KC=/run/fto-cluster/admin.kubeconfig
FTO_CACHE=${FTO_CACHE:-$HOME/.cache/finetune-operator}
export FTO_CACHE

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
[[ -t 1 ]] || say() { printf '\n==> %s\n' "$*"; }

DEMO_LOG=${DEMO_LOG:-/tmp/fto-demo.log}
: >"$DEMO_LOG"
# quiet CMD...: run CMD with its output in $DEMO_LOG (streamed with DEMO_VERBOSE=1); on failure
# show the log's tail and stop.
quiet() {
  local t0=$SECONDS rc=0
  if [[ ${DEMO_VERBOSE:-0} != 0 ]]; then
    "$@" 2>&1 | tee -a "$DEMO_LOG" || rc=$?
  else
    echo "\$ $*   (output: $DEMO_LOG)"
    "$@" >>"$DEMO_LOG" 2>&1 || rc=$?
  fi
  if ((rc != 0)); then
    echo "failed (exit $rc): $*; the last 60 lines of $DEMO_LOG:" >&2
    tail -n 60 "$DEMO_LOG" | sed 's/^/  /' >&2
    exit $rc
  fi
  echo "  ok in $((SECONDS - t0))s"
}

VENV=$(hack/setup-venv.sh)
reachable() {
  "$VENV/bin/python" -c 'import sys; sys.path.insert(0, "."); from tests.harness.cluster import reachable; sys.exit(0 if reachable(sys.argv[1]) else 1)' "$1"
}

say "cluster"
if [[ -n ${KUBECONFIG:-} && $KUBECONFIG != "$LOCAL_KC" ]] && reachable "$KUBECONFIG"; then
  echo "using \$KUBECONFIG=$KUBECONFIG"
  LOCAL=0
else
  quiet hack/cluster-up.sh
  export KUBECONFIG=$LOCAL_KC
  echo "export KUBECONFIG=$LOCAL_KC   # to use kubectl on the demo cluster"
  LOCAL=1
fi
KUBECTL=$FTO_CACHE/bin/k8s-v$K8S_VERSION/kubectl
[[ -x $KUBECTL ]] || KUBECTL=kubectl
HELM=$FTO_CACHE/bin/helm-v$HELM_VERSION/helm
[[ -x $HELM ]] || quiet hack/build-tools.sh helm
[[ -x $HELM ]] || HELM=helm
k() { "$KUBECTL" "$@"; }

say "images (trainer ~5.7 GB: the first build and load take a while; later runs are cached)"
# the demo exports no GGUF: its trainer image skips llama.cpp (a 10-20 min compile on a cold
# machine); DEMO_LLAMA_CPP=1 builds the full one
TRAINER_LLAMA_CPP=${DEMO_LLAMA_CPP:-0} quiet hack/images.sh trainer operator

say "operator (Helm chart charts/finetune-operator, release $RELEASE in $OPNS)"
for ns in "$OPNS" "$NS"; do
  k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null
done
k apply --server-side --force-conflicts -f crds/finetune.dev_finetunejobs.yaml >/dev/null
"$HELM" upgrade --install "$RELEASE" charts/finetune-operator -n "$OPNS" \
  --set "operator.watchNamespaces={$NS}" \
  --set operator.progressIntervalSeconds=1 \
  --set operator.terminationGraceSeconds=60 \
  --set image.pullPolicy=IfNotPresent \
  --wait --timeout 5m >/dev/null
k rollout status "deployment/$RELEASE" -n "$OPNS" --timeout=180s

say "tiny model + dataset into the claim models (namespace $NS)"
k delete ftj demo -n "$NS" --ignore-not-found --wait=true >/dev/null
k delete pod demo-seed -n "$NS" --ignore-not-found --wait=true >/dev/null
k apply -n "$NS" -f manifests/samples/demo/seed.yaml
k wait -n "$NS" pod/demo-seed --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s >/dev/null ||
  { k logs -n "$NS" demo-seed || true; exit 1; }
k logs -n "$NS" demo-seed | grep -v 'Writing model shards' | sed 's/^/  /'

say "FineTuneJob demo (manifests/samples/demo/job.yaml)"
k apply -n "$NS" -f manifests/samples/demo/job.yaml
TRAIN0=$SECONDS
"$VENV/bin/kubectl-finetune" watch demo -n "$NS" --interval 1 || true
PHASE=$(k get ftj demo -n "$NS" -o jsonpath='{.status.phase}')
k get ftj demo -n "$NS"
if [[ $PHASE != Succeeded ]]; then
  echo "the job ended $PHASE: $(k get ftj demo -n "$NS" -o jsonpath='{.status.reason}: {.status.message}')" >&2
  exit 1
fi
echo "trained in $((SECONDS - TRAIN0))s (including the prepare pod and both pods' start-up)"

say "the result (status.output)"
k get ftj demo -n "$NS" -o wide
OUTPUT=$(k get ftj demo -n "$NS" -o jsonpath='{.status.output}')
"$VENV/bin/python" - "$OUTPUT" <<'PY'
import json, re, sys
sys.path.insert(0, "trainer-image/src")
from finetune_trainer.tiny import secret_mapping
o = json.loads(sys.argv[1])
s = o.get("summary") or {}
print(f"  claim {o['claim']}, adapter {o.get('adapter')} (mount {o['latest']} for the newest run)")
print(f"  {s.get('steps')} steps, {s.get('tokens')} tokens, final train loss {s.get('trainLoss')}")
print("  greedy generations of the tuned model (status.output.samples):")
# each answer checked against the synthetic task's key (the seed pod wrote it with seed 0)
key, right, samples = secret_mapping(0), 0, o.get("samples") or []
for sample in samples:
    animal = re.search(r"code of (\w+)\?", sample["prompt"])[1]
    answer = sample["completion"].strip()
    right += answer == key[animal]
    verdict = "right" if answer == key[animal] else f"wrong: the key says {key[animal]}"
    print(f"  Q: {sample['prompt']}\n  A: {answer}   ({verdict})")
print(f"  {right} of {len(samples)} answers right")
PY
if ((LOCAL)); then
  echo "host: /var/lib/fto-volumes/$NS-demo-output/demo/latest -> $(readlink "/var/lib/fto-volumes/$NS-demo-output/demo/latest")"
fi

say "done in $((SECONDS - T0))s wall time"
echo "again: make demo    clean up: kubectl delete namespace $NS; helm uninstall $RELEASE -n $OPNS"
