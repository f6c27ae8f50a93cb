"""Status derivation: one row per phase and per failure class, plus conditions and progress."""

from __future__ import annotations

import math
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
FINISHED = datetime(2026, 11, 26, 11, 30, 0, tzinfo=UTC)
OK_PREPARE: dict[str, Any] = {
    "ok": True,
    "data": {"records": 200, "tokens": 51200, "truncated": 3},
    "plan": {
        "strategy": "single",
        "micro_batch_size": 4,
        "gradient_accumulation": 2,
        "estimated_gpu_memory_mib": 9800,
        "gpu_memory_mib": 12288,
        "fits": True,
    },
    "total_steps": 20,
}
PREPARED = {
    "plan": {"strategy": "single", "microBatchSize": 4, "gradientAccumulation": 2},
    "data": {"records": 200},
}

JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]


def conds(s: m.FineTuneJobStatus) -> dict[str, str]:
    return {c.type: c.status for c in s.conditions}


def test_new_job_prepares_first(make_job: JobF) -> None:
    job = make_job()
    new = derive(job, [], None, None, NOW)
    assert (new.phase, new.attempt) == (P.PREPARING, 0)
    assert conds(new)["Reconciling"] == "True"
    assert conds(new)["Ready"] == "False"
    assert new.observed_generation == 1
    assert st.next_actions(job, new, [], NOW) == st.Actions(create_prepare=True)


def test_prepare_pod_running_is_preparing(make_job: JobF, make_pod: PodF) -> None:
    pods = [make_pod("bot-prepare", role="prepare", attempt=0, phase="Running", running=True)]
    new = derive(make_job(), pods, None, None, NOW)
    assert new.phase == P.PREPARING
    assert st.next_actions(make_job(), new, pods, NOW) == st.Actions()


def test_bad_data_fails_before_any_gpu_pod(make_job: JobF, make_pod: PodF) -> None:
    pods = [make_pod("bot-prepare", role="prepare", attempt=0, phase="Failed", exit_code=3)]
    result = {
        "ok": False,
        "error": {"reason": "BadData", "message": "train.jsonl row 1234: no output"},
    }
    new = derive(make_job(), pods, None, result, NOW)
    assert (new.phase, new.reason) == (P.FAILED, R.BAD_DATA)
    assert "row 1234" in (new.message or "")
    assert conds(new) == {
        "Ready": "False",
        "Reconciling": "False",
        "Stalled": "True",
        "Progressing": "False",
        "Suspended": "False",
        "Succeeded": "False",
        "Failed": "True",
    }
    assert st.next_actions(make_job(), new, pods, NOW).create_train is None


def test_plan_refused_shows_the_estimate(make_job: JobF) -> None:
    result = {
        "ok": False,
        "plan": {"strategy": "single", "estimated_gpu_memory_mib": 61000, "gpu_memory_mib": 12288,
                 "fits": False, "message": "needs 61000 MiB per GPU; try method qlora"},
        "data": {"records": 10},
        "error": {"reason": "PlanRefused", "message": "7B full fine-tune needs 61000 MiB"},
    }  # fmt: skip
    new = derive(make_job(), [], None, result, NOW)
    assert (new.phase, new.reason) == (P.FAILED, R.PLAN_REFUSED)
    assert new.plan is not None and new.plan.fits is False
    assert new.plan.estimated_gpu_memory_mib == 61000
    assert new.data is not None and new.data.records == 10


def test_prepared_job_publishes_data_and_plan_then_starts_attempt_one(make_job: JobF) -> None:
    job = make_job()
    first = derive(job, [], None, OK_PREPARE, NOW)
    assert (first.phase, first.reason, first.attempt) == (P.PREPARING, R.PREPARED, 0)
    assert first.plan is not None and first.plan.micro_batch_size == 4
    assert first.data == m.DataStatus(records=200, tokens=51200, truncated=3)
    # no training pod until data and plan are on the resource
    assert st.next_actions(job, first, [], NOW) == st.Actions(publish_first=True)
    published = job.model_copy(update={"status": first})
    new = derive(published, [], None, OK_PREPARE, NOW)
    assert (new.phase, new.attempt) == (P.STARTING, 1)
    assert new.plan == first.plan and new.data == first.data
    assert st.next_actions(published, new, [], NOW) == st.Actions(create_train=1)


