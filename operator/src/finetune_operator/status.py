"""Pure status derivation: (job, pods, progress, prepare result, now) → status, and what to do next.

The phase is always derived here from the pods the operator created and the reports the trainer
wrote; a training pod cannot mark its job Succeeded. ``derive_status`` also decides when a new
attempt starts (it bumps ``status.attempt``); ``next_actions`` turns the new status into the few
API calls the handler makes. Conditions follow kstatus (see ``CONDITION_TABLE``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator import planner

C = m.ConditionType
P = m.Phase
R = m.Reason
MAX_MESSAGE = 1024
_T, _F = "True", "False"

# phase -> status of (Ready, Reconciling, Stalled, Progressing, Suspended, Succeeded, Failed).
# kstatus reads Reconciling=True as InProgress, Stalled=True as Failed, Ready=True as Current.
CONDITION_TABLE: dict[str, tuple[str, str, str, str, str, str, str]] = {
    P.PENDING: (_F, _T, _F, _T, _F, _F, _F),
    P.PREPARING: (_F, _T, _F, _T, _F, _F, _F),
    P.QUEUED: (_T, _F, _F, _F, _F, _F, _F),
    P.STARTING: (_F, _T, _F, _T, _F, _F, _F),
    P.RUNNING: (_T, _F, _F, _T, _F, _F, _F),
    P.SUSPENDING: (_F, _T, _F, _F, _F, _F, _F),
    P.SUSPENDED: (_T, _F, _F, _F, _T, _F, _F),
    P.SUCCEEDED: (_T, _F, _F, _F, _F, _T, _F),
    P.FAILED: (_F, _F, _T, _F, _F, _F, _T),
}
_CONDITION_ORDER = (
    C.READY,
    C.RECONCILING,
    C.STALLED,
    C.PROGRESSING,
    C.SUSPENDED,
    C.SUCCEEDED,
    C.FAILED,
)


# ----------------------------------------------------------------------------------- conditions


def set_condition(conditions: list[m.Condition], new: m.Condition) -> list[m.Condition]:
    """Insert or update ``new`` by type; ``lastTransitionTime`` moves only when status flips
    (apimachinery ``meta.SetStatusCondition``)."""
    out: list[m.Condition] = []
    found = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        found = True
        if cond.status == new.status:
            out.append(new.model_copy(update={"last_transition_time": cond.last_transition_time}))
        else:
            out.append(new)
    if not found:
        out.append(new)
    return out


def conditions_for(
    phase: str,
    *,
    reason: str | None,
    message: str | None,
    generation: int,
    old: list[m.Condition],
    now: datetime,
) -> list[m.Condition]:
    """All seven conditions for a phase (reason: the phase, or the failure reason)."""
    conditions = list(old)
    for ctype, status in zip(_CONDITION_ORDER, CONDITION_TABLE[phase], strict=True):
        cond_reason = reason if (phase == P.FAILED and reason) else phase
        conditions = set_condition(
            conditions,
            m.Condition(
                type=ctype,
                status=status,  # type: ignore[arg-type]
                reason=cond_reason,
                message=(message or "")[:MAX_MESSAGE],
                last_transition_time=now,
                observed_generation=generation,
            ),
        )
    order = {t: i for i, t in enumerate(_CONDITION_ORDER)}
    return sorted(conditions, key=lambda c: order.get(c.type, len(order)))


# ---------------------------------------------------------------------------------------- pods


@dataclass(frozen=True)
class PodState:
    """What matters about one pod."""

    name: str
    kind: str  # pending | unschedulable | waiting-error | running | succeeded | failed
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started: datetime | None = None
    finished: datetime | None = None
    deleting: bool = False
    created: datetime | None = None
    attempt: int = 0  # the training attempt (0: the prepare pod)

    @property
    def terminated(self) -> bool:
        return self.kind in ("succeeded", "failed")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time (or a datetime) from the API or a trainer report; None if unreadable."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:MAX_MESSAGE] if lines else None


# a log line's time stamp, level and logger name, or an exception's class name
_LOG_PREFIX = re.compile(
    r"^(?:\d{4}-\d\d-\d\d[T ][\d:.,]+\S*\s+)?"
    r"(?:(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b[:\s]+(?:[A-Za-z_][\w.]*:\s+)?)?"
    r"(?:[A-Z]\w*(?:Error|Exception):\s+)?"
)


def sentence(text: str | None) -> str:
    """A report or termination message as one sentence: its last line without a log prefix or
    quotes, whitespace collapsed, capitalised, ending with a full stop ('' when empty)."""
    line = " ".join(_LOG_PREFIX.sub("", _last_line(text) or "", count=1).split())
    if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'`":  # a quoted line
        line = line[1:-1].strip()
    if not line:
        return ""
    first = line.split(" ", 1)[0]
    if first.isalpha() and first.islower():  # never a file or object name
        line = line[0].upper() + line[1:]
    if line[-1] not in ".!?":
        line += "."
    return line[:MAX_MESSAGE]


def failure_message(pod: str, reason: str, exit_code: int | None, detail: str | None) -> str:
    """``Pod bot-2 failed with CudaOOM (exit code 11): CUDA out of memory.``"""
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    told = sentence(detail)
    return f"Pod {pod} failed with {reason}{code}" + (f": {told}" if told else ".")


_MISSING_PVC = re.compile(r'persistentvolumeclaim "([^"]+)" not found', re.IGNORECASE)


def missing_claim(name: str) -> str:
    return f'The PersistentVolumeClaim "{name}" does not exist.'


_UNBOUND = re.compile(r"unbound (immediate )?persistentvolumeclaims", re.IGNORECASE)
_IMAGE_ERRORS = {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


def pod_state(pod: dict[str, Any]) -> PodState:
    """Classify a pod: where it is in its life and, if it failed, why (docs/contract.md §4)."""
    meta = pod.get("metadata") or {}
    created = parse_time(meta.get("creationTimestamp"))
    return replace(_pod_state(pod), created=created, attempt=_attempt_of(pod))


def _pod_state(pod: dict[str, Any]) -> PodState:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    name = str(meta.get("name", ""))
    deleting = bool(meta.get("deletionTimestamp"))
    started = parse_time(status.get("startTime"))
    phase = status.get("phase", "Pending")
    containers = status.get("containerStatuses") or []
    cstate: dict[str, Any] = (containers[0].get("state") or {}) if containers else {}
    term = cstate.get("terminated")
    if phase in ("Succeeded", "Failed") or term:
        code = term.get("exitCode") if term else None
        finished = parse_time(term.get("finishedAt")) if term else None
        message = _last_line(term.get("message") if term else None)
        if phase == "Failed" and status.get("reason") == "Evicted":
            msg = _last_line(status.get("message"))
            return PodState(name, "failed", R.EVICTED, msg, code, started, finished, deleting)
        if code == 0 and phase != "Failed":
            return PodState(name, "succeeded", R.COMPLETED, message, 0, started, finished, deleting)
        if term and term.get("reason") == "OOMKilled":
            msg = message or "the container exceeded its memory limit"
            return PodState(name, "failed", R.OOM_KILLED, msg, code, started, finished, deleting)
        if code is None:
            msg = _last_line(status.get("message")) or status.get("reason") or "pod failed"
            return PodState(name, "failed", R.ERROR, msg, None, started, finished, deleting)
        reason = m.EXIT_CODE_REASONS.get(int(code), R.ERROR)
        return PodState(name, "failed", reason, message, int(code), started, finished, deleting)
    waiting = cstate.get("waiting") or {}
    wreason = waiting.get("reason")
    if wreason in _IMAGE_ERRORS:
        msg = _last_line(waiting.get("message")) or wreason
        return PodState(name, "waiting-error", R.IMAGE_PULL, msg, None, started, None, deleting)
    if wreason == "CreateContainerConfigError":
        msg = _last_line(waiting.get("message")) or wreason
        low = msg.lower()
        reason = (
            R.SECRET_NOT_FOUND
            if "secret" in low
            else R.CONFIG_MAP_NOT_FOUND
            if "configmap" in low
            else R.BAD_CONFIG
        )
        return PodState(name, "waiting-error", reason, msg, None, started, None, deleting)
    if cstate.get("running"):
        return PodState(name, "running", None, None, None, started, None, deleting)
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            msg = str(cond.get("message") or "no node fits")
            return PodState(
                name, "unschedulable", R.UNSCHEDULABLE, msg, None, started, None, deleting
            )
    msg = wreason or None
    return PodState(name, "pending", wreason, msg, None, started, None, deleting)


def _attempt_of(pod: dict[str, Any]) -> int:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(m.LABEL_ROLE) != "train":
        return 0
    try:
        return int(labels.get(m.LABEL_ATTEMPT, "0"))
    except ValueError:
        return 0


# ------------------------------------------------------------------------------------ progress

_MAX_STEPS = 10**9


def _num(value: Any, lo: float, hi: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    if math.isnan(f) or math.isinf(f) or f < lo or f > hi:
        return None
    return f


def _int(value: Any, lo: int, hi: int) -> int | None:
    f = _num(value, lo, hi)
    return None if f is None or f != int(f) else int(f)


def humanize(seconds: int) -> str:
    """``4500`` → ``1h15m``; ``75`` → ``1m15s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def merge_progress(
    old: m.Progress | None,
    raw: dict[str, Any] | None,
    attempt: int,
    total_steps: int | None,
    now: datetime,
) -> m.Progress | None:
    """Validated copy of a trainer report, or ``old`` when the report is stale or absurd.

    Reports of older attempts are ignored; within an attempt the step never goes back; NaN,
    infinite and out-of-range numbers are dropped field by field.
    """
    if not raw:
        return old
    rep_attempt = _int(raw.get("attempt"), 0, 10**6)
    if rep_attempt is None or rep_attempt != attempt:
        return old
    step = _int(raw.get("step"), 0, _MAX_STEPS)
    if step is None:
        return old
    if old is not None and old.attempt == attempt and old.step is not None and step < old.step:
        return old
    total = _int(raw.get("total_steps"), 1, _MAX_STEPS) or total_steps
    if total is not None and step > total:
        return old
    percent = round(100.0 * step / total, 1) if total else None
    eta = _int(raw.get("eta_seconds"), 0, 10**8)
    loss = _num(raw.get("loss"), 0.0, 1e6)
    if loss is not None:
        loss = float(f"{loss:.4g}")  # what `kubectl get ftj` prints
    return m.Progress(
        attempt=attempt,
        step=step,
        total_steps=total,
        percent=percent,
        percent_text=f"{percent:g}%" if percent is not None else None,
        epoch=_num(raw.get("epoch"), 0.0, 1e6),
        loss=loss if loss is not None else (old.loss if old else None),
        learning_rate=_num(raw.get("learning_rate"), 0.0, 10.0),
        tokens_per_second=_num(raw.get("tokens_per_second"), 0.0, 1e9),
        eta_seconds=eta,
        eta=humanize(eta) if eta is not None else None,
        gpu_memory_mib=_int(raw.get("gpu_memory_mib"), 0, 10**7),
        packing=str(raw["packing"])[:200] if isinstance(raw.get("packing"), str) else None,
        updated_at=parse_time(raw.get("time"))
        or (
            old.updated_at
            if old is not None and (old.attempt, old.step) == (attempt, step)
            else None
        )
        or now,
    )


