"""The phase machine: (job, pods, typed reports, now) → the job's new status.

The phase is always derived here from the pods the operator created and the reports the trainer
wrote; a training pod cannot mark its job Succeeded. ``derive_status`` also decides when a new
attempt starts (it bumps ``status.attempt``). ``TRANSITIONS`` lists every phase change it may
make; a unit test walks every (phase, event) pair against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator import planner
from finetune_operator.lifecycle import export
from finetune_operator.lifecycle import output as out
from finetune_operator.lifecycle.conditions import MAX_MESSAGE, conditions_for
from finetune_operator.lifecycle.gang import attempt_state
from finetune_operator.lifecycle.pods import (
    MISSING_PVC,
    UNBOUND,
    PodKind,
    PodState,
    attempt_failure,
    attempt_of,
    missing_claim,
    parse_time,
    pod_state,
    sentence,
)
from finetune_operator.lifecycle.reports import (
    PrepareReport,
    ProgressReport,
    data_status,
    humanize,
    merge_checkpoint,
    merge_progress,
    plan_status,
)
from finetune_operator.lifecycle.restart import (
    restart_requested,
    restart_status,
    restarting,
    still_restarting,
)
from finetune_operator.lifecycle.retry import (
    forgiven,
    in_prepare,
    prepare_pod_left,
    retry_requested,
    retry_status,
    retrying,
    still_retrying,
)

C = m.ConditionType
P = m.Phase
R = m.Reason
K = PodKind
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
    P.PREPARING: _to(*_ACTIVE, P.SUSPENDING),
    P.QUEUED: _to(P.PREPARING, *_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.QUEUED},
    P.STARTING: _to(*_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.STARTING},
    P.RUNNING: _to(*_ACTIVE, P.SUSPENDING, P.SUSPENDED) - {P.RUNNING},
    # a resume: the stopped pod is gone (next attempt, or the prepare stage again), or a restart
    P.SUSPENDING: _to(
        P.PENDING, P.PREPARING, P.STARTING, P.EXPORTING, P.SUCCEEDED, P.FAILED, P.SUSPENDED
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
    return _batch(job.spec, job.status.plan)


def _batch(spec: m.FineTuneJobSpec, plan: m.PlanStatus | None) -> planner.BatchPlan | None:
    spec_micro = spec.training.micro_batch_size
    micro = plan.micro_batch_size if plan is not None else None
    if spec_micro is not None and (micro is None or spec_micro < micro):
        micro = spec_micro
    if micro is None:
        return None
    acc = planner.accumulation_for(spec.training.batch_size, micro, m.world_size(spec))
    return planner.BatchPlan(micro, acc)


@dataclass
class _Work:
    """Mutable scratch state while deriving."""

    phase: str
    reason: str | None
    message: str | None
    attempt: int
    attempts: list[m.Attempt]
    retry_after: datetime | None
    plan: m.PlanStatus | None
    start_time: datetime | None
    completion_time: datetime | None
    progress: m.Progress | None
    checkpoint: m.CheckpointStatus | None
    notes: list[str] = field(default_factory=list)
    nodes: list[m.NodeStatus] | None = None


def backoff_seconds(job: m.FineTuneJob, failures: int, cap: int | None = None) -> int:
    """Delay before retry number ``failures`` (1-based): backoff x 2^(n-1), bounded."""
    r = job.spec.retry
    delay = r.backoff_seconds * (2 ** max(0, failures - 1))
    bound = r.max_backoff_seconds if cap is None else min(cap, r.max_backoff_seconds)
    return int(min(delay, bound))


def _record(w: _Work, attempt: int, state: PodState, step: int | None, now: datetime) -> m.Attempt:
    rec = m.Attempt(
        attempt=attempt,
        pod=state.name,
        reason=state.reason or R.ERROR,
        exit_code=state.exit_code,
        step=step,
        message=sentence(state.message) or None,
        start_time=state.started,
        finish_time=state.finished or now,
    )
    w.attempts.append(rec)
    return rec


def _fail(w: _Work, reason: str, message: str | None, now: datetime) -> None:
    w.phase, w.reason, w.message = P.FAILED, reason, sentence(message) or None
    w.completion_time = w.completion_time or now
    w.retry_after = None


def _waiting_message(job: m.FineTuneJob, state: PodState, train: bool) -> str:
    gpus = job.spec.resources.gpus
    if train and gpus > 0 and b.GPU in (state.message or ""):
        return f"waiting for {gpus} {b.GPU}: {state.message}"[:MAX_MESSAGE]
    return f"waiting for a node: {state.message}"[:MAX_MESSAGE]


def _unschedulable(
    w: _Work, job: m.FineTuneJob, state: PodState, train: bool, now: datetime
) -> None:
    msg = state.message or ""
    missing = MISSING_PVC.search(msg)
    if missing:  # not "unbound" claims: those are still being provisioned
        _fail(w, R.PVC_NOT_FOUND, missing_claim(missing.group(1)), now)
        return
    if UNBOUND.search(msg):  # not queued for a node yet: the phase stays, no Ready flapping
        phase = P.STARTING if train else P.PREPARING
        w.phase, w.reason = phase, phase
        w.message = f"{state.name} waits for its volume claims to bind: {sentence(msg)}"
        return
    limit = job.spec.queue_timeout_seconds
    if limit is not None and state.created is not None and now >= state.created + _s(limit):
        waited = f"Pod {state.name} waited more than {humanize(limit)} for a node"
        _fail(w, R.QUEUE_TIMEOUT, f"{waited} (spec.queueTimeoutSeconds): {sentence(msg)}", now)
        return
    w.phase, w.reason, w.message = P.QUEUED, R.UNSCHEDULABLE, _waiting_message(job, state, train)


def _s(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def active_since(job: m.FineTuneJob) -> datetime | None:
    """Start of the job's active time: its last resume (the Suspended condition turning False),
    else its creation."""
    for cond in job.status.conditions:
        if cond.type == C.SUSPENDED and cond.status == _F:
            return cond.last_transition_time
    return parse_time(job.metadata.get("creationTimestamp"))


def _deadline(w: _Work, job: m.FineTuneJob, now: datetime) -> None:
    """spec.activeDeadlineSeconds: the whole job fails once its active time is over."""
    limit = job.spec.active_deadline_seconds
    since = active_since(job)
    if limit is None or since is None or job.spec.suspend or w.phase in P.TERMINAL:
        return
    if now >= since + _s(limit):
        what = f"The job was active for more than {humanize(limit)}"
        _fail(w, R.DEADLINE_EXCEEDED, f"{what} (spec.activeDeadlineSeconds: {limit})", now)


def _stalled(
    job: m.FineTuneJob, progress: m.Progress | None, state: PodState, n: int, now: datetime
) -> str | None:
    """Why a running attempt counts as stalled (spec.progressDeadlineSeconds), or None."""
    limit = job.spec.progress_deadline_seconds
    if limit is None:
        return None
    last = progress.updated_at if progress is not None and progress.attempt == n else None
    since = last or state.started
    if since is None or now < since + _s(limit):
        return None
    what = "no progress report" if last is not None else "no progress report since it started"
    return f"{what} for more than {humanize(limit)} (spec.progressDeadlineSeconds)"


def _retry_or_fail(
    w: _Work,
    job: m.FineTuneJob,
    last: m.Attempt,
    *,
    prepare: bool,
    now: datetime,
    cap: int | None,
    just_recorded: bool = True,
) -> bool:
    """After a failed attempt: Failed (not retriable / limit reached), Pending in backoff, or
    True when the next attempt may start now. A CUDA OOM halves the micro-batch once, when the
    attempt is recorded (``just_recorded``), not again on every pass through its backoff."""
    if last.reason not in R.RETRIABLE:
        _fail(w, last.reason, last.message or attempt_failure(last), now)
        return False
    failures = [
        a
        for i, a in enumerate(w.attempts)
        if a.reason in R.RETRIABLE
        and ((a.attempt == 0) if prepare else (a.attempt >= 1))
        and not forgiven(job.status, i)  # a retry of the Failed job reset the budget
    ]
    limit = job.spec.retry.limit
    if len(failures) > limit:
        what = "The prepare stage" if prepare else "Training"
        msg = f"{what} failed {len(failures)} times (retry limit {limit}). {attempt_failure(last)}"
        _fail(w, last.reason, msg, now)
        return False
    if last.reason == R.CUDA_OOM and not prepare and just_recorded:
        current = _batch(job.spec, w.plan)
        micro = current.micro_batch_size if current else job.spec.training.batch_size
        halved = planner.after_cuda_oom(job.spec.training.batch_size, micro, m.world_size(job.spec))
        if halved is None:
            _fail(w, R.CUDA_OOM, f"CUDA out of memory with micro-batch 1: {last.message}", now)
            return False
        if w.plan is None or w.plan.micro_batch_size != halved.micro_batch_size:
            base = w.plan or m.PlanStatus()
            w.plan = base.model_copy(
                update={
                    "micro_batch_size": halved.micro_batch_size,
                    "gradient_accumulation": halved.gradient_accumulation,
                    "message": f"micro-batch halved to {halved.micro_batch_size} after CUDA OOM "
                    f"(accumulation {halved.gradient_accumulation}, same effective batch)",
                }
            )
            w.notes.append(R.MICRO_BATCH_HALVED)
    finished = last.finish_time or now
    retry_at = finished + timedelta(seconds=backoff_seconds(job, len(failures), cap))
    if retry_at > now:
        w.phase, w.reason, w.retry_after = P.PENDING, R.BACKOFF, retry_at
        w.message = (
            f"retry {len(failures)}/{limit} after {last.reason} at "
            f"{retry_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
        return False
    w.retry_after = None
    return True


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
    requested = restart_requested(job)
    if requested is not None:
        return restart_status(job, requested, now)
    if restarting(job.status):
        if pods:
            return still_restarting(job, pods, now)
        progress, prepare_result = None, None
    retry = retry_requested(job)
    if retry is not None:
        return retry_status(job, retry, now)
    if retrying(job.status) and in_prepare(job.status):
        left = prepare_pod_left(job, pods)
        if left is not None:  # its name is reused by the prepare pod that runs again
            return still_retrying(job, left, now)
        prepare_result = None  # the failed stage's report (next_actions wipes it)
    old = job.status
    gen = job.generation
    if old.phase in P.TERMINAL:
        done = old.completed_generation or old.observed_generation or gen
        return old.model_copy(
            update={
                "observed_generation": gen,
                "completed_generation": done,
                "conditions": conditions_for(
                    old.phase or P.FAILED,
                    reason=old.reason,
                    message=_after_completion(old.message, gen, done),
                    generation=gen,
                    old=old.conditions,
                    now=now,
                ),
            }
        )
    by_name = {str((p.get("metadata") or {}).get("name")): p for p in pods}
    if old.phase == P.EXPORTING:
        return _exporting(job, by_name.get(b.export_pod_name(job)), now)
    attempt = max([old.attempt, *(attempt_of(p) for p in pods)])
    w = _Work(
        phase=old.phase or P.PENDING,
        reason=None,
        message=None,
        attempt=attempt,
        attempts=list(old.attempts),
        retry_after=old.retry_after,
        plan=old.plan,
        start_time=old.start_time,
        completion_time=old.completion_time,
        progress=old.progress,
        checkpoint=merge_checkpoint(
            old.checkpoint,
            progress if progress is not None and progress.attempt == attempt else None,
            out.run_prefix(old.run),
        ),
    )
    data = old.data
    total_steps = None
    prepared = prepare_result is not None and prepare_result.ok is True
    if prepare_result is not None:  # data and plan are there even when the plan refuses the job
        data = data_status(prepare_result) or data
        if w.plan is None:
            w.plan = plan_status(prepare_result)
    if prepared and old.plan is None and w.plan is not None and not attempt:
        # what the prepare stage found goes on the resource before the training pod exists:
        # this status is published first, then the next pass starts attempt 1
        w.phase, w.reason = P.PREPARING, R.PREPARED
        w.message = "data checked and memory planned; starting training"
    elif prepared or (attempt and old.plan is not None):
        # the status remembers a finished prepare stage when prepare.json is lost with a
        # deleted progress ConfigMap (re-created empty)
        total_steps = (prepare_result.total_steps if prepare_result else None) or (
            old.progress.total_steps if old.progress else None
        )
        _derive_training(
            w,
            job,
            by_name=by_name,
            progress=progress,
            total_steps=total_steps,
            now=now,
            cap=max_backoff,
            admission=admission,
        )
    else:
        _derive_prepare(
            w,
            job,
            pod=by_name.get(b.prepare_pod_name(job)),
            result=prepare_result,
            now=now,
            cap=max_backoff,
            admission=admission,
        )
    _deadline(w, job, now)
    output = old.output if old.output is not None and old.output.run == old.run else None
    if w.phase in (P.SUCCEEDED, P.EXPORTING):
        if output is None:
            report = progress if progress is not None and progress.attempt == w.attempt else None
            output = out.finished(job, report.output if report is not None else None)
        if w.phase == P.SUCCEEDED:
            w.message = out.succeeded_message(output)
    if w.phase in (P.SUCCEEDED, P.EXPORTING) and w.progress is not None:
        total = w.progress.total_steps
        w.progress = w.progress.model_copy(
            update={
                "step": total if total is not None else w.progress.step,
                "percent": 100.0,
                "percent_text": "100%",
            }
        )
    if w.phase != P.RUNNING and w.progress is not None:
        # rates and ETAs describe a running pod: a suspended, queued or finished job shows none,
        # so `kubectl get`, the plugin and dashboards never add up jobs that are not training
        w.progress = w.progress.model_copy(
            update={"tokens_per_second": None, "eta_seconds": None, "eta": None}
        )
    return m.FineTuneJobStatus(
        phase=w.phase,  # type: ignore[arg-type]
        reason=w.reason,
        message=w.message[:MAX_MESSAGE] if w.message else None,
        observed_generation=gen,
        conditions=conditions_for(
            w.phase, reason=w.reason, message=w.message, generation=gen, old=old.conditions, now=now
        ),
        attempt=w.attempt,
        attempts=w.attempts,
        retry_after=w.retry_after,
        progress=w.progress,
        nodes=w.nodes if w.phase not in P.TERMINAL else None,
        checkpoint=w.checkpoint,
        output=output,
        data=data,
        plan=w.plan,
        start_time=w.start_time,
        completion_time=w.completion_time if w.phase in P.TERMINAL else None,
        completed_generation=gen if w.phase in P.TERMINAL else None,
        run=old.run,
        last_restart_requested_at=old.last_restart_requested_at,
        last_retry_requested_at=old.last_retry_requested_at,
        retry_budget_from=old.retry_budget_from,
    )


def _exporting(
    job: m.FineTuneJob, pod: dict[str, Any] | None, now: datetime
) -> m.FineTuneJobStatus:
    """Exporting: only the export pod matters (training is over; a suspend holds no GPU here)."""
    old = job.status
    phase, reason, message, outcomes = export.derive_export(job, pod)
    gen = job.generation
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


def _derive_prepare(
    w: _Work,
    job: m.FineTuneJob,
    *,
    pod: dict[str, Any] | None,
    result: PrepareReport | None,
    now: datetime,
    cap: int | None,
    admission: str | None,
) -> None:
    error = result.error if result is not None and result.ok is False else None
    reason = (error.reason if error else None) or R.ERROR
    if result is not None and result.ok is False and reason not in R.RETRIABLE:
        # a transient failure (SourceUnavailable) is retried as its pod's exit code says; a
        # report naming it must not fail the job for good
        known = {R.BAD_DATA, R.BAD_CONFIG, R.MODEL_NOT_FOUND, R.PLAN_REFUSED, R.DISK_FULL}
        _fail(w, reason if reason in known else R.ERROR, error.message if error else None, now)
        return
    state = pod_state(pod) if pod is not None else None
    if not job.spec.suspend and w.phase in (P.SUSPENDING, P.SUSPENDED) and state is not None:
        # resumed while the prepare pod stopped for the suspend is still there: no failure
        if not state.terminated:
            w.phase, w.reason = P.SUSPENDING, P.SUSPENDING
            w.message = f"resume requested: waiting for {state.name} to stop"
        else:  # deleted (next_actions), then the prepare stage starts again
            w.phase, w.reason, w.retry_after = P.PENDING, R.RESUMED, None
            w.message = f"resumed: the prepare stage starts again after {state.name} stopped"
        return
    if job.spec.suspend:
        if state is not None and not state.terminated:
            w.phase, w.reason, w.message = P.SUSPENDING, P.SUSPENDING, f"stopping {state.name}"
        else:
            w.phase, w.reason, w.message = P.SUSPENDED, R.SUSPENDED, "suspended before training"
        return
    if state is None:
        if w.retry_after is not None and w.retry_after > now:
            w.phase, w.reason = P.PENDING, R.BACKOFF
            w.message = f"prepare retry at {w.retry_after.strftime('%Y-%m-%dT%H:%M:%SZ')}"
            return
        w.retry_after = None
        w.phase, w.reason, w.message = P.PREPARING, P.PREPARING, "checking data and planning memory"
        return
    if state.kind == K.SUCCEEDED:
        _fail(w, R.ERROR, "the prepare stage ended without writing prepare.json", now)
        return
    if state.kind == K.FAILED:
        already = any(a.pod == state.name and a.finish_time == state.finished for a in w.attempts)
        last = w.attempts[-1] if already else _record(w, 0, state, None, now)
        if _retry_or_fail(w, job, last, prepare=True, now=now, cap=cap):
            # the terminated pod is deleted (next_actions) and created again next time
            w.phase, w.reason, w.message = (
                P.PENDING,
                R.RETRYING,
                f"retrying the prepare stage after {last.reason}",
            )
            w.retry_after = now
        return
    if state.kind == K.WAITING_ERROR:
        _fail(w, state.reason or R.ERROR, state.message, now)
        return
    if state.kind == K.UNSCHEDULABLE:
        _unschedulable(w, job, state, False, now)
        return
    if state.kind == K.GATED:  # a namespace whose Kueue queues every pod (docs/kueue.md)
        _gated(w, job, state, admission=admission, reason=R.WAITING_FOR_ADMISSION, now=now)
        return
    w.phase, w.reason, w.message = P.PREPARING, P.PREPARING, "checking data and planning memory"


def _derive_training(
    w: _Work,
    job: m.FineTuneJob,
    *,
    by_name: dict[str, dict[str, Any]],
    progress: ProgressReport | None,
    total_steps: int | None,
    now: datetime,
    cap: int | None,
    admission: str | None,
) -> None:
    n = w.attempt
    w.progress = merge_progress(w.progress, progress, n, total_steps, now)
    step = w.progress.step if (w.progress and w.progress.attempt == n) else None
    gang = attempt_state(job, by_name, n) if n else None
    state = gang.state if gang is not None else None
    active = gang is not None and gang.active  # some node still runs: a stop is not over
    w.nodes = list(gang.nodes) if gang is not None and gang.nodes else None
    recorded = any(a.attempt == n for a in w.attempts) if n else True

    if state is not None and not recorded and state.kind == K.SUCCEEDED:
        _record(w, n, state, step, now)
        w.phase, w.reason, w.message = P.SUCCEEDED, R.COMPLETED, "training finished; output written"
        w.completion_time = state.finished or now
        if export.wanted(job):  # the GPU pod is done; the CPU export pod comes next
            w.phase, w.reason, w.message = export.derive_export(job, None)[:3]
        return

    if n and not recorded and not job.spec.suspend:
        evicted = _kueue_eviction(w, job, n, state, step=step, now=now)
        if evicted is None:
            return  # the evicted pod is still writing its checkpoint
        recorded = recorded or evicted

    # the persisted phase remembers that the operator stopped this attempt for a suspend: a
    # resume before the pod is gone waits for it, and however the pod ends it is no failure
    user_stop = job.spec.suspend or (bool(n) and not recorded and w.phase == P.SUSPENDING)
    if user_stop:
        if state is not None and (active or not state.terminated):
            w.phase, w.reason = P.SUSPENDING, P.SUSPENDING
            w.message = (
                f"stopping {state.name}: checkpoint, then exit"
                if job.spec.suspend
                else f"resume requested: waiting for {state.name} to stop after its checkpoint"
            )
            return
        if n and not recorded:
            if state is None:
                state = PodState(b.train_pod_name(job, n), K.FAILED, R.SUSPENDED, None)
            _record(w, n, replace(state, reason=R.SUSPENDED), step, now)
            recorded = True
        if job.spec.suspend:
            ck = w.checkpoint
            where = f" at checkpoint step {ck.step}" if ck else ""
            w.phase, w.reason = P.SUSPENDED, R.SUSPENDED
            w.message = f"suspended{where}; GPUs released"
            return

    just_recorded = False
    if n and not recorded:
        if state is None:
            state = PodState(
                b.train_pod_name(job, n), K.FAILED, R.POD_DELETED, "the pod disappeared"
            )
        if state.kind == K.FAILED:
            _record(w, n, state, step, now)
            recorded = just_recorded = True
        elif state.kind == K.WAITING_ERROR:
            _record(w, n, state, step, now)
            _fail(w, state.reason or R.ERROR, state.message, now)
            return
        elif state.kind == K.UNSCHEDULABLE:
            _unschedulable(w, job, state, True, now)
            return
        elif state.kind == K.GATED:
            after = w.attempts[-1].reason if w.attempts else None
            why = R.PREEMPTED if after == R.WORKLOAD_EVICTED else R.WAITING_FOR_ADMISSION
            _gated(w, job, state, admission=admission, reason=why, now=now)
            return
        elif state.kind == K.PENDING:
            detail = f" ({state.message})" if state.message else ""
            w.phase, w.reason, w.message = (
                P.STARTING,
                P.STARTING,
                f"pod {state.name} is starting{detail}",
            )
            return
        else:  # running
            w.start_time = w.start_time or state.started or now
            stalled = _stalled(job, w.progress, state, n, now)
            if stalled is None:
                w.phase, w.reason, w.message = P.RUNNING, P.RUNNING, _running_message(w, state)
                return
            # stopped (next_actions) and retried from its checkpoint like a failed attempt
            _record(w, n, replace(state, reason=R.STALLED, message=stalled), step, now)
            recorded = just_recorded = True

    # the current attempt (if any) is over: retry, resume or start the first one
    last = w.attempts[-1] if (n and w.attempts) else None
    if last is not None and last.reason == R.COMPLETED:
        w.phase, w.reason = P.SUCCEEDED, R.COMPLETED
        return
    if (
        last is not None
        and last.reason not in (R.SUSPENDED, R.WORKLOAD_EVICTED)
        and not forgiven(job.status, len(w.attempts) - 1)  # retried by the user: no budget spent
        and not _retry_or_fail(
            w, job, last, prepare=False, now=now, cap=cap, just_recorded=just_recorded
        )
    ):
        return
    if active and job.spec.resources.nodes > 1:
        # a gang: the failed attempt's other nodes are stopped first (next_actions); bumping the
        # attempt now would find its pods missing at the next pass and count them as deleted
        w.phase, w.reason = P.PENDING, R.BACKOFF
        w.message = f"attempt {n} failed: stopping its other nodes before attempt {n + 1}"
        return
    w.attempt = n + 1
    w.retry_after = None
    w.phase, w.reason = P.STARTING, P.STARTING
    resumed = last is not None and last.reason == R.SUSPENDED
    ck = w.checkpoint
    frm = f" from checkpoint step {ck.step}" if ck and n else ""
    w.message = f"{'resuming' if resumed else 'starting'} attempt {w.attempt}{frm}"
    if last is not None and last.reason == R.WORKLOAD_EVICTED:
        # the new pod group is created gated: it waits in the queue, not for a node
        w.phase, w.reason = P.QUEUED, R.PREEMPTED
        w.message = f"{_evicted_note(last)}; attempt {w.attempt} waits for readmission{frm}"


def _running_message(w: _Work, state: PodState) -> str:
    p = w.progress
    if p is None or p.step is None:
        return f"pod {state.name} is running"
    total = f"/{p.total_steps}" if p.total_steps else ""
    loss = f", loss {p.loss:.4g}" if p.loss is not None else ""
    return f"step {p.step}{total}{loss}"


def _stopping_note(pod: str) -> str:
    """The start of the message while Kueue's evicted pod writes its checkpoint: the persisted
    status remembers the eviction this way if the pod is gone before a reconcile sees it end."""
    return f"Kueue evicted {pod}"


def _evicted_note(rec: m.Attempt) -> str:
    step = f" at step {rec.step}" if rec.step is not None else ""
    return f"evicted by Kueue{step} ({rec.message or 'no message'})"


def _kueue_eviction(
    w: _Work,
    job: m.FineTuneJob,
    n: int,
    state: PodState | None,
    *,
    step: int | None,
    now: datetime,
) -> bool | None:
    """Kueue evicted attempt ``n`` (preemption, PodsReady timeout…): its pod was marked
    TerminationTarget and deleted, and is not created again by Kueue. Handled like a suspend:
    the trainer checkpoints on SIGTERM, the attempt is recorded as WorkloadEvicted (no retry
    counted) and the next attempt's pod group waits for readmission. None while the pod still
    runs (phase Queued, reason Preempted); True when recorded now; False when not evicted."""
    name = b.train_pod_name(job, n)
    old = job.status
    remembered = (
        state is None
        and old.phase == P.QUEUED
        and old.reason == R.PREEMPTED
        and (old.message or "").startswith(_stopping_note(name))
    )
    message = state.evicted if state is not None else None
    if message is None and not remembered:
        return False
    if state is not None and not state.terminated:
        w.phase, w.reason = P.QUEUED, R.PREEMPTED
        w.message = f"{_stopping_note(name)}: it stops after its checkpoint. {sentence(message)}"
        return None
    if state is None:
        state = PodState(name, K.FAILED, R.WORKLOAD_EVICTED, "evicted by Kueue")
    told = sentence(message) if message is not None else state.message
    _record(w, n, replace(state, reason=R.WORKLOAD_EVICTED, message=told), step, now)
    return True


def _gated(
    w: _Work,
    job: m.FineTuneJob,
    state: PodState,
    *,
    admission: str | None,
    reason: str,
    now: datetime,
) -> None:
    """The pod waits for Kueue to admit its group: phase Queued with Kueue's reason, bounded by
    spec.queueTimeoutSeconds like a wait for a node."""
    told = sentence(admission) or "Kueue has not admitted it yet."
    limit = job.spec.queue_timeout_seconds
    if limit is not None and state.created is not None and now >= state.created + _s(limit):
        waited = f"Pod {state.name} waited more than {humanize(limit)} for Kueue's admission"
        _fail(w, R.QUEUE_TIMEOUT, f"{waited} (spec.queueTimeoutSeconds): {told}", now)
        return
    if reason == R.PREEMPTED and w.attempts:
        lead = _evicted_note(w.attempts[-1])
    else:
        lead = f"pod {state.name} waits for Kueue's admission"
    w.phase, w.reason, w.message = P.QUEUED, reason, f"{lead}: {told}"[:MAX_MESSAGE]
