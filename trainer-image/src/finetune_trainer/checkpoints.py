"""Checkpoint directories: the COMPLETE marker, finding the newest complete one, retention.

HF Trainer writes ``checkpoints/checkpoint-<step>/``; once every file (weights, optimizer,
scheduler, RNG of every rank, trainer state) is on disk, rank 0 writes ``COMPLETE`` last (temp file,
fsync, rename). Only directories with the marker are resumed from or counted for ``keep``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int | None:
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def _all(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def complete(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    return [(s, p) for s, p in _all(root) if (p / MARKER).is_file()]


def newest_complete(root: Path) -> Path | None:
    done = complete(root)
    return done[-1][1] if done else None


def write_marker(path: Path, info: dict[str, object]) -> None:
    tmp = path / f".{MARKER}.tmp"
    with tmp.open("w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MARKER)
    try:  # make the rename durable
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_incomplete(root: Path) -> list[Path]:
    """Delete checkpoint directories without a marker (a save cut short); they are never used."""
    removed = []
    for _, p in _all(root):
        if not (p / MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed incomplete checkpoints: %s", ", ".join(p.name for p in removed))
    return removed


def rotate(root: Path, keep: int) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints; delete older and stale incomplete ones."""
    done = complete(root)
    removed = []
    for _, p in done[: max(len(done) - keep, 0)]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    newest = done[-1][0] if done else None
    for s, p in _all(root):
        if newest is not None and s < newest and not (p / MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
