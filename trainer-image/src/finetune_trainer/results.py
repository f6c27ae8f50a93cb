"""What a finished run leaves for its users: the ``latest`` pointer and the final report.

Run 0 writes ``<job>/output``, the n-th restart ``<job>/runs/<n>/output`` (the operator's
``paths.work``). ``<job>/latest`` is a relative symlink to the newest finished output: a new
link is made under a temporary name and renamed over the old one (rename is atomic), so a reader
sees the old output or the new one, never none. The report's ``output`` object is what the
operator turns into ``status.output`` (docs/contract.md section 3).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from finetune_trainer import checkpoints, files, retention

LATEST = "latest"

log = logging.getLogger(__name__)


def job_root(work: Path) -> Path:
    """The job's directory on the claim: ``work`` itself, or the root above ``runs/<n>``."""
    if work.parent.name == retention.RUNS and work.name.isdigit():
        return work.parent.parent
    return work


def point_latest(work: Path, output: Path) -> Path:
    """Make ``<job>/latest`` point at ``output`` (inside ``work``) in one rename; returns it."""
    root = job_root(work)
    link = root / LATEST
    tmp = root / f".{LATEST}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(output, root), tmp)
    os.replace(tmp, link)
    files.fsync_dir(root)
    return link


def try_point_latest(work: Path, output: Path) -> Path | None:
    """``point_latest``, but a volume that cannot hold a symlink (e.g. SMB) only costs the pointer:
    the output is complete and status.output names it. A full volume is still DiskFull."""
    try:
        return point_latest(work, output)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        log.warning("could not point %s at %s: %s", job_root(work) / LATEST, output, exc)
        return None


def best_eval(evals: dict[int, float], kept: list[int]) -> tuple[float | None, int | None]:
    """(lowest eval loss seen, the kept checkpoint whose step was evaluated lowest, if any)."""
    if not evals:
        return None, None
    return min(evals.values()), checkpoints.best_step(evals, kept)


def report(
    written: list[str],
    summary: dict[str, Any],
    samples: list[dict[str, str]],
    best: tuple[float | None, int | None],
) -> dict[str, Any]:
    """The ``output`` object of the final progress report."""
    return {
        "written": sorted(written),
        "summary": {
            "steps": summary.get("steps"),
            "tokens": summary.get("tokens"),
            "train_loss": summary.get("final_loss"),
            "eval_loss": summary.get("eval_loss"),
            "best_eval_loss": best[0],
            "best_checkpoint_step": best[1],
        },
        "samples": samples,
    }
