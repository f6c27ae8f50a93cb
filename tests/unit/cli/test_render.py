"""Pure text rendering of the plugin: durations, rows, one-liners, exit codes, pods."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.cli import render as r
from tests.unit.cli.conftest import EVENTS, JOBS, NOW


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0s"),
        (45, "45s"),
        (119, "119s"),
        (200, "3m20s"),
        (540, "9m"),
        (1680, "28m"),
        (5 * 3600 + 12 * 60, "5h12m"),
        (20 * 3600, "20h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (30 * 86400, "30d"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert r.duration(seconds) == text


def test_list_table() -> None:
    rows = [r.job_headers(True)] + [
        r.job_row(JOBS[k], NOW, with_namespace=True) for k in ("pending", "running", "failed")
    ]
    assert r.format_table(rows).splitlines() == [
        "NAMESPACE   NAME          PHASE     PROGRESS   STEP      LOSS   ETA   GPUS   AGE",
        "ml          support-bot   Pending   -          -         -      -     2      1h",
        "ml          support-bot   Running   30%        120/400   1.42   28m   2      1h",
        "ml          support-bot   Failed    30%        120/400   1.42   -     2      1h",
    ]


@pytest.mark.parametrize(
    ("key", "line", "code"),
    [
        ("pending", "support-bot: Pending", 4),
        (
            "queued",
            "support-bot: Queued — Unschedulable: waiting for 2 nvidia.com/gpu: 0/3 nodes are "
            "available",
            4,
        ),
        ("running", "support-bot: Running — step 120/400 (30%), loss 1.42, 5120 tok/s, ETA 28m", 4),
        ("suspended", "support-bot: Suspended — step 120/400 (30%), loss 1.42", 3),
        (
            "failed",
            "support-bot: Failed — step 120/400 (30%), loss 1.42; RetryLimitExceeded: CUDA out of "
            "memory at micro-batch 1 after 3 retries",
            1,
        ),
        ("succeeded", "support-bot: Succeeded — step 400/400 (100%), loss 1.42", 0),
    ],
)
def test_status_line_and_exit_code(key: str, line: str, code: int) -> None:
    assert r.status_line(JOBS[key]) == line
    assert r.exit_code(r.phase(JOBS[key])) == code


def test_ratio_from_steps_when_percent_is_missing() -> None:
    job: dict[str, Any] = {
        "status": {"phase": "Running", "progress": {"step": 5, "totalSteps": 20}}
    }
    assert r.ratio(job) == 0.25
    assert r.bar(r.ratio(job), 8) == "██░░░░░░"
    assert r.bar(None, 4) == "░░░░"


def test_update_line_names_the_last_event() -> None:
    line = r.update_line(JOBS["running"], r.last_event(EVENTS), NOW)
    assert line == (
        "2026-11-20T10:00:30Z support-bot: Running — step 120/400 (30%), loss 1.42, 5120 tok/s, "
        "ETA 28m | Normal Running: pod support-bot-1 is running"
    )


def test_events_table_is_oldest_first() -> None:
    assert r.events_table(EVENTS, NOW).splitlines() == [
        "LAST SEEN   TYPE     REASON     OBJECT                    MESSAGE",
        "56m         Normal   Starting   finetunejob/support-bot   starting attempt 1",
        "56m         Normal   Pulled     pod/support-bot-1         Container image already "
        "present on machine",
        "55m         Normal   Running    finetunejob/support-bot   pod support-bot-1 is running",
    ]


def _pod(name: str, created: str, role: str, attempt: int) -> dict[str, Any]:
    labels = {"finetune.dev/role": role, "finetune.dev/attempt": str(attempt)}
    return {"metadata": {"name": name, "creationTimestamp": created, "labels": labels}}


def test_trainer_pod_prefers_the_current_attempt() -> None:
    pods = [
        _pod("bot-prepare", "2026-11-20T09:00:00Z", "prepare", 0),
        _pod("bot-2", "2026-11-20T09:10:00Z", "train", 2),
        _pod("bot-1", "2026-11-20T09:05:00Z", "train", 1),
    ]
    assert r.trainer_pod(pods, 1) == pods[2]
    assert r.trainer_pod(pods, 3) == pods[1]  # not created yet: the newest
    assert r.trainer_pod(pods, None) == pods[1]
    assert r.trainer_pod([], 1) is None
