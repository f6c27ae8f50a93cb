"""Faults the chaos tests inject into the local cluster (this machine is its node, as root).

- ``restart_apiserver``: stop kube-apiserver (the pid hack/cluster-up.sh recorded) and start it
  again with hack/cluster-up.sh, which starts only what is not running.
- ``cut_from_apiserver``: drop every packet one pod sends to the apiserver (an iptables rule in
  INPUT on the node: pod traffic to the ``kubernetes`` Service is DNATed to the node's apiserver
  address, so it arrives there), for as long as the ``with`` block lasts. Open connections hang
  as they would behind a broken network rather than being refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

STATE = Path("/run/fto-cluster")
APISERVER = ("198.18.1.1", "6443")  # hack/lib/common.sh: NODE_IP, the secure port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def restart_apiserver(cluster: Cluster) -> float:
    """SIGTERM kube-apiserver, wait for it to exit, start it with the cluster's own script; the
    seconds until it answers /readyz again."""
    if not cluster.local:
        raise RuntimeError("only the local cluster's apiserver can be restarted by the tests")
    t0 = time.monotonic()
    pid = int((STATE / "kube-apiserver.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    try:
        # its HTTP server waits up to 60 s for open watch connections before it gives up on them
        # (seen: exit 60.04 s after the SIGTERM), so a 60 s wait here lost the race
        wait_until(
            lambda: not _alive(pid), timeout=120, interval=0.2, message="kube-apiserver to exit"
        )
    finally:  # whatever happened, the tests after this one get their apiserver back
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), timeout=30, interval=0.2, message="SIGKILL")
        cluster.hack("cluster-up.sh", timeout=300)  # returns once /readyz answers, the node Ready
    return time.monotonic() - t0


def _iptables(op: str, source_ip: str) -> list[str]:
    host, port = APISERVER
    return ["iptables", op, "INPUT", "-s", source_ip, "-d", host, "-p", "tcp",
            "--dport", port, "-j", "DROP"]  # fmt: skip


@contextmanager
def cut_from_apiserver(cluster: Cluster, source_ip: str) -> Iterator[None]:
    """No packet from ``source_ip`` (a pod IP) reaches the apiserver inside the block."""
    if not cluster.local:
        raise RuntimeError("the network of only the local cluster's node can be cut")
    subprocess.run(_iptables("-I", source_ip), check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(_iptables("-D", source_ip), check=True, capture_output=True)
