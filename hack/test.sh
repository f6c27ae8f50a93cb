#!/usr/bin/env bash
# The test entry point of the Makefile and CI.
#   hack/test.sh all          setup-host, build-tools, venv, lint, verify, unit (+ trainer), cluster-up, images,
#                             integration, e2e, kueue (stops at the first failure)
#   hack/test.sh unit|integration|e2e|kueue   one tier (with what it needs first); kueue is the e2e
#                             tests with a real Kueue on the host (marker kueue, hack/kueue.sh)
# Prints the wall time of every phase at the end, then the skipped tests by reason. If $KUBECONFIG
# points at a reachable cluster other than the local one, the tiers run against it and no local
# cluster is built or started (the e2e tier then fails: it loads images into the local node).
# A skipped test fails its tier (tests/harness/skips.py), except the gpu tier's (no GPU in CI),
# unless the caller sets FTO_ALLOW_SKIPS=1; the summary line then names that variable.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source hack/versions.sh
LOCAL_KC=/run/fto-cluster/admin.kubeconfig

PHASES=()
FTO_SKIP_REPORT=$(mktemp -t fto-skips.XXXXXX)
export FTO_SKIP_REPORT
report() {
  local rc=$?
  if ((${#PHASES[@]})); then
    echo
    echo "== phase times =="
    printf '  %s\n' "${PHASES[@]}"
    if [[ -s $FTO_SKIP_REPORT ]]; then
      echo "== skipped tests (count, verdict, reason) =="
      sed 's/^/  /' "$FTO_SKIP_REPORT"
    fi
    local optout=""
    [[ ${FTO_ALLOW_SKIPS:-0} != 0 ]] && optout=" (FTO_ALLOW_SKIPS=$FTO_ALLOW_SKIPS: skipped tests were accepted)"
    if [[ -n ${INTERRUPTED:-} ]]; then
      echo "== INTERRUPTED by SIG$INTERRUPTED (exit $rc): the phases after the last one listed did not run =="
    elif ((rc == 0)); then
      echo "== all phases passed$optout =="
    else
      echo "== FAILED (exit $rc)$optout =="
    fi
  fi
  rm -f "$FTO_SKIP_REPORT"
  exit $rc
}
trap report EXIT
# a run stopped by a signal never reads as passed (the summary once said "all phases passed")
trap 'INTERRUPTED=INT; exit 130' INT
trap 'INTERRUPTED=TERM; exit 143' TERM

# phase NAME CMD...: run CMD, record its wall time and status. (CMD runs without errexit, so
# functions used as CMD propagate failures with `|| return`.)
phase() {
  local name=$1; shift
  local t0=$SECONDS rc=0
  echo "== $name =="
  "$@" || rc=$?
  PHASES+=("$(printf '%-12s %5ss  %s' "$name" $((SECONDS - t0)) "$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")")")
  return $rc
}

VENV=""
venv() { VENV=$(hack/setup-venv.sh) || return; echo "venv: $VENV"; }
# llama.cpp's quantizer + converter and the llama-cpp-python binding for the GGUF export tests
# (cold: ~20 min compile on 2 idle cores, cached under $FTO_CACHE/llama.cpp-<version>)
llama_cpp() { hack/build-llama-cpp.sh --binding "${VENV:-$(hack/setup-venv.sh)}/bin/python"; }

external_cluster() {
  [[ -n ${KUBECONFIG:-} && $KUBECONFIG != "$LOCAL_KC" && -f $KUBECONFIG ]] || return 1
  "${VENV:-$(hack/setup-venv.sh)}/bin/python" - <<'PY'
import os, sys
sys.path.insert(0, os.getcwd())
from tests.harness.cluster import reachable
sys.exit(0 if reachable(os.environ["KUBECONFIG"]) else 1)
PY
}

# tier NAME DIR [pytest args]: run pytest on DIR; "no tests collected" (exit 5) passes only while
# DIR holds no test files yet.
tier() {
  local name=$1 dir=$2; shift 2
  local rc=0
  if [[ ! -d $dir ]]; then echo "[test] $name: $dir does not exist yet"; return 0; fi
  "$VENV/bin/python" -m pytest "$dir" "$@" || rc=$?
  if ((rc == 5)); then
    if [[ -z $(find "$dir" -name 'test_*.py' -o -name '*_test.py' 2>/dev/null | head -1) ]]; then
      echo "[test] $name: no test files in $dir yet"; return 0
    fi
    echo "[test] $name: test files exist in $dir but none were collected"; return 5
  fi
  return $rc
}

cluster_up() {
  if external_cluster; then echo "[test] using the cluster of \$KUBECONFIG=$KUBECONFIG"; return; fi
  hack/cluster-up.sh || return
  export KUBECONFIG=$LOCAL_KC
}

images() { hack/images.sh trainer operator standin; }

run_unit() {
  phase venv venv && phase llama-cpp llama_cpp && phase unit tier unit tests/unit tests/trainer tests/gpu
}
run_integration() {
  phase venv venv
  phase mlflow hack/setup-mlflow.sh
  phase cluster-up cluster_up
  phase integration tier integration tests/integration -m integration
}
run_e2e() {
  phase venv venv
  phase cluster-up cluster_up
  phase images images
  phase e2e tier e2e tests/e2e -m "e2e and not kueue"
}
run_kueue() {
  phase venv venv
  phase build-kueue hack/build-tools.sh kueue
  phase cluster-up cluster_up
  phase images images
  phase kueue tier kueue tests/e2e -m "e2e and kueue"
}

case ${1:-all} in
  all)
    phase setup-host hack/setup-host.sh
    phase build-tools hack/build-tools.sh
    phase venv venv
    phase llama-cpp llama_cpp
    phase lint make -s lint
    phase verify make -s verify
    phase unit tier unit tests/unit tests/trainer tests/gpu
    phase mlflow hack/setup-mlflow.sh  # the tracking server's own venv (integration tier)
    phase cluster-up cluster_up
    phase images images
    phase integration tier integration tests/integration -m integration
    phase e2e tier e2e tests/e2e -m "e2e and not kueue"
    phase kueue tier kueue tests/e2e -m "e2e and kueue"
    ;;
  unit) run_unit ;;
  integration) run_integration ;;
  e2e) run_e2e ;;
  kueue) run_kueue ;;
  *) echo "usage: hack/test.sh all|unit|integration|e2e|kueue" >&2; exit 2 ;;
esac