def merge_checkpoint(
    old: m.CheckpointStatus | None, raw: dict[str, Any] | None
) -> m.CheckpointStatus | None:
    ckpt = (raw or {}).get("checkpoint")
    if not isinstance(ckpt, dict):
        return old
    step = _int(ckpt.get("step"), 0, _MAX_STEPS)
    if step is None or (old is not None and step < old.step):
        return old
    path = ckpt.get("path")
    return m.CheckpointStatus(
        step=step, path=str(path)[:1024] if path else "", time=parse_time(ckpt.get("time"))
    )


def _prepare_ok(result: dict[str, Any] | None) -> bool:
    return bool(result) and result.get("ok") is True  # type: ignore[union-attr]


def _data(result: dict[str, Any]) -> m.DataStatus | None:
    data = result.get("data")
    if not isinstance(data, dict):
        return None
    return m.DataStatus(
        records=_int(data.get("records"), 0, 10**12),
        tokens=_int(data.get("tokens"), 0, 10**15),
        truncated=_int(data.get("truncated"), 0, 10**12),
    )


def _plan(result: dict[str, Any]) -> m.PlanStatus | None:
    plan = result.get("plan")
    if not isinstance(plan, dict):
        return None
    fits = plan.get("fits")
    msg = plan.get("message")
    return m.PlanStatus(
        strategy=str(plan["strategy"])[:64] if plan.get("strategy") else None,
        micro_batch_size=_int(plan.get("micro_batch_size"), 1, 1 << 20),
        gradient_accumulation=_int(plan.get("gradient_accumulation"), 1, 1 << 20),
        estimated_gpu_memory_mib=_int(plan.get("estimated_gpu_memory_mib"), 0, 10**8),
        gpu_memory_mib=_int(plan.get("gpu_memory_mib"), 0, 10**8),
        parameters=_int(plan.get("parameters"), 0, 10**14),
        fits=fits if isinstance(fits, bool) else None,
        message=str(msg)[:MAX_MESSAGE] if msg else None,
    )


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
    acc = planner.accumulation_for(spec.training.batch_size, micro, spec.resources.gpus)
    return planner.BatchPlan(micro, acc)


