"""Every (phase, event) pair through ``derive_status``: each phase change it makes is one that
``TRANSITIONS`` lists, and every row of the table is reached by some event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from finetune_operator import lifecycle as lc
from finetune_operator import models as m
from tests.unit.operator.conftest import NOW, build_job, derive, pod

P = m.Phase
OK = {"ok": True, "plan": {"micro_batch_size": 4, "gradient_accumulation": 2}, "total_steps": 20}
BAD = {"ok": False, "error": {"reason": "BadData", "message": "row 3: no output"}}
PLAN = {"plan": {"microBatchSize": 4, "gradientAccumulation": 2}}
SUSPENDED = {"attempt": 1, "pod": "bot-1", "reason": "Suspended"}
GPU = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
UNBOUND = "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
Event = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]


def _prep(**kw: Any) -> dict[str, Any]:
    return pod("bot-prepare", role="prepare", attempt=0, **kw)


def _export(**kw: Any) -> dict[str, Any]:
    return pod("bot-export", role="export", attempt=0, **kw)


EXPORT = {"output": {"pvc": "out", "export": {"merged": True}}}
REPORT = (
    '{"version":1,"results":[{"kind":"merged","ok":true,"location":"/workspace/output/merged"}]}'
)


# event -> (spec overrides, pods, progress report, prepare report); the status is the phase's
EVENTS: dict[str, Callable[[], Event]] = {
    "nothing": lambda: ({}, [], None, None),
    "prepare running": lambda: ({}, [_prep(running=True)], None, None),
    "prepare unbound": lambda: ({}, [_prep(unschedulable=UNBOUND)], None, None),
    "prepare unschedulable": lambda: ({}, [_prep(unschedulable=GPU)], None, None),
    "prepare crashed": lambda: ({}, [_prep(phase="Failed", exit_code=1)], None, None),
    "prepare bad data": lambda: ({}, [_prep(phase="Failed", exit_code=3)], None, BAD),
    "prepared": lambda: ({}, [_prep(phase="Succeeded", exit_code=0)], None, OK),
    "train pending": lambda: ({}, [pod("bot-1")], None, OK),
    "train unschedulable": lambda: ({}, [pod("bot-1", unschedulable=GPU)], None, OK),
    "train unbound": lambda: ({}, [pod("bot-1", unschedulable=UNBOUND)], None, OK),
    "train running": lambda: ({}, [pod("bot-1", phase="Running", running=True)], None, OK),
    "train image error": lambda: ({}, [pod("bot-1", waiting="ImagePullBackOff")], None, OK),
    "train succeeded": lambda: ({}, [pod("bot-1", phase="Succeeded", exit_code=0)], None, OK),
    "train succeeded, export": lambda: (
        dict(EXPORT), [pod("bot-1", phase="Succeeded", exit_code=0)], None, OK
    ),
    "export running": lambda: (dict(EXPORT), [_export(phase="Running", running=True)], None, OK),
    "export succeeded": lambda: (
        dict(EXPORT), [_export(phase="Succeeded", exit_code=0, term_message=REPORT)], None, OK
    ),
    "export failed": lambda: (
        dict(EXPORT), [_export(phase="Failed", exit_code=8, term_message="x")], None, OK
    ),
    "train cuda oom": lambda: ({}, [pod("bot-1", phase="Failed", exit_code=11)], None, OK),
    "train bad config": lambda: ({}, [pod("bot-1", phase="Failed", exit_code=2)], None, OK),
    "train preempted": lambda: ({}, [pod("bot-1", phase="Failed", exit_code=10)], None, OK),
    "train gone": lambda: ({}, [], None, OK),
    "suspend, running": lambda: (
        {"suspend": True}, [pod("bot-1", phase="Running", running=True)], None, OK
    ),
    "suspend, stopping": lambda: (
        {"suspend": True}, [pod("bot-1", running=True, deleting=True)], None, OK
    ),
    "suspend, gone": lambda: ({"suspend": True}, [], None, OK),
    "resume, stopping": lambda: ({}, [pod("bot-1", running=True, deleting=True)], None, OK),
    "deadline": lambda: (
        {"activeDeadlineSeconds": 60}, [pod("bot-1", phase="Running", running=True)], None, OK
    ),
    "restart": lambda: ({"restart": True}, [], None, OK),
    "stalled": lambda: (
        {"progressDeadlineSeconds": 60}, [pod("bot-1", phase="Running", running=True)], None, OK
    ),
}  # fmt: skip
STARTS: list[tuple[P, dict[str, Any]]] = [  # the statuses a phase can have before the event
    (P.PENDING, {"phase": "Pending"}),  # the prepare stage's backoff
    (P.PENDING, {"phase": "Pending", "attempt": 1, **PLAN}),  # a training retry's backoff
    (P.PREPARING, {"phase": "Preparing"}),
    (P.QUEUED, {"phase": "Queued"}),  # the prepare pod waits for a node
    (P.QUEUED, {"phase": "Queued", "attempt": 1, **PLAN}),
    (P.STARTING, {"phase": "Starting", "attempt": 1, **PLAN}),
    (P.RUNNING, {"phase": "Running", "attempt": 1, **PLAN}),
    (P.SUSPENDING, {"phase": "Suspending"}),  # the prepare pod stops
    (P.SUSPENDING, {"phase": "Suspending", "attempt": 1, **PLAN}),
    (P.SUSPENDED, {"phase": "Suspended"}),  # before training
    (P.SUSPENDED, {"phase": "Suspended", "attempt": 1, "attempts": [SUSPENDED], **PLAN}),
    (P.EXPORTING, {"phase": "Exporting", "attempt": 1, **PLAN}),
    (P.SUCCEEDED, {"phase": "Succeeded", "attempt": 1, **PLAN}),
    (P.FAILED, {"phase": "Failed", "attempt": 1, **PLAN}),
]


def _walk(start: int, event: str) -> tuple[P, P]:
    phase, status = STARTS[start]
    spec, pods, progress, prepared = EVENTS[event]()
    restart = spec.pop("restart", False)
    job = build_job(spec={"retry": {"limit": 2}, **spec}, status=status)
    meta = {**job.metadata, "creationTimestamp": NOW - timedelta(hours=1)}
    if restart:
        meta["annotations"] = {m.RESTART_ANNOTATION: "2026-11-26T12:00:00Z"}
    new = derive(job.model_copy(update={"metadata": meta}), pods, progress, prepared, NOW)
    assert new.phase is not None
    return phase, P(new.phase)


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize("start", range(len(STARTS)))
def test_every_phase_change_is_in_the_table(start: int, event: str) -> None:
    old, new = _walk(start, event)
    assert new == old or new in lc.TRANSITIONS[old], f"{old} --{event}--> {new}"


def test_most_rows_of_the_table_are_reached_by_this_walk() -> None:
    """Every row is reached by test_operator_phase_table's walk of every (phase, event) pair;
    this coarser walk of pods and reports reaches all but the rarest three."""
    reached = {_walk(start, event) for start in range(len(STARTS)) for event in EVENTS}
    table = {(old, new) for old, news in lc.TRANSITIONS.items() for new in news}
    assert table - reached == {
        (P.STARTING, P.PREPARING),
        (P.RUNNING, P.PREPARING),
        (P.SUSPENDING, P.QUEUED),
    }
    assert set(lc.TRANSITIONS) == set(P)


def test_finished_jobs_leave_their_phase_only_for_a_restart() -> None:
    assert lc.TRANSITIONS[P.SUCCEEDED] == lc.TRANSITIONS[P.FAILED] == {P.PENDING}
    for start, (phase, _) in enumerate(STARTS):
        if phase in P.TERMINAL:
            assert {_walk(start, e)[1] for e in EVENTS if e != "restart"} == {phase}


def test_a_report_arriving_after_a_suspend_keeps_the_job_suspended_with_its_plan() -> None:
    """Suspended while the prepare pod ran, which then wrote its report: the job stays
    Suspended with the plan on the resource, no pass through Preparing (Ready flipped)."""
    job = build_job(spec={"suspend": True}, status={"phase": "Suspending"})
    done = [_prep(phase="Succeeded", exit_code=0)]
    new = derive(job, done, None, OK, NOW)
    assert (new.phase, new.reason) == (P.SUSPENDED, m.Reason.SUSPENDED)
    assert new.plan is not None and new.plan.micro_batch_size == 4
    again = derive(job.model_copy(update={"status": new}), [], None, OK, NOW)
    assert again.phase == P.SUSPENDED and again.plan == new.plan