def test_pending_pod_is_starting(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Starting", **PREPARED})
    pods = [make_pod("bot-1", waiting="ContainerCreating")]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert new.phase == P.STARTING and "ContainerCreating" in (new.message or "")
    assert st.next_actions(job, new, pods, NOW) == st.Actions()


def test_unschedulable_is_queued_with_the_schedulers_reason(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec={"resources": {"gpus": 2}}, status={"attempt": 1, **PREPARED})
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    new = derive(job, [make_pod("bot-1", unschedulable=msg)], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.QUEUED, R.UNSCHEDULABLE)
    assert new.message == f"waiting for 2 nvidia.com/gpu: {msg}"
    assert conds(new)["Ready"] == "True" and conds(new)["Reconciling"] == "False"


def test_missing_pvc_from_the_scheduler_fails(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, **PREPARED})
    msg = '0/1 nodes are available: persistentvolumeclaim "out" not found.'
    new = derive(job, [make_pod("bot-1", unschedulable=msg)], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.FAILED, R.PVC_NOT_FOUND)
    assert new.message == 'The PersistentVolumeClaim "out" does not exist.'


def test_unbound_claim_keeps_the_phase_with_a_message(make_job: JobF, make_pod: PodF) -> None:
    """No Preparing → Queued → Preparing flapping (Ready True/False) while a claim binds."""
    msg = "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
    pods = [make_pod("bot-prepare", role="prepare", attempt=0, unschedulable=msg)]
    job = make_job(status={"phase": "Preparing"})
    new = derive(job, pods, None, None, NOW)
    assert new.phase == P.PREPARING
    assert new.message == f"bot-prepare waits for its volume claims to bind: {msg}."
    assert conds(new)["Ready"] == "False"
    train = make_job(status={"attempt": 1, "phase": "Starting", **PREPARED})
    new = derive(train, [make_pod("bot-1", unschedulable=msg)], None, OK_PREPARE, NOW)
    assert (new.phase, conds(new)["Ready"]) == (P.STARTING, "False")


