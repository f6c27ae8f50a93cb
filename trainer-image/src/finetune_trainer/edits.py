"""Spec edits made while a job was suspended take effect when it resumes, and are recorded.

HF Trainer restores the optimizer and the learning-rate scheduler from the checkpoint, and the
scheduler's state carries the peak learning rate it was built with (``base_lrs``): a learning rate
edited while suspended was written into the config but ignored, the resumed run followed the old
schedule. Here, after the checkpoint's optimizer and scheduler are loaded, the schedule is rebased
on the config's learning rate at the current step; the optimizer's moments are kept. The schedule's
shape (warmup, decay over ``max_steps``) is rebuilt by HF Trainer from the current config already,
so edits of epochs / maxSteps lengthen or shorten it. Micro-batch and gradient accumulation may
change while their product stays the effective batch (``train.resolve_plan`` enforces it), which
keeps the data position exact. The optimizer's own hyperparameters (weight decay) come from the
config too, not from the checkpoint's param groups.

Every checkpoint carries the hyperparameters it was trained with (``SNAPSHOT_FILE``, written
before its completion marker); a resume compares them with the config and records each change
as a sentence, e.g. ``learningRate 0.003 → 0.0001 from step 14`` (status.progress.edits and an
Event SpecEditApplied). Edits a resume cannot honour (batch size, sequence length, seed, method,
LoRA shape, optimizer) are refused at admission once a checkpoint exists (models.EDIT_RULES).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def rebase_learning_rate(scheduler: Any, optimizer: Any, new_lr: float) -> float | None:
    """Point a loaded LambdaLR-style schedule at peak ``new_lr`` from its current step.

    The learning rate of the next step is recomputed from the schedule built from the config (a
    checkpoint restores the old schedule's value, so a maxSteps/warmup edit would otherwise start
    one step late); unchanged, that is the very value the checkpoint held. Returns the old peak
    when it changed (None when equal or not a rebasable scheduler).
    """
    base = list(getattr(scheduler, "base_lrs", []) or [])
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not base or lambdas is None or len(lambdas) != len(optimizer.param_groups):
        return None
    old = float(base[0])
    step = int(scheduler.last_epoch)
    scheduler.base_lrs = [new_lr] * len(base)
    for group, fn in zip(optimizer.param_groups, lambdas, strict=True):
        group["initial_lr"] = new_lr
        group["lr"] = new_lr * float(fn(step))
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    return None if abs(old - new_lr) <= 1e-12 * max(abs(old), abs(new_lr), 1e-30) else old


SNAPSHOT_FILE = "finetune-hparams.json"
# spec names (as users write them) of the hyperparameters a resume honours, in report order
EDITABLE = (
    "learningRate",
    "maxSteps",
    "epochs",
    "microBatchSize",
    "gradientAccumulation",
    "warmupSteps",
    "warmupRatio",
    "scheduler",
    "weightDecay",
)


def snapshot(config: Any, micro_batch_size: int, gradient_accumulation: int) -> dict[str, Any]:
    """The editable hyperparameters this run trains with (a TrainerConfig and its plan)."""
    t = config.training
    return {
        "learningRate": t.learning_rate,
        "maxSteps": t.max_steps,
        "epochs": None if t.max_steps else t.epochs,
        "microBatchSize": micro_batch_size,
        "gradientAccumulation": gradient_accumulation,
        "warmupSteps": t.warmup_steps,
        "warmupRatio": t.warmup_ratio,
        "scheduler": t.scheduler,
        "weightDecay": t.weight_decay,
    }


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(before: dict[str, Any], after: dict[str, Any], step: int) -> list[str]:
    """One sentence per hyperparameter that differs, e.g. ``learningRate 0.003 → 0.0001 from
    step 14``; keys the checkpoint did not record are not compared."""
    return [
        f"{key} {_show(before[key])} → {_show(after.get(key))} from step {step}"
        for key in EDITABLE
        if key in before and before[key] != after.get(key)
    ]


def write_snapshot(checkpoint: Path, values: dict[str, Any]) -> None:
    """Record ``values`` in a checkpoint (before its marker: the marker's fsync covers it)."""
    (checkpoint / SNAPSHOT_FILE).write_text(json.dumps(values, sort_keys=True))


def read_snapshot(checkpoint: Path) -> dict[str, Any] | None:
    """What a checkpoint recorded, or None (written before snapshots existed, or unreadable)."""
    try:
        loaded = json.loads((checkpoint / SNAPSHOT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def honouring_edits(base: Any, current: dict[str, Any], changes: list[str]) -> Any:
    """``base`` (an SFTTrainer class) whose resume applies the config's hyperparameters
    (``current``, a ``snapshot``) over the checkpoint's; each change is appended to ``changes``
    as a sentence (logged; reported in progress.json)."""
    learning_rate = float(current["learningRate"])

    class EditAwareTrainer(base):  # type: ignore[misc]
        def _load_optimizer_and_scheduler(self, checkpoint: Any) -> Any:
            groups = self.optimizer.param_groups if self.optimizer is not None else []
            decay = [g.get("weight_decay") for g in groups]  # built from the config
            result = super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None or self.lr_scheduler is None:
                return result
            for group, value in zip(groups, decay, strict=True):
                if value is not None:
                    group["weight_decay"] = value
            old = rebase_learning_rate(self.lr_scheduler, self.optimizer, learning_rate)
            step = int(self.lr_scheduler.last_epoch)
            before = read_snapshot(Path(checkpoint))
            if before is not None:
                texts = describe(before, current, step)
            elif old is not None:
                texts = [f"learningRate {old:g} → {learning_rate:g} from step {step}"]
            else:
                texts = []
            for text in texts:
                log.info("edited while suspended: %s", text)
            changes.extend(texts)
            return result

    return EditAwareTrainer
