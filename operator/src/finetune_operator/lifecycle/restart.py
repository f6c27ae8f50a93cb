"""Restart (annotation finetune.dev/restart-requested-at): a new run from step 0, once the
previous run's pods are gone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import models as m
from finetune_operator.lifecycle.conditions import MAX_MESSAGE, conditions_for

P = m.Phase
R = m.Reason


def requested(job: m.FineTuneJob, annotation: str, handled: str | None) -> str | None:
    """An annotation's value when it differs from the one the operator acted on, else None."""
    value = (job.metadata.get("annotations") or {}).get(annotation)
    if not value or value == handled:
        return None
    return str(value)


def restart_requested(job: m.FineTuneJob) -> str | None:
    """The restart annotation's value when the operator has not acted on it yet, else None."""
    return requested(job, m.RESTART_ANNOTATION, job.status.last_restart_requested_at)


def restarting(status: m.FineTuneJobStatus) -> bool:
    """True while a restart waits for the previous run's pods to go."""
    return status.phase == P.PENDING and status.reason == R.RESTARTING


def restart_status(job: m.FineTuneJob, value: str, now: datetime) -> m.FineTuneJobStatus:
    """Start over: a new run (its own work directory, so no checkpoint is resumed) with no
    progress, checkpoint, attempts, retries or plan; Pending until the old pods are gone."""
    old = job.status
    run = old.run + 1
    message = f"restart requested at {value}: stopping the pods; run {run} starts from step 0"
    return m.FineTuneJobStatus(
        phase=P.PENDING,
        reason=R.RESTARTING,
        message=message[:MAX_MESSAGE],
        observed_generation=job.generation,
        conditions=pending_conditions(job, message, now),
        run=run,
        last_restart_requested_at=value,
        last_retry_requested_at=old.last_retry_requested_at,  # acted on: never again
    )


def still_restarting(
    job: m.FineTuneJob, pods: list[dict[str, Any]], now: datetime
) -> m.FineTuneJobStatus:
    old = job.status
    names = ", ".join(sorted(str((p.get("metadata") or {}).get("name")) for p in pods))
    message = f"restart: waiting for the previous run's pods to go ({names})"
    return old.model_copy(
        update={
            "message": message[:MAX_MESSAGE],
            "observed_generation": job.generation,
            "conditions": pending_conditions(job, message, now),
        }
    )


def pending_conditions(
    job: m.FineTuneJob, message: str, now: datetime, reason: str = R.RESTARTING
) -> list[m.Condition]:
    """The conditions of a job Pending for ``reason`` (a restart or a retry)."""
    return conditions_for(
        P.PENDING,
        reason=reason,
        message=message,
        generation=job.generation,
        old=job.status.conditions,
        now=now,
    )
