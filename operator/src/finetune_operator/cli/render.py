"""Pure text rendering for the plugin: durations, table rows, one-line summaries, exit codes.

Every function takes plain API dicts (camelCase, as ``kubectl get -o json`` shows them) and the
current time; nothing here reads the clock, the environment or the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from finetune_operator import models as m

P = m.Phase

# ``kubectl finetune status`` exit codes (docs/kubectl-plugin.md).
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_SUSPENDED = 3
EXIT_IN_PROGRESS = 4
EXIT_ERROR = 5
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130

JOB_HEADERS = ("NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "ETA", "GPUS", "AGE")
EVENT_HEADERS = ("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE")
BAR_WIDTH = 30
_FULL, _EMPTY = "█", "░"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (or datetime) as an aware datetime; None when absent or bad."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    """Short human duration like kubectl's AGE: 45s, 3m20s, 28m, 5h12m, 3d4h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes, sec = divmod(s, 60)
    if minutes < 10:
        return f"{minutes}m{sec}s" if sec else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    if days == 0:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours}h" if hours else f"{days}d"
    return f"{days}d"


def age(timestamp: Any, now: datetime) -> str:
    when = parse_time(timestamp)
    return duration((now - when).total_seconds()) if when else "<unknown>"


def _status(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return job.get("status") or {}


def _progress(job: Mapping[str, Any]) -> Mapping[str, Any]:
    return _status(job).get("progress") or {}


def phase(job: Mapping[str, Any]) -> str:
    """The job's phase; Pending before the operator wrote any status."""
    return str(_status(job).get("phase") or P.PENDING)


def ratio(job: Mapping[str, Any]) -> float | None:
    """Steps done / total (0..1), None when unknown; 1 once Succeeded."""
    if phase(job) == P.SUCCEEDED:
        return 1.0
    prog = _progress(job)
    percent = prog.get("percent")
    if isinstance(percent, int | float):
        return min(1.0, max(0.0, float(percent) / 100))
    step, total = prog.get("step"), prog.get("totalSteps")
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return min(1.0, step / total)
    return None


def percent_text(job: Mapping[str, Any]) -> str:
    """The PROGRESS column of ``kubectl get`` (status.progress.percentText: one decimal, ``%g``),
    computed the same way when the operator has not written it yet."""
    if phase(job) != P.SUCCEEDED and (written := _progress(job).get("percentText")):
        return str(written)
    r = ratio(job)
    return "-" if r is None else f"{round(r * 100, 1):g}%"


def step_text(job: Mapping[str, Any]) -> str:
    prog = _progress(job)
    step, total = prog.get("step"), prog.get("totalSteps")
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


def loss_text(job: Mapping[str, Any], key: str = "loss") -> str:
    """A loss of status.progress (``loss`` or ``evalLoss``) as kubectl prints it, or '-'."""
    loss = _progress(job).get(key)
    return f"{loss:.4g}" if isinstance(loss, int | float) else "-"


def eta_text(job: Mapping[str, Any]) -> str:
    if phase(job) in P.TERMINAL:
        return "-"
    eta = _progress(job).get("etaSeconds")
    return duration(eta) if isinstance(eta, int | float) else "-"


def tokens_text(job: Mapping[str, Any]) -> str:
    tps = _progress(job).get("tokensPerSecond")
    if not isinstance(tps, int | float):
        return "-"
    return f"{tps / 1000:.1f}k" if tps >= 10000 else f"{tps:.0f}"


def gpu_count(job: Mapping[str, Any]) -> int:
    res = (job.get("spec") or {}).get("resources") or {}
    gpus = res.get("gpus", 1)
    return gpus if isinstance(gpus, int) else 1


def gpus_text(job: Mapping[str, Any]) -> str:
    return str(gpu_count(job))


def job_row(job: Mapping[str, Any], now: datetime, *, with_namespace: bool = False) -> list[str]:
    """One ``kubectl finetune list`` row (JOB_HEADERS, NAMESPACE first with -A)."""
    meta = job.get("metadata") or {}
    row = [
        str(meta.get("name", "")),
        phase(job),
        percent_text(job),
        step_text(job),
        loss_text(job),
        eta_text(job),
        gpus_text(job),
        age(meta.get("creationTimestamp"), now),
    ]
    return [str(meta.get("namespace", "")), *row] if with_namespace else row


def job_headers(with_namespace: bool = False) -> list[str]:
    return ["NAMESPACE", *JOB_HEADERS] if with_namespace else list(JOB_HEADERS)


def column_widths(rows: Sequence[Sequence[str]]) -> list[int]:
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i >= len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    return widths


def format_row(row: Sequence[str], widths: Sequence[int]) -> str:
    """Cells left-aligned, three spaces apart (kubectl's table printer)."""
    cells = [c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(row)]
    return "   ".join(cells).rstrip()


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = column_widths(rows)
    return "\n".join(format_row(r, widths) for r in rows)


def bar(value: float | None, width: int = BAR_WIDTH) -> str:
    """A text progress bar that reads the same without colours: ██████░░░░."""
    if value is None:
        return _EMPTY * width
    done = round(min(1.0, max(0.0, value)) * width)
    return _FULL * done + _EMPTY * (width - done)


def summary(job: Mapping[str, Any]) -> str:
    """What one line can say about the job: step, loss and ETA, or the reason it stopped."""
    st = _status(job)
    ph = phase(job)
    parts: list[str] = []
    if _progress(job).get("step") is not None:
        pct = percent_text(job)
        parts.append(f"step {step_text(job)}" + (f" ({pct})" if pct != "-" else ""))
    if loss_text(job) != "-":
        parts.append(f"loss {loss_text(job)}")
    if ph == P.RUNNING and tokens_text(job) != "-":
        parts.append(f"{tokens_text(job)} tok/s")
    if eta_text(job) != "-" and ph == P.RUNNING:
        parts.append(f"ETA {eta_text(job)}")
    text = ", ".join(parts)
    if ph in (P.FAILED, P.SUSPENDED, P.PENDING, P.PREPARING, P.STARTING, P.QUEUED):
        detail = ": ".join(str(x) for x in (st.get("reason"), st.get("message")) if x)
        if ph == P.FAILED or not text:
            text = f"{text}; {detail}" if text and detail else (text or detail)
    return text


def status_line(job: Mapping[str, Any]) -> str:
    """``<name>: <Phase> — <summary>``."""
    name = (job.get("metadata") or {}).get("name", "")
    rest = summary(job)
    return f"{name}: {phase(job)}" + (f" — {rest}" if rest else "")


def event_id(event: Mapping[str, Any]) -> str:
    """One Event object across its repeats (the kubelet bumps ``count`` and ``lastTimestamp`` of
    the same object): its uid, else its name, else what it says."""
    meta = event.get("metadata") or {}
    obj = event.get("involvedObject") or {}
    fallback = f"{obj.get('kind')}/{obj.get('name')}:{event.get('reason')}:{event.get('message')}"
    return str(meta.get("uid") or meta.get("name") or fallback)


def unseen_events(events: Sequence[Mapping[str, Any]], seen: set[str]) -> list[Mapping[str, Any]]:
    """The events not in ``seen`` (oldest first); adds every event's id to ``seen``."""
    new = [e for e in sort_events(events) if event_id(e) not in seen]
    seen.update(event_id(e) for e in events)
    return new


def update_line(job: Mapping[str, Any], event: Mapping[str, Any] | None, now: datetime) -> str:
    """One line per change of ``watch`` when stdout is not a terminal; ``event`` only when it is
    new since the previous line (the caller decides, see ``unseen_events``)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{stamp} {status_line(job)}"
    if event:
        line += f" | {event.get('type', '')} {event.get('reason', '')}: {event.get('message', '')}"
    return line


def exit_code(job_phase: str) -> int:
    """``status`` exit code of a phase (EXIT_IN_PROGRESS for the non-final ones)."""
    codes: dict[str, int] = {
        P.SUCCEEDED: EXIT_SUCCEEDED,
        P.FAILED: EXIT_FAILED,
        P.SUSPENDED: EXIT_SUSPENDED,
    }
    return codes.get(job_phase, EXIT_IN_PROGRESS)


# ----------------------------------------------------------------------------------- events


def event_time(event: Mapping[str, Any]) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        when = parse_time(event.get(key))
        if when is not None:
            return when
    return parse_time((event.get("metadata") or {}).get("creationTimestamp"))


def sort_events(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Oldest first; events without a time first."""
    floor = datetime.min.replace(tzinfo=UTC)
    return sorted(events, key=lambda e: event_time(e) or floor)


def event_row(event: Mapping[str, Any], now: datetime) -> list[str]:
    obj = event.get("involvedObject") or {}
    when = event_time(event)
    seen = duration((now - when).total_seconds()) if when else "<unknown>"
    kind = str(obj.get("kind", "")).lower()
    return [
        seen,
        str(event.get("type", "")),
        str(event.get("reason", "")),
        f"{kind}/{obj.get('name', '')}",
        " ".join(str(event.get("message", "")).split()),
    ]


def events_table(events: Sequence[Mapping[str, Any]], now: datetime) -> str:
    rows = [list(EVENT_HEADERS), *(event_row(e, now) for e in sort_events(events))]
    return format_table(rows)


def last_event(events: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    ordered = sort_events(events)
    return ordered[-1] if ordered else None


# ------------------------------------------------------------------------------------- pods


def trainer_pod(pods: Sequence[Mapping[str, Any]], attempt: int | None) -> Mapping[str, Any] | None:
    """The pod ``logs`` reads: the current attempt's trainer pod, else the newest pod."""

    def labels(p: Mapping[str, Any]) -> Mapping[str, Any]:
        return (p.get("metadata") or {}).get("labels") or {}

    if attempt:
        for pod in pods:
            lab = labels(pod)
            if lab.get(m.LABEL_ROLE) == "train" and lab.get(m.LABEL_ATTEMPT) == str(attempt):
                return pod
    if not pods:
        return None
    return max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
