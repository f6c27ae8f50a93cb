"""Kueue's plain-pod integration: gated pod groups are Queued with Kueue's message, an eviction
is a suspend that counts no retry, and what Kueue adds to a pod changes nothing the operator
decides."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finetune_operator import builders as b
from finetune_operator import crd, kueue, security
from finetune_operator import lifecycle as lc
from finetune_operator import models as m
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.settings import Settings
from tests.unit.operator.conftest import derive

P = m.Phase
R = m.Reason
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]
OK_PREPARE: dict[str, Any] = {
    "ok": True,
    "data": {"records": 200},
    "plan": {"strategy": "single", "micro_batch_size": 4, "gradient_accumulation": 2},
    "total_steps": 20,
}
PREPARED = {
    "plan": {"strategy": "single", "microBatchSize": 4, "gradientAccumulation": 2},
    "data": {"records": 200},
}
QUEUED = {"queueName": "team-a", "retry": {"limit": 0}}
NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
    "flavor gpu, 2 more needed"
)
PREEMPTED = (
    "Preempted to accommodate a workload (UID: 1, JobUID: 2) due to prioritization in the "
    "ClusterQueue"
)


def gate(pod: dict[str, Any]) -> dict[str, Any]:
    pod.setdefault("spec", {})["schedulingGates"] = [{"name": kueue.ADMISSION_GATE}]
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
    ]
    return pod


def evict(
    pod: dict[str, Any], message: str = PREEMPTED, reason: str = "WorkloadEvictedDueToPreempted"
) -> dict[str, Any]:
    """What Kueue does to each pod of an evicted group: the condition (v0.17's reason names the
    cause), then a delete."""
    pod["status"].setdefault("conditions", []).append(
        {"type": "TerminationTarget", "status": "True", "reason": reason, "message": message}
    )
    pod["metadata"]["deletionTimestamp"] = "2026-11-26T11:59:00Z"
    return pod


def running_job(make_job: JobF, **status: Any) -> m.FineTuneJob:
    return make_job(
        spec=QUEUED,
        status={"attempt": 1, "phase": "Running", **PREPARED, "checkpoint": {"step": 7}, **status},
    )


def test_a_gated_group_is_queued_with_kueues_admission_message(
    make_job: JobF, make_pod: PodF
) -> None:
    job = make_job(spec=QUEUED, status={"attempt": 1, "phase": "Starting", **PREPARED})
    pods = [gate(make_pod("bot-1"))]
    new = derive(job, pods, None, OK_PREPARE, NOW, admission=NO_QUOTA)
    assert (new.phase, new.reason) == (P.QUEUED, R.WAITING_FOR_ADMISSION)
    assert "insufficient unused quota for nvidia.com/gpu" in (new.message or "")
    assert {c.type: c.status for c in new.conditions}["Ready"] == "True"
    assert lc.next_actions(job, new, pods, NOW) == lc.Actions()
    # no Workload readable (no Kueue RBAC, a transient error): still Queued, generic message
    plain = derive(job, pods, None, OK_PREPARE, NOW)
    assert (plain.phase, plain.message) == (
        P.QUEUED,
        "pod bot-1 waits for Kueue's admission: Kueue has not admitted it yet.",
    )


def test_admitted_group_is_no_longer_queued(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec=QUEUED, status={"attempt": 1, "phase": "Queued", **PREPARED})
    new = derive(job, [make_pod("bot-1", phase="Running", running=True)], None, OK_PREPARE, NOW)
    assert new.phase == P.RUNNING


def test_queue_timeout_bounds_the_wait_for_admission(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(
        spec={**QUEUED, "queueTimeoutSeconds": 600},
        status={"attempt": 1, "phase": "Queued", **PREPARED},
    )
    pod = gate(make_pod("bot-1"))
    pod["metadata"]["creationTimestamp"] = "2026-11-26T11:40:00Z"
    new = derive(job, [pod], None, OK_PREPARE, NOW, admission=NO_QUOTA)
    assert (new.phase, new.reason) == (P.FAILED, R.QUEUE_TIMEOUT)
    assert "Kueue's admission" in (new.message or "")
    young = derive(job, [pod], None, OK_PREPARE, NOW - timedelta(minutes=15), admission=NO_QUOTA)
    assert young.phase == P.QUEUED
    woke = lc.wake_at(job, young, [pod], NOW - timedelta(minutes=15))
    assert woke == datetime(2026, 11, 26, 11, 50, 0, tzinfo=UTC)


def test_eviction_waits_for_the_checkpoint_then_requeues_without_a_retry(
    make_job: JobF, make_pod: PodF
) -> None:
    job = running_job(make_job)
    stopping = [evict(make_pod("bot-1", phase="Running", running=True))]
    new = derive(job, stopping, {"attempt": 1, "step": 9}, OK_PREPARE, NOW)
    assert (new.phase, new.reason, new.attempt) == (P.QUEUED, R.PREEMPTED, 1)
    assert new.attempts == []
    assert "Preempted to accommodate a workload" in (new.message or "")
    # Kueue deletes the pods itself; the operator neither deletes nor replaces it yet
    assert lc.next_actions(job, new, stopping, NOW) == lc.Actions()

    job = job.model_copy(update={"status": new})
    ended = [evict(make_pod("bot-1", phase="Failed", exit_code=10))]
    progress = {"attempt": 1, "step": 10, "checkpoint": {"step": 10, "path": "c/10"}}
    after = derive(job, ended, progress, OK_PREPARE, NOW)
    rec = after.attempts[-1]
    assert (rec.attempt, rec.reason, rec.step) == (1, R.WORKLOAD_EVICTED, 10)
    assert (rec.message or "").startswith("Preempted to accommodate")
    # retry.limit 0, yet not Failed: an eviction is no failure
    assert (after.phase, after.reason, after.attempt) == (P.QUEUED, R.PREEMPTED, 2)
    assert "waits for readmission from checkpoint step 10" in (after.message or "")
    assert lc.next_actions(job, after, ended, NOW) == lc.Actions(create_train=2)
    events = lc.transition_events(job.status, after)
    assert [(k, r) for k, r, _ in events] == [("Normal", R.PREEMPTED)]


def test_the_new_group_waits_gated_as_preempted_then_resumes(
    make_job: JobF, make_pod: PodF
) -> None:
    evicted = {"attempt": 1, "pod": "bot-1", "reason": R.WORKLOAD_EVICTED, "step": 10}
    job = running_job(make_job, attempt=2, phase="Queued", attempts=[evicted])
    old = make_pod("bot-1", phase="Failed", exit_code=10)
    gated = [evict(old), gate(make_pod("bot-2", attempt=2))]
    new = derive(job, gated, None, OK_PREPARE, NOW, admission=NO_QUOTA)
    assert (new.phase, new.reason, new.attempt) == (P.QUEUED, R.PREEMPTED, 2)
    assert new.message is not None and "evicted by Kueue at step 10" in new.message
    assert NO_QUOTA[:40] in new.message
    assert lc.next_actions(job, new, gated, NOW) == lc.Actions()
    admitted = [old, make_pod("bot-2", attempt=2, phase="Running", running=True)]
    assert derive(job, admitted, None, OK_PREPARE, NOW).phase == P.RUNNING


def test_a_pod_gone_before_its_end_was_seen_is_still_an_eviction(
    make_job: JobF, make_pod: PodF
) -> None:
    job = running_job(make_job)
    stopping = derive(
        job, [evict(make_pod("bot-1", running=True))], {"attempt": 1}, OK_PREPARE, NOW
    )
    gone = derive(job.model_copy(update={"status": stopping}), [], None, OK_PREPARE, NOW)
    assert gone.attempts[-1].reason == R.WORKLOAD_EVICTED
    assert (gone.phase, gone.attempt) == (P.QUEUED, 2)
    # the pod of the new attempt missing right after the bump is not mistaken for one
    again = derive(job.model_copy(update={"status": gone}), [], None, OK_PREPARE, NOW)
    assert [a.reason for a in again.attempts] == [R.WORKLOAD_EVICTED, R.POD_DELETED]


def test_repeated_evictions_never_exhaust_the_retry_limit(make_job: JobF, make_pod: PodF) -> None:
    job = running_job(make_job)
    for n in range(1, 5):
        pods = [evict(make_pod(f"bot-{n}", attempt=n, phase="Failed", exit_code=10))]
        new = derive(job, pods, None, OK_PREPARE, NOW)
        assert (new.phase, new.attempt) == (P.QUEUED, n + 1)
        job = job.model_copy(update={"status": new})
    assert [a.reason for a in job.status.attempts] == [R.WORKLOAD_EVICTED] * 4


def test_suspend_during_an_eviction_is_a_suspend(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(
        spec={**QUEUED, "suspend": True},
        status={"attempt": 1, "phase": "Queued", "reason": "Preempted", **PREPARED},
    )
    new = derive(
        job, [evict(make_pod("bot-1", phase="Failed", exit_code=10))], None, OK_PREPARE, NOW
    )
    assert (new.phase, new.attempts[-1].reason) == (P.SUSPENDED, R.SUSPENDED)


def test_a_completed_pod_is_success_even_when_marked_for_eviction(
    make_job: JobF, make_pod: PodF
) -> None:
    job = running_job(make_job)
    new = derive(job, [evict(make_pod("bot-1", phase="Succeeded", exit_code=0))], None, None, NOW)
    assert new.phase == P.SUCCEEDED


def kueue_touched(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod after Kueue's webhook and admission: ResourceFlavor nodeSelector and tolerations,
    its labels, annotations and finalizer, the gate removed."""
    pod = copy.deepcopy(pod)
    meta = pod["metadata"]
    meta["labels"] = {**meta["labels"], "kueue.x-k8s.io/managed": "true"}
    meta["annotations"] = {**meta.get("annotations", {}), "kueue.x-k8s.io/role-hash": "abc"}
    meta["finalizers"] = ["kueue.x-k8s.io/managed"]
    spec = pod["spec"]
    spec["nodeSelector"] = {**spec.get("nodeSelector", {}), "gpu-flavor": "rtx3060"}
    spec["tolerations"] = [{"key": "reserved", "operator": "Exists", "effect": "NoSchedule"}]
    pod["status"] = {
        "phase": "Running",
        "startTime": "2026-11-26T11:00:00Z",
        "containerStatuses": [
            {"name": "trainer", "state": {"running": {"startedAt": "2026-11-26T11:00:05Z"}}}
        ],
    }
    return pod


