"""Spec edits made while a job was suspended take effect when it resumes.

HF Trainer restores the optimizer and the learning-rate scheduler from the checkpoint, and the
scheduler's state carries the peak learning rate it was built with (``base_lrs``): a learning rate
edited while suspended was written into the config but ignored, the resumed run followed the old
schedule. Here, after the checkpoint's optimizer and scheduler are loaded, the schedule is rebased
on the config's learning rate at the current step; the optimizer's moments are kept. The schedule's
shape (warmup, decay over ``max_steps``) is rebuilt by HF Trainer from the current config already,
so edits of epochs / maxSteps lengthen or shorten it. Micro-batch and gradient accumulation may
change while their product stays the effective batch (``train.resolve_plan`` enforces it), which
keeps the data position exact.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def rebase_learning_rate(scheduler: Any, optimizer: Any, new_lr: float) -> float | None:
    """Point a loaded LambdaLR-style schedule at peak ``new_lr`` from its current step.

    Returns the old peak when it changed (None when equal or not a rebasable scheduler).
    """
    base = list(getattr(scheduler, "base_lrs", []) or [])
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not base or lambdas is None or len(lambdas) != len(optimizer.param_groups):
        return None
    old = float(base[0])
    if abs(old - new_lr) <= 1e-12 * max(abs(old), abs(new_lr), 1e-30):
        return None
    step = int(scheduler.last_epoch)
    scheduler.base_lrs = [new_lr] * len(base)
    for group, fn in zip(optimizer.param_groups, lambdas, strict=True):
        group["initial_lr"] = new_lr
        group["lr"] = new_lr * float(fn(step))
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    return old


def honouring_edits(base: Any, learning_rate: float, changes: list[str]) -> Any:
    """``base`` (an SFTTrainer class) whose resume applies the config's learning rate; each change
    made is appended to ``changes`` as a sentence (logged; reported in progress.json)."""

    class EditAwareTrainer(base):  # type: ignore[misc]
        def _load_optimizer_and_scheduler(self, checkpoint: Any) -> Any:
            result = super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None or self.lr_scheduler is None:
                return result
            old = rebase_learning_rate(self.lr_scheduler, self.optimizer, learning_rate)
            if old is not None:
                step = int(self.lr_scheduler.last_epoch)
                text = f"learningRate {old:g} -> {learning_rate:g} from step {step}"
                log.info("edited while suspended: %s", text)
                changes.append(text)
            return result

    return EditAwareTrainer
