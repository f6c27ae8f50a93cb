"""The trainer's reports (progress.json, prepare.json in the progress ConfigMap) as typed models,
parsed at the I/O edge, and merged into the status.

The trainer is not trusted: a report that is not JSON, not an object, or lacks what identifies it
(the attempt and step of a progress report) is ignored as a whole; any other field that is absent,
of the wrong type, NaN, infinite or out of range is dropped on its own (None), never the report.
Keys and meanings: docs/contract.md section 3 (tests/unit/test_contract.py checks them against
the trainer).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from finetune_operator import models as m
from finetune_operator.lifecycle.conditions import MAX_MESSAGE
from finetune_operator.lifecycle.pods import parse_time

MAX_STEPS = 10**9


def _bounded(lo: float, hi: float, *, integer: bool = False) -> BeforeValidator:
    """A number within [lo, hi] (a whole one when ``integer``), else None."""

    def check(value: Any) -> float | int | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        f = float(value)
        if not math.isfinite(f) or f < lo or f > hi:
            return None
        if integer:
            return int(f) if f == int(f) else None
        return f

    return BeforeValidator(check)


def _text(limit: int) -> BeforeValidator:
    return BeforeValidator(lambda v: str(v)[:limit] if v not in (None, "") else None)


def _cut(limit: int) -> BeforeValidator:
    """A string cut at ``limit`` characters; anything else is the empty string."""
    return BeforeValidator(lambda v: v[:limit] if isinstance(v, str) else "")


def _object(value: Any) -> Any:
    return value if isinstance(value, dict) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


Count = Annotated[int | None, _bounded(0, 10**15, integer=True)]
Step = Annotated[int | None, _bounded(0, MAX_STEPS, integer=True)]
Time = Annotated[datetime | None, BeforeValidator(parse_time)]
Flag = Annotated[bool | None, BeforeValidator(_flag)]


def _edits(value: Any) -> list[str] | None:
    """At most 10 sentences of at most 200 characters; anything else is dropped."""
    if not isinstance(value, list):
        return None
    return [str(x)[:200] for x in value if isinstance(x, str)][:10] or None


class _Report(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CheckpointReport(_Report):
    """``checkpoint`` of progress.json: the newest complete checkpoint."""

    step: Step = None
    path: Annotated[str | None, _text(1024)] = None
    time: Time = None


def _skipped(value: Any) -> list[m.SkippedCheckpoint] | None:
    """At most 10 ``{"path", "error"}`` objects with a path; anything else is dropped."""
    if not isinstance(value, list):
        return None
    out = [
        m.SkippedCheckpoint(
            path=str(x["path"])[:1024], error=str(x.get("error") or "")[:300] or None
        )
        for x in value
        if isinstance(x, dict) and isinstance(x.get("path"), str) and x["path"]
    ]
    return out[:10] or None


Loss = Annotated[float | None, _bounded(0.0, 1e6)]


def _names(value: Any) -> list[str] | None:
    """At most 16 short names (what the trainer wrote into output/); anything else dropped."""
    if not isinstance(value, list):
        return None
    return [x for x in value if isinstance(x, str) and len(x) <= 64][:16] or None


class SummaryReport(_Report):
    """``output.summary`` of the final progress.json."""

    steps: Step = None
    tokens: Count = None
    train_loss: Loss = None
    eval_loss: Loss = None
    best_eval_loss: Loss = None
    best_checkpoint_step: Step = None


class SampleReport(_Report):
    """One greedy generation (``output.samples[]``); both texts are cut short."""

    prompt: Annotated[str, _cut(200)] = ""
    completion: Annotated[str, _cut(500)] = ""


def _samples(value: Any) -> list[SampleReport] | None:
    if not isinstance(value, list):
        return None
    out = []
    for item in value[:8]:
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            try:
                out.append(SampleReport.model_validate(item))
            except ValidationError:
                continue
    return out or None


class OutputReport(_Report):
    """``output`` of the final progress.json: what was written and how the run went."""

    written: Annotated[list[str] | None, BeforeValidator(_names)] = None
    summary: Annotated[SummaryReport | None, BeforeValidator(_object)] = None
    samples: Annotated[list[SampleReport] | None, BeforeValidator(_samples)] = None


class ProgressReport(_Report):
    """progress.json, written by the training pod every few seconds."""

    attempt: Annotated[int | None, _bounded(0, 10**6, integer=True)] = None
    state: Annotated[str | None, _text(32)] = None
    step: Step = None
    total_steps: Annotated[int | None, _bounded(1, MAX_STEPS, integer=True)] = None
    epoch: Annotated[float | None, _bounded(0.0, 1e6)] = None
    loss: Loss = None
    eval_loss: Loss = None
    learning_rate: Annotated[float | None, _bounded(0.0, 10.0)] = None
    tokens_per_second: Annotated[float | None, _bounded(0.0, 1e9)] = None
    eta_seconds: Annotated[int | None, _bounded(0, 10**8, integer=True)] = None
    gpu_memory_mib: Annotated[int | None, _bounded(0, 10**7, integer=True)] = None
    checkpoint: Annotated[CheckpointReport | None, BeforeValidator(_object)] = None
    packing: Annotated[str | None, _text(200)] = None  # "isolated" or "off: <why>"
    edits: Annotated[list[str] | None, BeforeValidator(_edits)] = None  # applied on resume
    resumed_from: Annotated[str | None, _text(1024)] = None
    skipped_checkpoints: Annotated[list[m.SkippedCheckpoint] | None, BeforeValidator(_skipped)] = (
        None  # damaged, set aside on resume
    )
    output: Annotated[OutputReport | None, BeforeValidator(_object)] = None  # final report only
    time: Time = None


IGNORED_PROGRESS_KEYS = frozenset({"checkpoint_save_seconds", "checkpoint_bytes"})
"""Keys of progress.json the operator does not mirror (the trainer's own timing)."""


class PrepareError(_Report):
    """``error`` of prepare.json: the trainer's reason and message."""

    reason: Annotated[str | None, _text(64)] = None
    message: Annotated[str | None, _text(MAX_MESSAGE)] = None


class DataReport(_Report):
    """``data`` of prepare.json: what the prepare stage found in the dataset."""

    records: Count = None
    tokens: Count = None
    truncated: Count = None
    validation_records: Count = None


class PlanReport(_Report):
    """``plan`` of prepare.json: the memory planner's verdict."""

    strategy: Annotated[str | None, _text(64)] = None
    micro_batch_size: Annotated[int | None, _bounded(1, 1 << 20, integer=True)] = None
    gradient_accumulation: Annotated[int | None, _bounded(1, 1 << 20, integer=True)] = None
    estimated_gpu_memory_mib: Annotated[int | None, _bounded(0, 10**8, integer=True)] = None
    gpu_memory_mib: Annotated[int | None, _bounded(0, 10**8, integer=True)] = None
    parameters: Annotated[int | None, _bounded(0, 10**14, integer=True)] = None
    fits: Flag = None
    message: Annotated[str | None, _text(MAX_MESSAGE)] = None


class PrepareReport(_Report):
    """prepare.json, written once by the prepare pod (``ok`` true, or false with ``error``)."""

    ok: Flag = None
    error: Annotated[PrepareError | None, BeforeValidator(_object)] = None
    data: Annotated[DataReport | None, BeforeValidator(_object)] = None
    plan: Annotated[PlanReport | None, BeforeValidator(_object)] = None
    total_steps: Annotated[int | None, _bounded(1, MAX_STEPS, integer=True)] = None


T = TypeVar("T", bound=_Report)


def _from(model: type[T]) -> Callable[[Any], T | None]:
    def parse(value: Any) -> T | None:
        if not isinstance(value, dict) or not value:
            return None
        try:
            return model.model_validate(value)
        except ValidationError:
            return None

    return parse


progress_from = _from(ProgressReport)
"""A ProgressReport from decoded JSON, or None."""
prepare_from = _from(PrepareReport)
"""A PrepareReport from decoded JSON, or None."""


def _decode(text: str | None) -> Any:
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


def parse_progress(text: str | None) -> ProgressReport | None:
    """progress.json as the ConfigMap holds it (a JSON string), or None."""
    return progress_from(_decode(text))


def parse_prepare(text: str | None) -> PrepareReport | None:
    """prepare.json as the ConfigMap holds it (a JSON string), or None."""
    return prepare_from(_decode(text))


# --------------------------------------------------------------------------------- into status


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
    report: ProgressReport | None,
    attempt: int,
    total_steps: int | None,
    now: datetime,
) -> m.Progress | None:
    """The status copy of a progress report, or ``old`` when the report is stale or absurd.

    Reports of older attempts are ignored; within an attempt the step never goes back."""
    if report is None or report.attempt != attempt or report.step is None:
        return old
    step = report.step
    if old is not None and old.attempt == attempt and old.step is not None and step < old.step:
        return old
    total = report.total_steps or total_steps
    if total is not None and step > total:
        return old
    percent = round(100.0 * step / total, 1) if total else None
    eta = report.eta_seconds
    loss = float(f"{report.loss:.4g}") if report.loss is not None else None  # as kubectl prints
    eval_loss = float(f"{report.eval_loss:.4g}") if report.eval_loss is not None else None
    same_step = old is not None and (old.attempt, old.step) == (attempt, step)
    return m.Progress(
        attempt=attempt,
        step=step,
        total_steps=total,
        percent=percent,
        percent_text=f"{percent:g}%" if percent is not None else None,
        epoch=report.epoch,
        loss=loss if loss is not None else (old.loss if old else None),
        eval_loss=eval_loss if eval_loss is not None else (old.eval_loss if old else None),
        learning_rate=report.learning_rate,
        tokens_per_second=report.tokens_per_second,
        eta_seconds=eta,
        eta=humanize(eta) if eta is not None else None,
        gpu_memory_mib=report.gpu_memory_mib,
        packing=report.packing,
        edits=report.edits,
        resumed_from=report.resumed_from,
        skipped_checkpoints=report.skipped_checkpoints,
        updated_at=report.time or (old.updated_at if same_step and old else None) or now,
    )


