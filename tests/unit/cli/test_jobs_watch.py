"""``watch`` into a pipe: one line per change, each Event printed once; CPU jobs say so."""

from __future__ import annotations

import copy
import io
from datetime import datetime
from typing import Any

from finetune_operator.cli import jobs
from finetune_operator.cli import render as r
from finetune_operator.cli.live import live_view
from tests.unit.cli.conftest import EVENTS, JOBS, NOW


class FakeApi:
    """Serves a scripted sequence of (job, events) to successive polls."""

    namespace = "ml"

    def __init__(self, script: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        self.script = script
        self.polls = 0

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        self.polls += 1
        return self.script[min(self.polls, len(self.script)) - 1][0]

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return []

    def list_events(self, namespace: str, names: list[str]) -> list[dict[str, Any]]:
        return self.script[min(self.polls, len(self.script)) - 1][1]


def _clock() -> datetime:
    return NOW


def test_piped_watch_prints_each_event_once() -> None:
    running = JOBS["running"]
    later = copy.deepcopy(running)
    later["status"]["progress"] |= {"step": 200, "percent": 50.0, "percentText": "50%"}
    checkpoint = {
        **EVENTS[-1],
        "reason": "Checkpoint",
        "message": "checkpoint at step 200",
        "metadata": {"uid": "e-new"},
        "lastTimestamp": "2026-11-20T10:00:00Z",
    }
    newer = [*EVENTS, checkpoint]
    done = JOBS["succeeded"]
    api = FakeApi(
        [(running, EVENTS), (running, EVENTS), (later, EVENTS), (later, newer), (done, newer)]
    )
    out = io.StringIO()
    code = jobs.watch(api, "support-bot", interval=0, out=out, live=False, clock=_clock)  # type: ignore[arg-type]
    assert code == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines  # the unchanged second poll prints nothing
    assert lines[0].endswith("| Normal Running: pod support-bot-1 is running")
    assert "|" not in lines[1] and "step 200/400 (50%)" in lines[1]  # same Event: not repeated
    assert lines[2].endswith("| Normal Checkpoint: checkpoint at step 200")
    assert "Succeeded" in lines[3] and "|" not in lines[3]


def test_a_repeating_event_is_printed_once() -> None:
    """The kubelet repeats e.g. MissingClusterDNS on one Event object (count, lastTimestamp)."""
    warning = {
        "type": "Warning",
        "reason": "MissingClusterDNS",
        "message": "kubelet does not have ClusterDNS IP configured",
        "metadata": {"uid": "dns-1"},
        "count": 1,
        "lastTimestamp": "2026-11-20T09:06:00Z",
    }
    running = JOBS["running"]
    steps = []
    for i in range(3):
        job = copy.deepcopy(running)
        job["status"]["progress"] |= {"step": 120 + i, "percentText": None}
        repeat = {**warning, "count": i + 1, "lastTimestamp": f"2026-11-20T09:0{6 + i}:00Z"}
        steps.append((job, [*EVENTS, repeat]))
    api = FakeApi([*steps, (JOBS["succeeded"], steps[-1][1])])
    out = io.StringIO()
    jobs.watch(api, "support-bot", interval=0, out=out, live=False, clock=_clock)  # type: ignore[arg-type]
    text = out.getvalue()
    assert text.count("MissingClusterDNS") == 1, text
    assert len(text.splitlines()) == 4


def test_progress_rounds_like_kubectl_get() -> None:
    job: dict[str, Any] = {
        "status": {"phase": "Running", "progress": {"step": 2, "totalSteps": 15}}
    }
    assert r.percent_text(job) == "13.3%"  # what status.percentText (printer column) says
    job["status"]["progress"]["percentText"] = "13.3%"
    assert r.percent_text(job) == "13.3%"


def test_cpu_job_has_no_gpu_wording() -> None:
    from rich.console import Console

    job = copy.deepcopy(JOBS["running"])
    job["spec"]["resources"] = {"gpus": 0}
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(live_view(job, EVENTS, NOW))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "none (CPU job)" in text and "MiB/GPU" not in text
