"""Signals through the cluster: suspends, SIGTERM and SIGKILL in the real pod, then resume.

The trainer-level chaos test (tests/trainer/test_signals.py) covers 20 SIGTERM and 10 SIGKILL
moments over a job's life with real processes; this one checks the same through the real node,
kubelet and image, at the moments the issue was found with (a suspend in the trainer's first
seconds), with a small number of restarts because each costs a pod start:

1. ``spec.suspend`` while the training pod has just started (imports) -> exit 10 at once;
2. ``spec.suspend`` mid-run -> step finished, checkpoint, exit 10;
3. ``kubectl exec … kill -TERM`` mid-run (a preemption without suspend) -> exit 10, retried;
4. ``kubectl exec … kill -KILL`` mid-run -> exit 137, retried from the newest complete checkpoint.

Every pod that got SIGTERM must exit 10 (never 137) within the measured save time + 5 s of the
signal, and the final per-step losses must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.test_lifecycle import (
    apply_job,
    logs,
    losses,
    pods,
    status,
    step,
    summary,
    suspend,
    wait_phase,
)
from tests.harness import Cluster, wait_until

pytestmark = pytest.mark.e2e

# the retry after the SIGTERM must outlast the test's next look (at 120 it once finished first)
STEPS = 240
EVERY = 10
TRAINER_PID = (
    "for p in /proc/[0-9]*; do grep -qa '[f]inetune-trainer' $p/cmdline 2>/dev/null && "
    "echo ${p#/proc/}; done | head -1"
)


def _time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pod_json(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out) if out.strip().startswith("{") else None


def running(cluster: Cluster, ns: str, name: str) -> bool:
    pod = pod_json(cluster, ns, name)
    states = [
        c.get("state", {}) for c in (pod or {}).get("status", {}).get("containerStatuses", [])
    ]
    return any("running" in s for s in states)


def signal_in_pod(cluster: Cluster, ns: str, pod: str, sig: str) -> float:
    """Send ``sig`` to the trainer process inside ``pod``; returns when it was sent."""
    sent = time.time()
    cluster.kubectl("exec", pod, "-n", ns, "--", "sh", "-c", f"kill -{sig} $({TRAINER_PID})")
    return sent


def newest_pod(cluster: Cluster, ns: str) -> str:
    numbered = [p for p in pods(cluster, ns) if p.removeprefix("bot-").isdigit()]
    return max(numbered, key=lambda p: int(p.removeprefix("bot-")))


def attempt(st: dict[str, Any], pod: str) -> dict[str, Any]:
    return next(a for a in st.get("attempts", []) if a["pod"] == pod)


EXIT_BOUND_S = 5.0  # the bound past the checkpoint save
STAMP_S = 1.0  # finishedAt and deletionTimestamp have a resolution of one second
_SAVED = re.compile(r"checkpoint \S+ complete: \d+ bytes written and synced in ([\d.]+) s")


def save_seconds(cluster: Cluster, ns: str, pod: str) -> float:
    """The longest checkpoint save the pod logged (callbacks.MarkerCallback)."""
    return max((float(s) for s in _SAVED.findall(logs(cluster, ns, pod))), default=0.0)


def deletion(cluster: Cluster, ns: str, pod: str) -> tuple[float, float | None]:
    """When the operator deleted ``pod`` (the kubelet's SIGTERM follows: its deletionTimestamp
    less the grace period the API server added), and when its container exited (finishedAt),
    read while the terminating pod still exists (None if it was gone first)."""
    seen: dict[str, float] = {}

    def gone_or_exited() -> bool:
        pod_ = pod_json(cluster, ns, pod)
        if pod_ is None:
            return "deleted" in seen
        meta = pod_["metadata"]
        if meta.get("deletionTimestamp"):
            seen["deleted"] = _time(meta["deletionTimestamp"]) - float(
                meta["deletionGracePeriodSeconds"]
            )
        for c in pod_.get("status", {}).get("containerStatuses", []):
            if "terminated" in c.get("state", {}):
                seen["finished"] = _time(c["state"]["terminated"]["finishedAt"])
        return "deleted" in seen and "finished" in seen

    wait_until(gone_or_exited, timeout=120, interval=0.1, message=f"{pod} to be deleted and exit")
    return seen["deleted"], seen.get("finished")


def exit_within_bound(
    cluster: Cluster, ns: str, rec: dict[str, Any], signalled: float, finished: float | None
) -> float:
    """Seconds from the signal to the container's exit (pod timestamps; the attempt's record
    when the pod was not seen terminated); asserts the bound."""
    took = (finished if finished is not None else _time(rec["finishTime"])) - signalled
    bound = save_seconds(cluster, ns, rec["pod"]) + EXIT_BOUND_S + STAMP_S
    assert took <= bound, (rec["pod"], took, bound)
    return took


@pytest.mark.e2e_ns("chaos")
def test_suspend_sigterm_and_sigkill_through_the_cluster_lose_no_step(
    cluster: Cluster, e2e_ns: str
) -> None:
    t0 = time.monotonic()
    ns = e2e_ns
    apply_job(cluster, ns, "ref", steps=STEPS, every=EVERY)
    wait_phase(cluster, ns, "ref", "Succeeded", timeout=300)
    reference = losses(summary(ns, "ref"))
    cluster.kubectl("delete", "ftj", "ref", "-n", ns, "--wait=true")
    rows: list[str] = []

    # 1. suspend in the trainer's first seconds: the 385 lost steps
    apply_job(cluster, ns, "bot", steps=STEPS, every=EVERY, retry={"limit": 5, "backoffSeconds": 1})
    wait_until(lambda: running(cluster, ns, "bot-1"), timeout=240, interval=0.2,
               message="bot-1 running")  # fmt: skip
    sent = time.time()
    suspend(cluster, ns, "bot", True)
    st = wait_phase(cluster, ns, "bot", "Suspended", timeout=120)
    took = time.time() - sent
    a1 = attempt(st, "bot-1")
    assert a1["exitCode"] == 10 and a1["reason"] == "Suspended", a1
    rows.append(f"suspend at start-up: exit {a1['exitCode']}, Suspended after {took:.1f} s")
    assert took < 30, took  # a pod start-up, not the 60 s grace period

    # 2. suspend mid-run
    suspend(cluster, ns, "bot", False)
    wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) >= 15, timeout=240)
    at = step(status(cluster, ns, "bot"))
    sent = time.time()
    suspend(cluster, ns, "bot", True)
    stopped, finished = deletion(cluster, ns, "bot-2")
    st = wait_phase(cluster, ns, "bot", "Suspended", timeout=120)
    took = time.time() - sent
    a2 = attempt(st, "bot-2")
    assert a2["exitCode"] == 10, a2
    assert st["checkpoint"]["step"] >= at  # nothing before the signal lost
    exited = exit_within_bound(cluster, ns, a2, stopped, finished)
    rows.append(f"suspend mid-run at step >= {at}: exit 10, checkpoint {st['checkpoint']['step']}, "
                f"exit {exited:.0f} s after deletion, Suspended after {took:.1f} s")  # fmt: skip

    # 3. SIGTERM in the pod without suspend (a preemption): exit 10, retried, resumes
    suspend(cluster, ns, "bot", False)
    wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) >= at + 15, timeout=240)
    live = newest_pod(cluster, ns)
    before = step(status(cluster, ns, "bot"))
    sent = signal_in_pod(cluster, ns, live, "TERM")
    st = wait_phase(cluster, ns, "bot", "Running",
                    extra=lambda s: any(a["pod"] == live for a in s.get("attempts", [])),
                    timeout=240)  # fmt: skip
    a3 = attempt(st, live)
    assert a3["exitCode"] == 10 and a3["reason"] == "Preempted", a3
    exited = exit_within_bound(cluster, ns, a3, sent, None)
    rows.append(f"kill -TERM mid-run at step >= {before}: exit 10 ({a3['reason']}) "
                f"{exited:.0f} s after the signal")  # fmt: skip

    # 4. SIGKILL in the pod: exit 137, retried from the newest complete checkpoint
    def next_pod_training(st: dict[str, Any]) -> bool:
        ckpt = (st.get("checkpoint") or {}).get("step", 0)
        return (st.get("progress") or {}).get("attempt", 0) > a3["attempt"] and step(st) > ckpt + 2

    wait_phase(cluster, ns, "bot", "Running", extra=next_pod_training, timeout=240)
    killed = newest_pod(cluster, ns)
    signal_in_pod(cluster, ns, killed, "KILL")
    done = wait_phase(cluster, ns, "bot", "Succeeded", timeout=400)
    a4 = attempt(done, killed)
    assert a4["exitCode"] == 137, a4
    rows.append(f"kill -KILL mid-run in {killed}: exit 137 ({a4['reason']}), retried")

    s = summary(ns, "bot")
    assert [x for x, _ in losses(s)] == list(range(1, STEPS + 1))
    assert losses(s) == reference  # step for step, exactly the uninterrupted run
    last = done["attempts"][-1]["pod"]
    assert f"resuming from /workspace/checkpoints/{s['resumed_from']}" in logs(cluster, ns, last)
    for a in done["attempts"]:
        if a["pod"] != killed:
            assert a["exitCode"] in (0, 10), a  # never 137 for a SIGTERM
    print(f"\ncluster chaos: {len(rows)} moments in {time.monotonic() - t0:.0f} s")
    for row in rows:
        print("  " + row)