def merge_checkpoint(
    old: m.CheckpointStatus | None, report: ProgressReport | None, prefix: str = ""
) -> m.CheckpointStatus | None:
    """The newest complete checkpoint: the report's unless it is older than ``old``. Its path,
    relative to the run's work directory in the report, gets the run's ``prefix`` (runs/<n>/). A
    checkpoint the trainer set aside as damaged is never kept: the one it resumed from instead
    (or none) replaces it."""
    ckpt = report.checkpoint if report is not None else None
    skipped = {s.path for s in (report.skipped_checkpoints or [])} if report is not None else set()
    if old is not None and old.path in skipped:
        old = _resumed(report.resumed_from if report is not None else None)
    if ckpt is None or ckpt.step is None or (old is not None and ckpt.step < old.step):
        return old
    path = f"{prefix}{ckpt.path}" if ckpt.path else ""
    return m.CheckpointStatus(step=ckpt.step, path=path, time=ckpt.time)


_CHECKPOINT_STEP = re.compile(r"checkpoint-(\d+)$")


def _resumed(path: str | None) -> m.CheckpointStatus | None:
    found = _CHECKPOINT_STEP.search(path or "")
    if path is None or found is None:
        return None
    return m.CheckpointStatus(step=int(found.group(1)), path=path)


def data_status(report: PrepareReport) -> m.DataStatus | None:
    data = report.data
    if data is None:
        return None
    return m.DataStatus(
        records=data.records,
        tokens=data.tokens,
        truncated=data.truncated,
        evaluation_records=data.validation_records or None,
    )


def plan_status(report: PrepareReport) -> m.PlanStatus | None:
    plan = report.plan
    if plan is None:
        return None
    return m.PlanStatus.model_validate(plan.model_dump())
