"""Pods as the lifecycle sees them: where each is in its life and, if it failed, why
(docs/contract.md section 4); and the sentences failure messages are made of."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from finetune_operator import kueue
from finetune_operator import models as m
from finetune_operator.lifecycle.conditions import MAX_MESSAGE

R = m.Reason


class PodKind(StrEnum):
    """Where a pod is in its life."""

    PENDING = "pending"
    UNSCHEDULABLE = "unschedulable"
    GATED = "gated"  # Kueue has not admitted its pod group yet
    WAITING_ERROR = "waiting-error"  # a container cannot start: image, config
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


K = PodKind


@dataclass(frozen=True)
class PodState:
    """What matters about one pod."""

    name: str
    kind: PodKind
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started: datetime | None = None
    finished: datetime | None = None
    deleting: bool = False
    created: datetime | None = None
    attempt: int = 0  # the training attempt (0: the prepare pod)
    evicted: str | None = None  # Kueue's message when it evicted the pod's Workload

    @property
    def terminated(self) -> bool:
        return self.kind in (K.SUCCEEDED, K.FAILED)


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


def attempt_failure(rec: m.Attempt) -> str:
    """A finished attempt's failure as a sentence."""
    return failure_message(rec.pod, rec.reason, rec.exit_code, rec.message)


def failure_message(pod: str, reason: str, exit_code: int | None, detail: str | None) -> str:
    """``Pod bot-2 failed with CudaOOM (exit code 11): CUDA out of memory.``"""
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    told = sentence(detail)
    return f"Pod {pod} failed with {reason}{code}" + (f": {told}" if told else ".")


MISSING_PVC = re.compile(r'persistentvolumeclaim "([^"]+)" not found', re.IGNORECASE)


def missing_claim(name: str) -> str:
    return f'The PersistentVolumeClaim "{name}" does not exist.'


UNBOUND = re.compile(r"unbound (immediate )?persistentvolumeclaims", re.IGNORECASE)

_IMAGE_ERRORS = {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


def pod_state(pod: dict[str, Any]) -> PodState:
    """Classify a pod: where it is in its life and, if it failed, why (docs/contract.md §4)."""
    meta = pod.get("metadata") or {}
    created = parse_time(meta.get("creationTimestamp"))
    return replace(
        _pod_state(pod), created=created, attempt=attempt_of(pod), evicted=kueue.eviction(pod)
    )


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
            return PodState(name, K.FAILED, R.EVICTED, msg, code, started, finished, deleting)
        if code == 0 and phase != "Failed":
            return PodState(name, K.SUCCEEDED, R.COMPLETED, message, 0, started, finished, deleting)
        if term and term.get("reason") == "OOMKilled":
            msg = message or "the container exceeded its memory limit"
            return PodState(name, K.FAILED, R.OOM_KILLED, msg, code, started, finished, deleting)
        if code is None:
            msg = _last_line(status.get("message")) or status.get("reason") or "pod failed"
            return PodState(name, K.FAILED, R.ERROR, msg, None, started, finished, deleting)
        reason = m.EXIT_CODE_REASONS.get(int(code), R.ERROR)
        return PodState(name, K.FAILED, reason, message, int(code), started, finished, deleting)
    waiting = cstate.get("waiting") or {}
    wreason = waiting.get("reason")
    if wreason in _IMAGE_ERRORS:
        msg = _last_line(waiting.get("message")) or wreason
        return PodState(name, K.WAITING_ERROR, R.IMAGE_PULL, msg, None, started, None, deleting)
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
        return PodState(name, K.WAITING_ERROR, reason, msg, None, started, None, deleting)
    if cstate.get("running"):
        return PodState(name, K.RUNNING, None, None, None, started, None, deleting)
    if kueue.gated(pod):
        msg = "waiting for Kueue to admit its pod group"
        return PodState(name, K.GATED, R.WAITING_FOR_ADMISSION, msg, None, None, None, deleting)
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            msg = str(cond.get("message") or "no node fits")
            return PodState(
                name, K.UNSCHEDULABLE, R.UNSCHEDULABLE, msg, None, started, None, deleting
            )
    msg = wreason or None
    return PodState(name, K.PENDING, wreason, msg, None, started, None, deleting)


def attempt_of(pod: dict[str, Any]) -> int:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(m.LABEL_ROLE) != "train":
        return 0
    try:
        return int(labels.get(m.LABEL_ATTEMPT, "0"))
    except ValueError:
        return 0
