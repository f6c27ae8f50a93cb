"""Which FineTuneJob a work directory belongs to.

The work directory is ``<claim>/<job name>``, so a job deleted and created again under the same
name finds the old job's checkpoints and output there. Resuming from them would continue someone
else's run (and report more steps than asked). The first stage of every job (prepare, or train
when run alone) claims the directory with the job's UID; what an earlier job left is moved to
``superseded/<its uid>/`` and the new job starts from step 0 (retention.py later deletes the
moved checkpoints, which can never be resumed; the output stays). Prepared
datasets stay: they are keyed by content and reusable by any job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_FILE = "job-uid"
SUPERSEDED = "superseded"
# what belongs to one job's run; prepared/ (content-hashed) and caches are shared
JOB_STATE = ("checkpoints", "output", "prepare-result.json")


def claim(work: Path, uid: str | None) -> Path | None:
    """Make ``work`` this job's; returns where an earlier job's state was moved, if any.

    Without a UID (a trainer run by hand) nothing is checked. A directory with state but no owner
    file (written before owners were recorded) is adopted as this job's.
    """
    if not uid:
        return None
    work.mkdir(parents=True, exist_ok=True)
    owner = work / OWNER_FILE
    previous = owner.read_text().strip() if owner.exists() else None
    if previous == uid:
        return None
    moved: Path | None = None
    present = [name for name in JOB_STATE if (work / name).exists()] if previous else []
    if previous and present:
        moved = work / SUPERSEDED / previous
        moved.mkdir(parents=True, exist_ok=True)
        for name in present:
            target = moved / name
            if target.exists():  # the same old job superseded twice: keep both
                target = moved / f"{name}.{os.getpid()}"
            os.rename(work / name, target)
        log.warning(
            "%s held the state of an earlier job of this name (uid %s): moved %s to %s; "
            "this job starts from step 0",
            work,
            previous,
            ", ".join(present),
            moved,
        )
    tmp = owner.with_suffix(".tmp")
    tmp.write_text(uid + "\n")
    os.replace(tmp, owner)
    return moved


__all__ = ["JOB_STATE", "OWNER_FILE", "SUPERSEDED", "claim"]
