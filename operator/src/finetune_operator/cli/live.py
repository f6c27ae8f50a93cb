"""The ``watch`` view as a ``rich`` renderable: pure, from the job dict, its events and the time.

Imported only by ``watch`` on a terminal, so the other verbs work without the ``[cli]`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from finetune_operator import models as m
from finetune_operator.cli import render as r

P = m.Phase
PHASE_STYLES: dict[str, str] = {
    P.RUNNING: "bold green",
    P.SUCCEEDED: "bold green",
    P.FAILED: "bold red",
    P.SUSPENDING: "bold yellow",
    P.SUSPENDED: "bold yellow",
    P.QUEUED: "bold cyan",
}


def _gpus(job: Mapping[str, Any]) -> str:
    plan = (job.get("status") or {}).get("plan") or {}
    prog = (job.get("status") or {}).get("progress") or {}
    if r.gpu_count(job) == 0:
        return "none (CPU job)"
    text = r.gpus_text(job)
    details = []
    if plan.get("strategy"):
        details.append(str(plan["strategy"]))
    if plan.get("microBatchSize"):
        accum = plan.get("gradientAccumulation")
        details.append(f"micro-batch {plan['microBatchSize']}" + (f" × {accum}" if accum else ""))
    if prog.get("gpuMemoryMiB") is not None:
        details.append(f"{prog['gpuMemoryMiB']} MiB/GPU peak")
    elif plan.get("estimatedGpuMemoryMiB") is not None:
        details.append(f"~{plan['estimatedGpuMemoryMiB']} MiB/GPU planned")
    return text + (f" ({', '.join(details)})" if details else "")


def _progress(job: Mapping[str, Any]) -> Text:
    value = r.ratio(job)
    text = Text(r.bar(value), style="green" if value is not None else "dim")
    step = r.step_text(job)
    if step != "-":
        text.append(f" {step} steps")
    if value is not None:
        text.append(f" ({r.percent_text(job)})")
    return text


def _checkpoint(job: Mapping[str, Any], now: datetime) -> str:
    ck = (job.get("status") or {}).get("checkpoint") or {}
    if "step" not in ck:
        return "-"
    when = r.parse_time(ck.get("time"))
    return f"step {ck['step']}" + (f", {r.age(when, now)} ago" if when else "")


def _event(event: Mapping[str, Any] | None, now: datetime) -> Text:
    if not event:
        return Text("-")
    when = r.event_time(event)
    ago = f"{r.duration((now - when).total_seconds())} ago " if when else ""
    style = "yellow" if event.get("type") == "Warning" else ""
    text = Text(f"{ago}")
    text.append(f"{event.get('type', '')} {event.get('reason', '')}", style=style)
    text.append(f": {' '.join(str(event.get('message', '')).split())}")
    return text


def live_view(
    job: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime
) -> RenderableType:
    """Phase, step/total bar, loss, tokens/s, ETA, GPUs, attempt, checkpoint, last Event."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    ph = r.phase(job)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    phase_text = Text(ph, style=PHASE_STYLES.get(ph, "bold"))
    if status.get("reason") and status.get("reason") != ph:
        phase_text.append(f" ({status['reason']})")
    grid.add_row("Phase", phase_text)
    grid.add_row("Progress", _progress(job))
    grid.add_row("Loss", r.loss_text(job))
    if r.loss_text(job, "evalLoss") != "-":
        grid.add_row("Eval loss", r.loss_text(job, "evalLoss"))
    output = status.get("output") or {}
    if output.get("path"):
        grid.add_row(
            "Output", f"{output.get('claim')}:{output['path']} (stable: {output.get('latest')})"
        )
    for sample in (output.get("samples") or [])[:3]:
        grid.add_row("Sample", f"{sample.get('prompt')!s:.60} → {sample.get('completion')!s:.120}")
    grid.add_row("Tokens/s", r.tokens_text(job) if ph == P.RUNNING else "-")
    grid.add_row("ETA", r.eta_text(job))
    grid.add_row("GPUs", _gpus(job))
    attempts = status.get("attempts") or []
    retries = sum(1 for a in attempts if a.get("reason") not in ("Completed", "Suspended"))
    attempt = str(status.get("attempt") or "-")
    grid.add_row("Attempt", attempt + (f" ({retries} ended early)" if retries else ""))
    grid.add_row("Checkpoint", _checkpoint(job, now))
    grid.add_row("Message", str(status.get("message") or "-"))
    grid.add_row("Last event", _event(r.last_event(events), now))
    updated = r.parse_time((status.get("progress") or {}).get("updatedAt"))
    subtitle = f"progress reported {r.age(updated, now)} ago" if updated else None
    title = f"FineTuneJob {meta.get('namespace', '')}/{meta.get('name', '')}"
    return Panel(grid, title=title, title_align="left", subtitle=subtitle, subtitle_align="right")
