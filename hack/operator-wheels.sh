#!/usr/bin/env bash
# Download the operator's runtime dependencies as wheels for the operator image, whose build runs
# with `docker build --network none`: operator/Dockerfile installs them with `pip install
# --no-index --find-links`. Wheels are for CPython 3.11 on manylinux x86_64 (Debian bookworm's
# python3), cached under build/operator-wheels/<key>/ (git-ignored), where the key hashes the
# pins below, the operator's declared dependencies and the target; build/operator-wheels/current/
# holds the set for the current key (hard links), the path the Dockerfile copies.
#   hack/operator-wheels.sh            prints the directory
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/build/operator-wheels"
PY_VERSION=3.11
# bookworm has glibc 2.36: every manylinux tag up to that runs there
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux_2_34_x86_64)

# Runtime pins of the operator (the same as requirements/dev.txt, which the host venv uses) and
# the build backend of operator/pyproject.toml (the image builds the package offline).
pins() {
  grep -E '^(kopf|kubernetes|pydantic-settings|prometheus-client)==' "$ROOT/requirements/dev.txt"
  grep -E '^(pydantic|PyYAML)' "$ROOT/requirements/trainer.txt"
  echo "setuptools>=68"
}

key=$( { pins; sed -n '/^dependencies/,/^]/p;/^\[build-system\]/,/^$/p' "$ROOT/operator/pyproject.toml";
         echo "$PY_VERSION ${PLATFORMS[*]} v1"; } | sha256sum | cut -c1-12)
dir="$OUT/$key"
if [[ ! -f $dir/.complete ]]; then
  echo "[operator-wheels] downloading into $dir" >&2
  rm -rf "$dir"; mkdir -p "$dir"
  mapfile -t reqs < <(pins)
  python3 -m pip download -q --disable-pip-version-check --dest "$dir" \
    --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --abi cp311 --abi abi3 --abi none "${PLATFORMS[@]/#/--platform=}" "${reqs[@]}" >&2
  touch "$dir/.complete"
fi
if [[ $(cat "$OUT/current/.key" 2>/dev/null) != "$key" ]]; then
  rm -rf "$OUT/current.tmp"; mkdir -p "$OUT/current.tmp"
  cp -l "$dir"/*.whl "$OUT/current.tmp/" 2>/dev/null || cp "$dir"/*.whl "$OUT/current.tmp/"
  echo "$key" >"$OUT/current.tmp/.key"
  rm -rf "$OUT/current"; mv "$OUT/current.tmp" "$OUT/current"
fi
echo "$OUT/current"
