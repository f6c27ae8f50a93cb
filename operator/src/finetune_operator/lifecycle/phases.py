"""The phase machine's handlers: one small pure function per ``Event`` (``events.classify``),
each taking the ``Situation`` and the draft status and returning a new status. ``TABLE`` maps
every (phase, event) pair that can occur to its ``Rule``: the handler and the phases it may
lead to. A pair missing from the table is one ``classify`` never yields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator import planner
from finetune_operator.lifecycle import export
from finetune_operator.lifecycle.conditions import MAX_MESSAGE
from finetune_operator.lifecycle.events import Event, Situation, stalled, stopping_note
from finetune_operator.lifecycle.pods import (
    MISSING_PVC,
    UNBOUND,
    PodKind,
    PodState,
    attempt_failure,
    missing_claim,
    sentence,
)
from finetune_operator.lifecycle.reports import humanize
from finetune_operator.lifecycle.retry import forgiven

P = m.Phase
R = m.Reason
K = PodKind
E = Event
Status = m.FineTuneJobStatus
Handler = Callable[[Situation, Status], Status]


def batch(spec: m.FineTuneJobSpec, plan: m.PlanStatus | None) -> planner.BatchPlan | None:
    """Micro-batch and accumulation for the next training pod: the plan's (halved after a CUDA
    OOM), or a smaller spec.training.microBatchSize set while suspended."""
    spec_micro = spec.training.micro_batch_size
    micro = plan.micro_batch_size if plan is not None else None
    if spec_micro is not None and (micro is None or spec_micro < micro):
        micro = spec_micro
    if micro is None:
        return None
    acc = planner.accumulation_for(spec.training.batch_size, micro, m.world_size(spec))
    return planner.BatchPlan(micro, acc)


def backoff_seconds(job: m.FineTuneJob, failures: int, cap: int | None = None) -> int:
    """Delay before retry number ``failures`` (1-based): backoff x 2^(n-1), bounded."""
    r = job.spec.retry
    delay = r.backoff_seconds * (2 ** max(0, failures - 1))
    bound = r.max_backoff_seconds if cap is None else min(cap, r.max_backoff_seconds)
    return int(min(delay, bound))


def _s(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def to(s: Status, phase: str, reason: str, message: str | None, **more: object) -> Status:
    """``s`` in ``phase`` for ``reason``."""
    return s.model_copy(update={"phase": P(phase), "reason": reason, "message": message, **more})


def failed(s: Status, reason: str, message: str | None, now: datetime) -> Status:
    """``s`` Failed for ``reason``: completed now (unless it was already), no retry due."""
    done = s.completion_time or now
    return to(
        s, P.FAILED, reason, sentence(message) or None, completion_time=done, retry_after=None
    )


def _record(x: Situation, s: Status, state: PodState, attempt: int | None = None) -> Status:
    """``s`` with the attempt that ``state`` ended appended to status.attempts."""
    rec = m.Attempt(
        attempt=s.attempt if attempt is None else attempt,
        pod=state.name,
        reason=state.reason or R.ERROR,
        exit_code=state.exit_code,
        step=None if attempt == 0 else x.step,
        message=sentence(state.message) or None,
        start_time=state.started,
        finish_time=state.finished or x.now,
    )
    return s.model_copy(update={"attempts": [*s.attempts, rec]})


def _state(x: Situation) -> PodState:
    assert x.state is not None, "classify yields a pod event only with a pod"
    return x.state


# -- retries -------------------------------------------------------------------------------


def _failures(x: Situation, s: Status, *, prepare: bool) -> int:
    return sum(
        1
        for i, a in enumerate(s.attempts)
        if a.reason in R.RETRIABLE
        and ((a.attempt == 0) if prepare else (a.attempt >= 1))
        and not forgiven(x.job.status, i)  # a retry of the Failed job reset the budget
    )


def _retry_or_fail(
    x: Situation, s: Status, *, prepare: bool, just_recorded: bool
) -> tuple[Status, bool]:
    """After a failed attempt (the last of status.attempts): Failed (not retriable / limit
    reached), Pending in backoff, or True when the next attempt may start now. A CUDA OOM halves
    the micro-batch once, when the attempt is recorded (``just_recorded``)."""
    last, now, limit = s.attempts[-1], x.now, x.job.spec.retry.limit
    if last.reason not in R.RETRIABLE:
        return failed(s, last.reason, last.message or attempt_failure(last), now), False
    failures = _failures(x, s, prepare=prepare)
    if failures > limit:
        what = "The prepare stage" if prepare else "Training"
        msg = f"{what} failed {failures} times (retry limit {limit}). {attempt_failure(last)}"
        return failed(s, last.reason, msg, now), False
    if last.reason == R.CUDA_OOM and not prepare and just_recorded:
        plan = _halved_plan(x.job.spec, s.plan)
        if plan is None:
            msg = f"CUDA out of memory with micro-batch 1: {last.message}"
            return failed(s, R.CUDA_OOM, msg, now), False
        s = s.model_copy(update={"plan": plan})
    retry_at = (last.finish_time or now) + _s(backoff_seconds(x.job, failures, x.cap))
    if retry_at > now:
        msg = f"retry {failures}/{limit} after {last.reason} at {_stamp(retry_at)}"
        return to(s, P.PENDING, R.BACKOFF, msg, retry_after=retry_at), False
    return s.model_copy(update={"retry_after": None}), True


def _halved_plan(spec: m.FineTuneJobSpec, plan: m.PlanStatus | None) -> m.PlanStatus | None:
    """The plan after a CUDA OOM: half the micro-batch, the same effective batch; None at
    micro-batch 1."""
    current = batch(spec, plan)
    micro = current.micro_batch_size if current else spec.training.batch_size
    halved = planner.after_cuda_oom(spec.training.batch_size, micro, m.world_size(spec))
    if halved is None:
        return None
    if plan is not None and plan.micro_batch_size == halved.micro_batch_size:
        return plan
    return (plan or m.PlanStatus()).model_copy(
        update={
            "micro_batch_size": halved.micro_batch_size,
            "gradient_accumulation": halved.gradient_accumulation,
            "message": f"micro-batch halved to {halved.micro_batch_size} after CUDA OOM "
            f"(accumulation {halved.gradient_accumulation}, same effective batch)",
        }
    )


# -- waiting for a node or for Kueue ------------------------------------------------------------


def _waiting_message(job: m.FineTuneJob, state: PodState, train: bool) -> str:
    gpus = job.spec.resources.gpus
    if train and gpus > 0 and b.GPU in (state.message or ""):
        return f"waiting for {gpus} {b.GPU}: {state.message}"[:MAX_MESSAGE]
    return f"waiting for a node: {state.message}"[:MAX_MESSAGE]


def _timed_out(x: Situation, state: PodState) -> bool:
    limit = x.job.spec.queue_timeout_seconds
    return limit is not None and state.created is not None and x.now >= state.created + _s(limit)


def _unschedulable(x: Situation, s: Status, *, train: bool) -> Status:
    state = _state(x)
    msg = state.message or ""
    missing = MISSING_PVC.search(msg)
    if missing:  # not "unbound" claims: those are still being provisioned
        return failed(s, R.PVC_NOT_FOUND, missing_claim(missing.group(1)), x.now)
    if UNBOUND.search(msg):  # not queued for a node yet: the phase stays, no Ready flapping
        phase = P.STARTING if train else P.PREPARING
        return to(
            s, phase, phase, f"{state.name} waits for its volume claims to bind: {sentence(msg)}"
        )
    if _timed_out(x, state):
        limit = x.job.spec.queue_timeout_seconds or 0
        waited = f"Pod {state.name} waited more than {humanize(limit)} for a node"
        why = f"{waited} (spec.queueTimeoutSeconds): {sentence(msg)}"
        return failed(s, R.QUEUE_TIMEOUT, why, x.now)
    return to(s, P.QUEUED, R.UNSCHEDULABLE, _waiting_message(x.job, state, train))


def _evicted_note(rec: m.Attempt) -> str:
    step = f" at step {rec.step}" if rec.step is not None else ""
    return f"evicted by Kueue{step} ({rec.message or 'no message'})"


def _gated(x: Situation, s: Status, reason: str) -> Status:
    """The pod waits for Kueue to admit its group: phase Queued with Kueue's reason, bounded by
    spec.queueTimeoutSeconds like a wait for a node."""
    state = _state(x)
    told = sentence(x.admission) or "Kueue has not admitted it yet."
    if _timed_out(x, state):
        limit = x.job.spec.queue_timeout_seconds or 0
        waited = f"Pod {state.name} waited more than {humanize(limit)} for Kueue's admission"
        return failed(s, R.QUEUE_TIMEOUT, f"{waited} (spec.queueTimeoutSeconds): {told}", x.now)
    if reason == R.PREEMPTED and s.attempts:
        lead = _evicted_note(s.attempts[-1])
    else:
        lead = f"pod {state.name} waits for Kueue's admission"
    return to(s, P.QUEUED, reason, f"{lead}: {told}"[:MAX_MESSAGE])


# -- the prepare stage ---------------------------------------------------------------------

_KNOWN_PREPARE_ERRORS = {R.BAD_DATA, R.BAD_CONFIG, R.MODEL_NOT_FOUND, R.PLAN_REFUSED, R.DISK_FULL}


def prepared(x: Situation, s: Status) -> Status:
    # what the prepare stage found goes on the resource before the training pod exists: this
    # status is published first, then the next pass starts attempt 1
    if x.job.spec.suspend:  # suspended meanwhile: the report is kept, no pass through Preparing
        return to(s, P.SUSPENDED, R.SUSPENDED, "data checked and memory planned; suspended")
    return to(s, P.PREPARING, R.PREPARED, "data checked and memory planned; starting training")


def prepare_reported_failure(x: Situation, s: Status) -> Status:
    error = x.prepare.error if x.prepare is not None else None
    reason = (error.reason if error else None) or R.ERROR
    known = reason if reason in _KNOWN_PREPARE_ERRORS else R.ERROR
    return failed(s, known, error.message if error else None, x.now)


def prepare_resumed_stopping(x: Situation, s: Status) -> Status:
    msg = f"resume requested: waiting for {_state(x).name} to stop"
    return to(s, P.SUSPENDING, P.SUSPENDING, msg)


def prepare_resumed_stopped(x: Situation, s: Status) -> Status:
    # deleted (next_actions), then the prepare stage starts again
    msg = f"resumed: the prepare stage starts again after {_state(x).name} stopped"
    return to(s, P.PENDING, R.RESUMED, msg, retry_after=None)


def prepare_suspend_stopping(x: Situation, s: Status) -> Status:
    return to(s, P.SUSPENDING, P.SUSPENDING, f"stopping {_state(x).name}")


def prepare_suspended(x: Situation, s: Status) -> Status:
    return to(s, P.SUSPENDED, R.SUSPENDED, "suspended before training")


def prepare_backoff(x: Situation, s: Status) -> Status:
    assert s.retry_after is not None
    return to(s, P.PENDING, R.BACKOFF, f"prepare retry at {_stamp(s.retry_after)}")


def prepare_active(x: Situation, s: Status) -> Status:
    """Due (its pod is created next) or pending or running."""
    due = s.retry_after if x.state is not None else None  # a due pod: its backoff is over
    return to(s, P.PREPARING, P.PREPARING, "checking data and planning memory", retry_after=due)


def prepare_no_report(x: Situation, s: Status) -> Status:
    return failed(s, R.ERROR, "the prepare stage ended without writing prepare.json", x.now)


def prepare_pod_failed(x: Situation, s: Status) -> Status:
    state = _state(x)
    if not any(a.pod == state.name and a.finish_time == state.finished for a in s.attempts):
        s = _record(x, s, state, attempt=0)
    s, go = _retry_or_fail(x, s, prepare=True, just_recorded=True)
    if not go:
        return s
    # the terminated pod is deleted (next_actions) and created again next time
    msg = f"retrying the prepare stage after {s.attempts[-1].reason}"
    return to(s, P.PENDING, R.RETRYING, msg, retry_after=x.now)


def pod_waiting_error(x: Situation, s: Status) -> Status:
    state = _state(x)
    return failed(s, state.reason or R.ERROR, state.message, x.now)


def prepare_pod_unschedulable(x: Situation, s: Status) -> Status:
    return _unschedulable(x, s, train=False)


def prepare_pod_gated(x: Situation, s: Status) -> Status:
    # a namespace whose Kueue queues every pod (docs/kueue.md)
    return _gated(x, s, R.WAITING_FOR_ADMISSION)


# -- the training stage --------------------------------------------------------------------


def train_succeeded(x: Situation, s: Status) -> Status:
    state = _state(x)
    s = _record(x, s, state)
    done = state.finished or x.now
    if export.wanted(x.job):  # the GPU pod is done; the CPU export pod comes next
        phase, reason, message = export.derive_export(x.job, None)[:3]
        return to(s, phase, reason, message, completion_time=done)
    return to(
        s, P.SUCCEEDED, R.COMPLETED, "training finished; output written", completion_time=done
    )


def train_eviction_stopping(x: Situation, s: Status) -> Status:
    state = _state(x)
    name = b.train_pod_name(x.job, s.attempt)
    msg = f"{stopping_note(name)}: it stops after its checkpoint. {sentence(state.evicted)}"
    return to(s, P.QUEUED, R.PREEMPTED, msg)


def train_evicted(x: Situation, s: Status) -> Status:
    """Handled like a suspend: the trainer checkpointed on SIGTERM, the attempt is recorded as
    WorkloadEvicted (no retry counted) and the next attempt's pod group waits for readmission."""
    state = x.state
    if state is None:
        state = PodState(
            b.train_pod_name(x.job, s.attempt), K.FAILED, R.WORKLOAD_EVICTED, "evicted by Kueue"
        )
    told = sentence(x.state.evicted) if x.state is not None else state.message
    s = _record(x, s, replace(state, reason=R.WORKLOAD_EVICTED, message=told))
    return attempt_over(x, s)


