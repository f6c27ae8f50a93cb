"""The phase machine: (job, pods, typed reports, now) → the job's new status.

The phase is always derived here from the pods the operator created and the reports the trainer
wrote; a training pod cannot mark its job Succeeded. ``derive_status`` observes the situation
(``events.observe``), names its one event (``events.classify``) and runs the handler that
``TABLE`` gives for the (phase, event) pair; the handlers (``phases``) are small pure functions
returning a new status. ``TRANSITIONS`` lists every phase change the machine may make: a unit
test checks it against ``TABLE`` and walks every (phase, event) pair.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator import planner
from finetune_operator.lifecycle import export
from finetune_operator.lifecycle import output as out
from finetune_operator.lifecycle.conditions import MAX_MESSAGE, conditions_for
from finetune_operator.lifecycle.events import STAGE_EVENTS, Event, Situation, classify, observe
from finetune_operator.lifecycle.phases import RULES, Rule, Spec, backoff_seconds, batch, failed
from finetune_operator.lifecycle.pods import parse_time
from finetune_operator.lifecycle.reports import PrepareReport, ProgressReport, humanize
from finetune_operator.lifecycle.restart import restart_requested, restart_status, still_restarting
from finetune_operator.lifecycle.retry import (
    prepare_pod_left,
    retry_requested,
    retry_status,
    still_retrying,
)

__all__ = [
    "TABLE",
    "TRANSITIONS",
    "active_since",
    "backoff_seconds",
    "batch_for_attempt",
    "derive_status",
    "spec_changed_after_completion",
]

C = m.ConditionType
P = m.Phase
R = m.Reason
E = Event
Status = m.FineTuneJobStatus
_F = "False"


def _to(*phases: P) -> frozenset[P]:
    return frozenset(phases)


# old phase -> the phases derive_status may move it to. The derivation is level-triggered (it
# reads the pods and reports as they are now, not the events that led there), so a job can skip
# phases it had no reconcile in: e.g. Starting -> Succeeded for a pod that ran between two
# reconciles. A finished job only leaves its phase for a restart or a retry (Pending).
_ACTIVE = (P.QUEUED, P.STARTING, P.RUNNING, P.EXPORTING, P.SUCCEEDED, P.FAILED, P.PENDING)
TRANSITIONS: dict[P, frozenset[P]] = {
    P.PENDING: _to(P.PREPARING, *_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.PENDING},
    # Suspended at once: suspended before the prepare pod exists, or once the plan is published
    P.PREPARING: _to(*_ACTIVE, P.SUSPENDING, P.SUSPENDED),
    P.QUEUED: _to(P.PREPARING, *_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.QUEUED},
    # Preparing again: the prepare report (with its plan) was lost after attempt 1 began
    P.STARTING: _to(P.PREPARING, *_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.STARTING},
    P.RUNNING: _to(P.PREPARING, *_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.RUNNING},
    # a resume: the stopped pod is gone (next attempt, or the prepare stage again), or a restart;
    # Queued: resumed while a pod Kueue evicted still stops
    P.SUSPENDING: _to(
        P.PENDING,
        P.PREPARING,
        P.QUEUED,
        P.STARTING,
        P.EXPORTING,
        P.SUCCEEDED,
        P.FAILED,
        P.SUSPENDED,
    ),
    P.SUSPENDED: _to(P.PREPARING, *_ACTIVE, P.SUSPENDING),
    # exports run once the adapter is there; a suspend does not stop them (no GPU is held)
    P.EXPORTING: _to(P.SUCCEEDED, P.FAILED, P.PENDING),
    P.SUCCEEDED: _to(P.PENDING),
    P.FAILED: _to(P.PENDING),
}


def batch_for_attempt(job: m.FineTuneJob) -> planner.BatchPlan | None:
    """Micro-batch and accumulation for the next training pod: the plan's (halved after a CUDA
    OOM), or a smaller spec.training.microBatchSize set while suspended."""
    return batch(job.spec, job.status.plan)


def derive_status(
    job: m.FineTuneJob,
    pods: list[dict[str, Any]],
    progress: ProgressReport | None,
    prepare_result: PrepareReport | None,
    now: datetime,
    *,
    max_backoff: int | None = None,
    admission: str | None = None,
) -> m.FineTuneJobStatus:
    """The job's new status. Bumps ``attempt`` (phase Starting) when a new training pod is due.
    ``admission`` is Kueue's word on why the current pod group is not admitted yet.

    A restart request (annotation) comes first, whatever the phase; the restart then waits until
    every pod of the previous run is gone (they may still report) before the new run prepares,
    and ignores the reports left in the progress object (``next_actions`` wipes them). A retry
    request (the other annotation) moves a Failed job back to Pending in the same run."""
    x = observe(job, pods, progress, prepare_result, now, cap=max_backoff, admission=admission)
    event = classify(x)
    # a pair outside the table comes only from a status this operator never writes (edited by
    # hand, say): the event's rule still applies there rather than failing every reconcile
    new = TABLE.get((x.phase, event), _BY_EVENT[event]).handle(x, x.draft)
    return _finish(x, _deadline(x, new)) if event in STAGE_EVENTS else new


def _restart(x: Situation, s: Status) -> Status:
    return restart_status(x.job, restart_requested(x.job) or "", x.now)


def _restart_waiting(x: Situation, s: Status) -> Status:
    return still_restarting(x.job, list(x.pods), x.now)


def _retry(x: Situation, s: Status) -> Status:
    return retry_status(x.job, retry_requested(x.job) or "", x.now)


def _retry_waiting(x: Situation, s: Status) -> Status:
    return still_retrying(x.job, prepare_pod_left(x.job, list(x.pods)) or "", x.now)


def _finished(x: Situation, s: Status) -> Status:
    """Succeeded or Failed stays; the conditions say when the spec was edited since."""
    old, gen = x.job.status, x.job.generation
    done = old.completed_generation or old.observed_generation or gen
    conditions = conditions_for(
        old.phase or P.FAILED,
        reason=old.reason,
        message=_after_completion(old.message, gen, done),
        generation=gen,
        old=old.conditions,
        now=x.now,
    )
    update = {"observed_generation": gen, "completed_generation": done, "conditions": conditions}
    return old.model_copy(update=update)


def _exporting(x: Situation, s: Status) -> Status:
    """Exporting: only the export pod matters (training is over; a suspend holds no GPU here)."""
    job, old, gen, now = x.job, x.job.status, x.job.generation, x.now
    phase, reason, message, outcomes = export.derive_export(
        job, x.by_name.get(b.export_pod_name(job))
    )
    return old.model_copy(
        update={
            "output": out.with_exports(old.output, outcomes),
            "phase": phase,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "observed_generation": gen,
            "completion_time": (old.completion_time or now) if phase in P.TERMINAL else None,
            "conditions": conditions_for(
                phase, reason=reason, message=message, generation=gen, old=old.conditions, now=now
            ),
        }
    )


def _rules() -> dict[Event, Spec]:
    """Every event's rule: the stage events' (``phases.RULES``) and the ones here."""
    _all, _none, _done = frozenset(P), frozenset[P](), frozenset(P(p) for p in P.TERMINAL)
    return {
        E.RESTART_REQUESTED: (_all, _restart, frozenset({P.PENDING})),
        E.RESTART_WAITING: (frozenset({P.PENDING}), _restart_waiting, _none),
        E.RETRY_REQUESTED: (_all, _retry, frozenset({P.PENDING})),
        E.RETRY_WAITING: (frozenset({P.PENDING}), _retry_waiting, _none),
        E.FINISHED: (_done, _finished, _none),
        E.EXPORT_OBSERVED: (frozenset({P.EXPORTING}), _exporting, _done),
        **RULES,
    }


_BY_EVENT = {e: Rule(handle, to) for e, (_, handle, to) in _rules().items()}
# (phase, event) -> rule, for every phase the event can occur in
TABLE: dict[tuple[P, Event], Rule] = {
    (p, e): _BY_EVENT[e] for e, (at, _, _) in _rules().items() for p in at
}


def _s(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def active_since(job: m.FineTuneJob) -> datetime | None:
    """Start of the job's active time: its last resume (the Suspended condition turning False),
    else its creation."""
    for cond in job.status.conditions:
        if cond.type == C.SUSPENDED and cond.status == _F:
            return cond.last_transition_time
    return parse_time(job.metadata.get("creationTimestamp"))


def _deadline(x: Situation, s: Status) -> Status:
    """spec.activeDeadlineSeconds: the whole job fails once its active time is over."""
    job, now = x.job, x.now
    limit = job.spec.active_deadline_seconds
    since = active_since(job)
    if limit is None or since is None or job.spec.suspend or s.phase in P.TERMINAL:
        return s
    if now < since + _s(limit):
        return s
    what = f"The job was active for more than {humanize(limit)}"
    return failed(s, R.DEADLINE_EXCEEDED, f"{what} (spec.activeDeadlineSeconds: {limit})", now)


def _outcome(x: Situation, s: Status) -> Status:
    """Succeeded or Exporting: the output, and the progress at 100%."""
    old = x.job.status
    output = old.output if old.output is not None and old.output.run == old.run else None
    if s.phase not in (P.SUCCEEDED, P.EXPORTING):
        return s.model_copy(update={"output": output})
    if output is None:
        report = x.progress if x.progress is not None and x.progress.attempt == s.attempt else None
        output = out.finished(x.job, report.output if report is not None else None)
    message = out.succeeded_message(output) if s.phase == P.SUCCEEDED else s.message
    p = s.progress
    if p is not None:
        step = p.total_steps if p.total_steps is not None else p.step
        p = p.model_copy(update={"step": step, "percent": 100.0, "percent_text": "100%"})
    return s.model_copy(update={"output": output, "message": message, "progress": p})


def _finish(x: Situation, s: Status) -> Status:
    """The status a stage event's handler made, completed: output, progress, conditions."""
    old, gen = x.job.status, x.job.generation
    s = _outcome(x, s)
    progress = s.progress
    if s.phase != P.RUNNING and progress is not None:
        # rates and ETAs describe a running pod: a suspended, queued or finished job shows none,
        # so `kubectl get`, the plugin and dashboards never add up jobs that are not training
        progress = progress.model_copy(
            update={"tokens_per_second": None, "eta_seconds": None, "eta": None}
        )
    phase, done = P(s.phase or P.PENDING), s.phase in P.TERMINAL
    return m.FineTuneJobStatus(
        phase=phase,
        reason=s.reason,
        message=s.message[:MAX_MESSAGE] if s.message else None,
        observed_generation=gen,
        conditions=conditions_for(
            phase, reason=s.reason, message=s.message, generation=gen, old=old.conditions, now=x.now
        ),
        attempt=s.attempt,
        attempts=s.attempts,
        retry_after=s.retry_after,
        progress=progress,
        nodes=s.nodes if not done else None,
        checkpoint=s.checkpoint,
        output=s.output,
        data=s.data,
        plan=s.plan,
        start_time=s.start_time,
        completion_time=s.completion_time if done else None,
        completed_generation=gen if done else None,
        run=old.run,
        last_restart_requested_at=old.last_restart_requested_at,
        last_retry_requested_at=old.last_retry_requested_at,
        retry_budget_from=old.retry_budget_from,
    )


def spec_changed_after_completion(generation: int, done: int) -> str | None:
    """What a finished job's conditions add when its spec was edited after it ended."""
    if generation <= done:
        return None
    return (
        f"spec changed after completion (generation {generation}; it finished with "
        f"generation {done}) and was not trained: `kubectl finetune restart` to retrain"
    )


def _after_completion(message: str | None, generation: int, done: int) -> str | None:
    note = spec_changed_after_completion(generation, done)
    if note is None:
        return message
    return f"{note}. {message}" if message else note
