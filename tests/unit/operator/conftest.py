"""Factories for the operator's unit tests: ``make_job(**overrides)`` and ``make_pod(...)``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_operator import lifecycle as lc
from finetune_operator import models as m

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)

BASE_SPEC: dict[str, Any] = {
    "model": {"pvc": "models", "path": "tiny-llama"},
    "dataset": {"pvc": "data", "path": "train.jsonl", "format": "alpaca"},
    "method": "lora",
    "training": {"maxSteps": 20, "batchSize": 8},
    "resources": {"gpus": 1},
    "output": {"pvc": "out"},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def job_body(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": m.API_VERSION,
        "kind": m.KIND,
        "metadata": {"name": "bot", "namespace": "ml", "uid": "uid-1", "generation": generation},
        "spec": _merge(BASE_SPEC, spec or {}),
        "status": status or {},
    }


def build_job(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 1
) -> m.FineTuneJob:
    return m.parse_job(job_body(spec, status, generation))


@pytest.fixture
def make_job() -> Callable[..., m.FineTuneJob]:
    return build_job


def pod(
    name: str,
    *,
    role: str = "train",
    attempt: int = 1,
    phase: str = "Pending",
    running: bool = False,
    exit_code: int | None = None,
    term_reason: str | None = None,
    term_message: str | None = None,
    waiting: str | None = None,
    waiting_message: str | None = None,
    unschedulable: str | None = None,
    pod_reason: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "startTime": "2026-11-26T11:00:00Z"}
    state: dict[str, Any] = {}
    if running:
        state = {"running": {"startedAt": "2026-11-26T11:00:05Z"}}
    if exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": term_reason or ("Completed" if exit_code == 0 else "Error"),
                "message": term_message,
                "finishedAt": "2026-11-26T11:30:00Z",
            }
        }
    if waiting:
        state = {"waiting": {"reason": waiting, "message": waiting_message}}
    if state:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    if unschedulable:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        ]
    if pod_reason:
        status["reason"] = pod_reason
        status["message"] = f"The node was low on resource: memory. ({pod_reason})"
    meta: dict[str, Any] = {
        "name": name,
        "labels": {m.LABEL_JOB: "bot", m.LABEL_ROLE: role, m.LABEL_ATTEMPT: str(attempt)},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T11:59:00Z"
    return {"metadata": meta, "status": status}


@pytest.fixture
def make_pod() -> Callable[..., dict[str, Any]]:
    return pod


def derive(
    job: m.FineTuneJob,
    pods: list[dict[str, Any]],
    progress: dict[str, Any] | None,
    prepared: dict[str, Any] | None,
    now: datetime,
    **kw: Any,
) -> m.FineTuneJobStatus:
    """``derive_status`` with the trainer's reports as decoded JSON (as the tests write them)."""
    return lc.derive_status(
        job, pods, lc.progress_from(progress), lc.prepare_from(prepared), now, **kw
    )
