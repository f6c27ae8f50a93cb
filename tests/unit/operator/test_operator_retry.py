"""Retry of a Failed job (annotation finetune.dev/retry-requested-at): the same run, from the
newest complete checkpoint, with a fresh retry budget; a failed prepare stage runs again."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from finetune_operator import lifecycle as st
from finetune_operator import models as m
from finetune_operator.cli import control
from tests.unit.operator.conftest import NOW, derive

P = m.Phase
R = m.Reason
JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]
T1 = "2026-11-26T12:00:00Z"
T2 = "2026-11-26T13:00:00Z"
OK_PREPARE: dict[str, Any] = {
    "ok": True,
    "data": {"records": 200},
    "plan": {"strategy": "single", "micro_batch_size": 4, "gradient_accumulation": 2, "fits": True},
    "total_steps": 20,
}
# attempt 1 died of an OOM kill (retried, one of the budget), attempt 2 filled the volume
DISK_FULL: dict[str, Any] = {
    "phase": "Failed",
    "reason": "DiskFull",
    "message": "no space left on device writing checkpoints/checkpoint-15 (claim bot-output)",
    "attempt": 2,
    "attempts": [
        {"attempt": 1, "pod": "bot-1", "reason": "OOMKilled", "step": 4},
        {"attempt": 2, "pod": "bot-2", "reason": "DiskFull", "step": 15},
    ],
    "checkpoint": {"step": 10, "path": "checkpoints/checkpoint-10"},
    "plan": {"strategy": "single", "microBatchSize": 4, "gradientAccumulation": 2},
    "progress": {"attempt": 2, "step": 15, "totalSteps": 20},
    "startTime": "2026-11-26T10:00:00Z",
    "completionTime": "2026-11-26T11:30:00Z",
}
UNAVAILABLE = {"ok": False, "error": {"reason": "SourceUnavailable", "message": "HTTP 503"}}


def annotated(job: m.FineTuneJob, value: str, key: str = m.RETRY_ANNOTATION) -> m.FineTuneJob:
    meta = dict(job.metadata)
    meta["annotations"] = {**(meta.get("annotations") or {}), key: value}
    return job.model_copy(update={"metadata": meta})


def with_status(job: m.FineTuneJob, status: m.FineTuneJobStatus) -> m.FineTuneJob:
    return job.model_copy(update={"status": status})


def test_no_annotation_or_the_handled_value_is_no_retry(make_job: JobF) -> None:
    assert st.retry_requested(make_job(status=DISK_FULL)) is None
    handled = make_job(status={**DISK_FULL, m.RETRY_STATUS_FIELD: T1})
    assert st.retry_requested(annotated(handled, T1)) is None
    assert st.retry_requested(annotated(handled, T2)) == T2


def test_a_disk_full_job_resumes_from_its_checkpoint_with_a_fresh_budget(
    make_job: JobF, make_pod: PodF
) -> None:
    job = annotated(make_job(spec={"retry": {"limit": 1}}, status=DISK_FULL), T1)
    failed_pod = make_pod("bot-2", attempt=2, phase="Failed", exit_code=6)
    new = derive(job, [failed_pod], None, OK_PREPARE, NOW)
    assert (new.phase, new.reason, new.run) == (P.PENDING, R.RETRY_REQUESTED, 0)
    assert (new.last_retry_requested_at, new.retry_budget_from) == (T1, 2)
    assert new.completion_time is None and new.checkpoint == job.status.checkpoint
    assert "attempt 3 resumes from checkpoint step 10" in (new.message or "")
    assert st.transition_events(job.status, new) == [("Normal", R.RETRY_REQUESTED, new.message)]
    assert st.next_actions(job, new, [failed_pod], NOW) == st.Actions(publish_first=True)

    retrying = with_status(job, new)
    start = derive(retrying, [failed_pod], None, OK_PREPARE, NOW)
    assert (start.phase, start.attempt) == (P.STARTING, 3)
    assert "from checkpoint step 10" in (start.message or "")
    assert st.next_actions(retrying, start, [failed_pod], NOW) == st.Actions(create_train=3)

    # attempt 3 is OOM-killed: with limit 1 only this failure counts (attempt 1's is forgiven),
    # so it is retried (its backoff is over), where without the retry the job would fail for good
    started = with_status(retrying, start)
    pods = [failed_pod, make_pod("bot-3", attempt=3, phase="Failed", exit_code=137,
                                 term_reason="OOMKilled")]  # fmt: skip
    after = derive(started, pods, None, OK_PREPARE, NOW)
    assert (after.phase, after.attempt) == (P.STARTING, 4)
    assert (after.last_retry_requested_at, after.retry_budget_from) == (T1, 2)
    unforgiven = started.status.model_copy(update={"retry_budget_from": 0})
    assert derive(with_status(started, unforgiven), pods, None, OK_PREPARE, NOW).phase == P.FAILED


def test_a_failure_without_an_attempt_record_is_recorded_before_the_retry(
    make_job: JobF,
) -> None:
    queued_out = {**DISK_FULL, "reason": "QueueTimeout", "attempt": 3}
    new = derive(annotated(make_job(status=queued_out), T1), [], None, OK_PREPARE, NOW)
    assert [a.attempt for a in new.attempts] == [1, 2, 3]
    assert new.attempts[-1].reason == R.QUEUE_TIMEOUT and new.retry_budget_from == 3


def test_a_failed_prepare_stage_runs_again_after_its_pod_and_report_are_gone(
    make_job: JobF, make_pod: PodF
) -> None:
    status = {
        "phase": "Failed",
        "reason": "SourceUnavailable",
        "message": "The prepare stage failed 4 times (retry limit 3).",
        "attempts": [{"attempt": 0, "pod": "bot-prepare", "reason": "SourceUnavailable"}] * 4,
        "completionTime": "2026-11-26T11:30:00Z",
    }
    job = annotated(make_job(status=status), T1)
    prep = make_pod("bot-prepare", role="prepare", attempt=0, phase="Failed", exit_code=7)
    new = derive(job, [prep], None, UNAVAILABLE, NOW)
    assert (new.phase, new.reason) == (P.PENDING, R.RETRY_REQUESTED)
    assert "the prepare stage runs again" in (new.message or "")
    assert st.next_actions(job, new, [prep], NOW) == st.Actions(
        delete_pods=("bot-prepare",), reset_prepare=True
    )
    retrying = with_status(job, new)
    going = make_pod("bot-prepare", role="prepare", attempt=0, phase="Failed", exit_code=7,
                     deleting=True)  # fmt: skip
    wait = derive(retrying, [going], None, UNAVAILABLE, NOW)
    assert (wait.phase, wait.reason) == (P.PENDING, R.RETRY_REQUESTED)
    assert "bot-prepare" in (wait.message or "")
    assert st.next_actions(retrying, wait, [going], NOW) == st.Actions()
    # gone: a report still there (not wiped yet) does not fail the job again
    prepare = derive(retrying, [], None, UNAVAILABLE, NOW)
    assert prepare.phase == P.PREPARING
    assert st.next_actions(retrying, prepare, [], NOW) == st.Actions(create_prepare=True)


@pytest.mark.parametrize("phase", ["Running", "Succeeded", "Suspended"])
def test_a_retry_of_a_job_that_has_not_failed_is_recorded_and_ignored(
    make_job: JobF, phase: str
) -> None:
    job = annotated(make_job(status={**DISK_FULL, "phase": phase, "reason": phase}), T1)
    new = derive(job, [], None, OK_PREPARE, NOW)
    assert new == job.status.model_copy(update={"last_retry_requested_at": T1})
    [(kind, reason, message)] = st.transition_events(job.status, new)
    assert (kind, reason) == ("Warning", R.RETRY_IGNORED)
    assert f"phase {phase}" in message and "restart" in message
    # once recorded, a later failure is not retried by the old annotation
    failed = with_status(job, new.model_copy(update={"phase": P.FAILED}))
    assert st.retry_requested(failed) is None


def test_a_restart_keeps_the_handled_retry_value(make_job: JobF) -> None:
    job = annotated(
        annotated(make_job(status={**DISK_FULL, m.RETRY_STATUS_FIELD: T1}), T1),
        T2,
        m.RESTART_ANNOTATION,
    )
    new = derive(job, [], None, None, NOW)
    assert (new.reason, new.last_retry_requested_at, new.retry_budget_from) == (
        R.RESTARTING,
        T1,
        0,
    )


@pytest.mark.parametrize(
    ("report", "exit_code", "expected"),
    [
        (UNAVAILABLE, 7, (P.PENDING, R.RETRYING)),  # transient: retried as its exit code says
        ({"ok": False, "error": {"reason": "DiskFull", "message": "full"}}, 6,
         (P.FAILED, R.DISK_FULL)),
        ({"ok": False, "error": {"reason": "BadData", "message": "row 3"}}, 3,
         (P.FAILED, R.BAD_DATA)),
    ],
)  # fmt: skip
def test_a_failed_prepare_report_keeps_its_reason(
    make_job: JobF,
    make_pod: PodF,
    report: dict[str, Any],
    exit_code: int,
    expected: tuple[str, str],
) -> None:
    job = make_job(spec={"retry": {"backoffSeconds": 0}}, status={"phase": "Preparing"})
    prep = make_pod("bot-prepare", role="prepare", attempt=0, phase="Failed", exit_code=exit_code)
    new = derive(job, [prep], None, report, NOW)
    assert (new.phase, new.reason) == expected


def test_status_field_names_match_the_constants() -> None:
    dumped = m.dump(m.FineTuneJobStatus(last_retry_requested_at=T1))
    assert dumped[m.RETRY_STATUS_FIELD] == T1


class _Api:
    namespace = "ml"

    def __init__(self, phase: str | None) -> None:
        self.phase = phase
        self.patches: list[dict[str, Any]] = []

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": self.phase} if self.phase else {}}

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.patches.append(patch)


@pytest.mark.parametrize(("phase", "code"), [("Failed", 0), ("Running", 1), (None, 1)])
def test_the_plugin_retries_only_a_failed_job(phase: str | None, code: int) -> None:
    api, out = _Api(phase), io.StringIO()
    assert control.retry(api, "bot", out, now=NOW) == code  # type: ignore[arg-type]
    expected = [{"metadata": {"annotations": {m.RETRY_ANNOTATION: T1}}}] if code == 0 else []
    assert api.patches == expected
    assert ("retry requested" if code == 0 else "nothing to retry") in out.getvalue()
