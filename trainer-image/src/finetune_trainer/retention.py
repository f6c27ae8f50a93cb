"""What the trainer deletes on the job's volume, and when (docs/contract.md, "Retention").

Never deleted: anything ``status`` points to (this run's newest complete checkpoints, bounded by
``checkpoint.keep``, and every ``output/``), prepared datasets (content-hashed, shared), the
compile cache. Deleted, and logged:

* this run's checkpoints beyond ``keep`` (at start too, so a lowered ``keep`` applies on resume),
  except the one evaluated with the lowest eval loss (``status.output.summary.bestCheckpoint``),
  incomplete ones (no marker: a save cut short) and damaged ones once a newer one is complete;
* ``checkpoints/`` of earlier runs (the volume root and ``runs/<m>``, m < n, when this is run
  n): a restarted job trains from step 0 and never resumes them; their ``output/`` stays;
* ``checkpoints/`` under ``superseded/<uid>/`` (a deleted job of the same name can never be
  resumed); its ``output/`` and ``prepare-result.json`` stay;
* ``downloads/`` (raw data fetched from a URL) of earlier runs, and of this run once training
  has succeeded: the tokenized data lives on in ``prepared/``;
* leftovers of an interrupted prepare (``prepared/.tmp-*``) when training starts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from finetune_trainer import checkpoints
from finetune_trainer.workdir import SUPERSEDED

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
DOWNLOADS = "downloads"
RUNS = "runs"


def earlier_runs(work: Path) -> list[Path]:
    """Work directories of the runs before this one (``<root>/runs/<n>`` layout), else []."""
    if work.parent.name != RUNS or not work.name.isdigit():
        return []
    root, n = work.parent.parent, int(work.name)
    runs = [root]
    for p in sorted((root / RUNS).iterdir()):
        if p.name.isdigit() and int(p.name) < n:
            runs.append(p)
    return runs


def stale(work: Path) -> list[Path]:
    """What may go when training of ``work`` starts (pure listing, nothing deleted)."""
    found: list[Path] = []
    for run in earlier_runs(work):
        found += [run / CHECKPOINTS, run / DOWNLOADS]
    for run in [*earlier_runs(work), work]:
        sup = run / SUPERSEDED
        if sup.is_dir():
            found += [p / CHECKPOINTS for p in sorted(sup.iterdir())]
            found += [p for p in sorted(sup.glob(f"*/{CHECKPOINTS}.*"))]
    prepared = work / "prepared"
    if prepared.is_dir():
        found += sorted(prepared.glob(".tmp-*"))
    return [p for p in found if p.exists()]


def remove(paths: list[Path], why: str) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
    if paths:
        log.info("retention: removed %s (%s)", ", ".join(str(p) for p in paths), why)


def at_start(work: Path, keep: int) -> checkpoints.Resume:
    """Before training: clean what can never be used, pick the checkpoint to resume from."""
    remove(stale(work), "earlier runs, superseded jobs, interrupted prepare")
    root = work / CHECKPOINTS
    checkpoints.remove_incomplete(root)
    resume = checkpoints.usable(root)
    if resume.path is not None:
        checkpoints.rotate(root, keep, checkpoints.recorded_eval_losses(resume.path))
    return resume


def after_success(work: Path) -> None:
    remove([p for p in [work / DOWNLOADS] if p.exists()], "training succeeded")


__all__ = ["after_success", "at_start", "earlier_runs", "stale"]