def train_stopping(x: Situation, s: Status) -> Status:
    name = _state(x).name
    if x.job.spec.suspend:
        return to(s, P.SUSPENDING, P.SUSPENDING, f"stopping {name}: checkpoint, then exit")
    msg = f"resume requested: waiting for {name} to stop after its checkpoint"
    return to(s, P.SUSPENDING, P.SUSPENDING, msg)


def _record_suspended(x: Situation, s: Status) -> Status:
    state = x.state or PodState(b.train_pod_name(x.job, s.attempt), K.FAILED, R.SUSPENDED, None)
    return _record(x, s, replace(state, reason=R.SUSPENDED))


def train_suspended(x: Situation, s: Status) -> Status:
    if s.attempt and not x.recorded:
        s = _record_suspended(x, s)
    where = f" at checkpoint step {s.checkpoint.step}" if s.checkpoint else ""
    return to(s, P.SUSPENDED, R.SUSPENDED, f"suspended{where}; GPUs released")


def train_resumed(x: Situation, s: Status) -> Status:
    return attempt_over(x, _record_suspended(x, s))


def train_pod_gone(x: Situation, s: Status) -> Status:
    name = b.train_pod_name(x.job, s.attempt)
    gone = PodState(name, K.FAILED, R.POD_DELETED, "the pod disappeared")
    return attempt_over(x, _record(x, s, gone), just_recorded=True)


