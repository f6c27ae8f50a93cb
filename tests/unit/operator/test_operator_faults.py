"""The lifecycle faults found on the cluster (issue 14), one table or test each: a suspend is never
a failure whatever its timing, deadlines, stalled attempts, queue timeouts, readable messages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_operator import lifecycle as st
from finetune_operator import models as m
from tests.unit.operator.conftest import derive

P = m.Phase
R = m.Reason
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
OK_PREPARE: dict[str, Any] = {
    "ok": True,
    "plan": {"strategy": "single", "micro_batch_size": 4, "gradient_accumulation": 2},
    "total_steps": 20,
}
PREPARED = {"plan": {"strategy": "single", "microBatchSize": 4, "gradientAccumulation": 2}}
JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]


def _suspending(make_job: JobF, suspend: bool, limit: int = 0, **status: Any) -> m.FineTuneJob:
    base = {"attempt": 1, "phase": "Suspending", "checkpoint": {"step": 9}, **PREPARED}
    return make_job(spec={"suspend": suspend, "retry": {"limit": limit}}, status={**base, **status})


# ------------------------------------------------------------------------- suspend and resume


def test_resume_while_the_old_pod_stops_waits_for_it(make_job: JobF, make_pod: PodF) -> None:
    job = _suspending(make_job, suspend=False)
    pods = [make_pod("bot-1", phase="Running", running=True, deleting=True)]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert (new.phase, new.attempt, new.attempts) == (P.SUSPENDING, 1, [])
    assert "waiting for bot-1 to stop" in (new.message or "")
    assert st.next_actions(job, new, pods, NOW) == st.Actions()  # no second pod meanwhile


@pytest.mark.parametrize(
    "pod",
    [
        None,  # gone: the deleted pod's object is removed once it exits
        {"phase": "Failed", "exit_code": 10},  # checkpoint on SIGTERM (Preempted)
        {"phase": "Failed", "exit_code": 137},  # grace period over
        {"phase": "Failed", "exit_code": 1, "term_message": "ERROR x: killed"},
    ],
)
def test_a_pod_stopped_for_a_suspend_is_never_a_failure(
    make_job: JobF, make_pod: PodF, pod: dict[str, Any] | None
) -> None:
    """Resumed before the operator saw the pod end: with retry.limit 0 it still resumes."""
    job = _suspending(make_job, suspend=False)
    pods = [make_pod("bot-1", **pod)] if pod else []
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert [a.reason for a in new.attempts] == [R.SUSPENDED]
    assert (new.phase, new.attempt, new.retry_after) == (P.STARTING, 2, None)
    assert new.message == "resuming attempt 2 from checkpoint step 9"
    assert st.next_actions(job, new, pods, NOW).create_train == 2
    assert st.transition_events(job.status, new) == [("Normal", P.STARTING, new.message)]


def test_two_quick_suspend_resume_cycles_spend_no_retry(make_job: JobF, make_pod: PodF) -> None:
    status: dict[str, Any] = {"attempt": 1, "phase": "Running", **PREPARED}
    for attempt in (1, 2):
        running = [make_pod(f"bot-{attempt}", attempt=attempt, phase="Running", running=True)]
        suspended = make_job(spec={"suspend": True, "retry": {"limit": 0}}, status=status)
        new = derive(suspended, running, None, OK_PREPARE, NOW)
        assert st.next_actions(suspended, new, running, NOW).delete_pods == (f"bot-{attempt}",)
        resumed = make_job(spec={"retry": {"limit": 0}}, status=m.dump(new))
        gone = [make_pod(f"bot-{attempt}", attempt=attempt, phase="Failed", exit_code=10)]
        new = derive(resumed, gone, None, OK_PREPARE, NOW)
        assert (new.phase, new.attempt) == (P.STARTING, attempt + 1)
        status = {**m.dump(new), "phase": "Running"}
    assert [a.reason for a in new.attempts] == [R.SUSPENDED, R.SUSPENDED]


def test_suspended_records_any_exit_as_suspended(make_job: JobF, make_pod: PodF) -> None:
    job = _suspending(make_job, suspend=True)
    pods = [make_pod("bot-1", phase="Failed", exit_code=1, term_message="boom")]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert (new.phase, [a.reason for a in new.attempts]) == (P.SUSPENDED, [R.SUSPENDED])


def test_resume_while_the_prepare_pod_stops(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"phase": "Suspending"})
    stopping = [make_pod("bot-prepare", role="prepare", attempt=0, running=True, deleting=True)]
    new = derive(job, stopping, None, None, NOW)
    assert (new.phase, new.attempts) == (P.SUSPENDING, [])
    assert st.next_actions(job, new, stopping, NOW) == st.Actions()
    ended = [make_pod("bot-prepare", role="prepare", attempt=0, phase="Failed", exit_code=10)]
    new = derive(job, ended, None, None, NOW)
    assert (new.phase, new.reason, new.attempts) == (P.PENDING, R.RESUMED, [])
    assert st.next_actions(job, new, ended, NOW).delete_pods == ("bot-prepare",)
    again = derive(make_job(status=m.dump(new)), [], None, None, NOW)
    assert again.phase == P.PREPARING


# ---------------------------------------------------------------------------------- deadlines


def _created(pod: dict[str, Any], when: datetime) -> dict[str, Any]:
    pod["metadata"]["creationTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return pod


@pytest.mark.parametrize(
    ("age", "phase"), [(timedelta(seconds=3599), P.RUNNING), (timedelta(hours=1), P.FAILED)]
)
def test_active_deadline_fails_the_whole_job(
    make_job: JobF, make_pod: PodF, age: timedelta, phase: str
) -> None:
    job = make_job(spec={"activeDeadlineSeconds": 3600}, status={"attempt": 1, **PREPARED})
    job = job.model_copy(update={"metadata": {**job.metadata, "creationTimestamp": NOW - age}})
    pods = [make_pod("bot-1", phase="Running", running=True)]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert new.phase == phase
    if phase == P.FAILED:
        assert new.reason == R.DEADLINE_EXCEEDED
        assert new.message == (
            "The job was active for more than 1h0m (spec.activeDeadlineSeconds: 3600)."
        )
        assert st.next_actions(job, new, pods, NOW).delete_pods == ("bot-1",)


def test_active_deadline_counts_from_the_last_resume(make_job: JobF, make_pod: PodF) -> None:
    resumed = {
        "type": "Suspended",
        "status": "False",
        "reason": "Running",
        "lastTransitionTime": "2026-11-26T11:30:00Z",
    }
    status = {"attempt": 1, "conditions": [resumed], **PREPARED}
    job = make_job(spec={"activeDeadlineSeconds": 3600}, status=status)
    job = job.model_copy(
        update={"metadata": {**job.metadata, "creationTimestamp": NOW - timedelta(days=3)}}
    )
    pods = [make_pod("bot-1", phase="Running", running=True)]
    assert derive(job, pods, None, OK_PREPARE, NOW).phase == P.RUNNING


def test_stalled_attempt_is_stopped_and_retried_from_its_checkpoint(
    make_job: JobF, make_pod: PodF
) -> None:
    spec = {"progressDeadlineSeconds": 600, "retry": {"limit": 2, "backoffSeconds": 0}}
    status = {"attempt": 1, "phase": "Running", "checkpoint": {"step": 6}, **PREPARED}
    job = make_job(spec=spec, status=status)
    pods = [make_pod("bot-1", phase="Running", running=True)]
    report = {"attempt": 1, "step": 7, "time": "2026-11-26T11:49:00Z"}
    fresh = derive(job, pods, {**report, "time": "2026-11-26T11:55:00Z"}, OK_PREPARE, NOW)
    assert fresh.phase == P.RUNNING
    new = derive(job, pods, report, OK_PREPARE, NOW)
    assert [(a.reason, a.step) for a in new.attempts] == [(R.STALLED, 7)]
    assert (new.phase, new.attempt) == (P.STARTING, 2)
    assert new.message == "starting attempt 2 from checkpoint step 6"
    # the stalled pod goes first (SIGTERM: checkpoint, exit); attempt 2 starts once it is gone
    assert st.next_actions(job, new, pods, NOW) == st.Actions(delete_pods=("bot-1",))
    pods[0]["metadata"]["deletionTimestamp"] = "2026-11-26T12:00:00Z"
    assert st.next_actions(job, new, pods, NOW) == st.Actions()
    assert st.next_actions(job, new, [], NOW) == st.Actions(create_train=2)
    events = st.transition_events(job.status, new)
    assert events[0] == (
        "Warning",
        R.STALLED,
        "Pod bot-1 failed with Stalled: No progress report for more than 10m0s "
        "(spec.progressDeadlineSeconds).",
    )


def test_queue_timeout(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec={"queueTimeoutSeconds": 600}, status={"attempt": 1, **PREPARED})
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    young = _created(make_pod("bot-1", unschedulable=msg), NOW - timedelta(seconds=599))
    assert derive(job, [young], None, OK_PREPARE, NOW).phase == P.QUEUED
    old = _created(make_pod("bot-1", unschedulable=msg), NOW - timedelta(seconds=600))
    new = derive(job, [old], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.FAILED, R.QUEUE_TIMEOUT)
    assert new.message == (
        "Pod bot-1 waited more than 10m0s for a node (spec.queueTimeoutSeconds): "
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )


# ----------------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("raw", "told"),
    [
        ("trace\ninvalid config: x", "Invalid config: x."),
        ("2026-11-26 11:00:00,123 ERROR finetune_trainer.train: out of memory", "Out of memory."),
        ("RuntimeError: CUDA out of memory. Tried 2 GiB", "CUDA out of memory. Tried 2 GiB."),
        ('"stopped at step 80 on SIGTERM"', "Stopped at step 80 on SIGTERM."),
        ("big.jsonl line 12: missing field 'output'", "big.jsonl line 12: missing field 'output'."),
        ("  \n ", ""),
        (None, ""),
    ],
)  # fmt: skip
def test_messages_are_sentences(raw: str | None, told: str) -> None:
    assert st.sentence(raw) == told


def test_retry_limit_message_is_sentences(make_job: JobF, make_pod: PodF) -> None:
    attempts = [{"attempt": 1, "pod": "bot-1", "reason": "Error", "exitCode": 1}]
    job = make_job(
        spec={"retry": {"limit": 1}}, status={"attempt": 2, "attempts": attempts, **PREPARED}
    )
    pods = [
        make_pod("bot-2", attempt=2, phase="Failed", exit_code=11, term_message="'CUDA OOM'"),
    ]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.FAILED, R.CUDA_OOM)
    assert new.message == (
        "Training failed 2 times (retry limit 1). Pod bot-2 failed with CudaOOM (exit code 11): "
        "CUDA OOM."
    )


def test_a_lost_prepare_report_does_not_send_a_running_job_back(
    make_job: JobF, make_pod: PodF
) -> None:
    """The progress ConfigMap deleted (and re-created empty): the status remembers the plan."""
    status = {"attempt": 1, "phase": "Running", "progress": {"attempt": 1, "totalSteps": 20}}
    job = make_job(status={**status, **PREPARED})
    pods = [make_pod("bot-1", phase="Running", running=True)]
    new = derive(job, pods, None, None, NOW)
    assert (new.phase, new.attempt) == (P.RUNNING, 1)
    assert new.progress is not None and new.progress.total_steps == 20


# ------------------------------------------------------------------------------------ wake-ups


def test_wake_at_each_deadline(make_job: JobF, make_pod: PodF) -> None:
    """A job is reconciled at the next time its status can change with no event."""
    created = {"creationTimestamp": NOW - timedelta(minutes=5)}

    def wake(spec: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]]) -> Any:
        job = make_job(spec=spec, status={**status, **PREPARED})
        job = job.model_copy(update={"metadata": {**job.metadata, **created}})
        return st.wake_at(job, job.status, pods, NOW)

    running = {"attempt": 1, "phase": "Running"}
    pods = [make_pod("bot-1", phase="Running", running=True)]
    assert wake({}, running, pods) is None
    assert wake({"activeDeadlineSeconds": 600}, running, pods) == NOW + timedelta(minutes=5)
    progress = {"progress": {"attempt": 1, "step": 3, "updatedAt": "2026-11-26T11:58:00Z"}}
    assert wake({"progressDeadlineSeconds": 300}, {**running, **progress}, pods) == NOW + (
        timedelta(minutes=3)
    )
    queued = [_created(make_pod("bot-1", unschedulable="no gpu"), NOW - timedelta(minutes=1))]
    assert wake({"queueTimeoutSeconds": 600}, {"attempt": 1, "phase": "Queued"}, queued) == (
        NOW + timedelta(minutes=9)
    )
    done = {"phase": "Succeeded", "completionTime": "2026-11-26T11:59:00Z"}
    assert wake({"ttlSecondsAfterFinished": 120}, done, []) == NOW + timedelta(minutes=1)
    overdue = {"phase": "Failed", "completionTime": "2026-11-20T11:59:00Z"}
    assert wake({"ttlSecondsAfterFinished": 120}, overdue, []) == NOW + timedelta(seconds=1)
