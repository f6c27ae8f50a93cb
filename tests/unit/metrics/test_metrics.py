"""The operator's metrics: values read back from the text exposition, and promtool's lint."""

from __future__ import annotations

import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_operator import metrics as mod
from finetune_operator.metrics import OperatorMetrics

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def samples(m: OperatorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, frozenset(labels.items())))


def job(name: str, phase: str | None, namespace: str = "ml") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "status": {"phase": phase} if phase else {},
    }


def test_build_info_carries_the_version(metrics: OperatorMetrics) -> None:
    assert value(metrics, "finetune_build_info", version="1.2.3") == 1


def test_observe_jobs_is_a_full_recount(metrics: OperatorMetrics) -> None:
    metrics.observe_jobs([job("a", "Running"), job("b", "Running"), job("c", None)])
    assert value(metrics, "finetune_jobs", phase="Running") == 2
    assert value(metrics, "finetune_jobs", phase="Pending") == 1
    assert value(metrics, "finetune_jobs", phase="Failed") == 0
    metrics.observe_jobs([job("a", "Succeeded")])
    assert value(metrics, "finetune_jobs", phase="Running") == 0
    assert value(metrics, "finetune_jobs", phase="Succeeded") == 1


def test_observe_jobs_forgets_jobs_no_longer_listed(metrics: OperatorMetrics) -> None:
    metrics.observe_progress("ml", "gone", {"step": 5, "totalSteps": 10})
    metrics.observe_progress("ml", "kept", {"step": 1, "totalSteps": 10})
    metrics.observe_jobs([job("kept", "Running")])
    assert value(metrics, "finetune_job_step", namespace="ml", job_name="gone") is None
    assert value(metrics, "finetune_job_step", namespace="ml", job_name="kept") == 1


def test_transitions_are_counted_once_per_change(metrics: OperatorMetrics) -> None:
    metrics.record_transition("ml", "a", None, "Pending", status={}, now=T0)
    metrics.record_transition("ml", "a", "Pending", "Preparing", status={}, now=T0)
    metrics.record_transition("ml", "a", "Preparing", "Preparing", status={}, now=T0)
    metrics.record_transition("ml", "a", "Preparing", None, status={}, now=T0)
    name = "finetune_job_phase_transitions_total"
    assert value(metrics, name, **{"from": "None", "to": "Pending"}) == 1
    assert value(metrics, name, **{"from": "Pending", "to": "Preparing"}) == 1
    assert value(metrics, name, **{"from": "Preparing", "to": "Preparing"}) is None
    phase = "finetune_job_phase"
    assert value(metrics, phase, namespace="ml", job_name="a", phase="Preparing") == 1
    assert value(metrics, phase, namespace="ml", job_name="a", phase="Pending") == 0


def test_queue_wait_is_the_time_spent_queued(metrics: OperatorMetrics) -> None:
    metrics.record_transition("ml", "a", "Preparing", "Queued", status={}, now=T0)
    later = T0 + timedelta(seconds=95)
    metrics.record_transition("ml", "a", "Queued", "Starting", status={}, now=later)
    assert value(metrics, "finetune_job_queue_wait_seconds_count") == 1
    assert value(metrics, "finetune_job_queue_wait_seconds_sum") == 95
    assert value(metrics, "finetune_job_queue_wait_seconds_bucket", le="60.0") == 0
    assert value(metrics, "finetune_job_queue_wait_seconds_bucket", le="120.0") == 1


def test_queue_wait_unknown_after_a_restart_is_not_guessed(metrics: OperatorMetrics) -> None:
    # the operator (re)started while the job was Queued: no entry time
    metrics.record_transition("ml", "a", "Queued", "Queued", status={}, now=T0)
    metrics.record_transition("ml", "a", "Queued", "Starting", status={}, now=T0)
    assert value(metrics, "finetune_job_queue_wait_seconds_count") == 0


