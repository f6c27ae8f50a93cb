"""Every rank of a data-parallel run resumes from the same checkpoint: rank 0 decides.

The launcher verifies the newest complete checkpoint once (``checkpoints.usable``), but a damage
that the cheap verification cannot see shows only when the state is loaded, and possibly on some
ranks only (each loads its own RNG state, and may fail on its own). One rank falling back while
another resumes would train two different models that then hang in their first collective. So
before training each rank loads the candidate (``probe``); the candidate is used only when every
rank could; otherwise rank 0 sets it aside (``checkpoint-<step>.corrupt``) and offers the previous
complete one, and its choice is broadcast. None when no candidate loads everywhere: the caller
fails rather than training from step 0 on weights a damaged checkpoint may have half-loaded.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from finetune_trainer import checkpoints

log = logging.getLogger(__name__)


class Collective(Protocol):
    """The two collectives the agreement needs (torch.distributed in a run; fakes in tests)."""

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` is true on every rank."""
        ...

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        ...


class TorchCollective:
    """``Collective`` over the initialised default process group (gloo or NCCL)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device  # NCCL's collectives need CUDA tensors

    def all_ok(self, ok: bool) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def broadcast(self, value: Any) -> Any:
        import torch
        import torch.distributed as dist

        box = [value]
        on = None if self.device == "cpu" else torch.device(self.device)
        dist.broadcast_object_list(box, src=0, device=on)
        return box[0]


def agree(
    root: Path,
    first: Path | None,
    probe: Callable[[Path], str | None],
    coll: Collective,
    rank: int,
) -> checkpoints.Resume:
    """The checkpoint every rank resumes from (rank 0's ``first``, then older complete ones),
    with those set aside on the way; ``path`` None when none loads on every rank."""
    out = checkpoints.Resume(None)
    name = coll.broadcast(first.name if rank == 0 and first is not None else None)
    while name is not None:
        path = root / name
        problem = probe(path)
        if problem is not None:
            log.error("rank %d cannot load %s: %s", rank, name, problem)
        if coll.all_ok(problem is None):
            out.path = path
            return out
        out.skipped.append(
            {"path": f"{root.name}/{name}", "error": (problem or "failed on another rank")[:300]}
        )
        nxt = None
        if rank == 0:  # every rank has probed (all_ok was a collective): set it aside now
            step = checkpoints.step_of(path) or 0
            older = [p for s, p in checkpoints.complete(root) if s < step]
            aside = path.with_name(path.name + ".corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(path, aside)
            nxt = older[-1].name if older else None
            log.error("checkpoint %s set aside as %s; next: %s", name, aside.name, nxt or "none")
        name = coll.broadcast(nxt)
    return out