def train_pod_failed(x: Situation, s: Status) -> Status:
    return attempt_over(x, _record(x, s, _state(x)), just_recorded=True)


def train_pod_waiting_error(x: Situation, s: Status) -> Status:
    return pod_waiting_error(x, _record(x, s, _state(x)))


def train_pod_unschedulable(x: Situation, s: Status) -> Status:
    return _unschedulable(x, s, train=True)


def train_pod_gated(x: Situation, s: Status) -> Status:
    after = s.attempts[-1].reason if s.attempts else None
    return _gated(x, s, R.PREEMPTED if after == R.WORKLOAD_EVICTED else R.WAITING_FOR_ADMISSION)


def train_pod_pending(x: Situation, s: Status) -> Status:
    state = _state(x)
    detail = f" ({state.message})" if state.message else ""
    return to(s, P.STARTING, P.STARTING, f"pod {state.name} is starting{detail}")


def _started(x: Situation, s: Status) -> Status:
    return s.model_copy(update={"start_time": s.start_time or _state(x).started or x.now})


def train_pod_running(x: Situation, s: Status) -> Status:
    s, p, name = _started(x, s), s.progress, _state(x).name
    if p is None or p.step is None:
        return to(s, P.RUNNING, P.RUNNING, f"pod {name} is running")
    total = f"/{p.total_steps}" if p.total_steps else ""
    loss = f", loss {p.loss:.4g}" if p.loss is not None else ""
    return to(s, P.RUNNING, P.RUNNING, f"step {p.step}{total}{loss}")


