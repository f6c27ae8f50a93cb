"""Stop a run whose loss is no longer a number (pure check; the callback lives in callbacks.py).

In bf16 there is no loss scaler to skip a bad step: once the loss is NaN or infinite the gradients
and then the weights are too, and every later step, checkpoint and the final output would be
garbage while the job reported success. The Trainer must log unfiltered losses
(``logging_nan_inf_filter=False`` in train.py: its default logs a NaN step as the running mean,
which is how a diverged run looked healthy). The check runs on every logged loss before the
step's checkpoint is written (the Trainer logs, then saves), so the newest complete checkpoint
predates the divergence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from finetune_trainer.errors import DivergedError

# grad_norm too: a non-finite gradient turns every weight it touches into NaN at this step's update
WATCHED = ("loss", "grad_norm", "eval_loss")


def check(logs: Mapping[str, Any], step: int, learning_rate: float | None,
          checkpoint: str | None) -> None:  # fmt: skip
    """Raise DivergedError when a watched loss in ``logs`` is NaN or infinite."""
    for key in WATCHED:
        value = logs.get(key)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            continue
        lr = (
            f"learning rate {learning_rate:.3g}"
            if learning_rate is not None
            else "learning rate unknown"
        )
        last = (
            f"the last complete checkpoint is {checkpoint}"
            if checkpoint
            else "no checkpoint was written yet"
        )
        raise DivergedError(
            f"{key} became {number} at step {step} ({lr}); {last}. The same settings diverge "
            "again: lower training.learningRate (e.g. halve it) or raise warmupSteps, then restart"
        )