# -------------------------------------------------------------------------------------- derive


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
    missing = _MISSING_PVC.search(msg)
    if missing:  # not "unbound" claims: those are still being provisioned
        _fail(w, R.PVC_NOT_FOUND, missing_claim(missing.group(1)), now)
        return
    if _UNBOUND.search(msg):  # not queued for a node yet: the phase stays, no Ready flapping
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
        _fail(w, last.reason, last.message or _attempt_failure(last), now)
        return False
    failures = [
        a
        for a in w.attempts
        if a.reason in R.RETRIABLE and ((a.attempt == 0) if prepare else (a.attempt >= 1))
    ]
    limit = job.spec.retry.limit
    if len(failures) > limit:
        what = "The prepare stage" if prepare else "Training"
        msg = f"{what} failed {len(failures)} times (retry limit {limit}). {_attempt_failure(last)}"
        _fail(w, last.reason, msg, now)
        return False
    if last.reason == R.CUDA_OOM and not prepare and just_recorded:
        current = _batch(job.spec, w.plan)
        micro = current.micro_batch_size if current else job.spec.training.batch_size
        halved = planner.after_cuda_oom(
            job.spec.training.batch_size, micro, job.spec.resources.gpus
        )
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


def _attempt_failure(rec: m.Attempt) -> str:
    return failure_message(rec.pod, rec.reason, rec.exit_code, rec.message)


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
        conditions=conditions_for(
            P.PENDING,
            reason=R.RESTARTING,
            message=message,
            generation=job.generation,
            old=old.conditions,
            now=now,
        ),
        run=run,
        last_restart_requested_at=value,
    )


