"""Restart from step 0 (annotation finetune.dev/restart-requested-at): status, actions, events,
and the run's work directory in the trainer config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from finetune_operator import builders as b
from finetune_operator import lifecycle as st
from finetune_operator import models as m
from finetune_operator.settings import Settings
from tests.unit.operator.conftest import NOW, derive

P = m.Phase
R = m.Reason
JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]
T1 = "2026-11-26T12:00:00Z"
T2 = "2026-11-26T13:00:00Z"
OK_PREPARE: dict[str, Any] = {
    "ok": True,
    "data": {"records": 200, "tokens": 51200, "truncated": 3},
    "plan": {"strategy": "single", "micro_batch_size": 4, "gradient_accumulation": 2, "fits": True},
    "total_steps": 20,
}
RUNNING: dict[str, Any] = {
    "phase": "Running",
    "attempt": 2,
    "attempts": [{"attempt": 1, "pod": "bot-1", "reason": "OOMKilled", "step": 3}],
    "retryAfter": "2026-11-26T11:00:00Z",
    "progress": {"attempt": 2, "step": 12, "totalSteps": 20},
    "checkpoint": {"step": 10, "path": "checkpoints/checkpoint-10"},
    "plan": {"strategy": "single", "microBatchSize": 2, "gradientAccumulation": 4},
    "data": {"records": 200},
    "startTime": "2026-11-26T10:00:00Z",
}
REPORT = {"attempt": 2, "state": "running", "step": 13, "total_steps": 20}


def annotated(job: m.FineTuneJob, value: str | None) -> m.FineTuneJob:
    meta = dict(job.metadata)
    meta["annotations"] = {m.RESTART_ANNOTATION: value} if value else {}
    return job.model_copy(update={"metadata": meta})


def conds(s: m.FineTuneJobStatus) -> dict[str, str]:
    return {c.type: c.status for c in s.conditions}


def test_no_annotation_or_the_handled_value_is_no_restart(make_job: JobF) -> None:
    assert st.restart_requested(make_job(status=RUNNING)) is None
    handled = make_job(status={**RUNNING, "lastRestartRequestedAt": T1})
    assert st.restart_requested(annotated(handled, T1)) is None
    assert st.restart_requested(annotated(handled, T2)) == T2


def test_restart_resets_the_run_and_stops_every_pod(make_job: JobF, make_pod: PodF) -> None:
    job = annotated(make_job(status=RUNNING), T1)
    pods = [
        make_pod("bot-prepare", role="prepare", attempt=0, phase="Succeeded", exit_code=0),
        make_pod("bot-1", attempt=1, phase="Failed", exit_code=1),
        make_pod("bot-2", attempt=2, phase="Running", running=True),
    ]
    new = derive(job, pods, REPORT, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.PENDING, R.RESTARTING)
    assert (new.run, new.last_restart_requested_at) == (1, T1)
    assert (new.attempt, new.attempts, new.retry_after) == (0, [], None)
    assert (new.progress, new.checkpoint, new.plan, new.data) == (None, None, None, None)
    assert new.start_time is None and new.completion_time is None
    assert conds(new)["Reconciling"] == "True" and conds(new)["Ready"] == "False"
    # finished pods go too: the new run reuses the pod names
    acts = st.next_actions(job, new, pods, NOW)
    assert acts == st.Actions(delete_pods=("bot-1", "bot-2", "bot-prepare"))
    events = st.transition_events(job.status, new)
    assert events == [("Normal", R.RESTARTING, new.message)]
    assert T1 in (new.message or "") and "step 0" in (new.message or "")


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Suspended"])
def test_finished_or_suspended_jobs_restart_too(make_job: JobF, phase: str) -> None:
    job = annotated(make_job(status={**RUNNING, "phase": phase, "run": 2}), T2)
    new = derive(job, [], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason, new.run) == (P.PENDING, R.RESTARTING, 3)


def test_waits_for_the_old_pods_then_prepares_with_fresh_reports(
    make_job: JobF, make_pod: PodF
) -> None:
    job = annotated(make_job(status=RUNNING), T1)
    restarting = job.model_copy(update={"status": derive(job, [], None, None, NOW)})
    going = [make_pod("bot-2", attempt=2, phase="Running", running=True, deleting=True)]
    new = derive(restarting, going, REPORT, OK_PREPARE, NOW)
    assert (new.phase, new.reason) == (P.PENDING, R.RESTARTING)
    assert "bot-2" in (new.message or "")
    assert st.next_actions(restarting, new, going, NOW) == st.Actions()  # already deleting
    # all gone: the old run's reports in the progress object are ignored and wiped first
    new = derive(restarting, [], REPORT, OK_PREPARE, NOW)
    assert (new.phase, new.attempt, new.run) == (P.PREPARING, 0, 1)
    assert new.progress is None and new.plan is None
    assert new.last_restart_requested_at == T1
    acts = st.next_actions(restarting, new, [], NOW)
    assert acts == st.Actions(create_prepare=True, reset_progress=True)
    # later reconciles keep the run and the recorded value, and do not restart again
    after = restarting.model_copy(update={"status": new})
    planned = derive(after, [], None, OK_PREPARE, NOW)
    assert (planned.phase, planned.run) == (P.PREPARING, 1) and planned.plan is not None
    after = after.model_copy(update={"status": planned})
    again = derive(after, [], None, OK_PREPARE, NOW)
    assert (again.phase, again.run, again.last_restart_requested_at) == (P.STARTING, 1, T1)
    assert again.attempt == 1
    assert st.next_actions(after, again, [], NOW) == st.Actions(create_train=1)


def test_restart_honours_suspend(make_job: JobF) -> None:
    job = annotated(make_job(spec={"suspend": True}, status={**RUNNING, "phase": "Suspended"}), T1)
    restarting = job.model_copy(update={"status": derive(job, [], None, None, NOW)})
    new = derive(restarting, [], REPORT, OK_PREPARE, NOW)
    assert (new.phase, new.run) == (P.SUSPENDED, 1)
    assert new.checkpoint is None
    acts = st.next_actions(restarting, new, [], NOW)
    assert acts.reset_progress and not acts.create_prepare


def test_run_selects_the_work_directory(make_job: JobF) -> None:
    assert b.work_dir(0) == "/workspace"
    assert b.work_dir(3) == "/workspace/runs/3"
    job = make_job(status={"run": 2})
    config = b.trainer_config(job, 1, None, None, Settings())
    assert config["paths"]["work"] == "/workspace/runs/2"
    assert b.trainer_config(make_job(), 1, None, None, Settings())["paths"]["work"] == "/workspace"


def test_status_field_names_match_gitops_constants() -> None:
    dumped = m.dump(m.FineTuneJobStatus(last_restart_requested_at=T1))
    assert dumped[m.RESTART_STATUS_FIELD] == T1


@pytest.mark.parametrize(
    ("attr", "annotation"),
    [("RESTART_FIELD", m.RESTART_ANNOTATION), ("RETRY_FIELD", m.RETRY_ANNOTATION)],
)
def test_an_update_handler_watches_the_annotation(attr: str, annotation: str) -> None:
    # annotations do not bump metadata.generation and are outside ``spec``: without this handler
    # only the periodic resync would notice a restart or retry request
    import kopf

    from finetune_operator import handlers

    registry = kopf.get_default_registry()
    fields = {h.field for h in registry._changing.get_all_handlers()}
    assert getattr(handlers, attr) == ("metadata", "annotations", annotation)
    assert getattr(handlers, attr) in fields
