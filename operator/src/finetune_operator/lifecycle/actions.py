"""What a reconcile does after deriving the status: the API calls (``next_actions``), the
Events (``transition_events``), the status patch (``merge_patch``); and the statuses the handler
decides itself (a failure found before any pod, a refused child)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.lifecycle.conditions import MAX_MESSAGE, conditions_for
from finetune_operator.lifecycle.derive import active_since, spec_changed_after_completion
from finetune_operator.lifecycle.pods import (
    PodKind,
    PodState,
    attempt_failure,
    pod_state,
    sentence,
)
from finetune_operator.lifecycle.restart import restarting
from finetune_operator.lifecycle.retry import in_prepare, retrying

P = m.Phase
R = m.Reason


def failed_status(
    old: m.FineTuneJobStatus, generation: int, reason: str, message: str, now: datetime
) -> m.FineTuneJobStatus:
    """A Failed status found before any pod could tell (missing PVC, bad spec…)."""
    return old.model_copy(
        update={
            "phase": P.FAILED,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "observed_generation": generation,
            "retry_after": None,
            "completion_time": old.completion_time or now,
            "completed_generation": generation,
            "conditions": conditions_for(
                P.FAILED,
                reason=reason,
                message=message,
                generation=generation,
                old=old.conditions,
                now=now,
            ),
        }
    )


def rejected(kind: str, detail: str) -> str:
    """Why the job failed when the apiserver refused to create one of its children."""
    return f"The API server refused to create the {kind}: {sentence(detail)}"


def children_needed(new: m.FineTuneJobStatus) -> bool:
    """Whether the job's children (ServiceAccount, Role, RoleBinding, ConfigMaps) must exist:
    while it has or may soon have a pod."""
    return new.phase not in (*P.TERMINAL, P.SUSPENDED) and not restarting(new)


def wake_at(
    job: m.FineTuneJob, new: m.FineTuneJobStatus, pods: list[dict[str, Any]], now: datetime
) -> datetime | None:
    """When the job must be looked at again although nothing it watches changes: the end of a
    retry's backoff, its TTL, a deadline (active, progress, queue). None: only events matter."""
    spec = job.spec
    times: list[datetime] = []
    if new.phase in P.TERMINAL:
        if spec.ttl_seconds_after_finished is not None and new.completion_time is not None:
            times.append(new.completion_time + timedelta(seconds=spec.ttl_seconds_after_finished))
    else:
        if new.retry_after is not None:
            times.append(new.retry_after)
        current = job.model_copy(update={"status": new})
        since = active_since(current)
        if spec.active_deadline_seconds is not None and since is not None and not spec.suspend:
            times.append(since + timedelta(seconds=spec.active_deadline_seconds))
        states = [pod_state(p) for p in pods]
        if new.phase == P.RUNNING and spec.progress_deadline_seconds is not None:
            report = new.progress
            last = report.updated_at if report and report.attempt == new.attempt else None
            started = [s.started for s in states if s.attempt == new.attempt and s.started]
            base = last or (started[0] if started else now)
            times.append(base + timedelta(seconds=spec.progress_deadline_seconds))
        if new.phase == P.QUEUED and spec.queue_timeout_seconds is not None:
            queued = (PodKind.UNSCHEDULABLE, PodKind.GATED)
            waiting = [s.created for s in states if s.kind in queued and s.created]
            times += [c + timedelta(seconds=spec.queue_timeout_seconds) for c in waiting]
    if not times:
        return None
    return max(min(times), now + timedelta(seconds=1))


def ttl_expired(job: m.FineTuneJob, now: datetime) -> bool:
    """True when a finished job outlived ``ttlSecondsAfterFinished``."""
    ttl = job.spec.ttl_seconds_after_finished
    done = job.status.completion_time
    if ttl is None or done is None or job.status.phase not in P.TERMINAL:
        return False
    return now >= done + timedelta(seconds=ttl)


@dataclass(frozen=True)
class Actions:
    """The API calls a reconcile makes after deriving the status."""

    create_prepare: bool = False
    create_train: int | None = None
    create_export: bool = False  # the CPU export pod (phase Exporting)
    delete_pods: tuple[str, ...] = ()
    reset_progress: bool = False  # wipe the previous run's reports (before any new pod starts)
    reset_prepare: bool = False  # wipe the failed prepare stage's report (a retry)
    publish_first: bool = False  # publish this status, then reconcile again at once


def next_actions(
    job: m.FineTuneJob, new: m.FineTuneJobStatus, pods: list[dict[str, Any]], now: datetime
) -> Actions:
    states = {s.name: s for s in (pod_state(p) for p in pods)}
    if restarting(new):  # every pod of the previous run goes, finished ones too (names reused)
        return Actions(delete_pods=tuple(sorted(n for n, s in states.items() if not s.deleting)))
    if retrying(new):
        return _retry_actions(job, new, states)
    acts = _next_actions(job, new, states, now)
    if restarting(job.status):
        return replace(acts, reset_progress=True)
    return acts


def _retry_actions(
    job: m.FineTuneJob, new: m.FineTuneJobStatus, states: dict[str, PodState]
) -> Actions:
    """A retry of a Failed job: the failed prepare pod goes (its name is reused) and its report
    is wiped; a training stage needs nothing gone (the next attempt has a new pod name)."""
    if not in_prepare(new):
        return Actions(publish_first=True)
    prep = b.prepare_pod_name(job)
    reset = not retrying(job.status)
    if prep not in states:
        return Actions(reset_prepare=reset, publish_first=True)
    gone = () if states[prep].deleting else (prep,)
    return Actions(delete_pods=gone, reset_prepare=reset)