def train_stalled(x: Situation, s: Status) -> Status:
    # stopped (next_actions) and retried from its checkpoint like a failed attempt
    state = replace(_state(x), reason=R.STALLED, message=stalled(x))
    return attempt_over(x, _record(x, _started(x, s), state), just_recorded=True)


def attempt_over(x: Situation, s: Status, *, just_recorded: bool = False) -> Status:
    """The current attempt (if any) is over: done, retry, resume or start the first one."""
    n = s.attempt
    last = s.attempts[-1] if (n and s.attempts) else None
    if last is not None and last.reason == R.COMPLETED:
        return to(s, P.SUCCEEDED, R.COMPLETED, None)
    if (
        last is not None
        and last.reason not in (R.SUSPENDED, R.WORKLOAD_EVICTED)
        and not forgiven(x.job.status, len(s.attempts) - 1)  # retried by the user: no budget
    ):
        s, go = _retry_or_fail(x, s, prepare=False, just_recorded=just_recorded)
        if not go:
            return s
    if x.active and x.job.spec.resources.nodes > 1:
        # a gang: the failed attempt's other nodes are stopped first (next_actions); bumping the
        # attempt now would find its pods missing at the next pass and count them as deleted
        msg = f"attempt {n} failed: stopping its other nodes before attempt {n + 1}"
        return to(s, P.PENDING, R.BACKOFF, msg)
    return _next_attempt(s, last)