def _still_restarting(
    job: m.FineTuneJob, pods: list[dict[str, Any]], now: datetime
) -> m.FineTuneJobStatus:
    old = job.status
    names = ", ".join(sorted(str((p.get("metadata") or {}).get("name")) for p in pods))
    message = f"restart: waiting for the previous run's pods to go ({names})"
    return old.model_copy(
        update={
            "message": message[:MAX_MESSAGE],
            "observed_generation": job.generation,
            "conditions": conditions_for(
                P.PENDING,
                reason=R.RESTARTING,
                message=message,
                generation=job.generation,
                old=old.conditions,
                now=now,
            ),
        }
    )


def derive_status(
    job: m.FineTuneJob,
    pods: list[dict[str, Any]],
    progress: dict[str, Any] | None,
    prepare_result: dict[str, Any] | None,
    now: datetime,
    *,
    max_backoff: int | None = None,
) -> m.FineTuneJobStatus:
    """The job's new status. Bumps ``attempt`` (phase Starting) when a new training pod is due.

    A restart request (annotation) comes first, whatever the phase; the restart then waits until
    every pod of the previous run is gone (they may still report) before the new run prepares,
    and ignores the reports left in the progress object (``next_actions`` wipes them)."""
    requested = restart_requested(job)
    if requested is not None:
        return restart_status(job, requested, now)
    if restarting(job.status):
        if pods:
            return _still_restarting(job, pods, now)
        progress, prepare_result = None, None
    old = job.status
    gen = job.generation
    if old.phase in P.TERMINAL:
        return old.model_copy(
            update={
                "observed_generation": gen,
                "conditions": conditions_for(
                    old.phase or P.FAILED,
                    reason=old.reason,
                    message=old.message,
                    generation=gen,
                    old=old.conditions,
                    now=now,
                ),
            }
        )
    by_name = {str((p.get("metadata") or {}).get("name")): p for p in pods}
    attempt = max([old.attempt, *(_attempt_of(p) for p in pods)])
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
            old.checkpoint, progress if (progress or {}).get("attempt") == attempt else None
        ),
    )
    data = old.data
    total_steps = None
    if prepare_result:  # data and plan are there even when the plan refuses the job
        data = _data(prepare_result) or data
        if w.plan is None:
            w.plan = _plan(prepare_result)
    if _prepare_ok(prepare_result) and old.plan is None and w.plan is not None and not attempt:
        # what the prepare stage found goes on the resource before the training pod exists:
        # this status is published first, then the next pass starts attempt 1
        w.phase, w.reason = P.PREPARING, R.PREPARED
        w.message = "data checked and memory planned; starting training"
    elif _prepare_ok(prepare_result) or (attempt and old.plan is not None):
        # the status remembers a finished prepare stage when prepare.json is lost with a
        # deleted progress ConfigMap (re-created empty)
        total_steps = _int((prepare_result or {}).get("total_steps"), 1, _MAX_STEPS) or (
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
        )
    else:
        _derive_prepare(
            w,
            job,
            pod=by_name.get(b.prepare_pod_name(job)),
            result=prepare_result,
            now=now,
            cap=max_backoff,
        )
    _deadline(w, job, now)
    if w.phase == P.SUCCEEDED and w.progress is not None:
        total = w.progress.total_steps
        w.progress = w.progress.model_copy(
            update={
                "step": total if total is not None else w.progress.step,
                "percent": 100.0,
                "percent_text": "100%",
                "eta_seconds": 0,
                "eta": "0s",
            }
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
        checkpoint=w.checkpoint,
        data=data,
        plan=w.plan,
        start_time=w.start_time,
        completion_time=w.completion_time if w.phase in P.TERMINAL else None,
        run=old.run,
        last_restart_requested_at=old.last_restart_requested_at,
    )