def test_running_mirrors_progress(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Starting", **PREPARED})
    report = {
        "attempt": 1,
        "state": "running",
        "step": 5,
        "total_steps": 20,
        "loss": 1.5,
        "eta_seconds": 4500,
        "tokens_per_second": 100.0,
        "time": "2026-11-26T11:59:00Z",
        "checkpoint": {"step": 4, "path": "checkpoints/checkpoint-4", "time": None},
    }
    pods = [make_pod("bot-1", phase="Running", running=True)]
    new = derive(job, pods, report, OK_PREPARE, NOW)
    assert new.phase == P.RUNNING
    assert new.progress is not None
    assert (new.progress.step, new.progress.percent, new.progress.percent_text) == (5, 25.0, "25%")
    assert (new.progress.eta, new.progress.loss) == ("1h15m", 1.5)
    assert new.checkpoint == m.CheckpointStatus(step=4, path="checkpoints/checkpoint-4")
    assert new.start_time is not None
    assert new.message == "step 5/20, loss 1.5"
    assert conds(new)["Ready"] == "True" and conds(new)["Progressing"] == "True"


def test_succeeded(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    new = derive(job, [make_pod("bot-1", phase="Succeeded", exit_code=0)], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.SUCCEEDED, R.COMPLETED)
    assert new.completion_time == FINISHED
    assert new.attempts[-1].reason == R.COMPLETED
    assert conds(new)["Succeeded"] == "True" and conds(new)["Ready"] == "True"


def test_terminal_phase_is_sticky(make_job: JobF) -> None:
    job = make_job(status={"phase": "Succeeded", "reason": "Completed", "attempt": 1}, generation=2)
    new = derive(job, [], None, OK_PREPARE, NOW)
    assert new.phase == P.SUCCEEDED and new.observed_generation == 2


def test_suspend_deletes_the_running_pod(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec={"suspend": True}, status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod("bot-1", phase="Running", running=True)]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert new.phase == P.SUSPENDING
    assert conds(new)["Reconciling"] == "True"
    assert st.next_actions(job, new, pods, NOW) == st.Actions(delete_pods=("bot-1",))


def test_suspended_once_the_pod_checkpointed_and_exited(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(
        spec={"suspend": True},
        status={
            "attempt": 1,
            "phase": "Suspending",
            **PREPARED,
            "checkpoint": {"step": 7, "path": "checkpoints/checkpoint-7"},
        },
    )
    pods = [make_pod("bot-1", phase="Failed", exit_code=10, deleting=True)]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.SUSPENDED, R.SUSPENDED)
    assert new.attempts[-1].reason == R.SUSPENDED
    assert "checkpoint step 7" in (new.message or "")
    assert conds(new)["Suspended"] == "True" and conds(new)["Ready"] == "True"
    # the pod disappearing afterwards changes nothing
    again = derive(job.model_copy(update={"status": new}), [], None, OK_PREPARE, NOW)
    assert again.phase == P.SUSPENDED and len(again.attempts) == 1


def test_resume_starts_the_next_attempt_immediately(make_job: JobF) -> None:
    attempts = [
        {
            "attempt": 1,
            "pod": "bot-1",
            "reason": "Suspended",
            "exitCode": 10,
            "finishTime": "2026-11-26T11:59:59Z",
        }
    ]
    job = make_job(
        status={
            "attempt": 1,
            "phase": "Suspended",
            "attempts": attempts,
            **PREPARED,
            "checkpoint": {"step": 7},
        }
    )
    new = derive(job, [], None, OK_PREPARE, NOW)
    assert (new.phase, new.attempt) == (P.STARTING, 2)
    assert new.message == "resuming attempt 2 from checkpoint step 7"


@pytest.mark.parametrize(
    ("pod_kwargs", "reason", "retried"),
    [
        ({"phase": "Failed", "exit_code": 1}, R.ERROR, True),
        ({"phase": "Failed", "exit_code": 137, "term_reason": "OOMKilled"}, R.OOM_KILLED, True),
        ({"phase": "Failed", "exit_code": 11}, R.CUDA_OOM, True),
        ({"phase": "Failed", "pod_reason": "Evicted"}, R.EVICTED, True),
        ({"phase": "Failed", "exit_code": 10}, R.PREEMPTED, True),
        ({"phase": "Failed", "exit_code": 2}, R.BAD_CONFIG, False),
        ({"phase": "Failed", "exit_code": 3}, R.BAD_DATA, False),
        ({"phase": "Failed", "exit_code": 4}, R.MODEL_NOT_FOUND, False),
        ({"phase": "Failed", "exit_code": 5}, R.PLAN_REFUSED, False),
        ({"waiting": "ImagePullBackOff", "waiting_message": "not found"}, R.IMAGE_PULL, False),
        ({"waiting": "InvalidImageName"}, R.IMAGE_PULL, False),
        (
            {"waiting": "CreateContainerConfigError", "waiting_message": 'secret "hf" not found'},
            R.SECRET_NOT_FOUND,
            False,
        ),
    ],
)
def test_failure_classes(
    make_job: JobF, make_pod: PodF, pod_kwargs: dict[str, Any], reason: str, retried: bool
) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod("bot-1", term_message="boom\nlast line", **pod_kwargs)]
    now = FINISHED + timedelta(seconds=1)
    new = derive(job, pods, None, OK_PREPARE, now)
    assert new.attempts[-1].reason == reason
    if retried:
        assert (new.phase, new.reason) == (P.PENDING, R.BACKOFF)
        assert new.retry_after is not None and new.retry_after > now
        assert conds(new)["Stalled"] == "False"
    else:
        assert (new.phase, new.reason) == (P.FAILED, reason)
        assert st.next_actions(job, new, pods, NOW).create_train is None


def test_termination_message_last_line(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod("bot-1", phase="Failed", exit_code=2, term_message="trace\ninvalid config: x")]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert new.message == "Invalid config: x."


def test_retry_after_backoff_starts_next_attempt(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod("bot-1", phase="Failed", exit_code=1)]
    waiting = derive(job, pods, None, OK_PREPARE, FINISHED + timedelta(seconds=3))
    assert waiting.retry_after == FINISHED + timedelta(seconds=10)
    acts = st.next_actions(job, waiting, pods, FINISHED + timedelta(seconds=3))
    assert acts == st.Actions()
    assert st.wake_at(job, waiting, pods, FINISHED) == FINISHED + timedelta(seconds=10)
    later = job.model_copy(update={"status": waiting})
    new = derive(later, pods, None, OK_PREPARE, FINISHED + timedelta(seconds=11))
    assert (new.phase, new.attempt) == (P.STARTING, 2)
    assert st.next_actions(later, new, pods, NOW) == st.Actions(create_train=2)


def test_backoff_doubles_and_is_capped(make_job: JobF) -> None:
    job = make_job(spec={"retry": {"backoffSeconds": 10, "maxBackoffSeconds": 60}})
    assert [st.backoff_seconds(job, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    assert st.backoff_seconds(job, 5, cap=30) == 30


def test_retry_limit_then_failed_with_the_reason(make_job: JobF, make_pod: PodF) -> None:
    previous = [
        {
            "attempt": i,
            "pod": f"bot-{i}",
            "reason": "OOMKilled",
            "finishTime": "2026-11-26T10:00:00Z",
        }
        for i in (1, 2)
    ]
    job = make_job(
        spec={"retry": {"limit": 2}},
        status={"attempt": 3, "phase": "Running", "attempts": previous, **PREPARED},
    )
    new = derive(
        job,
        [make_pod("bot-3", attempt=3, phase="Failed", exit_code=137, term_reason="OOMKilled")],
        None,
        OK_PREPARE,
        NOW,
    )
    assert (new.phase, new.reason) == (P.FAILED, R.OOM_KILLED)
    assert "retry limit 2" in (new.message or "")
    assert len(new.attempts) == 3


def test_cuda_oom_halves_the_micro_batch(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod("bot-1", phase="Failed", exit_code=11)]
    new = derive(job, pods, None, OK_PREPARE, FINISHED)
    assert new.plan is not None
    assert (new.plan.micro_batch_size, new.plan.gradient_accumulation) == (2, 4)
    events = st.transition_events(job.status, new)
    assert ("Warning", R.MICRO_BATCH_HALVED, new.plan.message) in events
    batch = st.batch_for_attempt(job.model_copy(update={"status": new}))
    assert batch is not None and batch.micro_batch_size * batch.gradient_accumulation == 8


def test_cuda_oom_halves_once_however_often_its_backoff_is_derived(
    make_job: JobF, make_pod: PodF
) -> None:
    job = make_job(spec={"retry": {"limit": 2, "backoffSeconds": 30}},
                   status={"attempt": 1, "phase": "Running", **PREPARED})  # fmt: skip
    pods = [make_pod("bot-1", phase="Failed", exit_code=11)]
    first = derive(job, pods, None, OK_PREPARE, FINISHED)
    assert first.plan is not None and first.plan.micro_batch_size == 2
    assert (first.phase, first.reason) == (P.PENDING, R.BACKOFF)
    # the operator reconciles again while the backoff runs, then once it has passed
    for later in (FINISHED + timedelta(seconds=5), FINISHED + timedelta(seconds=60)):
        again = derive(job.model_copy(update={"status": first}), pods, None,
                                 OK_PREPARE, later)  # fmt: skip
        assert again.plan is not None
        assert (again.plan.micro_batch_size, again.plan.gradient_accumulation) == (2, 4)
    assert again.attempt == 2 and again.phase == P.STARTING


def test_cuda_oom_at_micro_batch_one_is_final(make_job: JobF, make_pod: PodF) -> None:
    status = {"attempt": 1, "plan": {"microBatchSize": 1, "gradientAccumulation": 8}}
    job = make_job(status=status)
    new = derive(job, [make_pod("bot-1", phase="Failed", exit_code=11)], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.FAILED, R.CUDA_OOM)


def test_vanished_pod_is_retried(make_job: JobF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    new = derive(job, [], None, OK_PREPARE, NOW)
    assert new.attempts[-1].reason == R.POD_DELETED
    assert (new.phase, new.reason) == (P.PENDING, R.BACKOFF)


def test_restart_between_create_and_status_patch_adopts_the_pod(
    make_job: JobF, make_pod: PodF
) -> None:
    attempts = [
        {"attempt": 1, "pod": "bot-1", "reason": "Error", "finishTime": "2026-11-26T10:00:00Z"}
    ]
    job = make_job(status={"attempt": 1, "phase": "Pending", "attempts": attempts, **PREPARED})
    pods = [
        make_pod("bot-1", phase="Failed", exit_code=1),
        make_pod("bot-2", attempt=2, phase="Running", running=True),
    ]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert (new.phase, new.attempt) == (P.RUNNING, 2)
    assert st.next_actions(job, new, pods, NOW) == st.Actions()


def test_prepare_failure_is_retried_then_recreated(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec={"retry": {"backoffSeconds": 0}})
    pods = [make_pod("bot-prepare", role="prepare", attempt=0, phase="Failed", exit_code=1)]
    new = derive(job, pods, None, None, NOW)
    assert (new.phase, new.reason) == (P.PENDING, R.RETRYING)
    assert st.next_actions(job, new, pods, NOW) == st.Actions(delete_pods=("bot-prepare",))
    again = derive(job.model_copy(update={"status": new}), [], None, None, NOW)
    assert again.phase == P.PREPARING


def test_failed_status_for_missing_objects() -> None:
    new = st.failed_status(m.FineTuneJobStatus(), 3, R.PVC_NOT_FOUND, 'pvc "x" not found', NOW)
    assert (new.phase, new.reason, new.observed_generation) == (P.FAILED, R.PVC_NOT_FOUND, 3)
    assert {c.type: c.reason for c in new.conditions}["Failed"] == R.PVC_NOT_FOUND


def test_every_phase_has_a_condition_row() -> None:
    assert set(st.CONDITION_TABLE) == set(P.ALL)
    for phase, row in st.CONDITION_TABLE.items():
        ready, reconciling, stalled = row[0], row[1], row[2]
        # kstatus: exactly one of Ready / Reconciling / Stalled is True in every phase
        assert [ready, reconciling, stalled].count("True") == 1, phase


# -------------------------------------------------------------------------------- conditions


def _cond(status: str, reason: str, t: datetime) -> m.Condition:
    return m.Condition(
        type="Ready",
        status=status,
        reason=reason,  # type: ignore[arg-type]
        last_transition_time=t,
        observed_generation=1,
    )


def test_set_condition_moves_time_only_on_flip() -> None:
    t0, t1 = NOW, NOW + timedelta(minutes=5)
    first = st.set_condition([], _cond("True", "Running", t0))
    same = st.set_condition(first, _cond("True", "Queued", t1))
    assert same[0].last_transition_time == t0 and same[0].reason == "Queued"
    flipped = st.set_condition(same, _cond("False", "Failed", t1))
    assert flipped[0].last_transition_time == t1 and len(flipped) == 1


# ---------------------------------------------------------------------------------- progress


def _p(**kw: Any) -> dict[str, Any]:
    return {"attempt": 2, "step": 10, "total_steps": 20, "loss": 1.0, **kw}


def test_progress_of_older_attempt_is_ignored() -> None:
    assert st.merge_progress(None, st.progress_from(_p(attempt=1)), 2, 20, NOW) is None


def test_progress_regression_within_attempt_is_ignored() -> None:
    old = st.merge_progress(None, st.progress_from(_p(step=12)), 2, 20, NOW)
    assert st.merge_progress(old, st.progress_from(_p(step=11)), 2, 20, NOW) == old


def test_progress_after_resume_may_restart_lower() -> None:
    old = st.merge_progress(None, st.progress_from(_p(step=12)), 2, 20, NOW)
    new = st.merge_progress(old, st.progress_from(_p(attempt=3, step=10)), 3, 20, NOW)
    assert new is not None and new.step == 10


@pytest.mark.parametrize("loss", [math.nan, math.inf, -1.0, 1e12, "1.0", True])
def test_absurd_loss_is_dropped(loss: Any) -> None:
    new = st.merge_progress(None, st.progress_from(_p(loss=loss)), 2, 20, NOW)
    assert new is not None and new.loss is None and new.step == 10


@pytest.mark.parametrize("step", [-1, 21, 1e12, math.nan, "3", None])
def test_absurd_step_keeps_old(step: Any) -> None:
    assert st.merge_progress(None, st.progress_from(_p(step=step)), 2, 20, NOW) is None


def test_humanize() -> None:
    assert [st.humanize(s) for s in (0, 59, 61, 3600, 90061)] == [
        "0s",
        "59s",
        "1m1s",
        "1h0m",
        "1d1h",
    ]


def test_merge_patch_nulls_removed_keys() -> None:
    old = {"phase": "Pending", "retryAfter": "x", "progress": {"step": 1, "loss": 2.0}}
    new = {"phase": "Starting", "progress": {"step": 1}}
    assert st.merge_patch(old, new) == {
        "phase": "Starting",
        "retryAfter": None,
        "progress": {"loss": None},
    }


def test_ttl(make_job: JobF) -> None:
    job = make_job(
        spec={"ttlSecondsAfterFinished": 60},
        status={"phase": "Succeeded", "completionTime": "2026-11-26T11:58:00Z"},
    )
    assert st.ttl_expired(job, NOW)
    assert not st.ttl_expired(job, NOW - timedelta(minutes=1, seconds=30))


def test_suspend_while_preparing_and_resume(make_job: JobF, make_pod: PodF) -> None:
    pods = [make_pod("bot-prepare", role="prepare", attempt=0, phase="Running", running=True)]
    job = make_job(spec={"suspend": True})
    new = derive(job, pods, None, None, NOW)
    assert new.phase == P.SUSPENDING
    assert st.next_actions(job, new, pods, NOW) == st.Actions(delete_pods=("bot-prepare",))
    gone = derive(job.model_copy(update={"status": new}), [], None, None, NOW)
    assert gone.phase == P.SUSPENDED
    resumed = make_job(status=m.dump(gone))
    again = derive(resumed, [], None, None, NOW)
    assert again.phase == P.PREPARING
    assert st.next_actions(resumed, again, [], NOW) == st.Actions(create_prepare=True)


def test_events_on_transitions(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod("bot-1", phase="Failed", exit_code=137, term_reason="OOMKilled")]
    new = derive(job, pods, None, OK_PREPARE, FINISHED)
    events = st.transition_events(job.status, new)
    assert events[0][:2] == ("Warning", R.OOM_KILLED)
    assert events[-1][:2] == ("Normal", P.PENDING)
    assert st.transition_events(new, new) == []


def test_rates_and_eta_show_only_while_running(make_job: JobF, make_pod: PodF) -> None:
    """A suspended or finished job keeps its step and loss but no tokens/s or ETA (they would add
    jobs that are not training to dashboards, and Succeeded showed ETA 0s)."""
    progress = {
        "attempt": 1, "step": 5, "totalSteps": 20, "loss": 1.5, "tokensPerSecond": 100.0,
        "etaSeconds": 4500, "eta": "1h15m",
    }  # fmt: skip
    job = make_job(
        spec={"suspend": True},
        status={"attempt": 1, "phase": "Suspending", **PREPARED, "progress": progress},
    )
    pods = [make_pod("bot-1", phase="Failed", exit_code=10, deleting=True)]
    suspended = derive(job, pods, None, OK_PREPARE, NOW)
    assert suspended.phase == P.SUSPENDED and suspended.progress is not None
    assert (suspended.progress.step, suspended.progress.loss) == (5, 1.5)
    assert suspended.progress.tokens_per_second is None and suspended.progress.eta is None
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED, "progress": progress})
    done = derive(job, [make_pod("bot-1", phase="Succeeded", exit_code=0)], None, OK_PREPARE, NOW)
    assert done.progress is not None and done.progress.percent == 100.0
    assert done.progress.eta_seconds is None and done.progress.tokens_per_second is None


def test_a_spec_edit_applied_on_resume_becomes_an_event() -> None:
    edit = "learningRate 0.003 -> 0.0001 from step 14"
    old = m.FineTuneJobStatus(phase=P.RUNNING, progress=m.Progress(attempt=2, step=14))
    new = old.model_copy(update={"progress": m.Progress(attempt=2, step=15, edits=[edit])})
    assert st.transition_events(old, new) == [("Normal", R.SPEC_EDIT_APPLIED, edit)]
    assert st.transition_events(new, new) == []  # once
