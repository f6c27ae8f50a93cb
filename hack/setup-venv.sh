#!/usr/bin/env bash
# Create (or reuse) the project's Python venv outside the repo, keyed by the hash of the pins,
# and install both packages into it in editable mode. Prints the venv path.
set -euo pipefail
source "$(dirname "$0")/versions.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
key=$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -c1-12)
VENV="$FTO_CACHE/venv-$key"
if [[ ! -f $VENV/.complete ]]; then
  echo "[setup-venv] creating $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q -r "$ROOT/requirements/dev.txt" >&2
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT/operator[cli]" -e "$ROOT/trainer-image" >&2
  touch "$VENV/.complete"
fi
ln -sfn "$VENV" "$FTO_CACHE/venv"
echo "$VENV"