def _derive_prepare(
    w: _Work,
    job: m.FineTuneJob,
    *,
    pod: dict[str, Any] | None,
    result: dict[str, Any] | None,
    now: datetime,
    cap: int | None,
) -> None:
    if result and result.get("ok") is False:
        error = result.get("error") or {}
        reason = str(error.get("reason") or R.ERROR)
        known = {R.BAD_DATA, R.BAD_CONFIG, R.MODEL_NOT_FOUND, R.PLAN_REFUSED}
        _fail(
            w,
            reason if reason in known else R.ERROR,
            str(error.get("message") or "")[:MAX_MESSAGE],
            now,
        )
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
    if state.kind == "succeeded":
        _fail(w, R.ERROR, "the prepare stage ended without writing prepare.json", now)
        return
    if state.kind == "failed":
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
    if state.kind == "waiting-error":
        _fail(w, state.reason or R.ERROR, state.message, now)
        return
    if state.kind == "unschedulable":
        _unschedulable(w, job, state, False, now)
        return
    w.phase, w.reason, w.message = P.PREPARING, P.PREPARING, "checking data and planning memory"


def _derive_training(
    w: _Work,
    job: m.FineTuneJob,
    *,
    by_name: dict[str, dict[str, Any]],
    progress: dict[str, Any] | None,
    total_steps: int | None,
    now: datetime,
    cap: int | None,
) -> None:
    n = w.attempt
    w.progress = merge_progress(w.progress, progress, n, total_steps, now)
    step = w.progress.step if (w.progress and w.progress.attempt == n) else None
    pod = by_name.get(b.train_pod_name(job, n)) if n else None
    state = pod_state(pod) if pod is not None else None
    recorded = any(a.attempt == n for a in w.attempts) if n else True

    if state is not None and not recorded and state.kind == "succeeded":
        _record(w, n, state, step, now)
        w.phase, w.reason, w.message = P.SUCCEEDED, R.COMPLETED, "training finished; output written"
        w.completion_time = state.finished or now
        return

    # the persisted phase remembers that the operator stopped this attempt for a suspend: a
    # resume before the pod is gone waits for it, and however the pod ends it is no failure
    user_stop = job.spec.suspend or (bool(n) and not recorded and w.phase == P.SUSPENDING)
    if user_stop:
        if state is not None and not state.terminated:
            w.phase, w.reason = P.SUSPENDING, P.SUSPENDING
            w.message = (
                f"stopping {state.name}: checkpoint, then exit"
                if job.spec.suspend
                else f"resume requested: waiting for {state.name} to stop after its checkpoint"
            )
            return
        if n and not recorded:
            if state is None:
                state = PodState(b.train_pod_name(job, n), "failed", R.SUSPENDED, None)
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
                b.train_pod_name(job, n), "failed", R.POD_DELETED, "the pod disappeared"
            )
        if state.kind == "failed":
            _record(w, n, state, step, now)
            recorded = just_recorded = True
        elif state.kind == "waiting-error":
            _record(w, n, state, step, now)
            _fail(w, state.reason or R.ERROR, state.message, now)
            return
        elif state.kind == "unschedulable":
            _unschedulable(w, job, state, True, now)
            return
        elif state.kind == "pending":
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
        and last.reason != R.SUSPENDED
        and not _retry_or_fail(
            w, job, last, prepare=False, now=now, cap=cap, just_recorded=just_recorded
        )
    ):
        return
    w.attempt = n + 1
    w.retry_after = None
    w.phase, w.reason = P.STARTING, P.STARTING
    resumed = last is not None and last.reason == R.SUSPENDED
    ck = w.checkpoint
    frm = f" from checkpoint step {ck.step}" if ck and n else ""
    w.message = f"{'resuming' if resumed else 'starting'} attempt {w.attempt}{frm}"