@pytest.mark.parametrize(
    ("phase", "reason", "result", "label"),
    [
        ("Succeeded", "Completed", "succeeded", "Completed"),
        ("Failed", "RetryLimitExceeded", "failed", "RetryLimitExceeded"),
        ("Failed", None, "failed", "Error"),
    ],
)
def test_finished_jobs_by_result_and_reason(
    metrics: OperatorMetrics, phase: str, reason: str | None, result: str, label: str
) -> None:
    status = {
        "phase": phase,
        "reason": reason,
        "startTime": "2026-11-26T10:00:00Z",
        "completionTime": "2026-11-26T12:00:00Z",
    }
    metrics.record_transition("ml", "a", "Running", phase, status=status, now=T0)
    assert value(metrics, "finetune_jobs_finished_total", result=result, reason=label) == 1
    assert value(metrics, "finetune_job_run_duration_seconds_sum") == 7200


def test_observe_status_counts_restarts_by_reason(metrics: OperatorMetrics) -> None:
    old = {"phase": "Running", "attempt": 1, "attempts": []}
    first: list[dict[str, Any]] = [{"attempt": 1, "pod": "a-1", "reason": "CudaOOM"}]
    new = {"phase": "Starting", "attempt": 2, "attempts": first}
    metrics.observe_status("ml", "a", old, new, T0)
    newer = {
        **new,
        "attempts": [
            *first,
            {"attempt": 2, "pod": "a-2", "reason": "Preempted"},
            {"attempt": 3, "pod": "a-3", "reason": "Suspended"},
            {"attempt": 4, "pod": "a-4", "reason": "Completed"},
        ],
    }
    metrics.observe_status("ml", "a", new, newer, T0)
    assert value(metrics, "finetune_job_restarts_total", reason="CudaOOM") == 1
    assert value(metrics, "finetune_job_restarts_total", reason="Preempted") == 1
    assert value(metrics, "finetune_job_restarts_total", reason="Suspended") is None
    assert value(metrics, "finetune_job_restarts_total", reason="Completed") is None
    transitions = "finetune_job_phase_transitions_total"
    assert value(metrics, transitions, **{"from": "Running", "to": "Starting"}) == 1


def test_per_job_gauges_follow_progress(metrics: OperatorMetrics) -> None:
    progress = {
        "step": 120,
        "totalSteps": 400,
        "percent": 30.0,
        "loss": 1.42,
        "tokensPerSecond": 5120.0,
        "etaSeconds": 1680,
    }
    metrics.observe_progress("ml", "bot", progress)
    labels = {"namespace": "ml", "job_name": "bot"}
    assert value(metrics, "finetune_job_progress_ratio", **labels) == pytest.approx(0.3)
    assert value(metrics, "finetune_job_step", **labels) == 120
    assert value(metrics, "finetune_job_loss", **labels) == pytest.approx(1.42)
    assert value(metrics, "finetune_job_tokens_per_second", **labels) == 5120
    assert value(metrics, "finetune_job_eta_seconds", **labels) == 1680
    metrics.observe_progress("ml", "bot", {"step": 200, "totalSteps": 400})
    assert value(metrics, "finetune_job_progress_ratio", **labels) == pytest.approx(0.5)
    assert value(metrics, "finetune_job_loss", **labels) is None


def test_progress_gauges_exist_only_while_running(metrics: OperatorMetrics) -> None:
    """A Suspended or Queued job must not add its last throughput or ETA to a dashboard."""
    labels = {"namespace": "ml", "job_name": "bot"}
    progress = {"step": 120, "totalSteps": 400, "tokensPerSecond": 5120.0, "etaSeconds": 1680}
    running = {"phase": "Running", "progress": progress}
    metrics.observe_status("ml", "bot", {"phase": "Starting"}, running, T0)
    assert value(metrics, "finetune_job_tokens_per_second", **labels) == 5120
    for phase in ("Suspended", "Succeeded"):
        metrics.observe_status("ml", "bot", running, {"phase": phase, "progress": progress}, T0)
        for name in ("tokens_per_second", "eta_seconds", "step", "progress_ratio", "loss"):
            assert value(metrics, f"finetune_job_{name}", **labels) is None, (phase, name)
        assert value(metrics, "finetune_job_phase", **labels, phase=phase) == 1
        metrics.observe_status("ml", "bot", {"phase": phase}, running, T0)
    # the periodic recount drops them too (a job seen first after an operator restart)
    metrics.observe_jobs(
        [{"metadata": {"namespace": "ml", "name": "bot"}, "status": {"phase": "Queued"}}]
    )
    assert value(metrics, "finetune_job_eta_seconds", **labels) is None


