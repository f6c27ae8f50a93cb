"""Start-up check that the loaded model isolates packed samples, before any step trains on them.

A backend that silently ignores sample boundaries trains every packed row as one causal sequence
(samples attend to earlier samples). That is invisible in the loss curve, so the trainer proves
isolation on the model it is about to train: two packed rows ``[a, b]`` and ``[a', b]`` that differ
only in the first sample must give sample ``b`` the same logits, and those must match ``b`` run on
its own. Three small forward passes (a few hundred tokens) in eval mode without gradients; if the
check fails or cannot run, the trainer does not pack (and says why) instead of training wrongly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from finetune_trainer.packing import Collator

log = logging.getLogger(__name__)

# Relative L2 differences of sample b's logits. Isolated: the differential check is exact up to
# kernel non-determinism (~1e-6 fp32, ~1e-3 bf16) and the alone-vs-packed one differs only by
# rounding in another tiling (~1e-2 bf16). A leak moves b's logits by far more (tens of percent on
# random tokens: b attends to a whole other sample).
DIFFERENTIAL_TOLERANCE = 2e-2
ALONE_TOLERANCE = 5e-2


@dataclass(frozen=True)
class Verdict:
    isolated: bool
    reason: str  # what was measured, or why the check could not run
    differential: float | None = None
    alone: float | None = None


def _rel(a: Any, b: Any) -> float:
    import torch

    a32, b32 = a.float(), b.float()
    return float(
        torch.linalg.vector_norm(a32 - b32) / torch.linalg.vector_norm(b32).clamp_min(1e-12)
    )


def check(model: Any, collator: Collator, vocab_size: int, seed: int = 0) -> Verdict:
    """Measure isolation on ``model`` with the collator training will use (packing on)."""
    import torch

    if not collator.isolate:
        return Verdict(False, "packing is off")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    low, high = min(3, vocab_size - 1), vocab_size
    a = torch.randint(low, high, (48,), generator=gen).tolist()
    a2 = torch.randint(low, high, (48,), generator=gen).tolist()
    b = torch.randint(low, high, (40,), generator=gen).tolist()

    def logits(samples: list[list[int]]) -> Any:
        row = {
            "input_ids": [t for s in samples for t in s],
            "seq_lengths": [len(s) for s in samples],
        }
        batch = collator([row])
        batch.pop("labels")
        inputs = {k: v.to(device) for k, v in batch.items()}
        out = model(**inputs, use_cache=False)
        return out.logits[0, -len(b) :]

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = logits([a, b])
            other = logits([a2, b])
            alone = logits([b])
    except Exception as exc:  # any failure means isolation is unproven
        return Verdict(False, f"the isolation check could not run: {type(exc).__name__}: {exc}")
    finally:
        model.train(was_training)
    if packed.numel() == 0 or packed.shape != alone.shape:
        return Verdict(
            False, f"the model returned no logits to check (shape {tuple(packed.shape)})"
        )
    diff, solo = _rel(other, packed), _rel(packed, alone)
    ok = diff <= DIFFERENTIAL_TOLERANCE and solo <= ALONE_TOLERANCE
    what = (
        f"changing another sample moved a sample's logits by {diff:.2e} (limit "
        f"{DIFFERENTIAL_TOLERANCE:.0e}), packed vs alone {solo:.2e} (limit {ALONE_TOLERANCE:.0e})"
    )
    return Verdict(ok, what, diff, solo)