def _running_message(w: _Work, state: PodState) -> str:
    p = w.progress
    if p is None or p.step is None:
        return f"pod {state.name} is running"
    total = f"/{p.total_steps}" if p.total_steps else ""
    loss = f", loss {p.loss:.4g}" if p.loss is not None else ""
    return f"step {p.step}{total}{loss}"


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


def ttl_expired(job: m.FineTuneJob, now: datetime) -> bool:
    """True when a finished job outlived ``ttlSecondsAfterFinished``."""
    ttl = job.spec.ttl_seconds_after_finished
    done = job.status.completion_time
    if ttl is None or done is None or job.status.phase not in P.TERMINAL:
        return False
    return now >= done + timedelta(seconds=ttl)


# ------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Actions:
    """The API calls a reconcile makes after deriving the status."""

    create_prepare: bool = False
    create_train: int | None = None
    delete_pods: tuple[str, ...] = ()
    requeue_after: float | None = None
    reset_progress: bool = False  # wipe the previous run's reports (before any new pod starts)
    publish_first: bool = False  # publish this status, then reconcile again at once


def next_actions(
    job: m.FineTuneJob, new: m.FineTuneJobStatus, pods: list[dict[str, Any]], now: datetime
) -> Actions:
    states = {s.name: s for s in (pod_state(p) for p in pods)}
    if restarting(new):  # every pod of the previous run goes, finished ones too (names reused)
        return Actions(delete_pods=tuple(sorted(n for n, s in states.items() if not s.deleting)))
    acts = _next_actions(job, new, states, now)
    if restarting(job.status):
        return replace(acts, reset_progress=True)
    return acts


