"""Retry (annotation finetune.dev/retry-requested-at): a Failed job tries again once its cause is
fixed (a claim enlarged after DiskFull, a source back after SourceUnavailable, a Secret created),
in the same run: the training stage resumes from the newest complete checkpoint, a failed
prepare stage runs again. The attempts before the retry no longer count against
spec.retry.limit (``status.retryBudgetFrom``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.lifecycle.conditions import MAX_MESSAGE
from finetune_operator.lifecycle.pods import pod_state
from finetune_operator.lifecycle.restart import pending_conditions, requested

P = m.Phase
R = m.Reason


def retry_requested(job: m.FineTuneJob) -> str | None:
    """The retry annotation's value when the operator has not acted on it yet, else None."""
    return requested(job, m.RETRY_ANNOTATION, job.status.last_retry_requested_at)


def retrying(status: m.FineTuneJobStatus) -> bool:
    """True from a retry of a Failed job until its next pod is asked for."""
    return status.phase == P.PENDING and status.reason == R.RETRY_REQUESTED


def in_prepare(status: m.FineTuneJobStatus) -> bool:
    """Whether the job failed (or retries) before its first training attempt."""
    return status.attempt == 0 or status.plan is None


def retry_status(job: m.FineTuneJob, value: str, now: datetime) -> m.FineTuneJobStatus:
    """A Failed job: Pending (RetryRequested) in the same run, every earlier attempt forgiven.
    Any other phase: the value is recorded and nothing else changes (an Event says why)."""
    old = job.status
    if old.phase != P.FAILED:
        return old.model_copy(update={"last_retry_requested_at": value})
    attempts = list(old.attempts)
    n = old.attempt
    if n and not any(a.attempt == n for a in attempts):  # e.g. QueueTimeout: keep its history
        attempts.append(
            m.Attempt(
                attempt=n,
                pod=b.train_pod_name(job, n),
                reason=old.reason or R.ERROR,
                message=old.message,
                finish_time=old.completion_time or now,
            )
        )
    if in_prepare(old):
        what = "the prepare stage runs again"
    else:
        ck = old.checkpoint
        where = f"checkpoint step {ck.step}" if ck else "step 0 (no complete checkpoint)"
        what = f"attempt {n + 1} resumes from {where}"
    message = f"retry requested at {value} after {old.reason or 'a failure'}: {what}"
    return old.model_copy(
        update={
            "phase": P.PENDING,
            "reason": R.RETRY_REQUESTED,
            "message": message[:MAX_MESSAGE],
            "observed_generation": job.generation,
            "conditions": pending_conditions(job, message, now, R.RETRY_REQUESTED),
            "attempts": attempts,
            "retry_after": None,
            "completion_time": None,
            "completed_generation": None,
            "last_retry_requested_at": value,
            "retry_budget_from": len(attempts),
        }
    )


def prepare_pod_left(job: m.FineTuneJob, pods: list[dict[str, Any]]) -> str | None:
    """The failed prepare pod a retry of the prepare stage waits for (its name is reused)."""
    name = b.prepare_pod_name(job)
    for pod in pods:
        if str((pod.get("metadata") or {}).get("name")) == name:
            return pod_state(pod).name
    return None


def still_retrying(job: m.FineTuneJob, pod: str, now: datetime) -> m.FineTuneJobStatus:
    old = job.status
    message = f"retry: waiting for the failed {pod} to go; then the prepare stage runs again"
    return old.model_copy(
        update={
            "message": message[:MAX_MESSAGE],
            "observed_generation": job.generation,
            "conditions": pending_conditions(job, message, now, R.RETRY_REQUESTED),
        }
    )


def forgiven(status: m.FineTuneJobStatus, index: int) -> bool:
    """Whether the attempt at ``index`` of status.attempts came before the last retry."""
    return index < status.retry_budget_from
