"""``kubectl finetune logs --all`` after a pod is gone: attempt 1's pod is deleted (attempt 2 takes
over), and its log still comes back, from the job's volume, first by ``kubectl exec`` in the
running attempt 2, then (suspended: no pod runs) through a read-only reader pod that is deleted
afterwards."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from finetune_operator.cli import volumelogs
from tests.e2e.conftest import VOLUMES
from tests.e2e.test_lifecycle import apply_job, get, logs, suspend, wait_phase
from tests.harness import Cluster

pytestmark = pytest.mark.e2e

# the trainer's logging records (main.py's format); other stderr output is in the pod log only
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")
HEADER = re.compile(r"^==> pod (\S+) .*<==$")


def plugin_logs_all(cluster: Cluster, ns: str) -> dict[str, tuple[str, str]]:
    """``kubectl finetune logs bot --all``: pod -> (its header, its text)."""
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_operator.cli.main", "--kubeconfig", cluster.kubeconfig,
         "-n", ns, "logs", "bot", "--all"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sections: dict[str, tuple[str, str]] = {}
    pod = ""
    for line in proc.stdout.splitlines(keepends=True):
        found = HEADER.match(line.rstrip("\n"))
        if found:
            pod = found[1]
            sections[pod] = (line.rstrip("\n"), "")
        elif pod:
            head, text = sections[pod]
            sections[pod] = (head, text + line)
    return sections


@pytest.mark.e2e_ns("podlogs")
def test_logs_all_shows_a_deleted_attempts_log_from_the_volume(
    cluster: Cluster, e2e_ns: str
) -> None:
    ns = e2e_ns
    apply_job(cluster, ns, "bot", steps=3000, every=5)
    wait_phase(cluster, ns, "bot", "Running",
               extra=lambda s: (s.get("checkpoint") or {}).get("step", 0) >= 5)  # fmt: skip
    pod_log = logs(cluster, ns, "bot-1")  # what kubectl showed while the pod existed
    records = [line for line in pod_log.splitlines() if RECORD.match(line)]
    assert any("micro-batch" in line for line in records), pod_log[-3000:]
    cluster.kubectl("delete", "pod", "bot-1", "-n", ns, "--grace-period=0", "--force")
    wait_phase(cluster, ns, "bot", "Running", timeout=240,
               extra=lambda s: (s.get("progress") or {}).get("attempt") == 2)  # fmt: skip
    uid = get(cluster, ns, "ftj", "bot")["metadata"]["uid"]
    files = VOLUMES / f"{ns}-out" / "bot" / "logs" / uid

    # attempt 2 runs: read by exec in it
    sections = plugin_logs_all(cluster, ns)
    head, text = sections["bot-1"]
    assert head == ("==> pod bot-1 (attempt 1, PodDeleted): gone; its log from the job's volume, "
                    "read by exec in pod bot-2 <=="), head  # fmt: skip
    lines = text.splitlines()
    missing = [line for line in records if line not in lines]
    assert not missing, missing[:5]  # every record the pod log had, from the volume
    assert (files / "bot-1.log").read_text().startswith(text)
    assert "bot-2" in sections and "from the job's volume" not in sections["bot-2"][0]

    # suspended: no pod of the job runs, a reader pod reads both attempts and is deleted
    suspend(cluster, ns, "bot", True)
    wait_phase(cluster, ns, "bot", "Suspended", timeout=180)
    cluster.kubectl("delete", "pod", "bot-2", "-n", ns, "--ignore-not-found", "--wait=true")
    sections = plugin_logs_all(cluster, ns)
    for pod in ("bot-1", "bot-2"):
        head, _ = sections[pod]
        assert "its log from the job's volume, read by the reader pod bot-logs-" in head, head
    assert sections["bot-1"][1] == (files / "bot-1.log").read_text()
    assert sections["bot-2"][1] == (files / "bot-2.log").read_text()
    assert "stopped at step" in sections["bot-2"][1]  # attempt 2's last words, on SIGTERM
    left = json.loads(cluster.kubectl(
        "get", "pods", "-n", ns, "-l", volumelogs.READER_LABEL, "-o", "json"))["items"]  # fmt: skip
    assert not [p for p in left if not p["metadata"].get("deletionTimestamp")], left