def _next_actions(
    job: m.FineTuneJob, new: m.FineTuneJobStatus, states: dict[str, PodState], now: datetime
) -> Actions:
    prep = b.prepare_pod_name(job)
    active = tuple(sorted(n for n, s in states.items() if not s.terminated and not s.deleting))
    phase = new.phase
    if phase == P.PREPARING and new.reason == R.PREPARED:
        return Actions(publish_first=True)
    # a training pod of an earlier attempt still running (stalled, or stopped for a suspend and
    # resumed since) is stopped first; the next pod starts only once it is gone
    older = [s for s in states.values() if 0 < s.attempt < new.attempt and not s.terminated]
    if older and phase not in P.TERMINAL:
        return Actions(delete_pods=tuple(sorted(s.name for s in older if not s.deleting)))
    if phase == P.PREPARING and prep not in states:
        return Actions(create_prepare=True)
    if phase == P.STARTING and new.attempt and b.train_pod_name(job, new.attempt) not in states:
        return Actions(create_train=new.attempt)
    if phase in (P.SUSPENDING, P.FAILED) and active:
        return Actions(delete_pods=active)
    if phase == P.PENDING and new.reason in (R.RETRYING, R.RESUMED) and prep in states:
        return Actions(delete_pods=(prep,))
    if phase == P.PENDING and new.retry_after is not None:
        wait = (new.retry_after - now).total_seconds()
        return Actions(requeue_after=max(1.0, wait))
    return Actions()


# -------------------------------------------------------------------------------------- events


def transition_events(
    old: m.FineTuneJobStatus, new: m.FineTuneJobStatus
) -> list[tuple[str, str, str]]:
    """(type, reason, message) Events for what changed: each new finished attempt, each phase
    transition, a halved micro-batch."""
    if new.last_restart_requested_at != old.last_restart_requested_at and restarting(new):
        return [("Normal", R.RESTARTING, new.message or "restart requested")]
    events: list[tuple[str, str, str]] = []
    for rec in new.attempts[len(old.attempts) :]:
        if rec.reason in (R.COMPLETED, R.SUSPENDED):
            continue
        events.append(("Warning", rec.reason, _attempt_failure(rec)[:MAX_MESSAGE]))
    if (
        new.plan is not None
        and old.plan is not None
        and new.plan.micro_batch_size != old.plan.micro_batch_size
    ):
        events.append(("Warning", R.MICRO_BATCH_HALVED, new.plan.message or "micro-batch halved"))
    if new.phase != old.phase or (new.phase == P.STARTING and new.attempt != old.attempt):
        kind = "Warning" if new.phase in (P.FAILED,) else "Normal"
        reason = new.reason if new.phase == P.FAILED and new.reason else str(new.phase)
        events.append((kind, reason, (new.message or str(new.phase))[:MAX_MESSAGE]))
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
