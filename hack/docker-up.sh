#!/usr/bin/env bash
# Start a dockerd for image builds if none answers. It never creates a network of its own:
# no default bridge (its default 172.17.0.0/16 is off limits here), no iptables rules, no NAT.
# Builds use `docker build --network none` (or host for the one base image that installs from PyPI).
set -euo pipefail
STATE=${FTO_DOCKER_STATE:-/run/fto-docker}
if docker info >/dev/null 2>&1; then exit 0; fi
mkdir -p "$STATE"
echo "[docker-up] starting dockerd (log: $STATE/dockerd.log)" >&2
# Any network someone creates by hand gets an address from 198.18.64.0/18, never private ranges.
nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
  --data-root=/var/lib/fto-docker --exec-root="$STATE/exec" --pidfile="$STATE/dockerd.pid" \
  --default-address-pool base=198.18.64.0/18,size=24 \
  >"$STATE/dockerd.log" 2>&1 </dev/null 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
for _ in $(seq 1 120); do
  docker info >/dev/null 2>&1 && { echo "[docker-up] dockerd ready" >&2; exit 0; }
  sleep 0.5
done
echo "[docker-up] dockerd did not come up; tail of its log:" >&2
tail -20 "$STATE/dockerd.log" >&2
exit 1
