"""Durable files: fsync a tree, publish a staged directory under its final name in one rename.

Users (and ``status.output``) look at ``output/``; a crash, a SIGKILL or a full disk while it is
written must never leave a half adapter there. Everything final is written to a staging directory
next to it, fsynced, and then renamed into place (the previous ``output/``, if any, is moved
aside first and removed after).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; their renames are durable
        pass
    finally:
        os.close(fd)


def sync_tree(path: Path) -> int:
    """fsync every file under ``path``, then every directory bottom-up; returns the bytes synced.

    fsync of a file opened read-only flushes the file's dirty pages written by any process
    (other ranks included)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path, topdown=False):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
    return total


def staging_dir(final: Path) -> Path:
    """Where ``final`` is built: a hidden sibling on the same filesystem (rename is atomic)."""
    return final.with_name(f".{final.name}.partial")


def publish(staging: Path, final: Path) -> None:
    """Sync ``staging`` and rename it to ``final``.

    A crash before the rename leaves ``final`` as it was; between moving an older ``final`` aside
    and the rename, ``final`` is briefly absent (never partial); the old copy is removed last."""
    sync_tree(staging)
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(staging, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["fsync_dir", "publish", "staging_dir", "sync_tree"]
