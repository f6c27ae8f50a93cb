"""Fixture job dicts for the plugin's rendering tests (camelCase, as the API returns them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_operator import kube


@pytest.fixture(autouse=True)
def _kube_pointing_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Api`` points kube.py at its cluster (module state): each test's pointing ends with it."""
    monkeypatch.setattr(kube, "_api", kube._api)
    monkeypatch.setattr(kube, "_timeout", kube._timeout)


NOW = datetime(2026, 11, 20, 10, 0, 30, tzinfo=UTC)

BASE: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {
        "name": "support-bot",
        "namespace": "ml",
        "uid": "5b0c1f7e-2d0a-4c55-9a57-0f1d8f0d9a11",
        "creationTimestamp": "2026-11-20T09:00:00Z",
    },
    "spec": {
        "model": {"name": "mistralai/Mistral-7B-v0.1"},
        "dataset": {"url": "https://example.com/train.jsonl"},
        "method": "qlora",
        "training": {"epochs": 1},
        "resources": {"gpus": 2},
        "output": {"pvc": "finetune-out"},
    },
}

RUNNING_STATUS: dict[str, Any] = {
    "phase": "Running",
    "reason": "Running",
    "message": "step 120/400, loss 1.42",
    "attempt": 1,
    "plan": {
        "strategy": "ddp",
        "microBatchSize": 4,
        "gradientAccumulation": 2,
        "estimatedGpuMemoryMiB": 9800,
    },
    "progress": {
        "attempt": 1,
        "step": 120,
        "totalSteps": 400,
        "percent": 30.0,
        "loss": 1.42,
        "tokensPerSecond": 5120.0,
        "etaSeconds": 1680,
        "gpuMemoryMiB": 9100,
        "updatedAt": "2026-11-20T10:00:00Z",
    },
    "checkpoint": {
        "step": 100,
        "path": "checkpoints/checkpoint-100",
        "time": "2026-11-20T09:58:00Z",
    },
    "startTime": "2026-11-20T09:05:00Z",
}


def make_job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    job = copy.deepcopy(BASE)
    job["spec"].update(spec)
    if status is not None:
        job["status"] = copy.deepcopy(status)
    return job


JOBS: dict[str, dict[str, Any]] = {
    "pending": make_job(),
    "queued": make_job(
        {
            "phase": "Queued",
            "reason": "Unschedulable",
            "message": "waiting for 2 nvidia.com/gpu: 0/3 nodes are available",
            "attempt": 1,
        }
    ),
    "running": make_job(RUNNING_STATUS),
    "suspended": make_job(
        {
            **RUNNING_STATUS,
            "phase": "Suspended",
            "reason": "Suspended",
            "message": "suspended at checkpoint step 100; GPUs released",
            "attempts": [{"attempt": 1, "pod": "support-bot-1", "reason": "Suspended"}],
        },
        suspend=True,
    ),
    "failed": make_job(
        {
            **RUNNING_STATUS,
            "phase": "Failed",
            "reason": "RetryLimitExceeded",
            "message": "CUDA out of memory at micro-batch 1 after 3 retries",
            "attempt": 4,
            "attempts": [
                {"attempt": n, "pod": f"support-bot-{n}", "reason": "CudaOOM", "exitCode": 11}
                for n in range(1, 5)
            ],
            "completionTime": "2026-11-20T09:59:00Z",
        }
    ),
    "succeeded": make_job(
        {
            **RUNNING_STATUS,
            "phase": "Succeeded",
            "reason": "Completed",
            "message": "training finished; output written",
            "progress": {**RUNNING_STATUS["progress"], "step": 400, "percent": 100.0},
            "completionTime": "2026-11-20T09:59:00Z",
        }
    ),
}

EVENTS: list[dict[str, Any]] = [
    {
        "type": "Normal",
        "reason": "Starting",
        "message": "starting attempt 1",
        "involvedObject": {"kind": "FineTuneJob", "name": "support-bot"},
        "lastTimestamp": "2026-11-20T09:04:00Z",
    },
    {
        "type": "Normal",
        "reason": "Running",
        "message": "pod support-bot-1 is running",
        "involvedObject": {"kind": "FineTuneJob", "name": "support-bot"},
        "lastTimestamp": "2026-11-20T09:05:00Z",
    },
    {
        "type": "Normal",
        "reason": "Pulled",
        "message": "Container image already present on machine",
        "involvedObject": {"kind": "Pod", "name": "support-bot-1"},
        "eventTime": "2026-11-20T09:04:30.000000Z",
    },
]