def test_one_prefix_and_no_created_series(metrics: OperatorMetrics) -> None:
    metrics.record_restart("OOMKilled")
    names = {name for (name, _) in samples(metrics)}
    assert names and all(n.startswith(mod.PREFIX) for n in names), names
    assert not [n for n in names if n.endswith("_created")]


def test_forget_job_removes_every_per_job_series(metrics: OperatorMetrics) -> None:
    metrics.observe_status(
        "ml", "bot", {}, {"phase": "Running", "progress": {"step": 3, "loss": 2.0}}, T0
    )
    metrics.observe_progress("ml", "other", {"step": 1})
    metrics.forget_job("ml", "bot")
    left = {dict(labels).get("job_name") for (_, labels) in samples(metrics)}
    assert "bot" not in left
    assert "other" in left
    assert metrics.tracked_jobs() == {("ml", "other")}


def test_startup_is_running_to_first_step_once_per_attempt(metrics: OperatorMetrics) -> None:
    metrics.observe_status("ml", "a", {"phase": "Starting"}, {"phase": "Running", "attempt": 1}, T0)
    first = {"attempt": 1, "step": 0, "updatedAt": "2026-11-26T12:00:10Z"}
    metrics.observe_progress("ml", "a", first)  # loading, no step yet
    assert value(metrics, "finetune_job_startup_seconds_count") == 0
    metrics.observe_progress("ml", "a", {**first, "step": 1, "updatedAt": "2026-11-26T12:00:42Z"})
    metrics.observe_progress("ml", "a", {**first, "step": 9, "updatedAt": "2026-11-26T12:05:00Z"})
    assert value(metrics, "finetune_job_startup_seconds_count") == 1
    assert value(metrics, "finetune_job_startup_seconds_sum") == 42
    # a resumed attempt gets its own observation; a stale report of attempt 1 does not count
    later = T0 + timedelta(hours=1)
    metrics.observe_status(
        "ml", "a", {"phase": "Starting"}, {"phase": "Starting", "attempt": 2}, later
    )
    metrics.record_transition("ml", "a", "Starting", "Running", status={"attempt": 2}, now=later)
    metrics.observe_progress("ml", "a", {"attempt": 1, "step": 9}, later + timedelta(seconds=5))
    assert value(metrics, "finetune_job_startup_seconds_count") == 1
    metrics.observe_progress("ml", "a", {"attempt": 2, "step": 10}, later + timedelta(seconds=20))
    assert value(metrics, "finetune_job_startup_seconds_count") == 2
    assert value(metrics, "finetune_job_startup_seconds_sum") == 62


def test_module_functions_act_on_the_operator_registry() -> None:
    mod.record_transition("ns-x", "fn", None, "Pending", status={}, now=T0)
    mod.observe_progress("ns-x", "fn", {"step": 2})
    assert mod.METRICS.tracked_jobs() >= {("ns-x", "fn")}
    mod.forget_job("ns-x", "fn")
    assert ("ns-x", "fn") not in mod.METRICS.tracked_jobs()
    assert mod.start_server(0) is None


def test_start_server_serves_its_registry(metrics: OperatorMetrics) -> None:
    port = metrics.start_server(0, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    assert 'finetune_build_info{version="1.2.3"} 1.0' in body
    assert "python_gc_objects_collected_total" not in body  # its own registry only


def test_exposition_passes_promtool_lint(metrics: OperatorMetrics, promtool: str) -> None:
    metrics.observe_status("ml", "a", {}, {"phase": "Queued"}, T0)
    status = {
        "phase": "Failed",
        "reason": "CudaOOM",
        "attempt": 1,
        "startTime": "2026-11-26T11:00:00Z",
        "attempts": [{"attempt": 1, "pod": "a-1", "reason": "CudaOOM"}],
        "progress": {"step": 3, "totalSteps": 10, "loss": 1.0, "tokensPerSecond": 9.5},
    }
    metrics.observe_status("ml", "a", {"phase": "Queued"}, status, T0 + timedelta(minutes=3))
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.exposition(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == ""