def test_what_kueue_adds_to_a_pod_changes_nothing(make_job: JobF) -> None:
    job = running_job(make_job)
    desired = b.train_pod(job, 1, Settings(termination_grace_seconds=60))
    desired["metadata"]["uid"] = "pod-uid"
    existing = kueue_touched(desired)
    assert security.adoption(existing, desired) == "adopt"
    assert security.owned_by(existing, job.uid)
    state = lc.pod_state(existing)
    assert (state.kind, state.attempt, state.evicted) == (lc.PodKind.RUNNING, 1, None)
    assert derive(job, [existing], None, OK_PREPARE, NOW).phase == P.RUNNING


@pytest.mark.parametrize(
    ("message", "cause"),
    [
        (PREEMPTED, "Preempted"),
        ("Exceeded the PodsReady timeout ns/bot-1", "PodsReadyTimeout"),
        ("The ClusterQueue is stopped", "ClusterQueueStopped"),
        ("something new", "WorkloadEvicted"),
        (None, "WorkloadEvicted"),
    ],
)
def test_eviction_cause(message: str | None, cause: str) -> None:
    assert kueue.eviction_cause(message) == cause


@pytest.mark.parametrize(
    ("reason", "evicted"),
    [
        ("WorkloadEvictedDueToPreempted", True),
        ("WorkloadEvictedDueToPodsReadyTimeout", True),
        ("WorkloadEvicted", True),
        ("WorkloadDeleted", False),  # the Workload went away: not a requeue
        ("NotAdmitted", False),
    ],
)
def test_which_termination_targets_are_evictions(
    make_pod: PodF, reason: str, evicted: bool
) -> None:
    pod = evict(make_pod("bot-1", running=True), reason=reason)
    assert (kueue.eviction(pod) is not None) is evicted


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ([{"type": "QuotaReserved", "status": "False", "message": NO_QUOTA}], NO_QUOTA),
        ([{"type": "QuotaReserved", "status": "True", "message": "ok"}], None),
        (
            [
                {"type": "QuotaReserved", "status": "True", "message": "reserved"},
                {"type": "Admitted", "status": "False", "message": "check pending"},
            ],
            "check pending",
        ),
        ([], None),
    ],
)
def test_admission_message(conditions: list[dict[str, Any]], message: str | None) -> None:
    assert kueue.admission_message({"status": {"conditions": conditions}}) == message
    assert kueue.admission_message(None) is None


def test_preemptions_metric_counts_evictions_not_restarts() -> None:
    metrics = OperatorMetrics(registry=CollectorRegistry(), version="t")
    rec = {"attempt": 1, "pod": "a-1", "reason": R.WORKLOAD_EVICTED, "message": PREEMPTED}
    old = {"phase": "Running", "attempt": 1, "attempts": []}
    metrics.observe_status("ml", "a", old, {"phase": "Queued", "attempts": [rec]}, NOW)
    value = metrics.registry.get_sample_value
    assert value("finetune_job_preemptions_total", {"reason": "Preempted"}) == 1
    assert value("finetune_job_restarts_total", {"reason": R.WORKLOAD_EVICTED}) is None


def test_the_operator_may_read_workloads_only() -> None:
    rules = [r for r in crd.OPERATOR_RULES if "kueue.x-k8s.io" in r["apiGroups"]]
    assert rules == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["get"]}
    ]
