#!/usr/bin/env bash
# Install the host packages the local cluster and the image builds need (Debian/Ubuntu, root).
# Idempotent: does nothing when every package is already installed.
set -euo pipefail
PKGS=(docker.io containerd runc containernetworking-plugins debootstrap iptables iproute2 openssl gcc libc6-dev tmux
      docker-registry cmake g++)  # registry: OCI export tests; cmake g++: hack/build-llama-cpp.sh
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup-host] installing: ${missing[*]}" >&2
  [[ $(id -u) == 0 ]] || { echo "[setup-host] must run as root" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "[setup-host] host packages present" >&2
fi
command -v go >/dev/null || echo "[setup-host] WARNING: no 'go' on PATH; hack/build-tools.sh needs Go >= 1.26" >&2