def _next_actions(
    job: m.FineTuneJob, new: m.FineTuneJobStatus, states: dict[str, PodState], now: datetime
) -> Actions:
    prep = b.prepare_pod_name(job)
    active = tuple(sorted(n for n, s in states.items() if not s.terminated and not s.deleting))
    phase = new.phase
    if phase == P.PREPARING and new.reason == R.PREPARED:
        return Actions(publish_first=True)
    # a training pod of an earlier or finished attempt still running (stalled, stopped for a
    # suspend and resumed since, or a node of a gang whose other node failed) is stopped first;
    # the next attempt's pods start only once every one of them is gone
    over = {a.attempt for a in new.attempts if a.attempt > 0}
    older = [
        s
        for s in states.values()
        if s.attempt > 0 and (s.attempt < new.attempt or s.attempt in over) and not s.terminated
    ]
    if older and phase not in P.TERMINAL:
        return Actions(delete_pods=tuple(sorted(s.name for s in older if not s.deleting)))
    if phase == P.PREPARING and prep not in states:
        return Actions(create_prepare=True)
    if phase == P.EXPORTING and b.export_pod_name(job) not in states:
        return Actions(create_export=True)
    # after a Kueue eviction the next attempt's pod group is created at once and waits, gated,
    # in the queue (phase Queued, reason Preempted)
    due = phase == P.STARTING or (phase == P.QUEUED and new.reason == R.PREEMPTED)
    wanted = b.train_pod_names(job, new.attempt) if new.attempt else []
    if due and any(n not in states for n in wanted):
        return Actions(create_train=new.attempt)
    if phase in (P.SUSPENDING, P.FAILED) and active:
        return Actions(delete_pods=active)
    if phase == P.PENDING and new.reason in (R.RETRYING, R.RESUMED) and prep in states:
        return Actions(delete_pods=(prep,))
    return Actions()


def transition_events(
    old: m.FineTuneJobStatus, new: m.FineTuneJobStatus
) -> list[tuple[str, str, str]]:
    """(type, reason, message) Events for what changed: each new finished attempt, each phase
    transition, a halved micro-batch."""
    if new.last_restart_requested_at != old.last_restart_requested_at and restarting(new):
        return [("Normal", R.RESTARTING, new.message or "restart requested")]
    if new.last_retry_requested_at != old.last_retry_requested_at:
        if retrying(new):
            return [("Normal", R.RETRY_REQUESTED, new.message or "retry requested")]
        ignored = (
            f"retry requested at {new.last_retry_requested_at} ignored: only a Failed job is "
            f"retried (phase {old.phase or 'none yet'}); `kubectl finetune restart` trains "
            "again from step 0"
        )
        return [("Warning", R.RETRY_IGNORED, ignored[:MAX_MESSAGE])]
    events: list[tuple[str, str, str]] = []
    for rec in new.attempts[len(old.attempts) :]:
        if rec.reason in (R.COMPLETED, R.SUSPENDED):
            continue
        if rec.reason == R.WORKLOAD_EVICTED:  # no failure: requeued like a suspend
            at = f" at step {rec.step}" if rec.step is not None else ""
            told = f"Kueue evicted pod {rec.pod}{at}; it resumes when readmitted: {rec.message}"
            events.append(("Normal", R.PREEMPTED, told[:MAX_MESSAGE]))
            continue
        events.append(("Warning", rec.reason, attempt_failure(rec)[:MAX_MESSAGE]))
    if (
        new.plan is not None
        and old.plan is not None
        and new.plan.micro_batch_size != old.plan.micro_batch_size
    ):
        events.append(("Warning", R.MICRO_BATCH_HALVED, new.plan.message or "micro-batch halved"))
    seen = set(old.progress.edits or []) if old.progress is not None else set()
    for text in (new.progress.edits or []) if new.progress is not None else []:
        if text not in seen:
            events.append(("Normal", R.SPEC_EDIT_APPLIED, text[:MAX_MESSAGE]))
    events += _skipped_events(old.progress, new.progress)
    edited = new.observed_generation or 0
    done = new.completed_generation
    if new.phase in P.TERMINAL and done is not None and edited > (old.observed_generation or 0):
        note = spec_changed_after_completion(edited, done)
        if note is not None:
            events.append(("Warning", R.SPEC_CHANGED, note[:MAX_MESSAGE]))
    if new.phase != old.phase or (new.phase == P.STARTING and new.attempt != old.attempt):
        kind = "Warning" if new.phase in (P.FAILED,) else "Normal"
        reason = new.reason if new.phase == P.FAILED and new.reason else str(new.phase)
        events.append((kind, reason, (new.message or str(new.phase))[:MAX_MESSAGE]))
    return events


def _skipped_events(old: m.Progress | None, new: m.Progress | None) -> list[tuple[str, str, str]]:
    """A Warning per damaged checkpoint the trainer newly set aside on resume."""
    if new is None:
        return []
    same = old is not None and old.attempt == new.attempt
    seen = {s.path for s in (old.skipped_checkpoints or [])} if same and old else set()
    events: list[tuple[str, str, str]] = []
    for skipped in new.skipped_checkpoints or []:
        if skipped.path in seen:
            continue
        why = f" ({skipped.error})" if skipped.error else ""
        instead = new.resumed_from or "step 0"
        message = (
            f"checkpoint {skipped.path} is damaged{why}: set aside as {skipped.path}.corrupt; "
            f"attempt {new.attempt} resumed from {instead}"
        )
        events.append(("Warning", R.CHECKPOINT_SKIPPED, message[:MAX_MESSAGE]))
    return events


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch turning ``old`` into ``new`` (removed keys become null; lists and
    scalars are replaced)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch
