#!/usr/bin/env bash
# Create (or reuse) the project's Python venv outside the repo, keyed by the hash of the pins,
# and install both packages into it in editable mode. Prints the venv path. Safe to run
# concurrently: a lock serialises creation.
set -euo pipefail
source "$(dirname "$0")/versions.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
key=$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -c1-12)
VENV="$FTO_CACHE/venv-$key"
mkdir -p "$FTO_CACHE"
exec 9>"$FTO_CACHE/venv.lock"
if [[ ! -f $VENV/.complete ]]; then
  flock 9
  if [[ ! -f $VENV/.complete ]]; then
    echo "[setup-venv] creating $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q -r "$ROOT/requirements/dev.txt" >&2
    touch "$VENV/.deps"
    "$VENV/bin/pip" install -q --no-deps -e "$ROOT/operator[cli]" -e "$ROOT/trainer-image" >&2
    touch "$VENV/.complete"
  fi
  flock -u 9
fi
# editable installs point at this checkout (CI clones elsewhere): re-point when needed
if ! "$VENV/bin/python" -c 'import finetune_operator, sys; sys.exit(0 if finetune_operator.__file__.startswith(sys.argv[1]) else 1)' "$ROOT" 2>/dev/null; then
  flock 9
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT/operator[cli]" -e "$ROOT/trainer-image" >&2
  flock -u 9
fi
ln -sfn "$VENV" "$FTO_CACHE/venv"
echo "$VENV"
