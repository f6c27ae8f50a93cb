"""Restart (annotation finetune.dev/restart-requested-at): a new run from step 0, once the
previous run's pods are gone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_operator import models as m
from finetune_operator.lifecycle.conditions import MAX_MESSAGE, conditions_for

P = m.Phase
R = m.Reason


def restart_requested(job: m.FineTuneJob) -> str | None:
    """The restart annotation's value when the operator has not acted on it yet, else None."""
    value = (job.metadata.get("annotations") or {}).get(m.RESTART_ANNOTATION)
    if not value or value == job.status.last_restart_requested_at:
        return None
    return str(value)


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
        conditions=_conditions(job, message, now),
        run=run,
        last_restart_requested_at=value,
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
            "conditions": _conditions(job, message, now),
        }
    )


def _conditions(job: m.FineTuneJob, message: str, now: datetime) -> list[m.Condition]:
    return conditions_for(
        P.PENDING,
        reason=R.RESTARTING,
        message=message,
        generation=job.generation,
        old=job.status.conditions,
        now=now,
    )
