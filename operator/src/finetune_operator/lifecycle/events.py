"""What a reconcile sees, as one typed event: ``observe`` gathers the job, its pods and the
trainer's reports into a ``Situation``; ``classify`` names the one ``Event`` the phase machine
(``phases.TABLE``) acts on. Both are pure; the order of the checks in ``classify`` is the
machine's precedence (a restart request first, a pod's own state last).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.lifecycle import output as out
from finetune_operator.lifecycle.gang import attempt_state
from finetune_operator.lifecycle.pods import PodKind, PodState, attempt_of, pod_state
from finetune_operator.lifecycle.reports import (
    PrepareReport,
    ProgressReport,
    data_status,
    humanize,
    merge_checkpoint,
    merge_progress,
    plan_status,
)
from finetune_operator.lifecycle.restart import restart_requested, restarting
from finetune_operator.lifecycle.retry import (
    in_prepare,
    prepare_pod_left,
    retry_requested,
    retrying,
)

P = m.Phase
R = m.Reason
K = PodKind


class Event(StrEnum):
    """What happened to a job since its status was written (``classify``)."""

    RESTART_REQUESTED = "RestartRequested"  # the restart annotation changed
    RESTART_WAITING = "RestartWaiting"  # a restart waits for the previous run's pods to go
    RETRY_REQUESTED = "RetryRequested"  # the retry annotation changed
    RETRY_WAITING = "RetryWaiting"  # a prepare-stage retry waits for the failed pod to go
    FINISHED = "Finished"  # Succeeded or Failed: only a restart or a retry moves it
    EXPORT_OBSERVED = "ExportObserved"  # Exporting: the export pod (or its absence) is read
    PREPARED = "Prepared"  # prepare.json planned the job: published before attempt 1
    PREPARE_REPORTED_FAILURE = "PrepareReportedFailure"  # prepare.json: a permanent error
    PREPARE_RESUMED_STOPPING = "PrepareResumedStopping"  # resumed; the prepare pod still stops
    PREPARE_RESUMED_STOPPED = "PrepareResumedStopped"  # resumed; the prepare pod has stopped
    PREPARE_SUSPEND_STOPPING = "PrepareSuspendStopping"  # suspended; the prepare pod stops
    PREPARE_SUSPENDED = "PrepareSuspended"  # suspended; no prepare pod runs
    PREPARE_BACKOFF = "PrepareBackoff"  # no prepare pod; its retry is not due yet
    PREPARE_DUE = "PrepareDue"  # no prepare pod; one is due now
    PREPARE_NO_REPORT = "PrepareNoReport"  # the prepare pod succeeded without prepare.json
    PREPARE_POD_FAILED = "PreparePodFailed"
    PREPARE_POD_WAITING_ERROR = "PreparePodWaitingError"  # image, config: it cannot start
    PREPARE_POD_UNSCHEDULABLE = "PreparePodUnschedulable"
    PREPARE_POD_GATED = "PreparePodGated"  # Kueue has not admitted it
    PREPARE_POD_ACTIVE = "PreparePodActive"  # pending or running
    TRAIN_SUCCEEDED = "TrainSucceeded"  # the current attempt's pod(s) succeeded
    TRAIN_EVICTION_STOPPING = "TrainEvictionStopping"  # Kueue evicted it; it checkpoints
    TRAIN_EVICTED = "TrainEvicted"  # Kueue evicted it; it has stopped
    TRAIN_STOPPING = "TrainStopping"  # suspended (or resumed) while the pod still stops
    TRAIN_SUSPENDED = "TrainSuspended"  # suspended; no training pod runs
    TRAIN_RESUMED = "TrainResumed"  # resumed after the pod stopped for the suspend
    TRAIN_POD_GONE = "TrainPodGone"  # the current attempt's pod disappeared
    TRAIN_POD_FAILED = "TrainPodFailed"
    TRAIN_POD_WAITING_ERROR = "TrainPodWaitingError"
    TRAIN_POD_UNSCHEDULABLE = "TrainPodUnschedulable"
    TRAIN_POD_GATED = "TrainPodGated"
    TRAIN_POD_PENDING = "TrainPodPending"
    TRAIN_POD_RUNNING = "TrainPodRunning"
    TRAIN_STALLED = "TrainStalled"  # running, but no progress within progressDeadlineSeconds
    TRAIN_ATTEMPT_OVER = "TrainAttemptOver"  # no attempt yet, or the current one is recorded


# the events whose status is assembled by ``derive._finish`` (conditions, output, progress)
STAGE_EVENTS = frozenset(e for e in Event if e.name.startswith(("PREPARE", "TRAIN")))


class Stage(StrEnum):
    PREPARE = "prepare"
    PREPARED = "prepared"
    TRAIN = "train"


@dataclass(frozen=True)
class Situation:
    """The inputs of one derivation, normalised: stale reports dropped, the draft status (the
    old one with the reports merged in) and the pod the stage is about."""

    job: m.FineTuneJob
    pods: tuple[dict[str, Any], ...]
    progress: ProgressReport | None
    prepare: PrepareReport | None
    now: datetime
    cap: int | None  # the operator's bound on backoff delays
    admission: str | None  # Kueue's word on why the pod group is not admitted
    draft: m.FineTuneJobStatus  # phase as before; reason and message cleared
    stage: Stage
    state: PodState | None = None  # the stage's pod (the attempt's gang, folded)
    active: bool = False  # some pod of the attempt still runs: a stop is not over
    step: int | None = None  # the current attempt's last reported step
    recorded: bool = True  # the current attempt is in status.attempts already
    total_steps: int | None = None

    @property
    def by_name(self) -> dict[str, dict[str, Any]]:
        return {str((p.get("metadata") or {}).get("name")): p for p in self.pods}

    @property
    def phase(self) -> P:
        return P(self.job.status.phase or P.PENDING)


def observe(
    job: m.FineTuneJob,
    pods: list[dict[str, Any]],
    progress: ProgressReport | None,
    prepare: PrepareReport | None,
    now: datetime,
    *,
    cap: int | None,
    admission: str | None,
) -> Situation:
    """The situation ``classify`` and the phase handlers read (see ``Situation``)."""
    old = job.status
    if restarting(old) and not pods:  # the previous run's reports (next_actions wipes them)
        progress, prepare = None, None
    if retrying(old) and in_prepare(old) and prepare_pod_left(job, pods) is None:
        prepare = None  # the failed stage's report (next_actions wipes it)
    draft = _draft(job, pods, progress, prepare)
    base = Situation(job, tuple(pods), progress, prepare, now, cap, admission, draft, Stage.PREPARE)
    ok = prepare is not None and prepare.ok is True
    if ok and old.plan is None and draft.plan is not None and not draft.attempt:
        return replace(base, stage=Stage.PREPARED)
    if ok or (draft.attempt and old.plan is not None):
        # the status remembers a finished prepare stage when prepare.json is lost with a
        # deleted progress ConfigMap (re-created empty)
        return _training(base)
    pod = base.by_name.get(b.prepare_pod_name(job))
    return replace(base, state=pod_state(pod) if pod is not None else None)


def _draft(
    job: m.FineTuneJob,
    pods: list[dict[str, Any]],
    progress: ProgressReport | None,
    prepare: PrepareReport | None,
) -> m.FineTuneJobStatus:
    old = job.status
    attempt = max([old.attempt, *(attempt_of(p) for p in pods)])
    report = progress if progress is not None and progress.attempt == attempt else None
    plan, data = old.plan, old.data
    if prepare is not None:  # data and plan are there even when the plan refuses the job
        data = data_status(prepare) or data
        plan = plan if plan is not None else plan_status(prepare)
    return old.model_copy(
        update={
            "phase": old.phase or P.PENDING,
            "reason": None,
            "message": None,
            "attempt": attempt,
            "attempts": list(old.attempts),
            "nodes": None,
            "plan": plan,
            "data": data,
            "checkpoint": merge_checkpoint(old.checkpoint, report, out.run_prefix(old.run)),
        }
    )


def _training(x: Situation) -> Situation:
    """The training stage's view: progress merged, the current attempt's pods folded."""
    old, s = x.job.status, x.draft
    total = (x.prepare.total_steps if x.prepare else None) or (
        old.progress.total_steps if old.progress else None
    )
    n = s.attempt
    progress = merge_progress(s.progress, x.progress, n, total, x.now)
    gang = attempt_state(x.job, x.by_name, n) if n else None
    nodes = list(gang.nodes) if gang is not None and gang.nodes else None
    return replace(
        x,
        stage=Stage.TRAIN,
        total_steps=total,
        draft=s.model_copy(update={"progress": progress, "nodes": nodes}),
        state=gang.state if gang is not None else None,
        active=gang is not None and gang.active,
        step=progress.step if (progress and progress.attempt == n) else None,
        recorded=any(a.attempt == n for a in s.attempts) if n else True,
    )


def classify(x: Situation) -> Event:
    """The one event the phase machine acts on (precedence: this function's order)."""
    job, old = x.job, x.job.status
    if restart_requested(job) is not None:
        return Event.RESTART_REQUESTED
    if restarting(old) and x.pods:
        return Event.RESTART_WAITING
    if retry_requested(job) is not None:
        return Event.RETRY_REQUESTED
    if retrying(old) and in_prepare(old) and prepare_pod_left(job, list(x.pods)) is not None:
        return Event.RETRY_WAITING
    if old.phase in P.TERMINAL:
        return Event.FINISHED
    if old.phase == P.EXPORTING:
        return Event.EXPORT_OBSERVED
    if x.stage == Stage.PREPARED:
        return Event.PREPARED
    return _train_event(x) if x.stage == Stage.TRAIN else _prepare_event(x)


def _prepare_event(x: Situation) -> Event:
    result, state, suspend = x.prepare, x.state, x.job.spec.suspend
    if result is not None and result.ok is False:
        error = result.error
        # a transient failure (SourceUnavailable) is retried as its pod's exit code says; a
        # report naming it must not fail the job for good
        if ((error.reason if error else None) or R.ERROR) not in R.RETRIABLE:
            return Event.PREPARE_REPORTED_FAILURE
    if not suspend and x.draft.phase in (P.SUSPENDING, P.SUSPENDED) and state is not None:
        if state.terminated:
            return Event.PREPARE_RESUMED_STOPPED
        return Event.PREPARE_RESUMED_STOPPING
    if suspend:
        if state is not None and not state.terminated:
            return Event.PREPARE_SUSPEND_STOPPING
        return Event.PREPARE_SUSPENDED
    if state is None:
        due = x.draft.retry_after
        return Event.PREPARE_BACKOFF if due is not None and due > x.now else Event.PREPARE_DUE
    return _POD_EVENTS[(Stage.PREPARE, state.kind)]


def _train_event(x: Situation) -> Event:
    state, suspend, n, fresh = x.state, x.job.spec.suspend, x.draft.attempt, not x.recorded
    if state is not None and fresh and state.kind == K.SUCCEEDED:
        return Event.TRAIN_SUCCEEDED
    if n and fresh and not suspend:
        evicted = eviction(x)
        if evicted is not None:
            return evicted
    # the persisted phase remembers that the operator stopped this attempt for a suspend: a
    # resume before the pod is gone waits for it, and however the pod ends it is no failure
    if suspend or (n and fresh and x.draft.phase == P.SUSPENDING):
        if state is not None and (x.active or not state.terminated):
            return Event.TRAIN_STOPPING
        return Event.TRAIN_SUSPENDED if suspend else Event.TRAIN_RESUMED
    if not (n and fresh):
        return Event.TRAIN_ATTEMPT_OVER
    if state is None:
        return Event.TRAIN_POD_GONE
    if state.kind == K.RUNNING and stalled(x) is not None:
        return Event.TRAIN_STALLED
    return _POD_EVENTS[(Stage.TRAIN, state.kind)]


# a pod's kind -> the event, per stage (a running training pod may be stalled: _train_event)
_POD_EVENTS: dict[tuple[Stage, PodKind], Event] = {
    (Stage.PREPARE, K.SUCCEEDED): Event.PREPARE_NO_REPORT,  # prepare.json is checked first
    (Stage.PREPARE, K.FAILED): Event.PREPARE_POD_FAILED,
    (Stage.PREPARE, K.WAITING_ERROR): Event.PREPARE_POD_WAITING_ERROR,
    (Stage.PREPARE, K.UNSCHEDULABLE): Event.PREPARE_POD_UNSCHEDULABLE,
    (Stage.PREPARE, K.GATED): Event.PREPARE_POD_GATED,
    (Stage.PREPARE, K.PENDING): Event.PREPARE_POD_ACTIVE,
    (Stage.PREPARE, K.RUNNING): Event.PREPARE_POD_ACTIVE,
    (Stage.TRAIN, K.FAILED): Event.TRAIN_POD_FAILED,
    (Stage.TRAIN, K.WAITING_ERROR): Event.TRAIN_POD_WAITING_ERROR,
    (Stage.TRAIN, K.UNSCHEDULABLE): Event.TRAIN_POD_UNSCHEDULABLE,
    (Stage.TRAIN, K.GATED): Event.TRAIN_POD_GATED,
    (Stage.TRAIN, K.PENDING): Event.TRAIN_POD_PENDING,
    (Stage.TRAIN, K.RUNNING): Event.TRAIN_POD_RUNNING,
}


def stopping_note(pod: str) -> str:
    """The start of the message while Kueue's evicted pod writes its checkpoint: the persisted
    status remembers the eviction this way if the pod is gone before a reconcile sees it end."""
    return f"Kueue evicted {pod}"


def eviction(x: Situation) -> Event | None:
    """Kueue evicted the current attempt (preemption, PodsReady timeout…): its pod was marked
    TerminationTarget and deleted, and is not created again by Kueue. None: not evicted."""
    old, state = x.job.status, x.state
    remembered = (
        state is None
        and old.phase == P.QUEUED
        and old.reason == R.PREEMPTED
        and (old.message or "").startswith(stopping_note(b.train_pod_name(x.job, x.draft.attempt)))
    )
    if (state is None or state.evicted is None) and not remembered:
        return None
    if state is not None and not state.terminated:
        return Event.TRAIN_EVICTION_STOPPING
    return Event.TRAIN_EVICTED


def stalled(x: Situation) -> str | None:
    """Why a running attempt counts as stalled (spec.progressDeadlineSeconds), or None."""
    limit = x.job.spec.progress_deadline_seconds
    progress, n = x.draft.progress, x.draft.attempt
    if limit is None or x.state is None:
        return None
    last = progress.updated_at if progress is not None and progress.attempt == n else None
    since = last or x.state.started
    if since is None or x.now < since + timedelta(seconds=limit):
        return None
    what = "no progress report" if last is not None else "no progress report since it started"
    return f"{what} for more than {humanize(limit)} (spec.progressDeadlineSeconds)"