def _next_attempt(s: Status, last: m.Attempt | None) -> Status:
    n = s.attempt + 1
    frm = f" from checkpoint step {s.checkpoint.step}" if s.checkpoint and s.attempt else ""
    s = s.model_copy(update={"attempt": n, "retry_after": None})
    if last is not None and last.reason == R.WORKLOAD_EVICTED:
        # the new pod group is created gated: it waits in the queue, not for a node
        msg = f"{_evicted_note(last)}; attempt {n} waits for readmission{frm}"
        return to(s, P.QUEUED, R.PREEMPTED, msg)
    resumed = last is not None and last.reason == R.SUSPENDED
    return to(
        s, P.STARTING, P.STARTING, f"{'resuming' if resumed else 'starting'} attempt {n}{frm}"
    )


def train_attempt_over(x: Situation, s: Status) -> Status:
    return attempt_over(x, s)


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What the machine does on an event: ``handle``; the phases that may result: ``to``
    (besides staying, and Failed by spec.activeDeadlineSeconds, which ``derive`` checks after
    every stage event)."""

    handle: Handler
    to: frozenset[P]


def _ph(*phases: P) -> frozenset[P]:
    return frozenset(phases)


_WORKING = _ph(P.PENDING, P.PREPARING, P.QUEUED, P.STARTING, P.RUNNING, P.SUSPENDING, P.SUSPENDED)
_STOPPED = _ph(P.SUSPENDING, P.SUSPENDED)
_PREPARE_POD = _WORKING - _STOPPED  # there, with a prepare pod, it is a suspend or a resume
_FIRST = _WORKING - {P.STARTING, P.RUNNING}  # where attempt can be 0 (Starting bumps it)
_FRESH = _WORKING - {P.SUSPENDING}  # a current attempt not recorded in Suspending: a resume
_NEXT = _ph(P.STARTING, P.QUEUED, P.PENDING, P.FAILED, P.SUCCEEDED)  # attempt_over's results
_RETRY = _ph(P.PENDING, P.FAILED)
_RETRIED = _RETRY | {P.STARTING}  # attempt_over after a failure it just recorded
_WAIT = _ph(P.QUEUED, P.FAILED)  # a wait for a node or Kueue; Failed after queueTimeoutSeconds

# event -> (the phases it can occur in, its handler, the phases it may lead to). The restart,
# retry, finished and export rules are derive's (their handlers read no draft status).
Spec = tuple[frozenset[P], Handler, frozenset[P]]
RULES: dict[Event, Spec] = {
    E.PREPARED: (_FIRST, prepared, _ph(P.PREPARING, P.SUSPENDED)),
    E.PREPARE_REPORTED_FAILURE: (_WORKING, prepare_reported_failure, _ph(P.FAILED)),
    E.PREPARE_RESUMED_STOPPING: (_STOPPED, prepare_resumed_stopping, _ph(P.SUSPENDING)),
    E.PREPARE_RESUMED_STOPPED: (_STOPPED, prepare_resumed_stopped, _ph(P.PENDING)),
    E.PREPARE_SUSPEND_STOPPING: (_WORKING, prepare_suspend_stopping, _ph(P.SUSPENDING)),
    E.PREPARE_SUSPENDED: (_WORKING, prepare_suspended, _ph(P.SUSPENDED)),
    E.PREPARE_BACKOFF: (_WORKING, prepare_backoff, _ph(P.PENDING)),
    E.PREPARE_DUE: (_WORKING, prepare_active, _ph(P.PREPARING)),
    E.PREPARE_NO_REPORT: (_PREPARE_POD, prepare_no_report, _ph(P.FAILED)),
    E.PREPARE_POD_FAILED: (_PREPARE_POD, prepare_pod_failed, _RETRY),
    E.PREPARE_POD_WAITING_ERROR: (_PREPARE_POD, pod_waiting_error, _ph(P.FAILED)),
    E.PREPARE_POD_UNSCHEDULABLE: (_PREPARE_POD, prepare_pod_unschedulable, _WAIT | {P.PREPARING}),
    E.PREPARE_POD_GATED: (_PREPARE_POD, prepare_pod_gated, _WAIT),
    E.PREPARE_POD_ACTIVE: (_PREPARE_POD, prepare_active, _ph(P.PREPARING)),
    E.TRAIN_SUCCEEDED: (_WORKING, train_succeeded, _ph(P.SUCCEEDED, P.EXPORTING)),
    E.TRAIN_EVICTION_STOPPING: (_WORKING, train_eviction_stopping, _ph(P.QUEUED)),
    E.TRAIN_EVICTED: (_WORKING, train_evicted, _ph(P.PENDING, P.QUEUED)),
    E.TRAIN_STOPPING: (_WORKING, train_stopping, _ph(P.SUSPENDING)),
    E.TRAIN_SUSPENDED: (_WORKING, train_suspended, _ph(P.SUSPENDED)),
    E.TRAIN_RESUMED: (_ph(P.SUSPENDING), train_resumed, _ph(P.STARTING)),
    E.TRAIN_POD_GONE: (_FRESH, train_pod_gone, _RETRIED),
    E.TRAIN_POD_FAILED: (_FRESH, train_pod_failed, _RETRIED),
    E.TRAIN_POD_WAITING_ERROR: (_FRESH, train_pod_waiting_error, _ph(P.FAILED)),
    E.TRAIN_POD_UNSCHEDULABLE: (_FRESH, train_pod_unschedulable, _WAIT | {P.STARTING}),
    E.TRAIN_POD_GATED: (_FRESH, train_pod_gated, _WAIT),
    E.TRAIN_POD_PENDING: (_FRESH, train_pod_pending, _ph(P.STARTING)),
    E.TRAIN_POD_RUNNING: (_FRESH, train_pod_running, _ph(P.RUNNING)),
    E.TRAIN_STALLED: (_FRESH, train_stalled, _RETRIED),
    E.TRAIN_ATTEMPT_OVER: (_WORKING, train_attempt_over, _NEXT),
}
