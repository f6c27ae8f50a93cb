"""Checkpoint directories: the COMPLETE marker, finding the newest usable one, retention.

HF Trainer writes ``checkpoints/checkpoint-<step>/`` itself (every rank its own RNG file, rank 0
the rest). The commit point is the marker, not a directory rename: once every rank's files are
written, rank 0 fsyncs every file of the directory and the directory, then writes ``COMPLETE``
(temp file, fsync, rename) and fsyncs the directory and ``checkpoints/``. After a crash or a power
loss at any moment a directory either has the marker and every byte under it is durable, or has
no marker and is never used (and removed at the next start). A write-to-temp-then-rename of the
whole directory would give the same guarantee, but HF's Trainer owns the directory name (resume
reads ``checkpoint-<step>``, its rotation and its "newest checkpoint" lookup glob that pattern;
transformers 4.36 tried a temp-dir rename and reverted it over network filesystems and multi-rank
races); the marker needs no change to HF's saving.

Retention keeps the newest ``keep`` complete checkpoints and, when periodic evaluation runs, the
complete checkpoint evaluated with the lowest eval loss (``status.output.summary.bestCheckpoint``
names it, so it must not vanish): at most ``keep + 1``. The eval losses come from HF's
``log_history`` (the state in memory after a save, ``trainer_state.json`` of the newest checkpoint
at start), where HF records the evaluation of a step before that step's save.

On resume a complete checkpoint is still verified cheaply (JSON parses, safetensors headers match
the file size, torch zip archives have their central directory, i.e. nothing truncated); one that
fails is renamed ``checkpoint-<step>.corrupt`` (kept for inspection, never used) and the previous
complete one is used instead (train.fallback does the same when HF then fails to load it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.files import fsync_dir, sync_tree

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
    """Commit ``path``: sync its files, then the marker (temp file, fsync, rename), then the
    directory and its parent."""
    sync_tree(path)
    tmp = path / f".{MARKER}.tmp"
    with tmp.open("w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MARKER)
    fsync_dir(path)
    fsync_dir(path.parent)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def verify(path: Path) -> str | None:
    """None when every file of the checkpoint is whole, else what is wrong (cheap: headers and
    sizes, no tensor is read)."""
    if not (path / "trainer_state.json").is_file():
        return "trainer_state.json is missing"
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            problem = _verify_file(f)
        except (OSError, ValueError, zipfile.BadZipFile, struct.error) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            return f"{f.relative_to(path)}: {problem}"
    return None


def _verify_file(f: Path) -> str | None:
    if f.suffix == ".json":
        json.loads(f.read_text())
    elif f.suffix == ".safetensors":
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        if f.stat().st_size != 8 + n + end:
            return f"{f.stat().st_size} bytes, the header says {8 + n + end}"
    elif f.suffix in (".pt", ".pth", ".bin"):
        with f.open("rb") as fh:
            zipped = fh.read(2) == b"PK"  # torch.save's format; older pickles are not checked
        if zipped and not zipfile.is_zipfile(f):
            return "truncated archive (no central directory)"
    return None


@dataclass
class Resume:
    """The checkpoint to resume from and the newer complete ones that failed verification."""

    path: Path | None
    skipped: list[dict[str, str]] = field(default_factory=list)


def usable(root: Path) -> Resume:
    """The newest complete checkpoint that verifies; failing ones are set aside (renamed
    ``.corrupt``), logged and listed, and the previous complete one is tried."""
    out = Resume(None)
    for _, p in reversed(complete(root)):
        problem = verify(p)
        if problem is None:
            out.path = p
            break
        aside = p.with_name(p.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(p, aside)
        log.error("checkpoint %s is damaged (%s): set aside as %s", p.name, problem, aside.name)
        out.skipped.append({"path": f"{root.name}/{p.name}", "error": problem[:300]})
    return out


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


def eval_losses(log_history: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Step -> eval loss of every evaluation in HF's ``log_history`` (resumed attempts included:
    the history is restored from the checkpoint)."""
    return {
        int(e["step"]): float(e["eval_loss"])
        for e in log_history
        if "eval_loss" in e and "step" in e
    }


def recorded_eval_losses(path: Path | None) -> dict[int, float]:
    """``eval_losses`` of checkpoint ``path``'s ``trainer_state.json`` ({} when unreadable)."""
    if path is None:
        return {}
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        return eval_losses(state.get("log_history") or [])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def best_step(evals: Mapping[int, float], steps: Iterable[int]) -> int | None:
    """Of ``steps``, the one evaluated with the lowest loss (the earlier on a tie), if any was."""
    candidates = [s for s in steps if s in evals]
    return min(candidates, key=lambda s: (evals[s], s)) if candidates else None


def kept_steps(steps: Sequence[int], keep: int, evals: Mapping[int, float]) -> set[int]:
    """Which of the complete checkpoints' ``steps`` (ascending) retention keeps: the newest
    ``keep`` and the best evaluated one."""
    kept = set(steps[max(len(steps) - keep, 0) :])
    best = best_step(evals, steps)
    return kept | ({best} if best is not None else set())


def rotate(root: Path, keep: int, evals: Mapping[int, float] | None = None) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints and the one evaluated lowest in ``evals``
    (step -> eval loss); delete older and stale incomplete ones, and damaged ones set aside
    (``.corrupt``) once a newer complete checkpoint exists."""
    done = complete(root)
    kept = kept_steps([s for s, _ in done], keep, evals or {})
    removed = []
    for s, p in done:
        if s not in kept:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    newest = done[-1][0] if done else None
    for s, p in _all(root):
        if newest is not None and s < newest and not (p / MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in root.glob("checkpoint-*.corrupt"):
        step = step_of(p.with_name(p.name.removesuffix(".corrupt")))
        if newest is not None and step is not None and step < newest:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        best = best_step(evals or {}, [s for s, _ in done])
        log.info(
            "retention (keep %d%s): removed %s",
            keep,
            f", and the best evaluated checkpoint-{best}" if best is not None else "",
            ", ".join(p.name for p in removed),
        )
    return removed
