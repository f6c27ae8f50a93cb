#!/usr/bin/env bash
# Create (or reuse) the MLflow tracking server's own venv, keyed by its version, outside the repo:
# the tests start a real server (SQLite backend) from it. The server is big (flask, sqlalchemy,
# alembic, pandas...) and only the tests need it, so it stays out of the project venv and the
# trainer image (which carry the client, mlflow-skinny). Prints the venv path. Safe to run
# concurrently: a lock serialises creation.
set -euo pipefail
source "$(dirname "$0")/versions.sh"
VENV="$FTO_CACHE/mlflow-$MLFLOW_VERSION"
mkdir -p "$FTO_CACHE"
exec 9>"$FTO_CACHE/mlflow.lock"
if [[ ! -f $VENV/.complete ]]; then
  flock 9
  if [[ ! -f $VENV/.complete ]]; then
    echo "[setup-mlflow] creating $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q "mlflow==$MLFLOW_VERSION" >&2
    "$VENV/bin/mlflow" --version >&2
    touch "$VENV/.complete"
  fi
  flock -u 9
fi
echo "$VENV"
